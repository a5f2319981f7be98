"""Synthesis: exact output geometry, intensity units, batching, views, precision guard, file I/O.

Tiny generators (ngf 4, one residual block) saved with the real model-file code keep this fast.
"""

import math
import pickle
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dicyc.device as device_mod  # noqa: E402
import dicyc.synthesize as syn  # noqa: E402
from dicyc.device import NO_CUDA_MESSAGE, NO_MPS_MESSAGE, fast_low_precision, mps_available, resolve_device  # noqa: E402
from dicyc.errors import DicycError  # noqa: E402
from dicyc.modelfile import load_model, save_model  # noqa: E402
from dicyc.nets import build_generator  # noqa: E402
from dicyc.volume import Volume, read_volume, write_volume  # noqa: E402

ARCH = {"generator": "resnet", "ngf": 4, "n_blocks": 1, "upsample": "transpose", "input_nc": 1, "output_nc": 1}
MR_NORM = {"kind": "mr-percentile", "low": 10.0, "high": 300.0, "percentiles": [0.5, 99.5]}
CT_NORM = {"kind": "ct-window", "low": -1024.0, "high": 2000.0}


def make_card(a=("MR", "MR", MR_NORM), b=("CT", "CT", CT_NORM)):
    return {
        "method": "cyclegan",
        "architecture": dict(ARCH),
        "domains": {
            "a": {"name": a[0], "modality": a[1], "normalization": dict(a[2])},
            "b": {"name": b[0], "modality": b[1], "normalization": dict(b[2])},
        },
        "spacing": [2.0, 2.0],
        # about the test phantoms' slices on the 2 mm grid, as a training crop of them would be: an
        # untrained generator on a frame of mostly background amplifies float rounding through
        # instance norm's near-zero variance, which the precision checks below would then measure
        "slice_size": 24,
        "training": {"iterations_done": 0, "seed": 0},
    }


def make_generators(names=("G_AB", "G_BA")):
    torch.manual_seed(0)
    return {name: build_generator(ARCH) for name in names}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "mr2ct.safetensors"
    save_model(path, make_generators(), make_card())
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return load_model(model_path)


def oblique_direction():
    a, b = math.radians(20), math.radians(-12)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


def mr_phantom(shape=(7, 45, 37), spacing=(0.9, 1.1, 3.0), seed=1):
    """An MR-like ellipsoid (two tissues + noise) on an oblique, anisotropic grid of odd size."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij"
    )
    r = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 1.5) ** 2
    arr = np.where(r < 1, 120.0, 0.0) + np.where(r < 0.3, 100.0, 0.0) + rng.normal(0, 3, shape)
    arr = np.clip(arr, 0, None).astype(np.float32)
    return Volume(arr, spacing, (12.5, -40.25, 7.0), oblique_direction())


def ct_phantom(shape=(6, 40, 34), spacing=(0.8, 0.8, 2.5)):
    nz, ny, nx = shape
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij"
    )
    r = (x / 0.8) ** 2 + (y / 0.7) ** 2
    arr = np.where(r < 1, 40.0, -1000.0) + np.where(r < 0.2, 900.0, 0.0)
    return Volume(arr.astype(np.int16), spacing, (-3.0, 4.0, 5.0), oblique_direction())


def assert_same_geometry(out, ref):
    assert out.shape == ref.shape
    assert out.spacing == ref.spacing
    assert out.origin == ref.origin
    assert np.array_equal(out.direction, ref.direction)


# ===================================================================== device
def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_resolve_device_cuda_without_gpu(spec):
    with pytest.raises(DicycError) as err:
        resolve_device(spec)
    assert str(err.value) == NO_CUDA_MESSAGE
    assert NO_CUDA_MESSAGE == (
        "CUDA was requested (--device cuda) but this machine has no usable CUDA GPU; use --device cpu or auto."
    )


def test_resolve_device_mps(monkeypatch):
    """Apple's MPS by name; where torch has none, one sentence."""
    if mps_available():
        assert resolve_device("mps").type == "mps"
    else:
        with pytest.raises(DicycError) as err:
            resolve_device("MPS")
        assert str(err.value) == NO_MPS_MESSAGE
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert mps_available() and resolve_device("mps") == torch.device("mps")
    assert resolve_device("auto").type != "mps"  # auto never picks MPS on its own


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "cpu0"])
def test_resolve_device_bad_spec(spec):
    with pytest.raises(DicycError, match="unknown device"):
        resolve_device(spec)


def test_resolve_device_bad_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DicycError, match="CUDA device 2 .* 2 CUDA GPUs"):
        resolve_device("cuda:2")


