"""Volume I/O: geometry survives a round trip through every format, and bad files are refused."""

import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dicyc.errors import DicycError
from dicyc.volume import Volume, read_mask, read_volume, write_volume

OBLIQUE = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix()


def _volume(dtype=np.int16, shape=(5, 7, 9), seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 2000, size=shape).astype(dtype)
    return Volume(arr, (0.9570312, 0.8, 1.5), (-12.3456789, 45.6, -78.9), OBLIQUE)


# NIfTI stores geometry as float32 in its header: exact to float32 precision, not beyond.
FORMATS = [(".nii.gz", 2e-5), (".nii", 2e-5), (".nrrd", 1e-12), (".nhdr", 1e-12), (".mha", 1e-12), (".mhd", 1e-12), ("", 1e-8)]


@pytest.mark.parametrize("ext,tol", FORMATS, ids=[e or "dicom-folder" for e, _ in FORMATS])
def test_round_trip_keeps_values_and_geometry(tmp_path, ext, tol):
    vol = _volume()
    path = tmp_path / ("vol" + ext if ext else "series")
    write_volume(vol, path)
    back = read_volume(path)
    assert np.array_equal(back.array, vol.array)
    assert back.array.shape == vol.array.shape
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=tol)
    np.testing.assert_allclose(back.origin, vol.origin, atol=tol * 100)
    np.testing.assert_allclose(back.direction, vol.direction, atol=tol)
    np.testing.assert_allclose(back.ijk_to_ras(), vol.ijk_to_ras(), atol=tol * 100)


def test_single_dicom_file_round_trip_with_real_values(tmp_path):
    vol = Volume(np.linspace(-3.5, 7.25, 63, dtype=np.float32).reshape(1, 7, 9), (0.5, 0.6, 2.5), (1.0, 2.0, 3.0), OBLIQUE)
    path = tmp_path / "slice.dcm"
    write_volume(vol, path)
    back = read_volume(path)
    np.testing.assert_allclose(back.array, vol.array, atol=1e-3)  # int16 with rescale slope
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-6)  # z from SliceThickness
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-6)


def test_multislice_single_dicom_file_is_refused(tmp_path):
    with pytest.raises(DicycError, match="single DICOM file holds one slice"):
        write_volume(_volume(), tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())


def test_write_is_atomic_no_temporary_files_left(tmp_path):
    write_volume(_volume(), tmp_path / "a.nii.gz")
    write_volume(_volume(seed=1), tmp_path / "a.nii.gz")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]
    assert np.array_equal(read_volume(tmp_path / "a.nii.gz").array, _volume(seed=1).array)


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    import SimpleITK as sitk

    target = tmp_path / "a.nii.gz"
    write_volume(_volume(), target)
    before = target.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(DicycError, match=r"could not write .*a\.nii\.gz: disk full\."):  # one sentence, not a traceback
        write_volume(_volume(seed=3), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


def test_ijk_to_ras_round_trip_and_slicer_convention():
    vol = _volume()
    m = vol.ijk_to_ras()
    again = Volume.from_ijk_to_ras(vol.array, m)
    np.testing.assert_allclose(again.spacing, vol.spacing)
    np.testing.assert_allclose(again.origin, vol.origin)
    np.testing.assert_allclose(again.direction, vol.direction, atol=1e-12)
    # LPS -> RAS flips the first two axes
    np.testing.assert_allclose(m[:3, 3], [12.3456789, -45.6, -78.9])


def test_physical_point_of_a_voxel_matches_simpleitk():
    vol = _volume()
    img = vol.to_sitk()
    idx = (3, 4, 2)
    expected = img.TransformIndexToPhysicalPoint(idx)
    got = vol.ijk_to_lps() @ np.array([*idx, 1.0])
    np.testing.assert_allclose(got[:3], expected, atol=1e-9)


# ----------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(DicycError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")


def test_non_image_file(tmp_path):
    p = tmp_path / "notes.nii.gz"
    p.write_text("this is not an image")
    with pytest.raises(DicycError, match="not an image file"):
        read_volume(p)


def test_empty_file_and_empty_folder(tmp_path):
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(DicycError, match="empty file"):
        read_volume(tmp_path / "empty.nrrd")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DicycError, match="empty folder"):
        read_volume(tmp_path / "folder")
    (tmp_path / "folder" / "x.txt").write_text("x")
    with pytest.raises(DicycError, match="no DICOM series"):
        read_volume(tmp_path / "folder")


