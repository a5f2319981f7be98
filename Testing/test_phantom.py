"""The multi-sequence phantom (dicyc.phantom) and the scanner deformations (dicyc.deform).

The phantom is built from the real MNI152 maps in the sample cache (``dicyc samples mni-t1 mni-gm
mni-wm``; fetched once if absent), at a coarse 4 mm and with few subjects to stay fast.
"""

import json
import math

import numpy as np
import pytest

from dicyc import phantom, samples
from dicyc.deform import (
    ScannerDeformation,
    deform_volume,
    field_magnitude,
    interpolation_matrix,
    jacobian_determinant,
    smooth_field,
)
from dicyc.errors import DicycError
from dicyc.volume import Volume, read_volume

SPACING = 4.0


@pytest.fixture(scope="module")
def template():
    return phantom.load_template(SPACING)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    logs = []
    path = phantom.make_cohort(out, n_subjects=3, n_test=1, spacing=SPACING, seed=7, log=logs.append)
    return path


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


# ===================================================================== signal model
def test_tissue_parameters_are_brainwebs_published_values():
    p = phantom.TISSUE_PARAMS
    assert (p["csf"]["t1"], p["csf"]["t2"], p["csf"]["pd"]) == (2569.0, 329.0, 1.0)
    assert (p["gm"]["t1"], p["gm"]["t2"], p["gm"]["pd"]) == (833.0, 83.0, 0.86)
    assert (p["wm"]["t1"], p["wm"]["t2"], p["wm"]["pd"]) == (500.0, 70.0, 0.77)


@pytest.mark.parametrize("jitter_seed", [None, 0, 1, 2, 3])
def test_pure_tissue_contrast_ordering(jitter_seed):
    params = phantom.TISSUE_PARAMS if jitter_seed is None else phantom.jittered_params(
        np.random.default_rng(jitter_seed), phantom.DEFAULTS["jitter"])
    pure = {t: {u: np.array([1.0 if u == t else 0.0]) for u in phantom.TISSUES} for t in phantom.TISSUES}
    s = {seq: {t: float(phantom.spin_echo(pure[t], params, spec["tr"], spec["te"])[0]) for t in phantom.TISSUES}
         for seq, spec in phantom.SEQUENCES.items()}
    assert s["t2"]["csf"] > s["t2"]["gm"] > s["t2"]["wm"]
    assert s["t1"]["wm"] > s["t1"]["gm"] > s["t1"]["csf"]
    assert s["pd"]["csf"] >= s["pd"]["gm"] > s["pd"]["wm"]


def test_simulated_subject_contrast_on_tissue_dominated_voxels(template):
    vols, info = phantom.simulate_subject(template, 1, seed=3, noise=0.0, inu=0.0, return_fractions=True)
    frac = vols["fractions"]
    mean = {}
    for seq in phantom.SEQUENCES:
        arr = vols[seq].array
        mean[seq] = {}
        for t in phantom.TISSUES:
            sel = frac[t] > 0.8
            assert sel.sum() >= 10, t
            mean[seq][t] = float(arr[sel].mean())
    assert mean["t2"]["csf"] > mean["t2"]["gm"] > mean["t2"]["wm"]
    assert mean["t1"]["wm"] > mean["t1"]["gm"] > mean["t1"]["csf"]
    assert mean["pd"]["csf"] >= mean["pd"]["gm"] > mean["pd"]["wm"]
    # noise-free and uniform: an exactly pure voxel has exactly the tissue's signal, background is 0
    wm = frac["wm"] > 0.999
    if wm.any():
        expected = phantom.tissue_signal(info["tissue_params"]["wm"], 500.0, 15.0)
        assert np.allclose(vols["t1"].array[wm], expected, rtol=2e-3)
    empty = (frac["csf"] + frac["gm"] + frac["wm"]) == 0
    assert empty.sum() > 1000 and np.all(vols["pd"].array[empty] == 0)


