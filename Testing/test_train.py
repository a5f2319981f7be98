"""The training engine end to end with tiny networks: events, checkpoints, exact resume, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dicyc.errors import DicycError

TINY = ["--ngf", "8", "--n-blocks", "1", "--ndf", "8", "--slice-size", "64", "--spacing", "4"]


@pytest.fixture(scope="module")
def head_pair():
    from dicyc.samples import prepare

    paths = prepare(["head-mr", "head-ct"], log=lambda m: None)
    return str(paths["head-mr"]), str(paths["head-ct"])


def _events(path):
    from dicyc.events import read_events

    return read_events(path)[0]


def _tiny_config(**extra):
    from dicyc.train import resolve_config

    base = {"method": "cyclegan", "ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32, "spacing": [2.0, 2.0], "iterations": 6,
            "checkpoint_every": 3, "epoch_length": 100, "log_every": 1}
    base.update(extra)
    return resolve_config(None, base)


def test_sigkill_then_resume_continues_from_last_checkpoint(head_pair, tmp_path, run_dicyc):
    mr, ct = head_pair
    out = tmp_path / "run"
    events = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "dicyc", "train", "--method", "cyclegan", "--a", mr, "--b", ct, "--out", str(out),
           *TINY, "--iterations", "400", "--checkpoint-every", "5", "--epoch-length", "1000", "--progress-jsonl", str(events)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if events.exists() and sum(e["event"] == "checkpoint" for e in _events(events)) >= 2:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint events within 240 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    checkpoints = [e for e in _events(events) if e["event"] == "checkpoint"]
    last = checkpoints[-1]["iteration"]
    assert last >= 10 and last % 5 == 0
    assert (out / "model.safetensors").exists()
    from dicyc.runlock import LOCK_NAME  # the lock file stays by design: the OS lock on it is what is released

    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME], \
        "a temporary file was left behind"
    # resume, shortening the run so the test stays quick
    result = run_dicyc("train", "--out", out, "--resume", "--iterations", str(last + 5), "--progress-jsonl", events)
    assert result.returncode == 0, result.stderr
    resumed = _events(events)
    starts = [e for e in resumed if e["event"] == "start"]
    assert len(starts) == 2
    assert starts[1]["iteration"] >= last  # carries on, not from zero
    iterations = [e["iteration"] for e in resumed[resumed.index(starts[1]):] if e["event"] == "iteration"]
    assert iterations and min(iterations) > starts[1]["iteration"]
    assert resumed[-1]["event"] == "done" and resumed[-1]["iteration"] == last + 5
    from dicyc.modelfile import read_card

    card = read_card(out / "model.safetensors")
    assert card["method"] == "cyclegan" and card["training"]["iterations_done"] == last + 5
    assert card["domains"]["b"]["normalization"]["kind"] == "ct-window"


@pytest.mark.parametrize("method", ["cyclegan", "unit"])  # unit: layers shared between networks
def test_resume_is_exact(method, toy_pair, tmp_path, monkeypatch):
    """Interrupting after a checkpoint and resuming gives the same weights as one straight run."""
    from safetensors.torch import load_file

    from dicyc.methods import get_method
    from dicyc.train import train

    mr, ct = toy_pair
    recipe = get_method(method)
    config = _tiny_config(method=method, n_blocks=2 if method == "unit" else 1, cache_dir=str(tmp_path / "cache"))
    train(mr, ct, tmp_path / "straight", config, device="cpu")

    original = recipe.discriminator_step

    def crash_at_4(self, nets, ctx):
        if ctx["iteration"] == 4:
            raise KeyboardInterrupt
        return original(self, nets, ctx)

    monkeypatch.setattr(recipe, "discriminator_step", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        train(mr, ct, tmp_path / "interrupted", config, device="cpu")
    monkeypatch.setattr(recipe, "discriminator_step", original)
    checkpoint = load_file(str(tmp_path / "interrupted" / "checkpoint.safetensors"))
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        assert any(k.startswith(f"net.{name}.") for k in checkpoint), name
    train(mr, ct, tmp_path / "interrupted", config, resume=True, device="cpu")
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key


def test_training_reduces_the_cycle_loss(toy_pair, tmp_path):
    from dicyc.train import train

    mr, ct = toy_pair
    config = _tiny_config(ngf=8, iterations=60, lr=1e-3, checkpoint_every=1000, augment=False,
                          cache_dir=str(tmp_path / "cache"))
    train(mr, ct, tmp_path / "run", config, device="cpu")
    history = [e for e in _events(tmp_path / "run" / "events.jsonl") if e["event"] == "iteration"]
    cycle = [e["losses"]["cycle"] for e in history]
    assert np.mean(cycle[-10:]) < 0.6 * np.mean(cycle[:5])
    assert (tmp_path / "run" / "loss_curve.png").exists()
    assert list((tmp_path / "run" / "previews").glob("epoch_*.png"))


def test_events_follow_the_contract(toy_pair, tmp_path):
    from dicyc.train import train

    mr, ct = toy_pair
    train(mr, ct, tmp_path / "run", _tiny_config(cache_dir=str(tmp_path / "cache")), device="cpu")
    events = _events(tmp_path / "run" / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    for kind in ("iteration", "epoch", "checkpoint", "preview"):
        assert kind in kinds
    it = next(e for e in events if e["event"] == "iteration")
    assert {"iteration", "total_iterations", "losses", "lr", "elapsed_s"} <= set(it)
    ck = [e for e in events if e["event"] == "checkpoint"]
    assert [e["iteration"] for e in ck][:2] == [3, 6]
    assert Path(next(e for e in events if e["event"] == "preview")["path"]).exists()


def test_schedule_constant_then_linear_decay_and_early_stop():
    from dicyc.schedule import Schedule

    fixed = Schedule(_tiny_config(iterations=100), epoch_length=10)
    assert fixed.lr_factor(0) == 1.0 and fixed.lr_factor(49) == 1.0
    assert fixed.lr_factor(75) == pytest.approx(0.5) and fixed.lr_factor(100) == 0.0
    cfg = _tiny_config(iterations=None, max_epochs=1000, patience_constant=10, patience_decay=20, decay_epochs=100)
    s = Schedule(cfg, epoch_length=10)
    s.end_epoch(1.0, 10)
    for epoch in range(2, 12):  # 10 epochs without improvement move to decay
        improved, stop = s.end_epoch(2.0, epoch * 10)
    assert s.state["phase"] == "decay" and not stop
    assert s.lr_factor(110 + 500) == pytest.approx(0.5)
    for epoch in range(12, 32):  # 20 more without improvement stop
        improved, stop = s.end_epoch(2.0, epoch * 10)
    assert stop


def test_ddp_two_processes_keep_identical_weights(toy_pair, tmp_path):
    from safetensors.torch import load_file

    mr, ct = toy_pair
    out = tmp_path / "ddp"
    env = dict(os.environ, DICYC_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    worker = Path(__file__).with_name("ddp_worker.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
         str(worker), mr, ct, str(out)],
        capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for it in (2, 4):
        r0 = load_file(str(out / f"rank0_it{it}.safetensors"))
        r1 = load_file(str(out / f"rank1_it{it}.safetensors"))
        for key in r0:
            assert np.array_equal(r0[key].numpy(), r1[key].numpy()), (it, key)
    # the ranks really trained (weights moved from iteration 2 to 4) and only rank 0 wrote the run
    r0_2 = load_file(str(out / "rank0_it2.safetensors"))
    r0_4 = load_file(str(out / "rank0_it4.safetensors"))
    assert any(not np.array_equal(r0_2[k].numpy(), r0_4[k].numpy()) for k in r0_2)
    assert (out / "model.safetensors").exists()
    assert len([e for e in _events(out / "events.jsonl") if e["event"] == "start"]) == 1


# ----------------------------------------------------------------- bad input
def test_bad_inputs_are_one_sentence(tmp_path, run_dicyc, toy_pair):
    mr, ct = toy_pair
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_dicyc("train", "--a", empty, "--b", ct, "--out", tmp_path / "o1", *TINY, "--iterations", "2")
    assert r.returncode == 1 and "holds no image volumes" in r.stderr and "Traceback" not in r.stderr

    import SimpleITK as sitk

    flat = tmp_path / "slice.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.uint8).reshape(8, 8)), str(flat))
    r = run_dicyc("train", "--a", flat, "--b", ct, "--out", tmp_path / "o2", *TINY, "--iterations", "2",
                  env={"DICYC_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 1 and "2-D" in r.stderr and "Traceback" not in r.stderr

    r = run_dicyc("train", "--a", mr, "--b", ct, "--out", tmp_path / "o3", *TINY, "--iterations", "2", "--device", "cuda",
                  env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 1 and "CUDA" in r.stderr and "Traceback" not in r.stderr

    bad = tmp_path / "bad.json"
    bad.write_text('{"ngff": 8}')
    r = run_dicyc("train", "--a", mr, "--b", ct, "--out", tmp_path / "o4", "--config", bad)
    assert r.returncode == 1 and "unknown training option" in r.stderr

    r = run_dicyc("train", "--out", tmp_path / "nothing", "--resume")
    assert r.returncode == 1 and "no checkpoint to resume" in r.stderr

    r = run_dicyc("train", "--method", "pix2pix", "--a", mr, "--b", ct, "--out", tmp_path / "o5")
    assert r.returncode == 1 and "unknown method" in r.stderr


def test_new_run_refuses_to_overwrite_and_resume_refuses_architecture_change(toy_pair, tmp_path):
    from dicyc.train import prepare_run, train

    mr, ct = toy_pair
    out = tmp_path / "run"
    config, a, b = prepare_run(out, "cyclegan", mr, ct, overrides={"ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32,
                                                                    "iterations": 2, "checkpoint_every": 1,
                                                                    "cache_dir": str(tmp_path / "cache")})
    train(a, b, out, config, device="cpu")
    with pytest.raises(DicycError, match="already holds a training run"):
        prepare_run(out, "cyclegan", mr, ct)
    with pytest.raises(DicycError, match="ngf cannot change"):
        prepare_run(out, None, None, None, overrides={"ngf": 16}, resume=True)
    with pytest.raises(DicycError, match="context_slices cannot change"):
        prepare_run(out, None, None, None, overrides={"context_slices": 3}, resume=True)
    # a run from before the option was 2-D: resuming it with the 2-D value is no change
    saved = json.loads((out / "config.json").read_text())
    del saved["config"]["context_slices"]
    (out / "config.json").write_text(json.dumps(saved))
    config, _, _ = prepare_run(out, None, None, None, overrides={"context_slices": 1}, resume=True)
    assert config["context_slices"] == 1
    config, a, b = prepare_run(out, None, None, None, overrides={"iterations": 4}, resume=True)
    assert config["iterations"] == 4 and a == str(Path(mr).resolve())
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["iterations"] == 4


def test_context_slices_option(run_dicyc):
    """context_slices is odd and at least 1 in a config or on the command line, and --help documents it."""
    from dicyc.train import resolve_config

    assert resolve_config(None, {"context_slices": 3})["context_slices"] == 3
    assert resolve_config(None, {})["context_slices"] == 1
    for bad in (0, 2, -3, "three"):
        with pytest.raises(DicycError, match="context_slices must be"):
            resolve_config(None, {"context_slices": bad})
    r = run_dicyc("train", "--help")
    assert r.returncode == 0 and "--context-slices" in r.stdout and "neighbouring axial" in " ".join(r.stdout.split())


def test_2d_benchmark_runs_keep_their_folder_names():
    """Benchmarks reuse finished runs by a digest of their configuration: a 2-D run's must not change
    because the configuration now holds context_slices 1, while a 2.5-D run is another run."""
    from dicyc.bench import digest_config
    from dicyc.train import resolve_config

    config = resolve_config(None, {"method": "cyclegan", "ngf": 16})
    before = {k: v for k, v in config.items() if k != "context_slices"}  # as resolved before the option
    assert digest_config(config) == digest_config(before)
    assert digest_config(dict(config, context_slices=3)) != digest_config(config)
