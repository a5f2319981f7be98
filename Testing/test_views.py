"""Comparison views: checkerboard, error image, montage PNG and metrics.json (dicyc.views)."""

import json
import warnings

import numpy as np
import pytest

from dicyc import views
from dicyc.errors import DicycError
from dicyc.volume import Volume, read_volume, write_volume

OUTPUT_NAMES = {"checkerboard.nii.gz", "error.nii.gz", "compare.png", "metrics.json"}

# an oblique-ish grid whose axes are permuted and flipped with respect to LPS
PERMUTED = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def phantom(shape=(20, 28, 24), spacing=(0.9, 1.1, 2.5), origin=(-12.0, 30.0, 5.0), direction=None, shift=(0, 0, 0),
            ct=False):
    """A body-like ellipsoid with an off-centre "spine" and "aorta", optionally shifted (voxels z, y, x)."""
    nz, ny, nx = shape
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    z, y, x = z - shift[0], y - shift[1], x - shift[2]
    cz, cy, cx = ((n - 1) / 2 for n in shape)
    body = ((x - cx) / (0.42 * nx)) ** 2 + ((y - cy) / (0.38 * ny)) ** 2 + ((z - cz) / (0.48 * nz)) ** 2 < 1
    spine = ((x - nx / 2) ** 2 + (y - 0.68 * ny) ** 2) < (0.08 * nx) ** 2
    aorta = ((x - 0.42 * nx) ** 2 + (y - 0.5 * ny) ** 2) < (0.06 * nx) ** 2
    if ct:
        arr = np.full(shape, -1000.0, np.float32)
        arr[body] = 40.0
        arr[body & aorta] = 200.0
        arr[body & spine] = 900.0
        arr = arr.astype(np.int16)
    else:
        arr = np.zeros(shape, np.float32)
        arr[body] = 400.0 + 2.0 * x[body]
        arr[body & aorta] = 900.0
        arr[body & spine] = 150.0
    return Volume(arr, spacing, origin, direction)


def png_is_not_blank(path):
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
    grey = img[..., :3].mean(axis=2)
    assert grey.std() > 0.1
    assert (grey < 0.9).mean() > 0.2  # a good part of the figure is image, not white page
    return img


def files_in(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ===================================================================== building blocks
def test_display_window_and_to_unit():
    rng = np.random.default_rng(0)
    arr = rng.normal(100.0, 20.0, (10, 10, 10)).astype(np.float32)
    arr[0, 0, 0] = 1e6  # one hot voxel must not wash out the window
    low, high = views.display_window(arr)
    assert 20 < low < 100 < high < 200
    unit = views.to_unit(arr, (low, high))
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() == 1.0
    mask = np.zeros(arr.shape, bool)
    mask[5:] = True
    assert views.display_window(arr, mask) != (low, high)
    # CT-like data and a constant array still give a usable window
    ct = phantom(ct=True).array
    lo, hi = views.display_window(ct)
    assert lo == -1000 and hi >= 200
    assert views.display_window(np.full((2, 2, 2), 5.0)) == (5.0, 6.0)


def test_checkerboard_alternates_along_every_axis():
    a = np.full((8, 8, 8), 0.25, np.float32)
    b = np.full((8, 8, 8), 0.75, np.float32)
    board = views.checkerboard(a, b, 4)  # tiles of 2 voxels
    assert board.dtype == np.float32 and board.shape == a.shape
    for k, j, i in np.ndindex(8, 8, 8):
        expected = 0.25 if (k // 2 + j // 2 + i // 2) % 2 == 0 else 0.75
        assert board[k, j, i] == expected
    # neighbouring tiles along each axis come from the other volume
    assert board[0, 0, 0] == 0.25 and board[0, 0, 2] == 0.75 and board[0, 2, 0] == 0.75 and board[2, 0, 0] == 0.75

    # real contents: voxel values are A's in one tile and B's in the next
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 16, 12), dtype=np.float32), rng.random((3, 16, 12), dtype=np.float32)
    board = views.checkerboard(a, b, 4)  # only 3 slices: one tile per slice along z
    np.testing.assert_array_equal(board[0, :4, :3], a[0, :4, :3])
    np.testing.assert_array_equal(board[0, :4, 3:6], b[0, :4, 3:6])
    np.testing.assert_array_equal(board[0, 4:8, :3], b[0, 4:8, :3])
    np.testing.assert_array_equal(board[1, :4, :3], b[1, :4, :3])
    np.testing.assert_array_equal(board[2, :4, :3], a[2, :4, :3])
    # one slice, one tile: plain A
    np.testing.assert_array_equal(views.checkerboard(a[:1], b[:1], 1), a[:1])
    with pytest.raises(ValueError):
        views.checkerboard(a, b[:2], 4)


