#!/usr/bin/env bash
# Fetch, on a machine with a package registry, the wheels that tools/gpu-bench.sh needs on a GPU
# machine that has torch, scipy and scikit-image but no SimpleITK or nibabel and no registry.
# They land in .whl/ at the repository root (ignored by git; about 55 MB); carry that folder
# with the command (device tool: carry [".whl"]). Python 3.12, x86-64 manylinux, as on the H200s.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
SIMPLEITK=${SIMPLEITK_VERSION:-2.5.7}
NIBABEL=${NIBABEL_VERSION:-5.4.2}
PYVER=${WHEEL_PYTHON_VERSION:-3.12}
mkdir -p "$REPO/.whl"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$REPO/.whl" "SimpleITK==$SIMPLEITK" "nibabel==$NIBABEL"
ls -l "$REPO/.whl"
