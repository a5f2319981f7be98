"""Preprocessing steps keep geometry and are invertible where synthesis needs them."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicyc.errors import DicycError
from dicyc.preprocess import (
    Normalization,
    body_mask,
    crop_pad_axial,
    ct_normalization,
    mr_normalization,
    n4_bias_correct,
    resample_to_grid,
    resample_to_spacing,
    uncrop_axial,
)
from dicyc.volume import Volume


def _ball(shape=(20, 40, 50), spacing=(1.0, 1.0, 2.0), value=100.0):
    z, y, x = np.indices(shape).astype(float)
    c = [(n - 1) / 2 for n in shape]
    r = np.sqrt(((z - c[0]) * spacing[2]) ** 2 + ((y - c[1]) * spacing[1]) ** 2 + ((x - c[2]) * spacing[0]) ** 2)
    return Volume((r < 12).astype(np.float32) * value, spacing, (3.0, -4.0, 5.0))


def test_resample_to_spacing_keeps_extent_and_centre():
    vol = _ball()
    out = resample_to_spacing(vol, (0.5, 0.5, 1.0))
    assert out.size == (100, 80, 40)
    lo0, hi0 = vol.bounds_lps()
    lo1, hi1 = out.bounds_lps()
    np.testing.assert_allclose(lo0, lo1, atol=1e-6)
    np.testing.assert_allclose(hi0, hi1, atol=1e-6)
    # the ball's centroid stays where it was, in millimetres
    def centroid(v):
        idx = np.argwhere(v.array > 50)[:, ::-1].mean(axis=0)
        return (v.ijk_to_lps() @ np.array([*idx, 1.0]))[:3]

    np.testing.assert_allclose(centroid(vol), centroid(out), atol=0.3)


def test_mask_resampling_is_nearest_and_stays_binary():
    vol = _ball(value=1.0)
    vol = vol.with_array(vol.array.astype(np.uint8))
    out = resample_to_spacing(vol, (0.7, 0.7, 1.3), interpolation="nearest")
    assert set(np.unique(out.array)) <= {0, 1}
    assert out.array.dtype == np.uint8


def test_resample_to_same_grid_is_identity():
    vol = _ball()
    out = resample_to_grid(vol, vol)
    np.testing.assert_allclose(out.array, vol.array, atol=1e-5)
    assert out.same_grid(vol)


@settings(max_examples=25, deadline=None)
@given(ny=st.integers(5, 40), nx=st.integers(5, 40), size=st.integers(4, 48), cy=st.floats(0, 39), cx=st.floats(0, 39))
def test_crop_pad_round_trip(ny, nx, size, cy, cx):
    arr = np.arange(2 * ny * nx, dtype=np.float32).reshape(2, ny, nx)
    out, crop = crop_pad_axial(arr, size, center=(min(cy, ny - 1), min(cx, nx - 1)), fill=-1)
    assert out.shape == (2, size, size)
    back = uncrop_axial(out, crop, fill=-1)
    assert back.shape == arr.shape
    kept = back != -1
    np.testing.assert_array_equal(back[kept], arr[kept])
    if size >= max(ny, nx):  # nothing cropped: exact inverse
        np.testing.assert_array_equal(back, arr)


def test_crop_follows_the_body():
    arr = np.zeros((1, 100, 100), np.float32)
    arr[0, 70:90, 70:90] = 1
    out, crop = crop_pad_axial(arr, 40, center=(80, 80))
    assert out.sum() == arr.sum()  # the whole body stays in view


def test_body_mask_ignores_thin_headrest_and_fills_holes():
    arr = np.full((6, 80, 80), -1000.0, np.float32)
    z, y, x = np.indices(arr.shape)
    head = (y - 40) ** 2 + (x - 40) ** 2 < 25**2
    arr[head] = 40.0
    arr[(y - 40) ** 2 + (x - 40) ** 2 < 5**2] = -1000.0  # air inside (a sinus): must be filled
    arr[:, 72, 10:70] = 300.0  # a thin head-rest below the head, apart from it
    mask = body_mask(Volume(arr))
    assert mask[3, 40, 40]
    assert not mask[3, 72, 40]
    assert mask.sum() == head.sum()


def test_ct_normalization_round_trip_in_hu():
    norm = ct_normalization()
    hu = np.array([-1024.0, -500.0, 0.0, 40.0, 1500.0, 2000.0])
    np.testing.assert_allclose(norm.inverse(norm.forward(hu)), hu, atol=1e-3)
    assert norm.forward(np.array([5000.0]))[0] == 1.0  # clipped
    assert Normalization.from_dict(norm.to_dict()) == norm


def test_mr_normalization_percentile_and_meanstd():
    rng = np.random.default_rng(0)
    arr = rng.normal(300, 50, size=(4, 30, 30)).astype(np.float32)
    p = mr_normalization(arr)
    out = p.forward(arr)
    assert out.min() >= -1 and out.max() <= 1
    assert p.kind == "mr-percentile" and p.low < 300 < p.high
    m = mr_normalization(arr, method="meanstd", k=3)
    assert m.kind == "mr-meanstd"
    np.testing.assert_allclose((m.low + m.high) / 2, arr[arr > arr.min()].mean(), rtol=1e-3)
    inner = arr[(arr > m.low) & (arr < m.high)]
    np.testing.assert_allclose(m.inverse(m.forward(inner)), inner, rtol=1e-4, atol=1e-3)


def test_mr_normalization_refuses_constant():
    with pytest.raises(DicycError, match="no intensity contrast"):
        mr_normalization(np.full((2, 3, 3), 7.0), mask=np.ones((2, 3, 3), bool))


def test_n4_removes_a_smooth_bias_and_keeps_the_grid():
    vol = _ball(shape=(16, 48, 48), spacing=(1.0, 1.0, 1.0), value=100.0)
    z, y, x = np.indices(vol.shape)
    bias = np.exp(0.4 * (x - 24) / 24.0).astype(np.float32)
    biased = vol.with_array(vol.array * bias + 1.0)
    out = n4_bias_correct(biased, mask=vol.array > 50)
    assert out.same_grid(biased)
    inside = vol.array > 50
    cv_before = biased.array[inside].std() / biased.array[inside].mean()
    cv_after = out.array[inside].std() / out.array[inside].mean()
    assert cv_after < 0.6 * cv_before


def test_canonical_orientation_matches_dicomorient_and_inverts_exactly():
    import SimpleITK as sitk

    from dicyc.preprocess import from_canonical_array, to_canonical

    rng = np.random.default_rng(1)
    # a sagittally acquired, flipped, slightly oblique grid
    d = np.array([[0.0, 0.0, -1.0], [0.999, -0.0447, 0.0], [0.0447, 0.999, 0.0]])
    d /= np.linalg.norm(d, axis=0)
    vol = Volume(rng.normal(size=(6, 7, 8)).astype(np.float32), (0.7, 0.8, 2.0), (10.0, -20.0, 30.0), d)
    canon, axes = to_canonical(vol)
    expected = sitk.DICOMOrient(vol.to_sitk(), "LPS")
    np.testing.assert_array_equal(canon.array, sitk.GetArrayFromImage(expected))
    np.testing.assert_allclose(canon.spacing, expected.GetSpacing())
    np.testing.assert_allclose(canon.origin, expected.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(canon.direction.ravel(), expected.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(from_canonical_array(canon.array, axes), vol.array)