def test_fast_low_precision_cpu_needs_native_and_measurably_faster_bf16(monkeypatch):
    monkeypatch.delenv(device_mod.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(device_mod, "cpu_bf16_speedup", lambda: 2.2)
    assert fast_low_precision("cpu") is None  # emulated bf16 is never used
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert fast_low_precision(torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(device_mod, "cpu_bf16_speedup", lambda: 0.55)  # native, yet slower than fp32
    assert fast_low_precision("cpu") is None
    monkeypatch.setenv(device_mod.CPU_BF16_ENV, "1")
    assert fast_low_precision("cpu") is torch.bfloat16
    monkeypatch.setenv(device_mod.CPU_BF16_ENV, "0")
    monkeypatch.setattr(device_mod, "cpu_bf16_speedup", lambda: 2.2)
    assert fast_low_precision("cpu") is None


def test_probe_cache_is_per_machine_and_survives_the_process(monkeypatch, tmp_path):
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path))
    monkeypatch.delenv(device_mod.PROBE_CACHE_ENV, raising=False)
    monkeypatch.setattr(device_mod, "_PROBES", {})
    calls = []
    assert device_mod.probe_cached("x", lambda: calls.append(1) or 1.5) == 1.5
    assert device_mod.probe_cached("x", lambda: calls.append(1) or 9.0) == 1.5 and len(calls) == 1
    monkeypatch.setattr(device_mod, "_PROBES", {})  # a new process reads the file
    assert device_mod.probe_lookup("x") == 1.5
    monkeypatch.setattr(device_mod, "machine_key", lambda: "another machine")
    assert device_mod.probe_lookup("x") is None


def test_cpu_matmul_speedup_is_a_positive_ratio():
    assert device_mod.cpu_matmul_speedup("bf16", n=64, repeats=1) > 0


# ===================================================================== geometry and units
def test_output_on_exact_input_grid_mr_to_ct(model):
    vol = mr_phantom()
    before = vol.array.copy()
    out, info = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32")
    assert_same_geometry(out, vol)
    assert out.array.dtype == np.float32
    assert np.isfinite(out.array).all()
    assert out.array.min() >= -1024.0 and out.array.max() <= 2000.0
    assert out.array[0, 0, 0] == pytest.approx(-1024.0)  # air stays air
    assert out.array.std() > 1.0  # the generator did something inside the body
    assert np.array_equal(vol.array, before)  # the input is not modified
    assert info["precision"] == "fp32" and info["psnr_low_vs_fp32"] is None
    assert info["device"] == "cpu" and info["slices"] == info["model_grid"][0]
    # in-plane resampled to 2 mm, z kept
    assert info["model_grid"] == [7, round(45 * 1.1 / 2), round(37 * 0.9 / 2)]


def test_ct_to_mr_in_mr_units(model):
    vol = ct_phantom()
    out = syn.synthesize_volume(model, vol, direction="b2a", device="cpu", precision="fp32")
    assert_same_geometry(out, vol)
    assert np.isfinite(out.array).all()
    assert out.array.min() >= 10.0 - 1e-3 and out.array.max() <= 300.0 + 1e-3


def test_no_resampling_when_spacing_matches(model):
    vol = mr_phantom(shape=(5, 21, 19), spacing=(2.0, 2.01, 4.0))  # within the 1 % tolerance
    out, info = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32")
    assert info["model_grid"] == [5, 21, 19]
    assert_same_geometry(out, vol)


def test_mr_normalisation_is_per_volume(model):
    """MR has no unit: a scanner gain change must not change the synthetic CT."""
    vol = mr_phantom()
    scaled = vol.with_array(vol.array * 3.7)
    a = syn.synthesize_volume(model, vol, device="cpu", precision="fp32").array
    b = syn.synthesize_volume(model, scaled, device="cpu", precision="fp32").array
    assert np.abs(a - b).max() < 0.5  # HU


def test_batch_size_does_not_change_result(model):
    vol = mr_phantom()
    a = syn.synthesize_volume(model, vol, device="cpu", precision="fp32", batch=1).array
    b = syn.synthesize_volume(model, vol, device="cpu", precision="fp32", batch=5).array
    # the HU scale is 1512x the network's [-1, 1]: 1e-5 there is ~0.015 HU here
    assert np.abs(a - b).max() / 1512.0 < 1e-5


def test_views_average_and_progress(model):
    vol = mr_phantom()
    calls = []
    out, info = syn.synthesize_volume_with_info(
        model, vol, device="cpu", precision="fp32", batch=4, views=("axial", "coronal", "sagittal"),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert_same_geometry(out, vol)
    assert np.isfinite(out.array).all()
    assert out.array.min() >= -1024.0 and out.array.max() <= 2000.0
    nz, ny, nx = info["model_grid"]
    assert info["slices"] == nz + ny + nx
    assert nz == round(7 * 3.0 / 2.0)  # other views use an isotropic model grid
    assert calls[-1] == (info["slices"], info["slices"])
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    axial = syn.synthesize_volume(model, vol, device="cpu", precision="fp32")
    assert not np.allclose(axial.array, out.array)


def test_tiny_volume_is_padded(model):
    vol = mr_phantom(shape=(2, 5, 6), spacing=(2.0, 2.0, 2.0))
    out = syn.synthesize_volume(model, vol, device="cpu", precision="fp32", views=("axial", "coronal"))
    assert_same_geometry(out, vol)
    assert np.isfinite(out.array).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"direction": "x2y"}, "unknown direction"),
        ({"precision": "int8"}, "unknown precision"),
        ({"batch": 0}, "batch size"),
        ({"views": ("axial", "axial")}, "repeat"),
        ({"views": ("oblique",)}, "unknown view"),
        ({"expect_target": "T2"}, "synthesises CT from MR"),
    ],
)
def test_bad_arguments(model, kwargs, match):
    with pytest.raises(DicycError, match=match):
        syn.synthesize_volume(model, mr_phantom(), device="cpu", **kwargs)


