"""Mixed-precision training: the option, autocast in every step, fp32 files, resume keeps the precision."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dicyc import device as device_mod  # noqa: E402
from dicyc import train as train_mod  # noqa: E402
from dicyc.errors import DicycError  # noqa: E402

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on two threads wait for a descheduled thread at every op on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = ["--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--slice-size", "32", "--spacing", "2", "--iterations", "3",
        "--checkpoint-every", "2", "--epoch-length", "100"]


def _tiny_config(tmp_path, **extra):
    base = {"method": "cyclegan", "ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32, "spacing": [2.0, 2.0],
            "iterations": 6, "checkpoint_every": 3, "epoch_length": 100, "log_every": 1,
            "cache_dir": str(tmp_path / "cache")}
    base.update(extra)
    return train_mod.resolve_config(None, base)


def test_cli_bf16_model_is_fp32_and_synthesises_in_fp32(toy_pair, tmp_path, run_dicyc):
    from safetensors import safe_open

    from dicyc.checkpoint import read_checkpoint_extra
    from dicyc.modelfile import load_model
    from dicyc.synthesize import synthesize_volume_with_info
    from dicyc.volume import read_volume

    mr, ct = toy_pair
    out = tmp_path / "run"
    r = run_dicyc("train", "--method", "cyclegan", "--a", mr, "--b", ct, "--out", out, "--precision", "bf16", *TINY,
                  env={"DICYC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"F32"}
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys() if not k.startswith("rng.")} == {"F32"}
    assert read_checkpoint_extra(out / "checkpoint.safetensors")["precision"] == {"precision": "bf16",
                                                                                   "grad_scaler": None}
    model = load_model(out / "model.safetensors")
    assert model.card["precision"] == {"training": "bf16", "weights": "fp32"}
    assert model.card["training"]["precision"] == "bf16"
    synthetic, info = synthesize_volume_with_info(model, read_volume(mr), device="cpu", precision="fp32")
    assert info["precision"] == "fp32" and np.isfinite(synthetic.array).all()
    start = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()][0]
    assert start["event"] == "start" and start["message"].endswith("in bf16")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_resume_is_exact_and_keeps_the_precision(precision, toy_pair, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from dicyc.checkpoint import read_checkpoint_extra
    from dicyc.methods import CycleGAN

    mr, ct = toy_pair
    config = _tiny_config(tmp_path, precision=precision)
    train_mod.train(mr, ct, tmp_path / "straight", config, device="cpu")
    original = CycleGAN.discriminator_step

    def crash_at_4(self, nets, ctx):
        if ctx["iteration"] == 4:
            raise KeyboardInterrupt
        return original(self, nets, ctx)

    monkeypatch.setattr(CycleGAN, "discriminator_step", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(mr, ct, tmp_path / "interrupted", config, device="cpu")
    monkeypatch.setattr(CycleGAN, "discriminator_step", original)
    state = read_checkpoint_extra(tmp_path / "interrupted" / "checkpoint.safetensors")["precision"]
    assert state["precision"] == precision
    if precision == "fp16":
        assert state["grad_scaler"]["scale"] > 0  # the scaler's state travels with the checkpoint
    # resumed with "auto" in the config: the checkpoint's precision wins
    train_mod.train(mr, ct, tmp_path / "interrupted", dict(config, precision="auto"), resume=True, device="cpu")
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "model.safetensors"))
    for key in a:
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key


def test_steps_run_under_autocast_with_fp32_losses(toy_pair, tmp_path, monkeypatch):
    from dicyc.methods import CycleGAN

    seen = []
    original = CycleGAN.generator_step

    def spy(self, nets, ctx):
        seen.append((torch.is_autocast_enabled("cpu"), nets["G_AB"].down1[0](torch.zeros(1, 4, 8, 8)).dtype))
        loss, values = original(self, nets, ctx)
        seen.append(loss.dtype)
        return loss, values

    monkeypatch.setattr(CycleGAN, "generator_step", spy)
    mr, ct = toy_pair
    train_mod.train(mr, ct, tmp_path / "run", _tiny_config(tmp_path, precision="bf16", iterations=1), device="cpu")
    assert seen == [(True, torch.bfloat16), torch.float32]


def test_auto_resolution(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_mod, "cpu_bf16_is_fast", lambda: True)
    assert train_mod.resolve_precision("auto", cpu, "cyclegan") == "bf16"
    monkeypatch.setattr(train_mod, "AUTO_KEEPS_FP32", frozenset({"cyclegan"}))
    assert train_mod.resolve_precision("auto", cpu, "cyclegan") == "fp32"
    assert train_mod.resolve_precision("bf16", cpu, "cyclegan") == "bf16"  # explicit wins
    monkeypatch.setattr(device_mod, "cpu_bf16_is_fast", lambda: False)
    assert train_mod.resolve_precision("auto", cpu, "dicyc") == "fp32"
    assert train_mod.resolve_precision("fp32", cpu) == "fp32"


def test_precision_option_is_checked_and_frozen_on_resume(toy_pair, tmp_path):
    assert train_mod.DEFAULT_CONFIG["precision"] == "auto"
    with pytest.raises(DicycError, match="precision must be one of"):
        train_mod.resolve_config(None, {"precision": "fp8"})
    mr, ct = toy_pair
    out = tmp_path / "run"
    config, a, b = train_mod.prepare_run(out, "cyclegan", mr, ct, overrides={
        "ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32, "iterations": 1, "precision": "fp32",
        "cache_dir": str(tmp_path / "cache")})
    train_mod.train(a, b, out, config, device="cpu")
    with pytest.raises(DicycError, match="precision cannot change"):
        train_mod.prepare_run(out, None, None, None, overrides={"precision": "bf16"}, resume=True)