def test_fractions_are_partial_volumes_of_the_brain(template):
    total = sum(template.fractions[t] for t in phantom.TISSUES)
    assert total.max() <= 1.0 + 1e-5 and total.min() >= 0.0
    from scipy import ndimage

    # CSF is what of the brain region is neither GM nor WM: the three fill it exactly
    gm_wm = template.fractions["gm"] + template.fractions["wm"]
    assert np.allclose(total, np.maximum(template.brain, gm_wm), atol=1e-5)
    inside = template.brain >= 0.5
    interior = ndimage.binary_erosion(inside, iterations=2)
    assert np.mean(total[interior] > 0.95) > 0.95  # away from the outer boundary: no partial volume
    assert template.fractions["csf"][inside].mean() > 0.03  # ventricles, sulci and the outer rim
    assert np.all(total[template.brain == 0] == 0)


def test_rician_noise_statistics_in_background(template):
    vols, info = phantom.simulate_subject(template, 0, seed=5, return_fractions=True)
    frac = vols["fractions"]
    background = (frac["csf"] + frac["gm"] + frac["wm"]) == 0
    assert background.sum() > 20000
    for seq in phantom.SEQUENCES:
        sigma = info["sigma"][seq]
        values = vols[seq].array[background].astype(np.float64)
        assert values.min() >= 0
        # Rayleigh: mean sigma*sqrt(pi/2), sd sigma*sqrt(2 - pi/2)
        assert values.mean() / sigma == pytest.approx(math.sqrt(math.pi / 2), rel=0.02)
        assert values.std() / sigma == pytest.approx(math.sqrt(2 - math.pi / 2), rel=0.03)
    # sigma is 3 % of the noise-reference tissue's signal (CSF for PD/T2, WM for T1)
    p = info["tissue_params"]
    assert info["sigma"]["t1"] == pytest.approx(0.03 * phantom.tissue_signal(p["wm"], 500.0, 15.0))
    assert info["sigma"]["t2"] == pytest.approx(0.03 * phantom.tissue_signal(p["csf"], 3300.0, 120.0))


def test_rician_of_a_bright_signal_is_nearly_gaussian():
    rng = np.random.default_rng(0)
    out = phantom.rician(np.full(200000, 100.0, np.float32), 5.0, rng)
    assert out.mean() == pytest.approx(math.sqrt(100.0**2 + 5.0**2), rel=2e-3)
    assert out.std() == pytest.approx(5.0, rel=0.02)
    assert np.array_equal(phantom.rician(np.ones(4), 0.0, rng), np.ones(4, np.float32))


def test_bias_field_spans_the_requested_range(template):
    mask = template.brain >= 0.5
    field = phantom._inu_field(template.grid.shape, mask, np.random.default_rng(1), 0.2)
    assert field[mask].min() == pytest.approx(0.9, abs=1e-5)
    assert field[mask].max() == pytest.approx(1.1, abs=1e-5)
    # smooth: neighbouring voxels differ by a small fraction of the range
    assert np.abs(np.diff(field, axis=2)).max() < 0.05


def test_simulation_is_deterministic_from_the_seed(template):
    a, ia = phantom.simulate_subject(template, 2, seed=11)
    b, ib = phantom.simulate_subject(template, 2, seed=11)
    c, _ = phantom.simulate_subject(template, 2, seed=12)
    for seq in ("pd", "t2", "t1", "mask"):
        assert np.array_equal(a[seq].array, b[seq].array)
    assert ia == ib
    assert not np.array_equal(a["t2"].array, c["t2"].array)