def test_constant_input_is_refused(model):
    vol = Volume(np.full((3, 10, 10), 5.0, np.float32))
    with pytest.raises(DicycError, match="constant"):
        syn.synthesize_volume(model, vol, device="cpu")


def _framed_model(tmp_path, side):
    card = make_card()
    card["slice_size"] = side
    path = tmp_path / f"frame{side}.safetensors"
    save_model(path, make_generators(), card)
    return load_model(path)


def _tight_ct(ny=20, nx=24, rim=0):
    """A CT whose body fills its field of view (bone ring and soft tissue to the edge), with an
    optional rim of background (the card's window floor) around it; identity grid at the card's
    spacing, so nothing is resampled."""
    rng = np.random.default_rng(3)
    y, x = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    body = np.where(x**2 + y**2 < 0.5, 40.0, 300.0) + rng.normal(0, 20, (3, ny, nx))
    arr = np.pad(body, ((0, 0), (rim, rim), (rim, rim)), constant_values=CT_NORM["low"])
    return Volume(arr.astype(np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))


@pytest.mark.filterwarnings("ignore:the model expects CT")
def test_small_slices_are_seen_in_the_training_frame(tmp_path):
    """A slice smaller than the card's slice_size is the generator's input padded with
    background (-1) to that side, as training's crop pads it, and not a tight frame: with
    instance normalisation the output depends on how much background the slice holds."""
    model = _framed_model(tmp_path, 32)
    vol = _tight_ct()
    out = syn.synthesize_volume(model, vol, direction="b2a", device="cpu", precision="fp32", mask_background=False)
    ct, mr = (syn.target_normalization(model.card["domains"][k]) for k in ("b", "a"))
    x = np.clip(ct.forward(vol.array), -1, 1).astype(np.float32)
    framed = np.full((3, 32, 32), -1.0, np.float32)
    framed[:, 6:26, 4:28] = x
    with torch.no_grad():
        y = model.generator("b2a")(torch.from_numpy(framed)[:, None])[:, 0].numpy()
    expected = mr.inverse(np.clip(y[:, 6:26, 4:28], -1, 1))
    np.testing.assert_allclose(out.array, expected, atol=1e-3 * (mr.high - mr.low))
    with torch.no_grad():  # the tight frame the old padding gave is measurably another result
        tight = model.generator("b2a")(torch.from_numpy(x)[:, None])[:, 0].numpy()
    assert np.abs(mr.inverse(np.clip(tight, -1, 1)) - expected).mean() > 10 * 1e-3 * (mr.high - mr.low)


@pytest.mark.filterwarnings("ignore:the model expects CT")
def test_an_air_rim_around_the_scan_does_not_change_its_synthesis(tmp_path):
    """The same anatomy scanned with a tight or a wider field of view gives the same synthesis,
    as long as both fit the training frame."""
    model = _framed_model(tmp_path, 32)
    kw = dict(direction="b2a", device="cpu", precision="fp32", mask_background=False)
    tight = syn.synthesize_volume(model, _tight_ct(), **kw).array
    wide = syn.synthesize_volume(model, _tight_ct(rim=3), **kw).array
    np.testing.assert_allclose(wide[:, 3:-3, 3:-3], tight, atol=1e-3 * (MR_NORM["high"] - MR_NORM["low"]))


def test_the_frame_comes_from_the_card(tmp_path):
    assert syn.model_frame(_framed_model(tmp_path, 48)) == 48
    assert syn.model_frame(type("M", (), {"card": {}})()) == syn._MIN_SIDE
    assert syn._pad_amounts(20, 32) == (6, 6) and syn._pad_amounts(41, 32) == (1, 2)
    padded, corner = syn._pad_batch(np.zeros((1, 40, 44), np.float32), 32)
    assert padded.shape == (1, 40, 44) and corner == (0, 0)


# ===================================================================== precision
def test_auto_precision_on_this_cpu(model):
    _, info = syn.synthesize_volume_with_info(model, mr_phantom(), device="cpu", precision="auto")
    if fast_low_precision(torch.device("cpu")) is None:
        assert info["precision"] == "fp32" and info["psnr_low_vs_fp32"] is None
    else:
        psnr = info["psnr_low_vs_fp32"]
        assert psnr is not None
        assert info["precision"] == ("bf16" if psnr >= syn.PSNR_THRESHOLD_DB else "fp32")


def _noisy_low_precision(monkeypatch, sigma):
    real = syn._forward

    def forward(generator, batch, dtype, layout="cl"):
        y = real(generator, batch, None, layout)
        if dtype is None:
            return y
        g = torch.Generator().manual_seed(0)
        return y + sigma * torch.randn(y.shape, generator=g)

    monkeypatch.setattr(device_mod, "fast_low_precision", lambda device: torch.bfloat16)
    monkeypatch.setattr(syn, "_forward", forward)


