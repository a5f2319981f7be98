"""``dicyc bench speed``: each measurement with tiny settings, and the command end to end.

The real benchmark takes minutes; here every piece runs on tiny networks and slices, and the
command runs under its test hook ``DICYC_BENCH_TINY=1``. These tests check structure and
arithmetic, not speed.
"""

import json
import math
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dicyc import synthesize as syn  # noqa: E402
from dicyc.bench import speed  # noqa: E402
from dicyc.methods import METHODS  # noqa: E402


def _key(text):
    layout, batch = text.split(":")
    return layout, int(batch)


def _check_speedups(s):
    """The headline speedup is the median of paired repeats; the ratio of medians is kept beside it."""
    assert s["speedup_vs_reference"] == pytest.approx(float(np.median(s["speedup_per_repeat"])))
    assert s["speedup_of_medians"] == pytest.approx(s["slices_per_s"] / s["reference_slices_per_s"])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on two threads wait for a descheduled thread at every op on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# ===================================================================== FLOPs
def test_flops_of_the_papers_generator():
    flops, at_output = speed.conv_flops({"ngf": 64, "n_blocks": 9}, 256)
    # executed: stem 0.41 + two downs 2 x 2.42 + 18 block convs 86.97 + two transposed 2 x 2.42 + head 0.41
    assert flops == pytest.approx(97.48e9, rel=1e-3)
    # transposed convolutions counted at their output size: BENCHMARKS.md's "about 112 GFLOP"
    assert at_output == pytest.approx(112.0e9, rel=1e-2)


