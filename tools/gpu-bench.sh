#!/usr/bin/env bash
# The prepared GPU run: `dicyc bench speed` at the papers' sizes, a 512x512x300 CT synthesised end
# to end (read, synthesise, write), and a quality budget of about 6 minutes at the papers'
# network sizes and 128x128 slices; JSON results in one folder (default gpu-bench-results/).
#
#   tools/gpu-bench.sh [--out DIR] [--device cuda|cpu] [--tiny] [--quality-seconds S] [--skip PART...]
#
# For a GPU machine with torch, scipy and scikit-image but no SimpleITK or nibabel and no package
# registry: run tools/gpu-wheels.sh where a registry is reachable, carry .whl/ with the repository,
# and this script installs the wheels it finds there into /tmp/dicyc-site (nothing else is touched).
# `tools/gpu-bench.sh --tiny --device cpu` runs every part on tiny settings in seconds (a test).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
SITE=${DICYC_WHEEL_SITE:-/tmp/dicyc-site}
if ! "$PY" -c "import SimpleITK, nibabel" >/dev/null 2>&1; then
    if ! ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
        echo "gpu-bench: SimpleITK or nibabel is missing and $REPO/.whl holds no wheels; run tools/gpu-wheels.sh where a registry is reachable and carry .whl along." >&2
        exit 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$REPO"/.whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" "$REPO/tools/gpu_bench.py" "$@"