def test_auto_falls_back_to_fp32_when_low_precision_is_inaccurate(model, monkeypatch):
    vol = mr_phantom()
    reference = syn.synthesize_volume(model, vol, device="cpu", precision="fp32").array
    _noisy_low_precision(monkeypatch, sigma=0.2)
    out, info = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="auto", batch=3)
    assert info["precision"] == "fp32"
    assert info["psnr_low_vs_fp32"] < 40.0
    assert np.abs(out.array - reference).max() / 1512.0 < 1e-5  # fp32 everywhere: the fp32 result


def test_auto_keeps_low_precision_when_accurate(model, monkeypatch):
    _noisy_low_precision(monkeypatch, sigma=1e-4)
    _, info = syn.synthesize_volume_with_info(model, mr_phantom(), device="cpu", precision="auto")
    assert info["precision"] == "bf16"
    assert info["psnr_low_vs_fp32"] >= 40.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_explicit_low_precision_on_cpu(model, precision):
    vol = mr_phantom()
    ref = syn.synthesize_volume(model, vol, device="cpu", precision="fp32").array
    out, info = syn.synthesize_volume_with_info(model, vol, device="cpu", precision=precision)
    assert info["precision"] == precision
    assert_same_geometry(out, vol)
    mse = float(np.mean((out.array.astype(np.float64) - ref) ** 2))
    psnr = 10 * math.log10(3024.0**2 / max(mse, 1e-12))
    assert psnr > 30.0


# ===================================================================== the CPU float32 path
def _fresh_probe_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path))
    monkeypatch.delenv(syn.PATH_ENV, raising=False)
    monkeypatch.delenv(device_mod.PROBE_CACHE_ENV, raising=False)
    monkeypatch.setattr(device_mod, "_PROBES", {})


def _as_keys(times):
    return {(k.split(":")[0], int(k.split(":")[1])): v for k, v in times.items()}


def test_fp32_path_probe_times_every_candidate_then_caches_its_choice(model, monkeypatch, tmp_path):
    _fresh_probe_cache(monkeypatch, tmp_path)
    monkeypatch.setattr(syn, "PROBE_STEADY_RATIO", 1e9)  # tiny models time unsteadily; steadiness is tested below
    vol = mr_phantom(shape=(24, 40, 36))  # more slices than the path probe runs
    out, info = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32", batch=3)
    path = info["path"]
    assert path["source"] == "probe" and path["steady"] is True
    times = path["seconds_per_slice"]
    assert set(times) == {"cl:3", "cl:1", "nchw:1"} and all(t > 0 for t in times.values())
    assert all(len(r) == syn.PROBE_ROUNDS and times[k] == min(r) for k, r in path["rounds"].items())
    assert (path["layout"], path["batch"]) == syn.choose_path(_as_keys(times))
    assert info["batch"] == path["batch"]
    again, info2 = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32", batch=3)
    assert info2["path"]["source"] == "cache" and info2["path"]["layout"] == path["layout"]
    assert np.abs(again.array - out.array).max() < 0.05  # HU: every path computes the same, to rounding


def test_a_batch_one_winner_is_found_in_the_cache_next_time(model, monkeypatch, tmp_path):
    """The entry is stored under the batch the caller asked for, which is what the next run looks up,
    also when the probe chooses batch 1 (it used to be stored under batch 1 and never found)."""
    _fresh_probe_cache(monkeypatch, tmp_path)
    monkeypatch.setattr(syn, "PROBE_STEADY_RATIO", 1e9)
    monkeypatch.setattr(syn, "choose_path", lambda times: ("nchw", 1))
    vol = mr_phantom(shape=(24, 40, 36))
    _, first = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32", batch=3)
    _, again = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32", batch=3)
    assert first["path"]["source"] == "probe" and (first["path"]["layout"], first["batch"]) == ("nchw", 1)
    assert again["path"]["source"] == "cache" and (again["path"]["layout"], again["batch"]) == ("nchw", 1)


def test_an_unsteady_path_probe_decides_its_own_run_only(model, monkeypatch, tmp_path):
    _fresh_probe_cache(monkeypatch, tmp_path)
    monkeypatch.setattr(syn, "PROBE_STEADY_RATIO", 1.0 - 1e-9)  # no two timings can agree this closely
    vol = mr_phantom(shape=(24, 40, 36))  # more slices than the path probe runs
    _, info = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32", batch=3)
    assert info["path"]["source"] == "probe" and info["path"]["steady"] is False
    _, info2 = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32", batch=3)
    assert info2["path"]["source"] == "probe"  # nothing was cached: the next run probes afresh


