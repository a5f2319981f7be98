"""Modalities: recorded in files, recognised from HU statistics, and the rule for two volumes (dicyc.modality)."""

import numpy as np
import pytest

from dicyc import modality
from dicyc.errors import DicycError
from dicyc.volume import Volume, read_modality, read_volume, record_modality, write_volume


def head(ct, shape=(10, 40, 40), seed=0):
    """A round head: CT in HU (air, soft tissue, a skull ring) or an MR-like volume (background near 0)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    r2 = (y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2
    inside, skull = r2 < 15 ** 2, (r2 < 15 ** 2) & (r2 > 12 ** 2)
    if ct:
        arr = np.where(inside, 35.0, -1000.0) + np.where(skull, 1000.0, 0.0) + rng.normal(0, 15, shape)
    else:
        arr = np.where(inside, 300.0, 5.0) - np.where(skull, 250.0, 0.0) + np.abs(rng.normal(0, 8, shape))
    return Volume(arr.astype(np.float32), (2.0, 2.0, 3.0))


# ===================================================================== the HU rule
def test_hu_rule_recognises_ct_and_nothing_else():
    ct, mr = head(ct=True), head(ct=False)
    assert modality.looks_like_ct(ct.array)
    assert modality.looks_like_ct(ct.array.astype(np.int16))
    assert not modality.looks_like_ct(mr.array)
    # the same CT in other units or scales is not "CT by its HU"
    assert not modality.looks_like_ct(ct.array + 1024.0)  # stored without its rescale
    assert not modality.looks_like_ct((ct.array - ct.array.mean()) / ct.array.std())  # z-scored
    assert not modality.looks_like_ct(ct.array / 1000.0)
    assert not modality.looks_like_ct(np.clip(ct.array, -200, None))  # no air
    assert not modality.looks_like_ct(np.where(ct.array > -500, 1500.0, -1000.0))  # air and bone only
    padded = ct.array.copy()
    padded[:, :, :3] = -3024.0  # outside the scanner's field of view
    assert modality.looks_like_ct(padded)
    padded[0, 0, 0] = -5000.0
    assert not modality.looks_like_ct(padded)
    assert not modality.looks_like_ct(np.zeros((0, 3, 3)))


def test_same_modality_rules():
    assert modality.same_modality("CT", "ct") is True
    assert modality.same_modality("CT", "MR") is False
    assert modality.same_modality("T1", "CT") is False
    assert modality.same_modality("T1", "T2") is False  # two MR weightings are two contrasts
    assert modality.same_modality("MR", "T2") is True  # plain MR says nothing about the weighting
    assert modality.same_modality("PD", "pd") is True
    assert modality.same_modality(None, "CT") is None
    assert modality.normalize(" t2* ") == "T2*" and modality.normalize("") is None
    with pytest.raises(DicycError, match="not a modality name"):
        modality.normalize("T1 weighted")


def test_resolve_takes_the_best_evidence_in_order(tmp_path):
    ct, mr = head(ct=True), head(ct=False)
    # HU statistics only: a CT against what is not CT-like is cross-modality; two unknowns are one
    r = modality.resolve(ct, mr)
    assert r["cross_modality"] and r["a"] == {"modality": "CT", "source": "HU statistics"}
    assert r["b"] == {"modality": None, "source": "unknown"}
    assert not modality.resolve(mr, mr)["cross_modality"]
    assert not modality.resolve(ct, ct)["cross_modality"]
    # what a file records beats the HU look; the user's word beats the file
    write_volume(mr, tmp_path / "t2.nii.gz", modality="T2")
    write_volume(mr, tmp_path / "t1.nrrd", modality="T1")
    r = modality.resolve(mr, mr, path_a=tmp_path / "t2.nii.gz", path_b=tmp_path / "t1.nrrd")
    assert r["cross_modality"] and r["a"]["source"] == "file" and r["a"]["modality"] == "T2"
    r = modality.resolve(mr, mr, modality_a="T1", path_a=tmp_path / "t2.nii.gz", path_b=tmp_path / "t1.nrrd")
    assert not r["cross_modality"] and r["a"] == {"modality": "T1", "source": "option"}
    # a recorded CT that does not look like one (a collapsed generator) is still a CT
    flat = mr.with_array(np.full(mr.shape, 40.0, np.float32))
    write_volume(flat, tmp_path / "flat-ct.nii.gz", modality="CT")
    assert modality.resolve(flat, mr, path_a=tmp_path / "flat-ct.nii.gz")["cross_modality"]
    # the flag decides, whatever the evidence
    assert not modality.resolve(ct, mr, cross_modality=False)["cross_modality"]
    assert modality.resolve(mr, mr, cross_modality=True)["decided_by"] == "option"


# ===================================================================== recorded in the file
@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.nrrd", "v.mha", "v.mhd", "series"])
def test_write_volume_records_the_modality_in_every_format(tmp_path, name):
    vol = head(ct=True)
    path = tmp_path / name
    write_volume(vol, path, modality="CT")
    assert read_modality(path) == "CT"
    back = read_volume(path)
    assert back.shape == vol.shape and np.allclose(back.spacing, vol.spacing)
    # without a modality nothing is recorded, and record_modality adds it once, keeping the image
    plain = tmp_path / ("plain-" + name)
    write_volume(vol, plain)
    assert read_modality(plain) is None
    assert record_modality(plain, "T2*") is True
    assert read_modality(plain) == "T2*"
    assert record_modality(plain, "t2*") is False  # already recorded: nothing rewritten
    again = read_volume(plain)
    assert np.allclose(again.array, back.array, atol=0.1) and np.allclose(again.origin, back.origin, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic writes leave nothing behind


def test_nifti_descrip_and_dicom_tags_hold_it(tmp_path):
    import nibabel
    import SimpleITK as sitk

    write_volume(head(ct=False), tmp_path / "mr.nii.gz", modality="T1")
    assert b"modality=T1" in nibabel.load(str(tmp_path / "mr.nii.gz")).header["descrip"].tobytes()
    write_volume(head(ct=False), tmp_path / "dicom", modality="T1")
    first = sorted((tmp_path / "dicom").iterdir())[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first))
    reader.ReadImageInformation()
    assert reader.GetMetaData("0008|0060").strip() == "MR"  # the standard tag holds the family
    assert read_modality(tmp_path / "dicom") == "T1"  # the series description keeps the weighting
    with pytest.raises(DicycError, match="not a modality name"):
        write_volume(head(ct=False), tmp_path / "bad.nii.gz", modality="T1 weighted")
    assert not (tmp_path / "bad.nii.gz").exists()


def test_unreadable_or_foreign_files_record_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    assert read_modality(tmp_path / "notes.txt") is None
    assert read_modality(tmp_path / "missing.nii.gz") is None
    (tmp_path / "empty").mkdir()
    assert read_modality(tmp_path / "empty") is None