def test_error_image_is_absolute_difference_without_overflow():
    a = np.array([[[-1000, 3000]]], np.int16)
    b = np.array([[[3000, -1000]]], np.int16)
    err = views.error_image(a, b)
    assert err.dtype == np.float32
    np.testing.assert_array_equal(err, [[[4000, 4000]]])


@pytest.mark.parametrize("direction", [np.eye(3), PERMUTED, np.diag([-1.0, 1.0, -1.0])])
def test_lps_view_matches_dicom_orient(direction):
    import SimpleITK as sitk

    vol = Volume(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), (0.5, 0.7, 2.0), (1, 2, 3), direction)
    oriented = sitk.DICOMOrient(vol.to_sitk(), "LPS")
    axes = views.lps_axes(vol.direction)
    np.testing.assert_array_equal(views._to_lps(vol.array, axes), sitk.GetArrayFromImage(oriented))
    assert np.allclose([vol.spacing[src] for src, _ in axes], oriented.GetSpacing())
    # a voxel index of the original grid lands on the same physical point in the view
    point = (1, 3, 2)
    lps_index = views._point_to_lps(point, vol.size, axes)
    assert np.allclose(oriented.TransformIndexToPhysicalPoint(lps_index), vol.to_sitk().TransformIndexToPhysicalPoint(point))


# ===================================================================== compare_volumes
def test_compare_volumes_outputs_keep_a_geometry(tmp_path):
    a = phantom(direction=PERMUTED)
    b = phantom(direction=PERMUTED, shift=(0, 2, 3))
    out = tmp_path / "cmp"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same grid: no resampling warning
        paths = views.compare_volumes(a, b, out, tiles=4, a_name="a.nii.gz", b_name="b.nii.gz")
    assert set(paths) == {"checkerboard", "error", "montage", "metrics"}
    assert set(files_in(out)) == OUTPUT_NAMES
    for key in ("checkerboard", "error"):
        vol = read_volume(paths[key])
        assert vol.array.dtype == np.float32 and vol.shape == a.shape
        assert np.allclose(vol.spacing, a.spacing, atol=1e-6)
        assert np.allclose(vol.origin, a.origin, atol=1e-5)
        assert np.allclose(vol.direction, a.direction, atol=1e-6)
    board = read_volume(paths["checkerboard"]).array
    assert board.min() >= 0.0 and board.max() <= 1.0
    a01 = views.to_unit(a.array, views.display_window(a.array))
    b01 = views.to_unit(b.array, views.display_window(b.array))
    np.testing.assert_array_equal(board, views.checkerboard(a01, b01, 4))
    np.testing.assert_array_equal(board[:5, :7, :6], a01[:5, :7, :6])  # first tile is A
    np.testing.assert_array_equal(board[:5, :7, 6:12], b01[:5, :7, 6:12])  # the next along x is B
    error = read_volume(paths["error"]).array
    np.testing.assert_allclose(error, np.abs(a.array - b.array), rtol=0, atol=1e-4)

    summary = json.loads(paths["metrics"].read_text())
    assert summary["error_units"] == "raw" and summary["b_resampled"] is False
    assert {"mse", "psnr", "ssim", "ssim_hg", "mae", "nmi", "n_voxels", "data_range"} <= set(summary["metrics"])
    assert summary["metrics"]["n_voxels"] == a.array.size
    assert summary["point_ijk"] == [12, 14, 10]  # centre of A (i, j, k)
    png_is_not_blank(paths["montage"])
    # no temporary files left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_window_error_units_and_mask(tmp_path):
    a = phantom()  # MR-like
    b = phantom(ct=True, shift=(1, 1, 1))  # CT-like on the same grid
    mask = np.zeros(a.shape, bool)
    mask[5:15, 8:20, 6:18] = True
    paths = views.compare_volumes(a, b, tmp_path, tiles=3, mask=mask, error_units="window", point=(3, 4, 5))
    error = read_volume(paths["error"]).array
    assert error.min() >= 0.0 and error.max() <= 1.0
    a01 = views.to_unit(a.array, views.display_window(a.array))
    b01 = views.to_unit(b.array, views.display_window(b.array))
    np.testing.assert_allclose(error, np.abs(a01 - b01), atol=1e-6)
    summary = json.loads(paths["metrics"].read_text())
    assert summary["metrics"]["n_voxels"] == int(mask.sum())
    assert summary["region"] == "mask" and summary["point_ijk"] == [3, 4, 5]
    png_is_not_blank(paths["montage"])