@pytest.mark.parametrize("times,chosen", [
    ({("cl", 8): 0.50, ("cl", 1): 0.60, ("nchw", 1): 1.00}, ("cl", 8)),   # clearly faster: taken
    ({("cl", 8): 0.97, ("cl", 1): 0.99, ("nchw", 1): 1.00}, ("nchw", 1)),  # within the margin: the reference
    ({("cl", 8): 1.20, ("cl", 1): 1.10, ("nchw", 1): 1.00}, ("nchw", 1)),  # the reference is fastest
    ({("cl", 8): 0.90, ("cl", 1): 0.80}, ("cl", 1)),                        # a cut-short probe without it
])
def test_choose_path_keeps_the_reference_unless_another_is_clearly_faster(times, chosen):
    assert syn.choose_path(times) == chosen


def test_probe_is_steady_needs_every_candidates_rounds_to_agree():
    assert syn.probe_is_steady({("cl", 8): [1.0, 1.2], ("nchw", 1): [2.0, 2.1]})
    assert not syn.probe_is_steady({("cl", 8): [1.0, 1.2], ("nchw", 1): [2.0, 3.0]})
    assert not syn.probe_is_steady({("cl", 8): [1.0]})  # one round cannot show it


@pytest.mark.parametrize("override,layout,batch", [("cl:2", "cl", 2), ("nchw:1", "nchw", 1), ("cl:64", "cl", 3)])
def test_fp32_path_override(model, monkeypatch, override, layout, batch):
    monkeypatch.setenv(syn.PATH_ENV, override)
    _, info = syn.synthesize_volume_with_info(model, mr_phantom(), device="cpu", precision="fp32", batch=3)
    assert info["path"] == {"layout": layout, "batch": batch, "source": syn.PATH_ENV, "seconds_per_slice": None,
                            "rounds": None, "steady": None}


def test_fp32_paths_agree(model, monkeypatch):
    vol = mr_phantom()
    results = []
    for override in ("cl:4", "nchw:1"):
        monkeypatch.setenv(syn.PATH_ENV, override)
        results.append(syn.synthesize_volume(model, vol, device="cpu", precision="fp32", batch=4).array)
    assert np.abs(results[0] - results[1]).max() < 0.05


def test_bad_path_override_is_one_sentence(model, monkeypatch):
    monkeypatch.setenv(syn.PATH_ENV, "fast")
    with pytest.raises(DicycError, match="DICYC_SYNTH_PATH"):
        syn.synthesize_volume(model, mr_phantom(), device="cpu", precision="fp32")


# ===================================================================== memory
def test_memory_stays_bounded(model):
    """numpy allocations stay a small multiple of one float32 copy of the volume."""
    vol = mr_phantom(shape=(24, 128, 128), spacing=(2.0, 2.0, 2.0))
    one_copy = vol.array.size * 4
    syn.synthesize_volume(model, vol, device="cpu", precision="fp32", batch=8)  # warm imports
    tracemalloc.start()
    try:
        syn.synthesize_volume(model, vol, device="cpu", precision="fp32", batch=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5.0 * one_copy, peak / one_copy


# ===================================================================== files
def _mr_file(tmp_path, name="mr.nrrd"):
    path = tmp_path / name
    write_volume(mr_phantom(), path)
    return path


def test_synthesize_file_writes_on_input_grid(model_path, tmp_path):
    src = _mr_file(tmp_path)
    dst = tmp_path / "out" / "sct.nii.gz"
    done = []
    info = syn.synthesize_file(model_path, src, dst, device="cpu", precision="fp32", progress=lambda d, t: done.append(d))
    assert dst.exists() and info["output"] == str(dst)
    assert done and info["precision"] == "fp32"
    assert [p.name for p in dst.parent.iterdir()] == ["sct.nii.gz"]  # no temporary left behind
    out = read_volume(dst)
    ref = read_volume(src)
    assert out.size == ref.size
    assert np.allclose(out.spacing, ref.spacing, atol=1e-5)
    assert np.allclose(out.origin, ref.origin, atol=1e-4)
    assert np.allclose(out.direction, ref.direction, atol=1e-5)
    assert out.array.min() >= -1024.5 and out.array.max() <= 2000.5


def test_synthesize_file_refuses_pickle_model(tmp_path):
    fake = tmp_path / "evil.safetensors"
    fake.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    dst = tmp_path / "sct.nii.gz"
    with pytest.raises(DicycError, match="evil.safetensors.*pickle"):
        syn.synthesize_file(fake, _mr_file(tmp_path), dst, device="cpu")
    assert not dst.exists()


def test_synthesize_file_refuses_2d_input(model_path, tmp_path):
    import SimpleITK as sitk

    flat = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((20, 30)).astype(np.float32)), str(flat))
    dst = tmp_path / "sct.nii.gz"
    with pytest.raises(DicycError, match="slice.nrrd.*2-D"):
        syn.synthesize_file(model_path, flat, dst, device="cpu")
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slice.nrrd"]


def test_synthesize_file_missing_generator(tmp_path):
    only_ab = tmp_path / "only_ab.safetensors"
    save_model(only_ab, make_generators(("G_AB",)), make_card())
    dst = tmp_path / "smr.nii.gz"
    with pytest.raises(DicycError, match="only_ab.safetensors.*b2a"):
        syn.synthesize_file(only_ab, _mr_file(tmp_path), dst, direction="b2a", device="cpu")
    assert not dst.exists()


