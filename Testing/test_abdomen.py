"""The abdominal MR/CT phantom (dicyc.abdomen): real CT anatomy, simulated 3-D, MR and posture.

Built from the real abdominal CT slice in the sample cache (``dicyc samples abdomen-ct-slice``;
fetched once from PyPI pydicom-data if absent), with few, short subjects to stay fast.
"""

import json

import numpy as np
import pytest

from dicyc import abdomen, samples
from dicyc.deform import jacobian_determinant
from dicyc.errors import DicycError

N_SLICES = 8


@pytest.fixture(scope="module")
def template():
    try:
        return abdomen.load_template()
    except DicycError as exc:  # PyPI cannot be reached and the cache has no pydicom-data
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def subject(template):
    return abdomen.simulate_subject(template, 0, seed=5, n_slices=N_SLICES, return_field=True)


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


# ===================================================================== the real slice
def test_segmentation_of_the_real_slice_finds_every_tissue_at_its_hu(template):
    hu = template.median_hu  # the median HU of each class on the real slice
    assert hu["air"] < -950 and hu["gas"] < -600
    assert -130 < hu["fat"] < -60
    assert 20 < hu["soft"] < 80  # muscle, bowel, pancreas
    assert 80 < hu["liver"] < 120  # portal-venous phase
    assert 110 < hu["spleen"] < 150 and hu["spleen"] > hu["liver"]
    assert 120 < hu["kidney"] < 200
    assert 180 < hu["aorta"] < 300 and 150 < hu["blood"] < 250  # contrast-enhanced
    assert 150 < hu["spine_marrow"] < 350 and hu["spine_cortex"] > 500
    assert hu["canal"] < 100
    lab = template.labels
    for cls in range(len(abdomen.CLASSES)):
        assert (lab == cls).any(), abdomen.CLASSES[cls]
    # anatomy: the aorta lies in front of the spine, near the midline; the table behind the body
    (ay, ax), (sy, sx) = template.landmarks["aorta_center"], template.landmarks["spine_center"]
    px = template.px
    assert 10 < (sy - ay) * px < 70 and abs(ax - sx) * px < 30
    assert 5 < template.landmarks["aorta_radius"] * px < 15  # a normal aorta at the renal level
    mid = int(round(sx))  # at the midline, the curved table lies behind the body's back
    table_rows = np.nonzero(lab[:, mid] == abdomen.TABLE)[0]
    body_rows = np.nonzero(template.body[:, mid])[0]
    assert table_rows.min() > body_rows.max()
    sides = np.nonzero((lab == abdomen.TABLE).any(axis=1))[0]
    assert sides.min() < table_rows.min() - 20  # and it curves up at the sides
    # both kidneys, one each side of the spine, and the liver on the patient's right (low columns)
    names = {s["name"] for s in template.structures}
    assert {"liver", "spleen", "kidney_left", "kidney_right", "ribs"} <= names
    liver_cols = np.nonzero(lab == abdomen.LIVER)[1]
    assert liver_cols.mean() < sx


def test_mr_tissue_values_are_the_cited_ones_and_order_plausibly():
    t = abdomen.TISSUE_MR
    assert (t["liver"]["t1"], t["liver"]["t2"]) == (586.0, 46.0)  # de Bazelaire et al. 2004, 1.5 T
    assert (t["kidney"]["t1"], t["kidney"]["t2"]) == (966.0, 87.0)
    assert (t["blood"]["t1"], t["blood"]["t2"]) == (1441.0, 290.0)  # Stanisz et al. 2005, 1.5 T
    assert 28 < abdomen.t2star(t["liver"]) < 35  # normal liver T2* at 1.5 T
    s = {n: abdomen.tissue_signal(p) for n, p in t.items()}
    assert s["fat"] > s["kidney"] > s["soft"] > s["spine_marrow"] > 0  # fat bright, marrow dark on T2*-w GRE
    assert s["fat"] > s["aorta"] > s["soft"]