# ===================================================================== cohort
def test_cohort_files_split_and_lists(cohort):
    record = json.loads((cohort / "cohort.json").read_text())
    assert record["params"]["n_subjects"] == 3 and record["params"]["spacing"] == SPACING
    assert record["split"] == {"train": ["sub-00", "sub-01"], "test": ["sub-02"]}
    assert [s["split"] for s in record["subjects"]] == ["train", "train", "test"]
    for split, names in record["split"].items():
        for seq in ("pd", "t2", "t1", "mask"):
            lines = (cohort / f"{split}_{seq}.txt").read_text().splitlines()
            assert lines == [str(cohort / f"{n}_{seq}.nii.gz") for n in names]
    from dicyc.data import list_volumes

    assert [p.name for p in list_volumes(cohort / "train_t2.txt")] == ["sub-00_t2.nii.gz", "sub-01_t2.nii.gz"]
    assert phantom.cohort_files(cohort, "test", "pd") == [cohort / "sub-02_pd.nii.gz"]
    first = record["subjects"][0]
    assert first["seed"] == [7, 0] and set(first["sigma"]) == {"pd", "t2", "t1"}
    vol = read_volume(cohort / "sub-00_pd.nii.gz")
    assert vol.spacing == (SPACING,) * 3 and vol.array.dtype == np.int16
    assert read_volume(cohort / "sub-00_mask.nii.gz").array.dtype == np.uint8


def test_subjects_differ_in_anatomy_but_sequences_are_pixel_aligned(cohort):
    record = json.loads((cohort / "cohort.json").read_text())
    vols = [{k: read_volume(cohort / s[k]) for k in ("pd", "t2", "t1", "mask")} for s in record["subjects"][:2]]
    masks = [v["mask"].array > 0 for v in vols]
    assert 0.8 < _dice(*masks) < 0.99  # another brain, but a brain of about the same shape
    brain = masks[0] | masks[1]

    def corr(a, b):
        return np.corrcoef(a.array[brain].astype(float), b.array[brain].astype(float))[0, 1]

    for k, j in ((0, 1), (1, 0)):
        for seq in ("pd", "t2", "t1"):
            assert vols[k][seq].same_grid(vols[k]["mask"])
        # PD shares its edges with T2 and T1 of the same subject, far less with another subject's
        for seq in ("t2", "t1"):
            own, other = corr(vols[k]["pd"], vols[k][seq]), corr(vols[k]["pd"], vols[j][seq])
            assert own > other + 0.15, (seq, own, other)


def test_sequences_of_a_subject_are_functions_of_one_anatomy(template):
    a, _ = phantom.simulate_subject(template, 0, seed=2, noise=0.0, inu=0.0, return_fractions=True)
    b, _ = phantom.simulate_subject(template, 1, seed=2, noise=0.0, inu=0.0, return_fractions=True)

    def residual(fractions, image):
        design = np.stack([fractions[t].ravel() for t in phantom.TISSUES], axis=1).astype(np.float64)
        target = image.array.ravel().astype(np.float64)
        coef = np.linalg.lstsq(design, target, rcond=None)[0]
        return np.sqrt(np.mean((design @ coef - target) ** 2)) / target.std()

    for seq in ("pd", "t2", "t1"):
        assert residual(a["fractions"], a[seq]) < 1e-4  # exactly the same tissue fractions, voxel by voxel
        assert residual(b["fractions"], a[seq]) > 0.1  # another subject's anatomy does not fit
    total = a["fractions"]["csf"] + a["fractions"]["gm"] + a["fractions"]["wm"]
    assert np.mean((a["mask"].array > 0) != (total >= 0.5)) < 1e-3  # the mask is where the brain is


def test_cohort_is_reused_when_parameters_match(cohort):
    stamp = (cohort / "sub-01_t1.nii.gz").stat().st_mtime_ns
    logs = []
    again = phantom.make_cohort(cohort, n_subjects=3, n_test=1, spacing=SPACING, seed=7, log=logs.append)
    assert again == cohort and "up to date" in logs[-1]
    assert (cohort / "sub-01_t1.nii.gz").stat().st_mtime_ns == stamp


