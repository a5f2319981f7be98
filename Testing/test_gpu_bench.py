"""tools/gpu-bench.sh, the prepared GPU run, end to end on its tiny CPU setting."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import gpu_bench  # noqa: E402


def test_gpu_script_runs_every_part_on_cpu_tiny(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", DICYC_CACHE=str(tmp_path / "cache"),
               DICYC_PROBE_CACHE="0")
    r = subprocess.run(["bash", str(REPO / "tools" / "gpu-bench.sh"), "--tiny", "--device", "cpu", "--out", str(out)],
                       capture_output=True, encoding="utf-8", errors="replace", timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "errors.json").exists()
    machine = json.loads((out / "machine.json").read_text())
    assert machine["device"] == "cpu" and "avx2" in machine["cpu_features"]
    speed = json.loads((out / "speed.json").read_text())
    assert speed["mode"] == "tiny" and speed["device"] == "cpu"
    assert set(speed["training"]["dicyc"]["precisions"]) == {"fp32", "auto"}
    e2e = json.loads((out / "end_to_end.json").read_text())
    assert e2e["seconds"] > 0 and e2e["slices"] == e2e["shape"][0]
    quality = json.loads((out / "quality.json").read_text())
    assert quality["budget"]["iterations"] == gpu_bench.TINY_QUALITY["iterations"]
    assert {row["method"] for row in quality["results"]} == {"cyclegan", "dicyc"}
    assert "end to end" in (out / "summary.txt").read_text()


def test_quality_budget_from_the_measured_iteration_times():
    speed = {"training": {"cyclegan": {"precisions": {"auto": {"iteration_s": 0.05}}},
                          "dicyc": {"precisions": {"auto": {"iteration_s": 0.15}}}}}
    # 360 s, 30 % left for the rest: 252 s for 2 runs of each method at 0.2 s per pair of iterations
    assert gpu_bench.quality_iterations(speed, 360, 4) == 600
    assert gpu_bench.quality_iterations(speed, 1, 4) == 100  # never below the minimum


def test_missing_gpu_is_one_sentence(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", str(REPO / "tools" / "gpu-bench.sh"), "--out", str(tmp_path)], capture_output=True,
                       encoding="utf-8", errors="replace", timeout=120, env=env)
    assert r.returncode == 1 and "no usable CUDA GPU" in r.stderr and "Traceback" not in r.stderr