# ===================================================================== one subject
def test_ct_is_in_hu_with_its_table_and_the_mr_has_none(subject):
    v, info = subject
    ct, mr = v["ct"].array, v["mr"].array
    labels = v["labels_ct"].array
    assert v["ct"].spacing == abdomen.GRID_SPACING and ct.shape == (N_SLICES, abdomen.GRID_SIZE[1], abdomen.GRID_SIZE[0])
    air = labels == abdomen.AIR
    assert abs(np.median(ct[air]) + 1000) < 30
    fat = labels == abdomen.FAT
    assert -140 < np.median(ct[fat]) < -60
    table = v["table_ct"].array.astype(bool)
    assert table.sum() > 1000 and (ct[table] > -500).mean() > 0.1  # the curved couch's shell is dense
    assert not (table & v["body_ct"].array.astype(bool)).any()
    # the MR: nothing but noise where the CT has its table, and nowhere an MR body there
    sigma = info["sigma_mr"]
    assert mr[table].mean() < 3.0 * sigma
    assert not (v["body_mr"].array.astype(bool) & table).any()
    assert v["labels_mr"].array.max() < abdomen.TABLE
    # the ground truths carry no table either way
    assert (v["ct_in_mr"].array[table] < -900).mean() > 0.95
    assert np.abs(v["mr_in_ct"].array[table]).max() < 1e-3


def test_masks_overlap_the_right_tissues(subject):
    v, info = subject
    ct = v["ct_clean"].array
    aorta_ct, spine_ct = v["aorta_ct"].array.astype(bool), v["spine_ct"].array.astype(bool)
    assert aorta_ct.sum() > 100 and spine_ct.sum() > 100
    assert 150 < np.median(ct[aorta_ct]) < 320  # enhanced blood
    assert np.median(ct[spine_ct]) > 150 and np.percentile(ct[spine_ct], 95) > 400  # marrow and cortex
    assert np.isin(v["labels_ct"].array[aorta_ct], [abdomen.AORTA]).mean() > 0.9
    assert np.isin(v["labels_ct"].array[spine_ct], abdomen.SPINE_CLASSES).mean() > 0.9
    mr = v["mr_clean"].array
    aorta_mr, spine_mr = v["aorta_mr"].array.astype(bool), v["spine_mr"].array.astype(bool)
    assert abs(np.median(mr[aorta_mr]) - info["mr_signal"]["aorta"]) < 0.1 * info["mr_signal"]["aorta"]
    assert np.median(mr[spine_mr]) < 0.5 * info["mr_signal"]["fat"]  # dark marrow, no cortical signal
    # each ground truth lies in the other modality's geometry: the CT in MR posture has its aorta on the MR's
    assert 150 < np.median(v["ct_in_mr"].array[aorta_mr]) < 320
    assert abs(np.median(v["mr_in_ct"].array[aorta_ct]) - info["mr_signal"]["aorta"]) < 0.1 * info["mr_signal"]["aorta"]


def test_subjects_are_deterministic_and_differ(template, subject):
    again, info = abdomen.simulate_subject(template, 0, seed=5, n_slices=N_SLICES)
    for key in ("ct", "mr", "aorta_mr", "spine_ct"):
        np.testing.assert_array_equal(again[key].array, subject[0][key].array)
    other, other_info = abdomen.simulate_subject(template, 1, seed=5, n_slices=N_SLICES)
    assert other_info["profile"] != info["profile"]
    assert not np.array_equal(other["ct"].array, again["ct"].array)


def test_the_posture_is_smooth_and_no_single_affine_aligns_aorta_and_spine(subject):
    v, info = subject
    field = v["posture"]  # CT → MR pull-back, voxels: MR[p] = CT[p + field(p)]
    assert jacobian_determinant(field).min() > 0.1  # no folding
    sp = np.array(abdomen.GRID_SPACING[::-1])  # (z, y, x) mm

    def correspondences(mask):
        p = np.argwhere(mask).astype(float)
        q = p + field[:, mask].T
        return p * sp, q * sp

    def fit(p, q):
        design = np.column_stack([p, np.ones(len(p))])
        coef, *_ = np.linalg.lstsq(design, q, rcond=None)
        return coef

    def error(coef, p, q):
        return np.sqrt(((np.column_stack([p, np.ones(len(p))]) @ coef - q) ** 2).sum(axis=1))

    aorta = correspondences(v["aorta_mr"].array.astype(bool))
    spine = correspondences(v["spine_mr"].array.astype(bool))
    shift = np.hypot(*info["posture"]["aorta_shift"])
    assert 3.0 < shift < 10.0  # "a few mm"
    # each structure alone is (nearly) affine: the aorta moves almost rigidly, the spine not at all
    assert error(fit(*aorta), *aorta).mean() < 1.0
    assert error(fit(*spine), *spine).mean() < 0.1
    # the best affine for the aortas leaves the spines apart by about the shift, and vice versa
    assert error(fit(*aorta), *spine).mean() > 0.5 * shift
    assert error(fit(*spine), *aorta).mean() > 0.5 * shift
    # one affine fitted to both leaves one or the other misaligned by millimetres
    both = (np.vstack([aorta[0], spine[0]]), np.vstack([aorta[1], spine[1]]))
    joint = fit(*both)
    assert max(error(joint, *aorta).mean(), error(joint, *spine).mean()) > 1.5
    # and the masks say the same: identical spines, aortas a few mm apart
    assert _dice(v["spine_ct"].array, v["spine_mr"].array) > 0.99
    assert _dice(v["aorta_ct"].array, v["aorta_mr"].array) < 0.85


