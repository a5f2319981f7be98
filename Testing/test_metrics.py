"""Tests of dicyc.metrics against independent implementations (scikit-image, scipy, numpy)
and of the ``dicyc evaluate`` command end to end."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage, stats
from skimage.metrics import mean_squared_error, structural_similarity

from dicyc import metrics
from dicyc.errors import DicycError
from dicyc.metrics import compute_metrics, evaluate_files, evaluate_volumes, format_table, json_safe, paired_ttest
from dicyc.volume import Volume, write_volume

REPO = Path(__file__).resolve().parents[1]
KEYS = {"mse", "psnr", "ssim", "ssim_hg", "mae", "nmi", "n_voxels", "data_range"}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def skimage_ssim(a2d, b2d, data_range, full=False):
    return structural_similarity(
        a2d, b2d, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, full=full
    )


def smooth_volume(rng, shape=(3, 32, 40), scale=100.0, offset=0.0):
    """A volume with structure (smoothed noise plus a bright square), not just white noise."""
    v = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(0, 2, 2)) * scale + offset
    v[:, shape[1] // 4 : shape[1] // 2, shape[2] // 4 : shape[2] // 2] += 3 * scale
    return v


# intensities as in real volumes: up to 1e4 in magnitude, resolved to at most 1e-6 (values of
# 1e-300 next to 1 are covered separately by test_scale_invariance_and_absurd_ranges)
finite = st.one_of(
    st.just(0.0), st.floats(min_value=1e-6, max_value=1e4), st.floats(min_value=-1e4, max_value=-1e-6)
)
shapes = st.tuples(st.integers(1, 3), st.integers(1, 14), st.integers(1, 14))


@st.composite
def pairs(draw, min_plane=1):
    shape = draw(st.tuples(st.integers(1, 3), st.integers(min_plane, 16), st.integers(min_plane, 16)))
    a = draw(arrays(np.float64, shape, elements=finite))
    b = draw(arrays(np.float64, shape, elements=finite))
    return a, b


# ===================================================================== properties
@SETTINGS
@given(pairs())
def test_voxelwise_metrics_match_skimage_and_are_finite(pair):
    pred, ref = pair
    assume(ref.max() > ref.min())
    r = compute_metrics(pred, ref)
    assert set(r) == KEYS
    assert r["mse"] >= 0
    assert r["mse"] == pytest.approx(mean_squared_error(ref, pred), rel=1e-6, abs=1e-12)
    assert r["mae"] >= 0
    assert r["mae"] == pytest.approx(np.mean(np.abs(pred - ref)), rel=1e-6, abs=1e-12)
    assert r["n_voxels"] == ref.size
    assert r["data_range"] == ref.max() - ref.min()
    assert -1.0 <= r["ssim"] <= 1.0 and -1.0 <= r["ssim_hg"] <= 1.0
    assert 0.0 <= r["nmi"] <= 1.0
    for key in ("mse", "ssim", "ssim_hg", "mae", "nmi"):
        assert math.isfinite(r[key])
    assert math.isfinite(r["psnr"]) or r["mse"] == 0
    if r["mse"] > 0:
        # 10 log10(R^2 / MSE), written so R^2 cannot underflow for tiny ranges
        expected = 20 * math.log10(r["data_range"]) - 10 * math.log10(r["mse"])
        assert r["psnr"] == pytest.approx(expected, rel=1e-9, abs=1e-9)


@SETTINGS
@given(pairs(), st.data())
def test_masked_voxelwise_metrics_equal_the_masked_voxels(pair, data):
    pred, ref = pair
    mask = data.draw(arrays(np.bool_, ref.shape))
    assume(mask.any() and ref[mask].max() > ref[mask].min())
    r = compute_metrics(pred, ref, mask=mask)
    assert r["n_voxels"] == mask.sum()
    assert r["mse"] == pytest.approx(mean_squared_error(ref[mask], pred[mask]), rel=1e-6, abs=1e-12)
    assert r["mae"] == pytest.approx(np.mean(np.abs(pred[mask] - ref[mask])), rel=1e-6, abs=1e-12)
    assert r["data_range"] == ref[mask].max() - ref[mask].min()
    assert 0.0 <= r["nmi"] <= 1.0 and -1.0 <= r["ssim_hg"] <= 1.0


@SETTINGS
@given(arrays(np.float64, shapes, elements=finite))
def test_identical_volumes(x):
    assume(x.max() > x.min())
    r = compute_metrics(x, x.copy())
    assert r["mse"] == 0 and r["mae"] == 0
    assert r["psnr"] == math.inf
    assert r["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert r["ssim_hg"] == pytest.approx(1.0, abs=1e-12)
    assert r["nmi"] == pytest.approx(1.0, abs=1e-12)
    safe = json_safe(r)
    assert safe["psnr"] is None
    json.dumps(safe, allow_nan=False)


@SETTINGS
@given(pairs(min_plane=11), st.floats(0.5, 4.0))
def test_ssim_map_equals_skimage_per_slice(pair, range_factor):
    pred, ref = pair
    lo, hi = min(pred.min(), ref.min()), max(pred.max(), ref.max())
    # well-conditioned cases only: skimage's own variances (E[x^2] - E[x]^2) lose digits when the
    # data sit far from zero compared with the range (ours are computed around the mid-range)
    assume(hi - lo > 1e-3 * max(abs(lo), abs(hi)))
    data_range = (hi - lo) * range_factor
    smap = metrics.ssim_map(pred, ref, data_range)
    for k in range(ref.shape[0]):
        mssim, full = skimage_ssim(pred[k], ref[k], data_range, full=True)
        np.testing.assert_allclose(smap[k], full, rtol=1e-6, atol=1e-8)
        # skimage averages only the interior: crop (11 - 1) / 2 = 5 pixels at each border
        assert smap[k][5:-5, 5:-5].mean() == pytest.approx(mssim, rel=1e-6, abs=1e-8)


def test_scale_invariance_and_absurd_ranges():
    rng = np.random.default_rng(2)
    ref = smooth_volume(rng, shape=(2, 16, 16))
    pred = ref + rng.normal(size=ref.shape) * 20
    base = compute_metrics(pred, ref)
    tiny = compute_metrics(pred * 1e-300, ref * 1e-300)  # C1 = (0.01 R)^2 would underflow to 0
    for key in ("ssim", "ssim_hg", "nmi"):  # (the MSE itself, ~1e-598, underflows: PSNR = inf)
        assert tiny[key] == pytest.approx(base[key], rel=1e-9), key
    assert tiny["data_range"] == pytest.approx(base["data_range"] * 1e-300)
    # a prediction 1e270 data ranges away cannot be scored in floating point: refused, not NaN
    with pytest.raises(DicycError, match="data range"):
        compute_metrics(np.ones((1, 2, 2)), np.array([[[0.0, 4e-275], [0.0, 0.0]]]))


def test_ssim_structured_slices_and_full_map_average():
    rng = np.random.default_rng(3)
    ref = smooth_volume(rng, offset=-1000.0)  # CT-like offset
    pred = ref + rng.normal(size=ref.shape) * 20
    r = compute_metrics(pred, ref)
    R = ref.max() - ref.min()
    maps = []
    for k in range(ref.shape[0]):
        mssim, full = skimage_ssim(pred[k], ref[k], R, full=True)
        assert full[5:-5, 5:-5].mean() == pytest.approx(mssim, rel=1e-10)
        maps.append(full)
    # our SSIM averages the whole map (every evaluated voxel), not only the interior
    assert r["ssim"] == pytest.approx(np.mean(maps), rel=1e-9)
    assert 0 < r["ssim"] < 1


def test_ssim_hg_is_the_map_over_the_top_gradient_voxels():
    rng = np.random.default_rng(4)
    ref = smooth_volume(rng, scale=5.0)  # gentle texture ...
    ref[:, 8:24, 20:36] += 300.0  # ... plus sharp edges
    pred = ndimage.gaussian_filter(ref, sigma=(0, 1.5, 1.5))  # blurring hurts the edges most
    r = compute_metrics(pred, ref)
    R = ref.max() - ref.min()
    smap = np.stack([skimage_ssim(pred[k], ref[k], R, full=True)[1] for k in range(ref.shape[0])])
    grad = np.stack([np.hypot(ndimage.sobel(s, axis=0), ndimage.sobel(s, axis=1)) for s in ref])
    hg = grad >= np.percentile(grad, 80)
    assert 0.19 <= hg.mean() <= 0.21
    assert r["ssim_hg"] == pytest.approx(smap[hg].mean(), rel=1e-5)
    assert r["ssim_hg"] < r["ssim"]


def test_nmi_matches_numpy_histogram2d():
    rng = np.random.default_rng(5)
    ref = smooth_volume(rng)
    pred = ref + rng.normal(size=ref.shape) * 60
    joint, _, _ = np.histogram2d(pred.ravel(), ref.ravel(), bins=64)
    pj = joint / joint.sum()
    hp, hr, hj = (stats.entropy(p.ravel()) for p in (pj.sum(axis=1), pj.sum(axis=0), pj))
    expected = 2 * (hp + hr - hj) / (hp + hr)
    assert compute_metrics(pred, ref)["nmi"] == pytest.approx(expected, rel=1e-9)


def test_nmi_relations():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 32, 32))
    nmi = lambda p: compute_metrics(p, x)["nmi"]  # noqa: E731
    assert nmi(x) == pytest.approx(1.0, abs=1e-12)
    # a monotone affine relation (also a decreasing one, e.g. contrast inversion) is one-to-one on the bins
    assert nmi(3.0 * x + 7.0) == pytest.approx(1.0, abs=1e-6)
    assert nmi(-2.0 * x + 1.0) == pytest.approx(1.0, abs=1e-6)
    shuffled = rng.permutation(x.ravel()).reshape(x.shape)
    assert nmi(shuffled) < 0.15
    # a non-linear monotone map keeps a strong (not perfect, with fixed-width bins) relation
    assert nmi(np.tanh(x)) > 0.7 > 5 * nmi(shuffled)


def test_slab_processing_gives_the_same_numbers(monkeypatch):
    rng = np.random.default_rng(7)
    ref = smooth_volume(rng, shape=(9, 24, 20))
    pred = ref + rng.normal(size=ref.shape) * 30
    mask = np.zeros(ref.shape, bool)
    mask[1:3, 4:20, 3:17] = True
    mask[6:8, 2:9, 2:9] = True  # slabs 3-5 hold no mask voxels
    whole = [compute_metrics(pred, ref), compute_metrics(pred, ref, mask=mask)]
    monkeypatch.setattr(metrics, "_SLAB_VOXELS", 1)  # one slice per slab
    sliced = [compute_metrics(pred, ref), compute_metrics(pred, ref, mask=mask)]
    for a, b in zip(whole, sliced):
        for key in KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-12), key


# ===================================================================== masks and data range
def test_masked_metrics_equal_hand_computation():
    rng = np.random.default_rng(8)
    ref = smooth_volume(rng)
    pred = ref + rng.normal(size=ref.shape) * 25 + 5
    mask = np.zeros(ref.shape, bool)
    mask[:, 5:20, 10:30] = True
    r = compute_metrics(pred, ref, mask=mask)
    d = pred[mask] - ref[mask]
    assert r["n_voxels"] == mask.sum()
    assert r["mse"] == pytest.approx(np.mean(d**2), rel=1e-12)
    assert r["mse"] == pytest.approx(mean_squared_error(ref[mask], pred[mask]), rel=1e-12)
    assert r["mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-12)
    assert r["data_range"] == ref[mask].max() - ref[mask].min()
    R = r["data_range"]
    smap = np.stack([skimage_ssim(pred[k], ref[k], R, full=True)[1] for k in range(ref.shape[0])])
    assert r["ssim"] == pytest.approx(smap[mask].mean(), rel=1e-9)
    assert r != compute_metrics(pred, ref)


def test_data_range_override():
    rng = np.random.default_rng(9)
    ref = smooth_volume(rng)
    pred = ref + rng.normal(size=ref.shape) * 10
    r = compute_metrics(pred, ref, data_range=4095.0)
    assert r["data_range"] == 4095.0
    assert r["psnr"] == pytest.approx(10 * math.log10(4095.0**2 / r["mse"]), rel=1e-12)
    smap = np.stack([skimage_ssim(pred[k], ref[k], 4095.0, full=True)[1] for k in range(ref.shape[0])])
    assert r["ssim"] == pytest.approx(smap.mean(), rel=1e-9)
    default = compute_metrics(pred, ref)
    assert default["data_range"] != 4095.0 and default["psnr"] != r["psnr"]
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(DicycError, match="data range"):
            compute_metrics(pred, ref, data_range=bad)


def test_constant_reference_in_region_refused_unless_data_range():
    ref = np.zeros((2, 16, 16))
    ref[:, 8:, :] = 100.0
    pred = ref + 1.0
    mask = np.zeros(ref.shape, bool)
    mask[:, :4, :] = True  # only the flat part
    with pytest.raises(DicycError, match="constant inside the evaluated region.*--data-range"):
        compute_metrics(pred, ref, mask=mask)
    r = compute_metrics(pred, ref, mask=mask, data_range=100.0)
    assert r["mse"] == pytest.approx(1.0) and r["psnr"] == pytest.approx(40.0)
    # both constant in the region: each predicts the other exactly
    assert r["nmi"] == 1.0


def test_empty_mask_refused():
    x = np.arange(27.0).reshape(3, 3, 3)
    with pytest.raises(DicycError, match="no voxels"):
        compute_metrics(x, x, mask=np.zeros(x.shape, bool))


def test_nan_refused():
    x = np.arange(27.0).reshape(3, 3, 3)
    y = x.copy()
    y[1, 1, 1] = np.nan
    with pytest.raises(DicycError, match="NaN"):
        compute_metrics(y, x)


# ===================================================================== volumes
def test_constant_reference_volume_refused_constant_prediction_accepted():
    rng = np.random.default_rng(10)
    ref = Volume(smooth_volume(rng))
    flat = Volume(np.full(ref.shape, 7.0))
    with pytest.raises(DicycError, match="ref.nii is constant"):
        evaluate_volumes(ref, flat, ref_name="ref.nii")
    r = evaluate_volumes(flat, ref)  # a collapsed generator gets a bad score, not an error
    assert r["resampled"] is False
    assert r["nmi"] == 0.0
    assert r["ssim"] < 0.1
    for key in ("mse", "psnr", "ssim", "ssim_hg", "mae", "nmi"):
        assert math.isfinite(r[key])


def test_other_grid_is_resampled_with_a_warning():
    rng = np.random.default_rng(11)
    ref = Volume(smooth_volume(rng, shape=(4, 20, 20)), spacing=(1.0, 1.0, 2.0))
    pred = Volume(ref.array.copy(), spacing=(1.0, 1.0, 2.0), origin=(0.5, 0.0, 0.0))
    with pytest.warns(UserWarning, match="pred.nii is on a different grid than ref.nii; resampling it"):
        r = evaluate_volumes(pred, ref, pred_name="pred.nii", ref_name="ref.nii")
    assert r["resampled"] is True
    assert r["n_voxels"] == ref.array.size
    assert 0 < r["mse"] < np.var(ref.array)
    same = evaluate_volumes(Volume(ref.array.copy(), spacing=(1.0, 1.0, 2.0)), ref)
    assert same["resampled"] is False and same["psnr"] == math.inf


def test_non_overlapping_grids_refused():
    x = np.random.default_rng(12).normal(size=(3, 8, 8))
    with pytest.raises(DicycError, match="pred.nii and ref.nii do not overlap"):
        evaluate_volumes(Volume(x, origin=(500.0, 0, 0)), Volume(x), pred_name="pred.nii", ref_name="ref.nii")


# ===================================================================== statistics and reporting
def test_paired_ttest_matches_scipy():
    a = [0.81, 0.77, 0.90, 0.85, 0.79, 0.88]
    b = [0.78, 0.75, 0.86, 0.86, 0.74, 0.83]
    r = paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    assert r["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert r["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert r["mean_difference"] == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12)
    assert r["n"] == 6
    # worked example: differences 1, 1, 1.5 -> mean 7/6, sd 0.2887, t = 7.0 with 2 dof
    r = paired_ttest([1, 2, 3.5], [0, 1, 2])
    assert r["t"] == pytest.approx(7.0) and r["p"] == pytest.approx(0.0198039, rel=1e-5)


def test_paired_ttest_degenerate():
    assert paired_ttest([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == {"t": 0.0, "p": 1.0, "mean_difference": 0.0, "n": 3}
    r = paired_ttest([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert r["t"] == math.inf and r["p"] == 0.0
    with pytest.raises(DicycError, match="at least two"):
        paired_ttest([1.0], [2.0])
    with pytest.raises(DicycError, match="3 and 2"):
        paired_ttest([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(DicycError, match="finite"):
        paired_ttest([1.0, float("inf")], [1.0, 2.0])


def test_json_safe_and_table():
    result = {
        "mse": np.float64(0.0), "psnr": float("inf"), "ssim": np.float32(1.0), "ssim_hg": 1.0, "mae": 0.0,
        "nmi": float("nan"), "n_voxels": np.int64(12), "data_range": 3.0, "resampled": np.bool_(False),
        "pred": "p.nii", "ref": "r.nii", "mask": None,
    }
    safe = json_safe(result)
    assert safe["psnr"] is None and safe["nmi"] is None and safe["mask"] is None
    assert type(safe["mse"]) is float and type(safe["n_voxels"]) is int and safe["resampled"] is False
    json.dumps(safe, allow_nan=False)
    assert result["psnr"] == math.inf  # the input is left alone
    table = format_table(result)
    assert "inf (identical)" in table
    for name in ("MSE", "PSNR", "SSIM", "SSIM(HG)", "MAE", "NMI", "voxels", "data range", "p.nii"):
        assert name in table


# ===================================================================== files and the CLI
def _write(path, array, **geometry):
    write_volume(Volume(np.asarray(array, dtype=np.float32), **geometry), path)
    return str(path)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(13)
    ref = smooth_volume(rng, shape=(4, 24, 28), offset=-500).astype(np.float32)
    pred = (ref + rng.normal(size=ref.shape) * 15).astype(np.float32)
    mask = np.zeros(ref.shape, np.uint8)
    mask[1:3, 4:18, 6:20] = 1
    return {
        "dir": d, "ref_array": ref, "pred_array": pred, "mask_array": mask.astype(bool),
        "ref": _write(d / "ref.nii.gz", ref), "pred": _write(d / "pred.nii.gz", pred),
        "mask": _write(d / "mask.nii.gz", mask),
    }


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "dicyc", "evaluate", *args], capture_output=True, encoding="utf-8", errors="replace", cwd=str(REPO), env=env,
        timeout=120,
    )


def test_evaluate_files_in_process(pair_files):
    f = pair_files
    r = evaluate_files(f["pred"], f["ref"], mask_path=f["mask"])
    assert set(r) == KEYS | {"resampled", "pred", "ref", "mask", "comparison", "modalities", "streak_index",
                             "streak_index_ref", "streak_ratio"}
    assert r["comparison"] == "same-modality"
    assert r["mask"] == f["mask"] and r["resampled"] is False
    m = f["mask_array"]
    assert r["mse"] == pytest.approx(mean_squared_error(f["ref_array"][m], f["pred_array"][m]), rel=1e-6)


def test_cli_json(pair_files):
    f = pair_files
    proc = run_cli("--pred", f["pred"], "--ref", f["ref"], "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert KEYS | {"resampled", "pred", "ref", "mask"} <= set(out)
    assert out["mse"] == pytest.approx(mean_squared_error(f["ref_array"], f["pred_array"]), rel=1e-3)
    assert out["mask"] is None and out["n_voxels"] == f["ref_array"].size

    proc = run_cli("--pred", f["pred"], "--ref", f["ref"], "--mask", f["mask"], "--json")
    assert proc.returncode == 0, proc.stderr
    masked = json.loads(proc.stdout)
    m = f["mask_array"]
    assert masked["n_voxels"] == m.sum()
    assert masked["mse"] == pytest.approx(mean_squared_error(f["ref_array"][m], f["pred_array"][m]), rel=1e-3)


def test_cli_identical_table_and_json(pair_files):
    f = pair_files
    proc = run_cli("--pred", f["ref"], "--ref", f["ref"])
    assert proc.returncode == 0, proc.stderr
    assert "inf (identical)" in proc.stdout and "SSIM(HG)" in proc.stdout
    proc = run_cli("--pred", f["ref"], "--ref", f["ref"], "--json", "--data-range", "4095")
    out = json.loads(proc.stdout)
    assert out["psnr"] is None and out["ssim"] == pytest.approx(1.0) and out["data_range"] == 4095.0


def _refusals(f):
    d = f["dir"]
    text = d / "notes.txt"
    text.write_text("this is not an image\n")
    empty_mask = _write(d / "empty_mask.nii.gz", np.zeros(f["ref_array"].shape))
    far_mask = _write(d / "far_mask.nii.gz", np.ones(f["ref_array"].shape), origin=(900.0, 900.0, 900.0))
    nan = f["pred_array"].copy()
    nan[1, 2, 3] = np.nan
    nan_path = _write(d / "nan.nii.gz", nan)
    import nibabel

    four_d = str(d / "four_d.nii.gz")
    nibabel.save(nibabel.Nifti1Image(np.zeros((6, 5, 4, 3), np.float32), np.eye(4)), four_d)
    return {
        "text file": (["--pred", str(text), "--ref", f["ref"]], "not an image file"),
        "empty mask": (["--pred", f["pred"], "--ref", f["ref"], "--mask", empty_mask], "empty mask"),
        "mask outside": (["--pred", f["pred"], "--ref", f["ref"], "--mask", far_mask], "outside"),
        "nan volume": (["--pred", nan_path, "--ref", f["ref"]], "NaN"),
        "4-D": (["--pred", four_d, "--ref", f["ref"]], "4-D"),
        "missing": (["--pred", str(d / "missing.nii.gz"), "--ref", f["ref"]], "does not exist"),
    }


@pytest.mark.parametrize("case", ["text file", "empty mask", "mask outside", "nan volume", "4-D", "missing"])
def test_cli_refusals_are_one_sentence(pair_files, case):
    args, expected = _refusals(pair_files)[case]
    proc = run_cli(*args)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dicyc evaluate: error: ")
    assert expected in lines[0]


def test_partially_overlapping_prediction_scores_only_covered_voxels():
    """Reference voxels the prediction does not reach are left out, not scored against a fill value."""
    import warnings as _w

    from dicyc.metrics import evaluate_volumes
    from dicyc.volume import Volume

    rng = np.random.default_rng(3)
    ref = Volume(rng.normal(size=(4, 10, 10)).astype(np.float32), (1, 1, 1), (0, 0, 0))
    # the prediction is the reference's left half: same origin, half the width
    pred = Volume(ref.array[:, :, :5].copy(), (1, 1, 1), (0, 0, 0))
    with pytest.warns(UserWarning, match="covers"):
        with _w.catch_warnings():
            _w.simplefilter("always")
            result = evaluate_volumes(pred, ref)
    assert result["mse"] == pytest.approx(0.0, abs=1e-10)
    assert result["n_voxels"] == 4 * 10 * 5


# ===================================================================== across modalities
def _head(shape=(12, 48, 48), spacing=(1.0, 1.0, 1.0), shift=0, ct=True, radius_mm=18.0):
    """A round head (a cylinder of radius ``radius_mm``) with a skull ring, as CT in HU or as an MR-like volume."""
    z, y, x = np.indices(shape).astype(np.float64)
    yy, xx = (y - shape[1] / 2) * spacing[1], (x - shape[2] / 2 - shift) * spacing[0]
    r = np.hypot(yy, xx)
    inside, skull = r < radius_mm, (r < radius_mm) & (r > radius_mm - 4)
    noise = np.random.default_rng(0).normal(0, 10, shape)
    if ct:
        arr = np.where(inside, 35.0, -1000.0) + np.where(skull, 1100.0, 0.0) + noise
    else:
        arr = np.where(inside, 300.0, 0.0) - np.where(skull, 220.0, 0.0) + np.abs(noise)
    return Volume(arr.astype(np.float32), spacing)


def test_nmi_alone_is_the_nmi_of_compute_metrics():
    rng = np.random.default_rng(3)
    a, b = smooth_volume(rng, (4, 30, 26)), smooth_volume(rng, (4, 30, 26), offset=-1000) ** 2
    mask = np.zeros(a.shape, bool)
    mask[1:3, 5:20, 4:22] = True
    assert metrics.nmi(a, b) == compute_metrics(a, b)["nmi"]
    assert metrics.nmi(a, b, mask) == compute_metrics(a, b, mask)["nmi"]
    assert metrics.nmi(a, -3 * a + 7) == pytest.approx(1.0)  # an exact relation, whatever the units
    with pytest.raises(DicycError):
        metrics.nmi(a, b, np.zeros(a.shape, bool))


def test_surface_distances_of_nested_spheres():
    def ball(radius, spacing, shape):
        z, y, x = (np.indices(shape) - (np.array(shape) // 2)[:, None, None, None]) * np.array(spacing[::-1])[:, None, None, None]
        return z ** 2 + y ** 2 + x ** 2 <= radius ** 2

    for spacing, shape in (((1.0, 1.0, 1.0), (41, 41, 41)), ((1.0, 1.0, 2.0), (21, 41, 41))):
        small, large = ball(10.0, spacing, shape), ball(14.0, spacing, shape)
        mean, p95 = metrics.surface_distances(small, large, spacing)
        assert mean == pytest.approx(4.0, abs=0.6) and p95 == pytest.approx(4.0, abs=1.2)
        assert metrics.surface_distances(large, small, spacing) == pytest.approx((mean, p95))
        assert metrics.surface_distances(small, small, spacing) == (0.0, 0.0)
    # a single stray voxel far away moves the mean a little and the 95th percentile not at all
    stray = small.copy()
    stray[0, 0, 0] = True
    mean_s, p95_s = metrics.surface_distances(stray, large, spacing)
    assert p95_s == pytest.approx(p95) and mean_s > mean
    assert metrics.surface_distances(small, np.zeros_like(small)) == (math.inf, math.inf)
    assert metrics.surface_distances(np.zeros_like(small), np.zeros_like(small)) == (0.0, 0.0)


def test_cross_modality_metrics_see_an_outline_move():
    mr = _head(ct=False)
    aligned = metrics.cross_modality_metrics(_head(ct=True), mr, "CT", "MR")
    assert set(metrics.CROSS_MODALITY_KEYS) <= set(aligned)
    assert aligned["dice_outline"] > 0.97 and aligned["surface_distance_mean_mm"] < 0.5
    assert aligned["nmi"] > 0.3
    moved = metrics.cross_modality_metrics(_head(ct=True, shift=5), mr, "CT", "MR")
    assert moved["dice_outline"] < aligned["dice_outline"] - 0.1
    # a circle moved by d lies d·|cos θ| from the other: 2d/π on average, d at most
    assert moved["surface_distance_mean_mm"] == pytest.approx(2 * 5 / np.pi, abs=0.8)
    assert moved["surface_distance_95_mm"] == pytest.approx(5.0, abs=1.0)
    assert moved["nmi"] < aligned["nmi"]
    # each outline by its own modality's rule: the CT rule on the MR would take in its background
    assert metrics.body_outline(mr, "MR").sum() == pytest.approx(metrics.body_outline(_head(ct=True), "CT").sum(), rel=0.05)


def test_streaks_rank_a_streaky_volume_above_a_smooth_one():
    rng = np.random.default_rng(5)
    shape = (24, 40, 40)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 2.5) * 400.0
    head = np.zeros(shape, bool)
    head[2:-2, 5:-5, 5:-5] = True
    vol = Volume(smooth.astype(np.float32))
    # slice-wise synthesis: every axial slice gets its own error, coherent over the slice
    streaky = smooth + rng.normal(0, 6.0, (shape[0], 1, 1)) + 2.0 * ndimage.gaussian_filter(
        rng.normal(size=shape), (0, 3, 3)) * 20.0
    base = metrics.slice_streaks(vol, head)
    worse = metrics.slice_streaks(vol.with_array(streaky.astype(np.float32)), head)
    assert base["streak_index"] == pytest.approx(1.0, abs=0.15)
    assert worse["streak_index"] > 1.3 * base["streak_index"]
    assert metrics.streak_ratio(worse["streak_index"], base["streak_index"]) > 1.3
    # contrast does not matter, only consistency
    scaled = metrics.slice_streaks(vol.with_array((smooth * 7 - 1000).astype(np.float32)), head)
    assert scaled["streak_index"] == pytest.approx(base["streak_index"], rel=1e-6)
    # white noise is as consistent along z as in-plane
    noise = metrics.slice_streaks(Volume(rng.normal(size=shape).astype(np.float32)))
    assert noise["streak_index"] == pytest.approx(1.0, abs=0.03)
    # undefined without two slices or a region
    assert metrics.slice_streaks(Volume(smooth[:1].astype(np.float32)))["streak_index"] is None
    assert metrics.slice_streaks(vol, np.zeros(shape, bool))["streak_index"] is None
    assert metrics.streak_ratio(None, 1.0) is None


def test_streaks_compare_grids_at_one_physical_step():
    """An isotropic pattern scores about 1 on isotropic voxels, on thick slices and on permuted axes."""
    k = 2 * np.pi / 24.0
    for spacing in ((1.0, 1.0, 1.0), (1.0, 1.0, 1.5), (0.8, 0.8, 2.0)):
        shape = (int(48 / spacing[2]), 48, 48)
        z, y, x = (np.indices(shape).astype(np.float64) * np.array(spacing[::-1])[:, None, None, None])
        pattern = np.sin(k * x + 0.3) + np.sin(k * y + 1.1) + np.sin(k * z + 0.7)
        index = metrics.slice_streaks(Volume(pattern.astype(np.float32), spacing))["streak_index"]
        assert index == pytest.approx(1.0, abs=0.06), spacing
    # the S axis is found whatever the array order: a sagittal acquisition (S along numpy's last axis)
    rng = np.random.default_rng(2)
    smooth = ndimage.gaussian_filter(rng.normal(size=(20, 30, 30)), 2.0)
    streaky = smooth + rng.normal(0, 0.05, (20, 1, 1))
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i→P, j→S, k→L
    axial = metrics.slice_streaks(Volume(streaky.astype(np.float32)))["streak_index"]
    # the same voxels stored with S along j: numpy (k, j, i) = (L, S, P)
    stored = np.transpose(streaky, (2, 0, 1))
    assert metrics.slice_streaks(Volume(stored.astype(np.float32), direction=direction))["streak_index"] == pytest.approx(axial)


def _write_vol(path, vol, modality=None):
    write_volume(vol, path, modality=modality)
    return str(path)


def test_evaluate_a_ct_against_an_mr_reports_outlines_not_psnr(tmp_path):
    ct = _write_vol(tmp_path / "ct.nii.gz", _head(ct=True, shift=3))
    mr = _write_vol(tmp_path / "mr.nii.gz", _head(ct=False))
    r = evaluate_files(ct, mr)
    assert r["comparison"] == "cross-modality"
    assert r["modalities"]["pred"] == {"modality": "CT", "source": "HU statistics"}
    assert set(metrics.CROSS_MODALITY_KEYS) <= set(r)
    assert not {"mse", "psnr", "ssim", "ssim_hg", "mae"} & set(r)
    assert 1.0 < r["surface_distance_mean_mm"] < 4.0 and 0.0 < r["dice_outline"] < 1.0
    assert r["streak_index"] is not None and r["streak_ratio"] == pytest.approx(r["streak_index"] / r["streak_index_ref"])
    # a CT against a CT keeps the voxel-wise metrics
    other = _write_vol(tmp_path / "ct2.nii.gz", _head(ct=True))
    same = evaluate_files(ct, other)
    assert same["comparison"] == "same-modality" and KEYS <= set(same)
    # the CLI: JSON and table
    proc = run_cli("--pred", ct, "--ref", mr, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "psnr" not in out and out["nmi"] == pytest.approx(r["nmi"]) and out["dice_outline"] == pytest.approx(r["dice_outline"])
    proc = run_cli("--pred", ct, "--ref", mr)
    assert "outline Dice" in proc.stdout and "PSNR" not in proc.stdout and "cross-modality" in proc.stdout
    # the user's word decides: two MRs that are T1 and T2, or the same pair forced to one modality
    proc = run_cli("--pred", mr, "--ref", mr, "--modality-pred", "T1", "--modality-ref", "T2", "--json")
    assert json.loads(proc.stdout)["comparison"] == "cross-modality"
    proc = run_cli("--pred", ct, "--ref", mr, "--same-modality", "--json")
    assert "psnr" in json.loads(proc.stdout)


def test_evaluate_reads_the_modality_the_file_records(tmp_path):
    """A synthetic CT that does not look like CT (a collapsed generator) is still scored as CT against its MR."""
    mr_vol = _head(ct=False)
    flat = _write_vol(tmp_path / "flat.nii.gz", mr_vol.with_array(np.full(mr_vol.shape, 20.0, np.float32)), "CT")
    mr = _write_vol(tmp_path / "mr.nii.gz", mr_vol, "MR")
    r = evaluate_files(flat, mr)
    assert r["comparison"] == "cross-modality" and r["modalities"]["pred"]["source"] == "file"
    assert r["nmi"] == 0.0  # nothing in it says where the MR has what
    assert r["dice_outline"] < 0.7 and r["surface_distance_mean_mm"] > 2.0  # its "outline" is the whole volume