def test_synthesize_file_expect_target(tmp_path):
    pd_t2 = tmp_path / "pd2t2.safetensors"
    mr = {"kind": "mr-percentile", "low": 5.0, "high": 200.0, "percentiles": [0.5, 99.5]}
    save_model(pd_t2, make_generators(), make_card(a=("PD", "MR", mr), b=("T2", "MR", mr)))
    dst = tmp_path / "sct.nii.gz"
    with pytest.raises(DicycError) as err:
        syn.synthesize_file(pd_t2, _mr_file(tmp_path), dst, device="cpu", expect_target="CT")
    assert "pd2t2.safetensors synthesises T2 from PD" in str(err.value) and "not CT" in str(err.value)
    assert not dst.exists()
    info = syn.synthesize_file(pd_t2, _mr_file(tmp_path), dst, device="cpu", precision="fp32", expect_target="T2")
    assert dst.exists() and info["precision"] == "fp32"


def test_synthesize_file_errors_name_files(model_path, tmp_path):
    src = _mr_file(tmp_path)
    with pytest.raises(DicycError, match="missing.nii.gz"):
        syn.synthesize_file(model_path, tmp_path / "missing.nii.gz", tmp_path / "o.nii.gz", device="cpu")
    with pytest.raises(DicycError, match="out.xyz"):
        syn.synthesize_file(model_path, src, tmp_path / "out.xyz", device="cpu")
    with pytest.raises(DicycError, match="nomodel.safetensors"):
        syn.synthesize_file(tmp_path / "nomodel.safetensors", src, tmp_path / "o.nii.gz", device="cpu")
    assert not (tmp_path / "o.nii.gz").exists()
    if not torch.cuda.is_available():
        with pytest.raises(DicycError, match="no usable CUDA GPU"):
            syn.synthesize_file(model_path, src, tmp_path / "o.nii.gz", device="cuda")


@pytest.mark.parametrize("dst_spacing", [(2.0, 2.0, 3.0), (2.0, 1.5, 1.25), (0.7, 0.7, 0.9)])
def test_slab_resampling_equals_whole_volume(dst_spacing):
    """Resampling slab by slab (bounded memory) gives exactly the one-shot SimpleITK result."""
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    src = Volume(rng.normal(size=(9, 23, 19)).astype(np.int16) * 100, (0.9, 1.1, 3.0), (5.0, -2.0, 1.0),
                 oblique_direction())
    spacing, size, origin = syn._model_grid(src, dst_spacing[:2], isotropic=False)
    spacing = (spacing[0], spacing[1], dst_spacing[2])
    size = (size[0], size[1], int(round(9 * 3.0 / dst_spacing[2])) + 2)
    # reach past both ends in z; the small in-plane shift avoids exact ties of the nearest extrapolation
    origin = tuple(np.array(origin) + src.direction @ np.array([0.013, 0.029, -2.2]))
    whole = sitk.Resample(
        sitk.Cast(src.to_sitk(), sitk.sitkFloat32), list(size), sitk.Transform(), sitk.sitkLinear, origin, spacing,
        tuple(src.direction.ravel()), -7.0, sitk.sitkFloat32, True,
    )
    expected = sitk.GetArrayFromImage(whole)
    got = syn.resample_slabs(src.array, src.spacing, src.origin, src.direction, size[::-1], spacing, origin, -7.0,
                             slab_voxels=1)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_sagittal_acquisition_is_synthesised_in_axial_slices(model):
    """A sagittally stored input gives the same synthesis as the same anatomy stored axially."""
    from dicyc.preprocess import to_canonical
    from dicyc.synthesize import synthesize_volume

    axial = Volume(mr_phantom(shape=(6, 32, 28)).array, (2.0, 2.0, 2.0), (0, 0, 0))
    # the same voxels stored with i along S, j along L, k along P (a sagittal acquisition)
    arr = np.ascontiguousarray(np.transpose(axial.array, (1, 2, 0)))  # (P, L, S) as (z, y, x)
    d = np.zeros((3, 3))
    d[2, 0] = 1.0  # i -> S
    d[0, 1] = 1.0  # j -> L
    d[1, 2] = 1.0  # k -> P
    sagittal = Volume(arr, (2.0, 2.0, 2.0), (0, 0, 0), d)
    assert np.array_equal(to_canonical(sagittal)[0].array, axial.array)
    out_ax = synthesize_volume(model, axial, precision="fp32")
    out_sag = synthesize_volume(model, sagittal, precision="fp32")
    assert out_sag.same_grid(sagittal)
    np.testing.assert_allclose(to_canonical(out_sag)[0].array, out_ax.array, atol=1e-4)


