"""`dicyc train` → `dicyc synthesize` → `dicyc evaluate/compare` as a user runs them."""

import pickle

import numpy as np
import pytest

from dicyc.volume import read_volume

TINY = ["--ngf", "8", "--n-blocks", "1", "--ndf", "8", "--slice-size", "64", "--spacing", "4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CycleGAN trained by the CLI on the real head MR and CT."""
    import subprocess
    import sys

    from dicyc.samples import prepare

    paths = prepare(["head-mr", "head-ct"], log=lambda m: None)
    out = tmp_path_factory.mktemp("run")
    result = subprocess.run(
        [sys.executable, "-m", "dicyc", "train", "--method", "cyclegan", "--a", str(paths["head-mr"]), "--b",
         str(paths["head-ct"]), "--out", str(out), *TINY, "--iterations", "6", "--checkpoint-every", "3"],
        capture_output=True, encoding="utf-8", errors="replace", timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out / "model.safetensors", paths["head-mr"], paths["head-ct"]


def test_synthesize_keeps_the_input_grid_and_gives_hu(trained, tmp_path, run_dicyc):
    model, mr, ct = trained
    out = tmp_path / "synthetic_ct.nii.gz"
    r = run_dicyc("synthesize", "--model", model, "--input", mr, "--output", out, "--target", "CT")
    assert r.returncode == 0, r.stderr
    src, syn = read_volume(mr), read_volume(out)
    assert syn.shape == src.shape
    np.testing.assert_allclose(syn.spacing, src.spacing, atol=1e-5)
    np.testing.assert_allclose(syn.origin, src.origin, atol=1e-4)
    np.testing.assert_allclose(syn.direction, src.direction, atol=1e-6)
    assert np.isfinite(syn.array).all()
    assert syn.array.min() >= -1024.5 and syn.array.max() <= 2000.5  # HU window of the model
    assert syn.array.min() < -900  # air outside the head is air
    # and the comparison tools take it
    r = run_dicyc("evaluate", "--pred", out, "--ref", mr, "--json")
    assert r.returncode == 0, r.stderr
    r = run_dicyc("compare", "--a", out, "--b", mr, "--out", tmp_path / "report", "--error-units", "window")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report" / "compare.png").exists()


def test_pickle_model_is_refused_and_never_runs(tmp_path, run_dicyc, trained):
    _, mr, _ = trained
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps(Payload()))
    out = tmp_path / "out.nii.gz"
    r = run_dicyc("synthesize", "--model", evil, "--input", mr, "--output", out)
    assert r.returncode != 0
    assert "pickle" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_model_for_other_domains_and_bad_inputs(trained, tmp_path, run_dicyc):
    model, mr, ct = trained
    out = tmp_path / "o.nii.gz"
    r = run_dicyc("synthesize", "--model", model, "--input", mr, "--output", out, "--target", "T2")
    assert r.returncode == 1 and "not T2" in r.stderr and not out.exists()
    import SimpleITK as sitk

    flat = tmp_path / "flat.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.uint8).reshape(8, 8)), str(flat))
    r = run_dicyc("synthesize", "--model", model, "--input", flat, "--output", out)
    assert r.returncode == 1 and "2-D" in r.stderr and not out.exists()
    r = run_dicyc("synthesize", "--model", model, "--input", mr, "--output", out, "--device", "cuda",
                  env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 1 and "CUDA" in r.stderr and not out.exists()
    assert "Traceback" not in r.stderr