def test_cohort_is_deterministic_and_rebuilt_for_new_parameters(cohort, tmp_path):
    other = phantom.make_cohort(tmp_path / "again", n_subjects=2, n_test=1, spacing=SPACING, seed=7)
    for seq in ("pd", "mask"):
        a = read_volume(cohort / f"sub-01_{seq}.nii.gz").array
        b = read_volume(other / f"sub-01_{seq}.nii.gz").array
        assert np.array_equal(a, b)  # subject k depends on (seed, k) only
    assert json.loads((other / "cohort.json").read_text())["split"]["test"] == ["sub-01"]
    logs = []
    phantom.make_cohort(other, n_subjects=2, n_test=1, spacing=SPACING, seed=8, log=logs.append)
    assert "up to date" not in logs[-1]
    assert json.loads((other / "cohort.json").read_text())["params"]["seed"] == 8
    assert not np.array_equal(read_volume(other / "sub-01_pd.nii.gz").array, b)
    with pytest.raises(DicycError):
        phantom.make_cohort(tmp_path / "bad", n_subjects=2, n_test=3, spacing=SPACING)
    with pytest.raises(TypeError):
        phantom.make_cohort(tmp_path / "bad", spacing=SPACING, nosie=0.1)


def test_samples_register_the_phantom(tmp_path):
    names = dict(samples.list_samples())
    for name in ("phantom-pd", "phantom-t2", "phantom-t1", "phantom-mask"):
        assert name in names
    folder = samples.prepare_cohort(cache_dir=tmp_path, log=lambda m: None, n_subjects=1, n_test=0, spacing=6.0)
    assert folder.parent == (tmp_path / "phantom").resolve()
    assert (folder / "sub-00_t2.nii.gz").is_file() and (folder / "cohort.json").is_file()
    assert folder.name == phantom.cohort_name(n_subjects=1, n_test=0, spacing=6.0)
    assert phantom.cohort_name() != phantom.cohort_name(noise=0.05)


# ===================================================================== scanner deformation
SHAPE = (6, 128, 128)


def test_interpolation_passes_through_the_control_points():
    m = interpolation_matrix(10, 4)
    assert np.allclose(m.sum(axis=1), 1.0)  # a constant control field stays constant
    assert np.allclose(m[[0, 3, 6, 9]], np.eye(4), atol=1e-12)
    control = np.random.default_rng(0).standard_normal((1, 2, 3, 4))
    field = smooth_field(control, (2, 7, 10))
    assert np.allclose(field[0, :, ::3, ::3], control[0], atol=1e-5)


def test_scanner_field_is_in_plane_smooth_and_has_the_requested_magnitude():
    scanner = ScannerDeformation(seed=3, magnitude_px=6.0)
    field = scanner.field_for(SHAPE, 0)
    assert field.shape == (3,) + SHAPE and field.dtype == np.float32
    assert np.all(field[0] == 0)  # nothing moves across slices
    assert np.all(field == field[:, :1])  # the same 2-D field on every axial slice
    assert field_magnitude(field).max() == pytest.approx(6.0, rel=1e-5)
    assert field_magnitude(field).mean() > 1.5  # several pixels, not one corner
    det = jacobian_determinant(field)
    assert det.min() > 0.5 and det.max() < 1.6  # no folding, bounded volume change
    assert np.abs(np.diff(field, axis=3)).max() < 0.5  # smooth: < half a pixel change per pixel


def test_scanner_field_varies_smoothly_in_z_when_asked():
    field = ScannerDeformation(seed=3, magnitude_px=5.0, grid_z=3).field_for((20, 64, 64), 1)
    assert np.all(field[0] == 0)
    assert not np.allclose(field[:, 0], field[:, -1])
    assert jacobian_determinant(field).min() > 0
    assert field_magnitude(field).max() == pytest.approx(5.0, rel=1e-5)