# ===================================================================== 2.5-D context
class _SliceFunction(torch.nn.Module):
    """A generator computing ``fn(x)`` on a (B, K, H, W) batch: with an elementwise ``fn``, a per-slice model."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _StandInModel:
    """What synthesis reads of a loaded model file: a card (CT to CT) and the generator of each direction."""

    def __init__(self, fn, context, with_key=True):
        self.card = make_card(a=("CT", "CT", CT_NORM))
        self.card["architecture"] = dict(ARCH, input_nc=context, output_nc=context)
        if with_key:
            self.card["context_slices"] = context
        self.path = f"stand-in-{context}"
        self.module = _SliceFunction(fn)

    def generator(self, direction):
        return self.module


def _ct_stack(nz=11, ny=36, nx=32, seed=4):
    """CT-like values that differ from slice to slice and pixel to pixel, on the model's in-plane spacing."""
    rng = np.random.default_rng(seed)
    arr = rng.uniform(-800.0, 1700.0, (nz, ny, nx)).astype(np.float32)
    return Volume(arr, (2.0, 2.0, 2.5))


def _synth(model, vol, **kw):
    return syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32", mask_background=False, **kw)


def test_overlap_average_of_a_per_slice_model_is_exactly_its_per_slice_prediction(monkeypatch, tmp_path):
    """A model that maps every slice on its own gives, averaged over the overlapping slabs, exactly what
    the 2-D path gives: each prediction lands on its own slice, ends included, whatever the batching."""
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path))  # the path probe's choice stays in this test
    vol = _ct_stack()
    fn = lambda x: 0.5 * x + 0.25  # noqa: E731
    flat, info1 = _synth(_StandInModel(fn, 1), vol)
    for context, batch in ((3, 4), (3, 1), (5, 3)):
        out, info = _synth(_StandInModel(fn, context), vol, batch=batch)
        assert info["context_slices"] == context and info["slices"] == vol.shape[0]
        assert np.array_equal(out.array, flat.array), (context, batch)
    assert info1["context_slices"] == 1
    # a per-slice model that knows nothing of its neighbours: the identity, exactly
    same, _ = _synth(_StandInModel(lambda x: x, 3), vol, batch=4)
    ref, _ = _synth(_StandInModel(lambda x: x, 1), vol)
    assert np.array_equal(same.array, ref.array)


