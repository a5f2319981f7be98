"""Each kind of work asks only for what it really imports (DiCycDependencies.NEEDS): every code
path runs in a subprocess where the optional packages it does not list cannot be imported, and
one that lists a package fails without it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

import DiCycDependencies  # noqa: E402

SCRIPT = Path(__file__).with_name("blocked_imports.py")
OPTIONAL = ("scipy", "nibabel", "matplotlib", "torch", "safetensors")


def _run(blocked, *args, tmp_path=None):
    env = dict(os.environ, DICYC_TEST_TMP=str(tmp_path or ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), ",".join(blocked), *map(str, args)], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600, env=env)


def test_the_dependency_lists_name_no_needless_package():
    needs = DiCycDependencies.NEEDS
    assert needs["comparison"] == () and needs["metrics"] == ("scipy",)
    assert set(needs["synthesis"]) == {"torch", "safetensors", "scipy"}
    for purpose in ("comparison", "metrics", "synthesis"):
        assert "nibabel" not in needs[purpose] and "matplotlib" not in needs[purpose]
    assert set(needs["samples"]) == {"scipy", "nibabel"}
    assert set(needs) == {"synthesis", "comparison", "metrics", "training", "samples"}
    assert all(name == "torch" or name in DiCycDependencies.REQUIREMENTS for n in needs.values() for name in n)


def test_comparison_and_metrics_run_with_only_what_they_list():
    nothing = _run(OPTIONAL, "comparison,metrics")  # comparison needs nothing; metrics does need scipy
    lines = nothing.stdout.splitlines()
    assert lines == ["OK comparison "] and nothing.returncode != 0, nothing.stderr[-2000:]
    assert "No module named 'scipy'" in nothing.stderr
    scipy_only = _run([n for n in OPTIONAL if n != "scipy"], "metrics")
    assert scipy_only.returncode == 0 and scipy_only.stdout.split() == ["OK", "metrics", "scipy"], scipy_only.stderr


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for PythonSlicer")
def test_synthesis_in_slicer_and_in_the_background_needs_no_nibabel_or_matplotlib(tiny_model, tmp_path):
    blocked = [n for n in OPTIONAL if n not in DiCycDependencies.NEEDS["synthesis"]]
    result = _run(blocked, "synthesis", tiny_model, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[:2] == ["OK", "synthesis"]
    assert set(result.stdout.split()[2].split(",")) == {"torch", "safetensors", "scipy"}


def test_preparing_the_samples_needs_only_scipy_and_nibabel_and_loading_them_nothing(abdomen_samples):
    """The engine prepared the abdominal sample (the abdomen_samples fixture) in a Python where only the
    packages NEEDS["samples"] lists could be imported, and it used both; loading prepared files
    needs none of the optional packages — so the module asks for them only when a file is missing."""
    folder, imported = abdomen_samples
    assert imported == {"scipy", "nibabel"}
    loaded = _run(OPTIONAL, "samples-load", folder)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["OK", "samples-load"]