def test_scanner_fields_per_subject_share_the_systematic_component():
    scanner = ScannerDeformation(seed=3, magnitude_px=6.0, jitter=0.5)
    a, a2 = scanner.field_for(SHAPE, 4), scanner.field_for(SHAPE, 4)
    b, c = scanner.field_for(SHAPE, 5), scanner.field_for(SHAPE, 6)
    assert np.array_equal(a, a2)
    assert not np.allclose(a, b) and not np.allclose(b, c)
    systematic = ScannerDeformation(seed=3, magnitude_px=6.0, jitter=0.0).field_for(SHAPE, 0)
    for f in (a, b, c):
        assert np.corrcoef(f[1:, 0].ravel(), systematic[1:, 0].ravel())[0, 1] > 0.6
    other_scanner = ScannerDeformation(seed=4, magnitude_px=6.0, jitter=0.0).field_for(SHAPE, 0)
    assert abs(np.corrcoef(other_scanner[1:, 0].ravel(), systematic[1:, 0].ravel())[0, 1]) < 0.6
    # without jitter every subject of one scanner gets the same field
    assert np.array_equal(systematic, ScannerDeformation(seed=3, magnitude_px=6.0, jitter=0.0).field_for(SHAPE, 9))


def test_zero_magnitude_is_the_identity():
    arr = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    vol = Volume(arr, (1.8, 1.8, 1.8), (1.0, 2.0, 3.0))
    field = ScannerDeformation(seed=1, magnitude_px=0.0).field_for(vol, 3)
    assert not field.any()
    assert np.array_equal(deform_volume(vol, field).array, arr)
    mask = vol.with_array((arr > 0.5).astype(np.uint8))
    assert np.array_equal(deform_volume(mask, field, interpolation="nearest").array, mask.array)


def test_deform_volume_keeps_the_grid_and_moves_content():
    arr = np.zeros((3, 40, 50), np.float32)
    arr[:, 10:20, 10:20] = 100.0
    direction = np.diag([-1.0, -1.0, 1.0])
    vol = Volume(arr, (1.8, 1.8, 1.8), (5.0, 6.0, 7.0), direction)
    field = np.zeros((3,) + arr.shape, np.float32)
    field[2] = -3.0  # pull from 3 voxels to the left: content moves 3 voxels to the right in x
    out = deform_volume(vol, field)
    assert out.same_grid(vol) and out.array.dtype == np.float32
    assert np.array_equal(out.array[:, 10:20, 13:23], arr[:, 10:20, 10:20])
    mask = vol.with_array((arr > 0).astype(np.uint8))
    moved = deform_volume(mask, ScannerDeformation(seed=2, magnitude_px=4.0).field_for(mask, 0), interpolation="nearest")
    assert moved.same_grid(mask) and moved.array.dtype == np.uint8
    assert set(np.unique(moved.array)) <= {0, 1}
    assert not np.array_equal(moved.array, mask.array)
    with pytest.raises(ValueError):
        deform_volume(vol, field[:, :2])


def test_scanner_field_follows_the_volume_orientation():
    # a volume whose axial slices are stacked along numpy axis 2 (its k axis points left-right)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # columns: i->S, j->P, k->L
    vol = Volume(np.zeros((32, 30, 5), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    field = ScannerDeformation(seed=1, magnitude_px=3.0).field_for(vol, 0)
    assert np.all(field[2] == 0) and field[0].any() and field[1].any()
    assert np.all(field == field[:, :, :, :1])


def test_too_strong_a_deformation_is_refused():
    with pytest.raises(DicycError, match="folds"):
        ScannerDeformation(seed=0, magnitude_px=60.0, grid=8).field_for((1, 64, 64), 0)
    with pytest.raises(ValueError):
        ScannerDeformation(grid=1)
    assert ScannerDeformation.from_dict(ScannerDeformation(seed=5, jitter=0.2).to_dict()).to_dict() == \
        ScannerDeformation(seed=5, jitter=0.2).to_dict()