@pytest.mark.parametrize("weighting,end", [("triangular", 1.0 / 3.0), ("uniform", 1.0 / 2.0)])
def test_overlap_weights_and_ends(weighting, end, monkeypatch):
    """Slab position j predicts its slice shifted by (j - 1) * 0.01: symmetric weights cancel that inside
    the volume, and the end slices, predicted by only two slabs, keep the weighted share of one shift."""
    monkeypatch.setenv(syn.PATH_ENV, "nchw:4")
    vol = _ct_stack()

    def shifted(x):
        k = x.shape[1]
        return x + 0.01 * (torch.arange(k, dtype=x.dtype) - k // 2).view(1, k, 1, 1)

    flat, _ = _synth(_StandInModel(lambda x: x, 1), vol)
    out, _ = _synth(_StandInModel(shifted, 3), vol, context_weighting=weighting)
    hu = 0.01 * (2000.0 + 1024.0) / 2.0  # 0.01 of the network's range in HU
    diff = (out.array.astype(np.float64) - flat.array) / hu
    assert np.abs(diff[1:-1]).max() < 1e-3
    np.testing.assert_allclose(diff[0], -end, atol=1e-3)
    np.testing.assert_allclose(diff[-1], end, atol=1e-3)
    with pytest.raises(DicycError, match="context weighting"):
        _synth(_StandInModel(shifted, 3), vol, context_weighting="gaussian")


def test_2p5d_model_synthesises_the_axial_view_only():
    with pytest.raises(DicycError, match="2.5-D model .*axial view only"):
        _synth(_StandInModel(lambda x: x, 3), _ct_stack(), views=("axial", "coronal"))


def test_old_model_files_synthesise_as_before(model, tmp_path, monkeypatch):
    """A card without context_slices is a 2-D model; saying context_slices 1 changes nothing, bit for bit,
    and the result is the generator run slice by slice (with --views still averaging planes)."""
    monkeypatch.setenv(syn.PATH_ENV, "cl:4")  # one path for both (the probe may choose differently per run)
    card = make_card()
    assert "context_slices" not in card and "context_slices" not in model.card
    card["context_slices"] = 1
    explicit = load_model(save_model(tmp_path / "k1.safetensors", make_generators(), card))
    vol = mr_phantom()
    for views in (("axial",), ("axial", "coronal", "sagittal")):
        old, info = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32", batch=4, views=views)
        new = syn.synthesize_volume(explicit, vol, device="cpu", precision="fp32", batch=4, views=views)
        assert info["context_slices"] == 1 and np.array_equal(old.array, new.array)
    # the 2-D path by hand, on the model's grid: normalise, the module as trained on each slice, clip, to HU
    monkeypatch.setenv(syn.PATH_ENV, "nchw:1")
    vol = Volume(mr_phantom(shape=(5, 40, 36), spacing=(2.0, 2.0, 3.0)).array, (2.0, 2.0, 3.0))
    out = syn.synthesize_volume(model, vol, device="cpu", precision="fp32", mask_background=False)
    norm = syn.source_normalization(model.card["domains"]["a"], vol.array, syn.body_mask(vol))
    x = syn._normalize_inplace(vol.array.astype(np.float32), norm)
    with torch.no_grad():
        y = np.stack([model.generator("a2b")(torch.from_numpy(s)[None, None])[0, 0].numpy() for s in x])
    want = syn._denormalize_inplace(np.clip(y, -1, 1), syn.target_normalization(model.card["domains"]["b"]))
    assert np.array_equal(out.array, want)


def test_2p5d_inference_holds_a_few_slabs_not_a_volume(tmp_path, monkeypatch):
    """The slab average writes in place: while the generator runs, a 3-slice model holds a few batches
    of slices besides the volume, as a 2-D one does, never a second model-space volume."""
    card = make_card()
    card["architecture"] = dict(ARCH, input_nc=3, output_nc=3)
    card["context_slices"] = 3
    torch.manual_seed(0)
    three = load_model(save_model(tmp_path / "k3.safetensors",
                                  {n: build_generator(card["architecture"]) for n in ("G_AB", "G_BA")}, card))
    one = load_model(save_model(tmp_path / "k1.safetensors", make_generators(), make_card()))
    vol = mr_phantom(shape=(96, 64, 64), spacing=(2.0, 2.0, 2.0))
    monkeypatch.setenv(syn.PATH_ENV, "cl:4")
    peaks, run_view = {}, syn._Runner.run_view

    def measured(runner, x, out, axis, accumulate):  # numpy allocations while the generator runs
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        run_view(runner, x, out, axis, accumulate)
        peaks[runner.context] = tracemalloc.get_traced_memory()[1] - before

    monkeypatch.setattr(syn._Runner, "run_view", measured)
    tracemalloc.start()
    try:
        for m in (one, three):
            out = syn.synthesize_volume(m, vol, device="cpu", precision="fp32", batch=4)
            assert out.same_grid(vol) and np.isfinite(out.array).all()
    finally:
        tracemalloc.stop()
    slice_bytes = 64 * 64 * 4
    assert peaks[3] < 48 * slice_bytes and peaks[1] < 48 * slice_bytes, {k: v / slice_bytes for k, v in peaks.items()}


def test_2p5d_averaging_lowers_slice_streaks(monkeypatch):
    """A stand-in for slice-wise inference: each slab's prediction is off by an amount that depends on its
    middle slice, as independent 2-D predictions are. Averaging the overlapping slabs lowers the streak index."""
    from dicyc.metrics import slice_streaks

    monkeypatch.setenv(syn.PATH_ENV, "nchw:8")
    nz, n = 32, 48
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    r = x ** 2 / 0.7 + y ** 2 / 0.6 + z ** 2 / 1.6
    arr = np.where(r < 1, 300.0 + 400.0 * np.cos(3 * x) * np.cos(2 * y) + 100.0 * z, -1000.0).astype(np.float32)
    vol = Volume(arr, (2.0, 2.0, 2.0))

    def off_by_slab(t):  # a pseudo-random offset per slab, from its middle slice, up to ±0.1 (150 HU)
        middle = t[:, t.shape[1] // 2].double().mean(dim=(1, 2))
        return t + (0.1 * torch.sin(997.0 * middle)).to(t.dtype).view(-1, 1, 1, 1)

    mask = arr > -500
    index = {k: slice_streaks(_synth(_StandInModel(off_by_slab, k), vol)[0], mask)["streak_index"] for k in (1, 3)}
    clean = slice_streaks(_synth(_StandInModel(lambda t: t, 1), vol)[0], mask)["streak_index"]
    assert index[1] > 1.5 * clean  # the stand-in streaks
    assert index[3] < 0.7 * index[1], (clean, index)


def test_blank_slices_become_background_even_unmasked(model):
    """Slices of one value throughout (the empty slab above a head) come back as the target's background,
    with or without background masking, while the generator's output elsewhere is kept unmasked."""
    phantom = mr_phantom(shape=(8, 40, 36), spacing=(2.0, 2.0, 3.0))
    arr = phantom.array.astype(np.float32).copy()
    arr[6:] = 0.0  # two blank slices above the body
    vol = Volume(arr, (2.0, 2.0, 3.0))
    low = syn.target_normalization(model.card["domains"]["b"]).low
    for masked in (False, True):
        out, info = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32",
                                                    mask_background=masked)
        assert info["blank_slices"] == 2
        assert np.all(out.array[6:] == np.float32(low)), masked
    # unmasked, the slices with signal keep what the generator made outside the body
    assert not np.all(out.array[:6] == np.float32(low))
    body = syn.body_mask(vol)
    unmasked, _ = syn.synthesize_volume_with_info(model, vol, device="cpu", precision="fp32", mask_background=False)
    assert np.any(unmasked.array[:6][~body[:6]] != np.float32(low))
    # a slice with any variation is left to the generator
    arr[7, 0, 0] = 1.0
    _, info = syn.synthesize_volume_with_info(model, Volume(arr, (2.0, 2.0, 3.0)), device="cpu", precision="fp32",
                                              mask_background=False)
    assert info["blank_slices"] == 1