def test_2d_image_refused_unless_allowed(tmp_path):
    import SimpleITK as sitk

    p = tmp_path / "slice.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(12, dtype=np.uint8).reshape(3, 4)), str(p))
    with pytest.raises(DicycError, match="2-D image"):
        read_volume(p)
    vol = read_volume(p, allow_2d=True)
    assert vol.shape == (1, 3, 4)


def test_4d_refused_but_single_frame_4d_accepted(tmp_path):
    import nibabel

    nibabel.save(nibabel.Nifti1Image(np.zeros((5, 4, 3, 2), np.float32), np.eye(4)), str(tmp_path / "four.nii.gz"))
    with pytest.raises(DicycError, match="4-D"):
        read_volume(tmp_path / "four.nii.gz")
    nibabel.save(nibabel.Nifti1Image(np.ones((5, 4, 3, 1), np.float32), np.eye(4)), str(tmp_path / "one.nii.gz"))
    assert read_volume(tmp_path / "one.nii.gz").shape == (3, 4, 5)


def test_nan_and_inf_refused(tmp_path):
    arr = np.zeros((3, 4, 5), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    # ITK's NIfTI reader turns NaN/Inf into 0: the check must see the raw file
    write_volume(Volume(arr), tmp_path / "nan.nii.gz")
    with pytest.raises(DicycError, match="2 NaN or infinite"):
        read_volume(tmp_path / "nan.nii.gz")
    write_volume(Volume(arr), tmp_path / "nan.nrrd")
    with pytest.raises(DicycError, match="2 NaN or infinite"):
        read_volume(tmp_path / "nan.nrrd")


def test_colour_image_refused_grey_rgb_accepted(tmp_path):
    import SimpleITK as sitk

    grey = np.repeat(np.arange(12, dtype=np.uint8).reshape(3, 4, 1), 3, axis=2)
    sitk.WriteImage(sitk.GetImageFromArray(grey, isVector=True), str(tmp_path / "grey.png"))
    assert read_volume(tmp_path / "grey.png", allow_2d=True).array[0, 2, 3] == 11
    colour = grey.copy()
    colour[0, 0] = (255, 0, 0)
    sitk.WriteImage(sitk.GetImageFromArray(colour, isVector=True), str(tmp_path / "colour.png"))
    with pytest.raises(DicycError, match="colour image"):
        read_volume(tmp_path / "colour.png", allow_2d=True)


def test_mask_checks(tmp_path):
    ref = Volume(np.zeros((4, 5, 6), np.float32), (1, 1, 1), (0, 0, 0))
    write_volume(ref, tmp_path / "empty_mask.nii.gz")
    with pytest.raises(DicycError, match="empty mask"):
        read_mask(tmp_path / "empty_mask.nii.gz", ref)
    far = Volume(np.ones((4, 5, 6), np.uint8), (1, 1, 1), (500, 500, 500))
    write_volume(far, tmp_path / "far.nii.gz")
    with pytest.raises(DicycError, match="outside"):
        read_mask(tmp_path / "far.nii.gz", ref)
    # a mask on a finer grid is resampled (nearest) onto the reference grid
    fine = np.zeros((8, 10, 12), np.uint8)
    fine[2:4, 2:4, 2:4] = 1
    write_volume(Volume(fine, (0.5, 0.5, 0.5), (-0.25, -0.25, -0.25)), tmp_path / "fine.nii.gz")
    mask = read_mask(tmp_path / "fine.nii.gz", ref)
    assert mask.shape == ref.shape and mask[1, 1, 1] and mask.sum() == 1


def test_unknown_extension_refused(tmp_path):
    with pytest.raises(DicycError, match="unknown image extension"):
        write_volume(_volume(), tmp_path / "vol.xyz")
    assert not list(tmp_path.iterdir())


def test_dicom_series_overwrite_replaces_folder(tmp_path):
    target = tmp_path / "series"
    write_volume(_volume(shape=(4, 6, 6)), target)
    write_volume(_volume(shape=(2, 6, 6), seed=5), target)
    assert len(os.listdir(target)) == 2
    assert read_volume(target).shape == (2, 6, 6)
    assert [p.name for p in tmp_path.iterdir()] == ["series"]