def test_identical_volumes_give_zero_error_and_json_null_psnr(tmp_path):
    a = phantom()
    paths = views.compare_volumes(a, a.with_array(a.array.copy()), tmp_path)
    assert read_volume(paths["error"]).array.max() == 0.0
    text = paths["metrics"].read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["metrics"]["psnr"] is None


def test_b_on_another_grid_is_resampled_with_a_warning(tmp_path):
    a = phantom()
    b = phantom(shape=(12, 20, 18), spacing=(1.3, 1.4, 3.5), origin=(-14.0, 28.0, 3.0))
    with pytest.warns(UserWarning, match="resampled onto"):
        paths = views.compare_volumes(a, b, tmp_path, tiles=4)
    error = read_volume(paths["error"])
    assert error.shape == a.shape and np.allclose(error.spacing, a.spacing) and np.allclose(error.origin, a.origin)
    assert json.loads(paths["metrics"].read_text())["b_resampled"] is True


def test_non_overlapping_volumes_are_refused_without_output(tmp_path):
    a = phantom()
    b = phantom(origin=(500.0, 500.0, 500.0))
    out = tmp_path / "cmp"
    with pytest.raises(DicycError, match="do not overlap"):
        views.compare_volumes(a, b, out)
    assert files_in(out) == []


def test_constant_volume_is_refused_without_output(tmp_path):
    a = phantom()
    out = tmp_path / "cmp"
    with pytest.raises(DicycError, match="constant"):
        views.compare_volumes(a, a.with_array(np.full(a.shape, 7.0, np.float32)), out, b_name="flat.nii.gz")
    with pytest.raises(DicycError, match="constant"):
        views.compare_volumes(a.with_array(np.zeros(a.shape, np.float32)), a, out)
    assert files_in(out) == []