def test_flops_by_hand_for_a_small_generator():
    ngf, n, s = 4, 1, 32
    conv = lambda cin, cout, k, h: 2 * cin * cout * k * k * h * h  # noqa: E731
    expected = (
        conv(1, ngf, 7, s) + conv(ngf, 2 * ngf, 3, s // 2) + conv(2 * ngf, 4 * ngf, 3, s // 4)
        + 2 * n * conv(4 * ngf, 4 * ngf, 3, s // 4)
        + conv(4 * ngf, 2 * ngf, 3, s // 4) + conv(2 * ngf, ngf, 3, s // 2)  # transposed: input pixels
        + conv(ngf, 1, 7, s)
    )
    assert speed.conv_flops({"ngf": ngf, "n_blocks": n}, s)[0] == expected


def test_matmul_gflops_positive():
    assert _positive(speed.matmul_gflops(64, "fp32", "cpu", repeats=2))
    assert _positive(speed.matmul_gflops(64, "bf16", "cpu", repeats=1))


# ===================================================================== synthesis
def test_measure_synthesis_structure_and_ratio():
    sizes = dict(ngf=4, n_blocks=1, size=32, slices=4, reference_slices=2, repeats=2, device="cpu", matmul_size=64)
    r = speed.measure_synthesis(**sizes)
    for key in ("slices_per_s", "reference_slices_per_s", "speedup_vs_reference", "gflops", "reference_gflops",
                "matmul_ceiling_gflops", "matmul_ceiling_fp32_gflops", "flops_per_slice", "fraction_of_ceiling"):
        assert _positive(r[key]), key
    _check_speedups(r)
    assert r["gflops"] == pytest.approx(r["flops_per_slice"] * r["slices_per_s"] / 1e9)
    assert r["precision"] in ("fp32", "bf16", "fp16")
    assert speed.default_synthesis_batch() == 8
    path = r["path"]
    if r["precision"] != "fp32":
        # "auto" kept bf16 on this CPU (fast bf16, e.g. Zen 5): low precision runs its one layout, no probe
        assert path["source"] == "low precision" and path["layout"] in ("cl", "nchw")
        r = speed.measure_synthesis(**sizes, precision="fp32")
        path = r["path"]
    # the CPU path probe ran fresh, timed every candidate, and the fastest was kept
    assert path["source"] == "probe" and set(path["seconds_per_slice"]) == {"cl:8", "cl:1", "nchw:1"}
    assert all(len(v) == syn.PROBE_ROUNDS for v in path["rounds"].values())  # every candidate, every round
    chosen = syn.choose_path({tuple(_key(k)): v for k, v in path["seconds_per_slice"].items()})
    assert (path["layout"], r["batch"]) == chosen
    assert (r["size"], r["ngf"], r["n_blocks"], r["repeats"]) == (32, 4, 1, 2)
    assert len(r["speedup_per_repeat"]) == 2
    json.dumps(r)


def test_measure_synthesis_fp32_and_explicit_batch():
    r = speed.measure_synthesis(ngf=4, n_blocks=1, size=16, slices=3, reference_slices=1, repeats=1, device="cpu",
                                precision="fp32", batch=2, matmul_size=32)
    assert r["precision"] == "fp32" and r["batch"] in (1, 2) and r["psnr_low_vs_fp32"] is None
    assert r["matmul_ceiling_gflops"] == r["matmul_ceiling_fp32_gflops"]


# ===================================================================== memory
def test_ct_like_volume_is_int16_ct():
    vol = speed.ct_like_volume((3, 40, 48), (0.8, 0.8, 0.8))
    assert vol.array.dtype == np.int16 and vol.shape == (3, 40, 48)
    assert vol.array.min() < -900 and vol.array.max() > 900


def test_measure_memory_tiny():
    r = speed.measure_memory(shape=(4, 40, 40), spacing=(0.8, 0.8, 0.8), ngf=4, n_blocks=1, device="cpu")
    assert r["shape"] == [4, 40, 40] and r["input_dtype"] == "int16"
    assert r["input_mb"] == pytest.approx(4 * 40 * 40 * 2 / 2**20)
    assert r["float32_copy_mb"] == pytest.approx(2 * r["input_mb"])
    assert _positive(r["peak_rss_mb"]) and r["peak_rss_mb"] >= r["rss_before_mb"]
    assert r["float32_copies_beyond_input"] == pytest.approx(r["peak_rss_increase_mb"] / r["float32_copy_mb"])
    assert r["model_grid"] == [4, 40, 40]


# ===================================================================== training and loader
def test_measure_training_relative_to_cyclegan():
    r = speed.measure_training(methods=["cyclegan", "dicyc", "cycle-medgan", "unit"], ngf=4, n_blocks=2, ndf=4,
                               size=32, iterations=2, warmup=1, device="cpu")
    assert list(r) == ["cyclegan", "dicyc", "cycle-medgan", "unit"]
    assert r["cyclegan"]["relative_to_cyclegan"] == pytest.approx(1.0)
    for name, e in r.items():
        assert _positive(e["iteration_s"]) and len(e["iterations_s"]) == 2
        assert e["relative_to_cyclegan"] == pytest.approx(e["iteration_s"] / r["cyclegan"]["iteration_s"])
        memory = e["precisions"]["fp32"]["memory_mb"]
        assert _positive(memory["activations"]) and _positive(memory["state"])
        assert e["memory_mb"] == pytest.approx(memory["activations"] + memory["state"])
        assert e["memory_relative_to_cyclegan"] == pytest.approx(e["memory_mb"] / r["cyclegan"]["memory_mb"])
    # DiCyc keeps both passes of both generators, and its offset and TPS networks: more memory
    assert r["dicyc"]["memory_relative_to_cyclegan"] > 1.2


def test_measure_training_fp32_and_auto_in_the_same_run(monkeypatch):
    from dicyc import device as device_mod

    monkeypatch.setattr(device_mod, "cpu_bf16_is_fast", lambda: True)  # auto resolves to bf16 here
    r = speed.measure_training(methods=["cyclegan", "dicyc"], ngf=4, n_blocks=1, ndf=4, size=32, iterations=1,
                               warmup=0, settle=0, device="cpu", precisions=("fp32", "auto"))
    for e in r.values():
        assert e["auto_precision"] == "bf16" and e["precisions"]["auto"]["precision"] == "bf16"
        assert e["auto_speedup"] == pytest.approx(e["precisions"]["fp32"]["iteration_s"]
                                                  / e["precisions"]["auto"]["iteration_s"])
        # bf16 convolution inputs take half the bytes of fp32 ones; the fp32 state is the same
        mem = {p: e["precisions"][p]["memory_mb"] for p in ("fp32", "auto")}
        assert mem["auto"]["activations"] < mem["fp32"]["activations"]
        assert mem["auto"]["state"] == pytest.approx(mem["fp32"]["state"])
    monkeypatch.setattr(device_mod, "cpu_bf16_is_fast", lambda: False)
    r = speed.measure_training(methods=["cyclegan"], ngf=4, n_blocks=1, ndf=4, size=32, iterations=1, warmup=0,
                               settle=0, device="cpu", precisions=("fp32", "auto"))
    e = r["cyclegan"]
    assert e["auto_precision"] == "fp32" and e["auto_speedup"] == 1.0  # the same run, timed once


def test_a_variant_with_options_is_timed_under_its_label():
    """``--methods`` takes the variants every benchmark takes; the options reach the recipe."""
    tied = "dicyc[lambda_warp=3,offset_grid=8,offset_max_displacement=0.05,tps_max_displacement=0.1]"
    r = speed.measure_training(methods=["cyclegan", tied], ngf=4, n_blocks=1, ndf=4, size=32, iterations=1,
                               warmup=0, settle=0, device="cpu")
    assert list(r) == ["cyclegan", tied]
    state = speed._training_state(tied, 4, 1, 4, 32, 1, torch.device("cpu"), 0)
    assert state["recipe"].config["lambda_warp"] == 3 and state["recipe"].config["offset_grid"] == 8


def test_training_methods_put_cyclegan_first_and_refuse_unknown_options():
    from dicyc.errors import DicycError

    assert speed.training_methods(None) is None
    assert speed.training_methods(["dicyc[lambda_warp=3]", "cyclegan", "dicyc[lambda_warp=3]"]) == [
        "cyclegan", "dicyc[lambda_warp=3]"]
    with pytest.raises(DicycError, match="unknown training option"):
        speed.training_methods(["dicyc[lambda_wrap=3]"])
    with pytest.raises(DicycError):
        speed.training_methods(["dicycc"])


def test_every_method_trains_one_iteration():
    r = speed.measure_training(ngf=4, n_blocks=1, ndf=4, size=32, iterations=1, warmup=0, device="cpu")
    assert set(r) == set(METHODS)


def test_alternating_times_alternates_the_order_and_pairs_the_repeats():
    from dicyc.bench.speed import _alternating_times

    calls, seen = [], []
    works = (lambda: calls.append("a"), lambda: calls.append("b"))
    times = _alternating_times(works, 3, progress=lambda r, t: seen.append((r, [len(x) for x in t])))
    assert calls == ["a", "b", "b", "a", "a", "b"]  # a load trend favours neither
    assert [len(t) for t in times] == [3, 3] and all(s >= 0 for t in times for s in t)
    assert seen == [(0, [1, 1]), (1, [2, 2]), (2, [3, 3])]


def test_measure_context_cost_times_a_2p5d_model_against_a_2d_one():
    r = speed.measure_context_cost(ngf=4, n_blocks=1, size=32, slices=5, repeats=2, context=3)
    assert r["context_slices"] == 3 and len(r["ratio_per_repeat"]) == 2
    assert _positive(r["seconds_2d"]) and _positive(r["seconds_context"]) and _positive(r["ratio"])
    assert min(r["ratio_per_repeat"]) <= r["ratio"] <= max(r["ratio_per_repeat"])


def test_measure_loader(tmp_path):
    r = speed.measure_loader(size=32, batch=2, n_batches=3, workdir=tmp_path)
    assert _positive(r["batches_per_s"]) and (r["batch"], r["size"]) == (2, 32)
    assert list(tmp_path.iterdir()) == []  # its temporary folder is removed


# ===================================================================== the command
def test_run_and_summary_in_tiny_mode(monkeypatch):
    monkeypatch.setenv(speed.TINY_ENV, "1")
    args = types.SimpleNamespace(quick=True, json=None, device="cpu", out=None)
    logged = []
    torch.set_num_threads(2)
    result = speed.run(args, logged.append)
    assert torch.get_num_threads() == 2  # the hook's one thread is undone
    assert result["mode"] == "tiny" and result["quick"] is True and result["device"] == "cpu"
    assert logged
    s = result["synthesis"]
    _check_speedups(s)
    assert set(result["training"]) == set(METHODS)
    assert set(result["training_papers"]) == {"cyclegan", "dicyc"}
    for e in list(result["training"].values()) + list(result["training_papers"].values()):
        assert set(e["precisions"]) == {"fp32", "auto"} and _positive(e["auto_speedup"])
    flags = result["cpu_features"]
    assert {"avx2", "avx512f", "avx512_bf16", "amx_bf16"} <= set(flags)
    assert "note" in result["memory"]  # a smaller volume than the protocol's, and it says so
    assert result["context"]["context_slices"] == 3 and _positive(result["context"]["ratio"])
    ld = result["loader"]
    assert ld["ratio"] == pytest.approx(ld["batches_per_s"] / ld["training_iterations_per_s"])
    assert ld["training_iterations_per_s"] == pytest.approx(1.0 / result["training"]["cyclegan"]["iteration_s"])
    assert 0 < ld["loader_share"] < 1
    text = speed.summary(result)
    assert "speedup" in text and "cyclegan" in text and "loader" in text and "memory" in text and "2.5-D" in text
    json.dumps(result)
    args.methods = ["dicyc[lambda_warp=3]"]
    result = speed.run(args, logged.append)
    assert list(result["training"]) == list(result["training_papers"]) == ["cyclegan", "dicyc[lambda_warp=3]"]
    assert result["methods"] == ["cyclegan", "dicyc[lambda_warp=3]"] and "dicyc[lambda_warp=3]" in speed.summary(result)


def test_cli_end_to_end_with_the_test_hook(run_dicyc, tmp_path):
    out = tmp_path / "speed.json"
    r = run_dicyc("bench", "speed", "--quick", "--json", out, "--device", "cpu", env={speed.TINY_ENV: "1"},
                  timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    s = result["synthesis"]
    assert _positive(s["speedup_vs_reference"])
    _check_speedups(s)
    for key in ("machine", "quick", "device", "synthesis", "memory", "training", "training_papers", "loader",
                "cpu_features"):
        assert key in result
    for e in result["training"].values():  # per-method fp32 and auto iteration times
        assert _positive(e["precisions"]["fp32"]["iteration_s"]) and _positive(e["precisions"]["auto"]["iteration_s"])
    assert "speedup" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_one_sentence(run_dicyc):
    r = run_dicyc("bench", "speed", "--quick", "--device", "cuda", env={speed.TINY_ENV: "1"}, timeout=120)
    assert r.returncode == 1
    assert "no usable CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_full_mode_compares_the_loader_with_quick_size_training(monkeypatch):
    """Without --quick the loader is set against a separate CycleGAN timing at the quick size."""
    monkeypatch.delenv(speed.TINY_ENV, raising=False)
    monkeypatch.setitem(speed.SETTINGS, "full", speed.SETTINGS["tiny"])
    small = dict(speed.SETTINGS["tiny"]["training"], ngf=8, iterations=1, warmup=0)
    monkeypatch.setattr(speed, "LOADER_TRAINING", small)
    result = speed.run(types.SimpleNamespace(quick=False, json=None, device="cpu", out=None), None)
    assert result["mode"] == "full" and result["quick"] is False
    assert result["loader"]["training"]["ngf"] == 8
    assert _positive(result["loader"]["ratio"])