def test_the_mr_back_is_flatter_and_its_front_further_forward(subject):
    v, _ = subject
    k = N_SLICES // 2
    b_ct, b_mr = v["body_ct"].array[k].astype(bool), v["body_mr"].array[k].astype(bool)
    cols = np.nonzero(b_ct.any(axis=0) & b_mr.any(axis=0))[0]
    cols = cols[len(cols) // 6 : -len(cols) // 6]  # the back that rests on the table

    def back(b):
        return np.array([np.nonzero(b[:, c])[0].max() for c in cols])

    assert np.ptp(back(b_mr)) < np.ptp(back(b_ct))  # flatter
    front_ct = np.nonzero(b_ct.any(axis=1))[0].min()
    front_mr = np.nonzero(b_mr.any(axis=1))[0].min()
    assert front_mr < front_ct  # the anterior wall moved forward


def test_along_z_organs_end_and_the_aorta_widens(template):
    p = abdomen.draw_profile(np.random.default_rng(0))
    assert abdomen.extent("spleen", -60.0, p) == 0.0 and abdomen.extent("spleen", 0.0, p) == pytest.approx(1.0)
    assert abdomen.extent("ribs", -60.0, p) == 0.0
    assert abdomen.extent("liver", -100.0, p) == 0.0 and abdomen.extent("liver", 40.0, p) > 1.0
    r0 = template.landmarks["aorta_radius"] * template.px
    widest = abdomen.aorta_geometry(p["aaa_center"], p, r0)[0][2]
    assert widest == pytest.approx(p["aaa_diameter_mm"] / 2.0)
    assert len(abdomen.aorta_geometry(p["bifurcation"] - 5.0, p, r0)) == 2  # the common iliac arteries
    low, _ = abdomen.slice_labels(template, -100.0, p)
    high, _ = abdomen.slice_labels(template, 40.0, p)
    assert not (low == abdomen.SPLEEN).any() and (high == abdomen.SPLEEN).any()
    assert not (low == abdomen.LIVER).any() and (high == abdomen.LIVER).sum() > (template.labels == abdomen.LIVER).sum()


# ===================================================================== cohort and samples
def test_cohort_files_split_lists_and_reuse(tmp_path):
    try:
        out = abdomen.make_cohort(tmp_path / "c", n_subjects=2, n_test=1, seed=3, n_slices=3)
    except DicycError as exc:
        pytest.skip(str(exc))
    record = json.loads((out / "cohort.json").read_text())
    assert record["split"] == {"train": ["sub-00"], "test": ["sub-01"]}
    assert record["params"]["grid_spacing"] == list(abdomen.GRID_SPACING)
    for key in abdomen.VOLUME_KEYS:
        assert (out / f"sub-00_{key}.nii.gz").is_file()
        assert (out / f"test_{key}.txt").read_text().strip() == str(out / f"sub-01_{key}.nii.gz")
    from dicyc.volume import read_volume

    assert read_volume(out / "sub-00_ct.nii.gz").array.dtype == np.int16
    assert abdomen.cohort_files(out, "train", "mr") == [out / "sub-00_mr.nii.gz"]
    stamp = (out / "sub-00_ct.nii.gz").stat().st_mtime_ns
    messages = []
    abdomen.make_cohort(tmp_path / "c", n_subjects=2, n_test=1, seed=3, n_slices=3, log=messages.append)
    assert (out / "sub-00_ct.nii.gz").stat().st_mtime_ns == stamp and "up to date" in messages[-1]
    with pytest.raises(DicycError, match="n_test"):
        abdomen.make_cohort(tmp_path / "d", n_subjects=2, n_test=3)
    with pytest.raises(TypeError):
        abdomen.make_cohort(tmp_path / "d", bogus=1)


def test_samples_list_names_the_abdominal_phantom():
    names = dict(samples.list_samples())
    for name in ("abdomen-ct", "abdomen-mr", "abdomen-aorta-ct", "abdomen-spine-ct", "abdomen-aorta-mr",
                 "abdomen-spine-mr", "abdomen-ct-in-mr", "abdomen-mr-in-ct"):
        assert name in names and names[name].strip()
