"""The geometry measure: registration recovers how much of a known deformation a synthesis carries."""

import numpy as np
import pytest

from dicyc.deform import ScannerDeformation, deform_volume
from dicyc.geometry import displacement_field, geometry_scores
from dicyc.volume import Volume


@pytest.fixture(scope="module")
def anatomy():
    """The noise-free T2 of a phantom subject (real MNI152 anatomy), the middle 12 slices."""
    from dicyc import phantom

    volumes, _ = phantom.simulate_subject(phantom.load_template(3.6), 0, seed=0)
    t2, mask = volumes["t2_clean"], volumes["mask"]
    z = t2.shape[0] // 2
    keep = slice(z - 6, z + 6)
    return Volume(t2.array[keep], t2.spacing), mask.array[keep] > 0


def test_full_half_and_no_reproduction_of_a_known_deformation(anatomy):
    vol, mask = anatomy
    field = ScannerDeformation(seed=2, magnitude_px=3.0).field_for(vol, 0)
    full = deform_volume(vol, field).array
    half = deform_volume(vol, 0.5 * field).array
    noisy = vol.array + np.random.default_rng(1).normal(0, 10, vol.shape)
    f = geometry_scores(full, vol.array, mask, spacing=vol.spacing, known_field=field)
    h = geometry_scores(half, vol.array, mask, spacing=vol.spacing, known_field=field)
    n = geometry_scores(noisy, vol.array, mask, spacing=vol.spacing, known_field=field)
    assert f["reproduced"] > 0.75 and 0.3 < h["reproduced"] < 0.7 and abs(n["reproduced"]) < 0.1
    assert f["displacement_mm"] > h["displacement_mm"] > n["displacement_mm"]
    # undoing the deformation counts with sign -1: the reference sits in the deformed geometry
    undone = geometry_scores(vol.array, full, mask, spacing=vol.spacing, known_field=field, sign=-1.0)
    assert undone["reproduced"] > 0.75


def test_the_measure_ignores_contrast(anatomy):
    """Another monotone contrast of the same geometry is no displacement; of the deformed one it is."""
    vol, mask = anatomy
    field = ScannerDeformation(seed=2, magnitude_px=3.0).field_for(vol, 0)
    recontrasted = np.sqrt(np.clip(vol.array, 0, None)) * 7.0
    same = geometry_scores(recontrasted, vol.array, mask, spacing=vol.spacing, known_field=field)
    moved = geometry_scores(deform_volume(vol.with_array(recontrasted.astype(np.float32)), field).array, vol.array,
                            mask, spacing=vol.spacing, known_field=field)
    assert abs(same["reproduced"]) < 0.15 and moved["reproduced"] > 0.7


def test_displacement_field_in_two_dimensions_recovers_a_shift():
    from scipy import ndimage

    image = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(48, 48)), 3)
    shifted = ndimage.shift(image, (0.0, 1.5), order=1, mode="nearest")  # content moves +1.5 px in x
    u = displacement_field(shifted, image)
    assert u.shape == (2, 48, 48)
    inner = (slice(8, -8), slice(8, -8))
    assert np.median(u[1][inner]) == pytest.approx(-1.5, abs=0.3) and abs(np.median(u[0][inner])) < 0.3


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        displacement_field(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="empty"):
        geometry_scores(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), np.zeros((2, 8, 8), bool))


def test_outline_dice_tells_which_geometry_a_synthesis_follows(anatomy):
    from dicyc.geometry import outline_dice

    vol, mask = anatomy
    field = ScannerDeformation(seed=2, magnitude_px=4.0).field_for(vol, 0)
    moved_mask = deform_volume(vol.with_array(mask.astype(np.uint8)), field, interpolation="nearest").array > 0
    moved = deform_volume(vol, field).array
    assert outline_dice(vol.array, mask) > 0.9
    assert outline_dice(vol.array, mask) > outline_dice(vol.array, moved_mask)
    assert outline_dice(moved, moved_mask) > outline_dice(moved, mask)