def test_point_outside_a_is_refused_without_output(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    write_volume(phantom(), a)
    write_volume(phantom(shift=(0, 1, 0)), b)
    out = tmp_path / "cmp"
    with pytest.raises(DicycError, match=r"--point 24,0,0 is outside A \(size 24x28x20"):
        views.compare_files(a, b, out, point=(24, 0, 0))
    with pytest.raises(DicycError, match="outside A"):
        views.compare_volumes(phantom(), phantom(), out, point=(-1, 0, 0))
    assert files_in(out) == []


def test_bad_error_units_and_tiles_are_refused(tmp_path):
    with pytest.raises(DicycError, match="error units"):
        views.compare_volumes(phantom(), phantom(shift=(1, 0, 0)), tmp_path / "x", error_units="hu")
    with pytest.raises(DicycError, match="tiles"):
        views.compare_volumes(phantom(), phantom(shift=(1, 0, 0)), tmp_path / "x", tiles=0)
    assert files_in(tmp_path / "x") == []


def test_compare_files_with_mask_file_and_single_slice(tmp_path):
    a, b, m = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "roi.nii.gz"
    vol = phantom(shape=(1, 40, 36), spacing=(0.8, 0.8, 3.0))
    write_volume(vol, a)
    write_volume(phantom(shape=(1, 40, 36), spacing=(0.8, 0.8, 3.0), shift=(0, 2, 1)), b)
    roi = np.zeros(vol.shape, np.uint8)
    roi[0, 10:30, 8:28] = 1
    write_volume(vol.with_array(roi), m)
    paths = views.compare_files(a, b, tmp_path / "out", tiles=4, mask_path=m)
    summary = json.loads(paths["metrics"].read_text())
    assert summary["metrics"]["n_voxels"] == 400
    assert summary["point_ijk"] == [18, 20, 0]  # the ROI centroid, rounded
    img = png_is_not_blank(paths["montage"])
    assert img.shape[0] < img.shape[1] / 2  # one (axial) row only: a wide, short figure


def test_center_on_a_structure_and_a_second_one_in_its_own_views(tmp_path):
    """--center-on puts the planes through the structure (the aorta), --also adds rows through another (the spine)."""
    a, b = phantom(), phantom(ct=True, shift=(0, 1, 0))
    nz, ny, nx = a.shape
    z, y, x = np.meshgrid(*(np.arange(n) for n in a.shape), indexing="ij")
    aorta = ((x - 0.42 * nx) ** 2 + (y - 0.5 * ny) ** 2 < (0.06 * nx) ** 2) & (z >= 4) & (z < 16)
    spine = ((x - nx / 2) ** 2 + (y - 0.68 * ny) ** 2 < (0.08 * nx) ** 2) & (z >= 2) & (z < 10)
    plain = png_is_not_blank(views.compare_volumes(a, b, tmp_path / "plain", tiles=4, zoom_mm=20)["montage"])
    paths = views.compare_volumes(a, b, tmp_path / "two", tiles=4, center_on=aorta, also=spine, center_name="aorta",
                                  also_name="spine", zoom_mm=20)
    summary = json.loads(paths["metrics"].read_text())
    k, j, i = (int(np.floor(c.mean() + 0.5)) for c in np.nonzero(aorta))
    assert summary["point_ijk"] == [i, j, k]  # the aorta's centroid, not the centre of A
    roles = {s["role"]: s for s in summary["structures"]}
    assert roles["center_on"]["name"] == "aorta" and roles["also"]["name"] == "spine"
    k2, j2, i2 = (int(np.floor(c.mean() + 0.5)) for c in np.nonzero(spine))
    assert roles["also"]["centroid_ijk"] == [i2, j2, k2] and roles["also"]["n_voxels"] == int(spine.sum())
    assert summary["zoom_mm"] == 20.0 and summary["region"] == "whole volume"
    two = png_is_not_blank(paths["montage"])
    assert two.shape[0] > 1.6 * plain.shape[0]  # three more rows: the spine's own views
    # a point given explicitly still wins; a structure off the grid or empty is refused before any output
    summary = json.loads(views.compare_volumes(a, b, tmp_path / "p", center_on=aorta, point=(3, 4, 5))["metrics"].read_text())
    assert summary["point_ijk"] == [3, 4, 5]
    with pytest.raises(DicycError, match="spine mask has no voxels"):
        views.compare_volumes(a, b, tmp_path / "empty", also=np.zeros(a.shape, bool), also_name="spine")
    with pytest.raises(DicycError, match="zoom"):
        views.compare_volumes(a, b, tmp_path / "zoom", zoom_mm=-3)
    assert files_in(tmp_path / "empty") == [] and files_in(tmp_path / "zoom") == []


def test_cli_compare_center_on_and_also_mask_files(tmp_path, run_dicyc):
    a, b = tmp_path / "mr.nii.gz", tmp_path / "ct.nii.gz"
    vol = phantom()
    write_volume(vol, a)
    write_volume(phantom(ct=True, shift=(0, 0, 1)), b)
    seg = np.zeros(vol.shape, np.uint8)
    seg[8:12, 12:16, 9:12] = 1
    write_volume(vol.with_array(seg), tmp_path / "aorta.nii.gz")
    seg2 = np.zeros(vol.shape, np.uint8)
    seg2[3:9, 17:22, 10:14] = 3  # a label value other than 1 counts too
    write_volume(vol.with_array(seg2), tmp_path / "spine.nii.gz")
    out = tmp_path / "out"
    proc = run_dicyc("compare", "--a", a, "--b", b, "--out", out, "--center-on", tmp_path / "aorta.nii.gz",
                     "--also", tmp_path / "spine.nii.gz", "--zoom", "30", "--error-units", "window")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["point_ijk"] == [10, 14, 10]
    assert [s["name"] for s in summary["structures"]] == ["aorta", "spine"]
    proc = run_dicyc("compare", "--a", a, "--b", b, "--out", tmp_path / "bad", "--zoom", "0")
    assert proc.returncode == 1 and "--zoom" in proc.stderr and "Traceback" not in proc.stderr


# ===================================================================== across modalities
def _has_colour(img, hex_colour, tol=0.08, at_least=30):
    """Whether at least ``at_least`` pixels of the figure have about that colour (an outline drawn in it)."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5)])
    return int((np.abs(img[..., :3] - rgb).max(axis=2) < tol).sum()) >= at_least


def test_compare_ct_against_mr_reports_nmi_and_outlines_not_psnr(tmp_path):
    ct = phantom(ct=True, shift=(0, 0, 2))
    mr = phantom()
    paths = views.compare_volumes(ct, mr, tmp_path / "cross", tiles=4, a_name="ct.nii.gz", b_name="mr.nii.gz")
    summary = json.loads(paths["metrics"].read_text())
    assert summary["comparison"] == "cross-modality"
    assert summary["modalities"]["a"] == {"modality": "CT", "source": "HU statistics"}
    assert {"nmi", "dice_outline", "surface_distance_mean_mm", "surface_distance_95_mm"} <= set(summary["metrics"])
    assert not {"mse", "psnr", "ssim", "ssim_hg", "mae"} & set(summary["metrics"])
    assert 0.5 < summary["metrics"]["dice_outline"] < 1.0 and summary["metrics"]["surface_distance_mean_mm"] > 0.5
    assert summary["error_units"] == "window"  # raw HU minus MR units would mean nothing
    img = png_is_not_blank(paths["montage"])
    assert _has_colour(img, views.OUTLINE_COLOURS[0]) and _has_colour(img, views.OUTLINE_COLOURS[1])

    # a same-modality pair keeps MSE/PSNR/SSIM, without outlines
    same = views.compare_volumes(ct, phantom(ct=True), tmp_path / "same", tiles=4)
    summary = json.loads(same["metrics"].read_text())
    assert summary["comparison"] == "same-modality" and {"mse", "psnr", "ssim"} <= set(summary["metrics"])
    assert "dice_outline" not in summary["metrics"] and summary["error_units"] == "raw"
    assert not _has_colour(png_is_not_blank(same["montage"]), views.OUTLINE_COLOURS[0])
    # what the caller knows decides
    forced = views.compare_volumes(ct, mr, tmp_path / "forced", cross_modality=False)
    assert "psnr" in json.loads(forced["metrics"].read_text())["metrics"]
    named = views.compare_volumes(mr, mr, tmp_path / "named", modality_a="T1", modality_b="T2")
    assert json.loads(named["metrics"].read_text())["comparison"] == "cross-modality"


def test_cli_compare_reads_the_recorded_modality(tmp_path, run_dicyc):
    """A synthetic CT recorded as CT is compared with its MR as two modalities, even if it does not look like CT."""
    mr = phantom()
    syn = tmp_path / "syn.nii.gz"
    write_volume(mr.with_array(mr.array * 0.1 + 3.0), syn, modality="CT")
    write_volume(mr, tmp_path / "mr.nii.gz")
    proc = run_dicyc("compare", "--a", syn, "--b", tmp_path / "mr.nii.gz", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["comparison"] == "cross-modality" and summary["modalities"]["a"]["source"] == "file"
    assert "psnr" not in summary["metrics"] and "dice_outline" in summary["metrics"]
    proc = run_dicyc("compare", "--a", syn, "--b", tmp_path / "mr.nii.gz", "--out", tmp_path / "same",
                     "--same-modality")
    assert proc.returncode == 0, proc.stderr
    assert "psnr" in json.loads((tmp_path / "same" / "metrics.json").read_text())["metrics"]
    proc = run_dicyc("compare", "--a", syn, "--b", tmp_path / "mr.nii.gz", "--out", tmp_path / "bad",
                     "--modality-a", "T1 weighted")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and files_in(tmp_path / "bad") == []


# ===================================================================== command line
def test_cli_compare_end_to_end(tmp_path, run_dicyc):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nrrd"
    write_volume(phantom(direction=PERMUTED), a)
    write_volume(phantom(direction=PERMUTED, shift=(1, 2, 0)), b)
    out = tmp_path / "out"
    proc = run_dicyc("compare", "--a", a, "--b", b, "--out", out, "--tiles", "4")
    assert proc.returncode == 0, proc.stderr
    assert set(files_in(out)) == OUTPUT_NAMES
    printed = proc.stdout.split()
    assert len(printed) == 4 and all(p.startswith(str(out)) for p in printed)
    png_is_not_blank(out / "compare.png")


def test_cli_compare_bad_input_is_one_line_and_no_output(tmp_path, run_dicyc):
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    b = tmp_path / "b.nii.gz"
    write_volume(phantom(), b)
    out = tmp_path / "out"
    proc = run_dicyc("compare", "--a", text, "--b", b, "--out", out)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "notes.txt" in proc.stderr
    assert files_in(out) == []
    proc = run_dicyc("compare", "--a", b, "--b", b, "--out", out, "--point", "0,0,99")
    assert proc.returncode == 1 and "outside A" in proc.stderr and "Traceback" not in proc.stderr
    assert files_in(out) == []


# ===================================================================== real data
def test_real_brainweb_pair_montage(tmp_path):
    samples = pytest.importorskip("dicyc.samples")
    try:
        paths = samples.prepare(["brainweb-pd", "brainweb-pd-shifted13x17y"], log=lambda message: None)
    except DicycError as exc:  # the package shipping the sample is not installed here
        pytest.skip(str(exc))
    a, b = paths["brainweb-pd"], paths["brainweb-pd-shifted13x17y"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = views.compare_files(a, b, tmp_path / "out", tiles=8)
    png_is_not_blank(written["montage"])
    summary = json.loads(written["metrics"].read_text())
    assert summary["metrics"]["mae"] > 0  # a shifted copy is not identical
    error = read_volume(written["error"])
    assert error.array.max() > 0
