"""The abdominal benchmark (dicyc bench abdomen): its scores on known answers, and a tiny run end to end."""

import argparse
import json

import numpy as np
import pytest

from dicyc import abdomen
from dicyc.bench import abdomen as bench
from dicyc.errors import DicycError


@pytest.fixture(scope="module")
def subject():
    try:
        template = abdomen.load_template()
    except DicycError as exc:  # PyPI cannot be reached and the cache has no pydicom-data
        pytest.skip(str(exc))
    volumes, info = abdomen.simulate_subject(template, 2, seed=11, n_slices=6)
    return {k: v.array for k, v in volumes.items()}, info


def _score(v, info, direction, synthesis):
    src, _, ref, geo = bench.CONTROL_KEYS[direction]
    masks = {k: v[f"{k}_{geo}"] > 0 for k in ("aorta", "spine", "body")}
    masks["table"] = v["table_ct"] > 0
    return bench.score_case(synthesis, v[src], v[ref], masks, direction, info["posture"]["aorta_shift"],
                            abdomen.GRID_SPACING)


@pytest.mark.parametrize("direction", ["mr2ct", "ct2mr"])
def test_a_perfect_synthesis_scores_perfectly_and_the_other_posture_does_not(subject, direction):
    v, info = subject
    _, own, ref, _ = bench.CONTROL_KEYS[direction]
    perfect = _score(v, info, direction, v[ref])
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["mse"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["dice_aorta"] == 1.0 and perfect["dice_spine"] == 1.0
    assert perfect["offset_aorta_mm"] < 0.3 and abs(perfect["reproduced"]) < 0.1
    other = _score(v, info, direction, v[own])  # the target modality's own scan: the other posture, all of it
    shift = np.hypot(*info["posture"]["aorta_shift"])
    assert 0.6 < other["reproduced"] < 1.4  # the aorta sits where the other domain has it...
    assert abs(other["offset_aorta_mm"] - shift) < 2.0 and other["dice_aorta"] < 0.85
    assert other["dice_spine"] > 0.95 and other["offset_spine_mm"] < 1.0  # ...while the spine does not move
    assert other["ssim"] < perfect["ssim"] - 0.1
    if direction == "mr2ct":
        assert perfect["table_ml"] == 0.0 and perfect["table_fraction"] == 0.0
        assert other["table_ml"] > 20.0 and other["table_fraction"] > 0.1  # the real CT brings its table
        assert perfect["mae_hu"] == pytest.approx(0.0, abs=1e-6)
    else:
        assert abs(other["table_signal"]) < 0.1  # an MR shows no table


def test_structure_offset_finds_a_known_shift(subject):
    v, _ = subject
    ref = v["ct_in_mr"]
    moved = np.roll(ref, (0, -3, 2), axis=(0, 1, 2))  # rows -3 (forward), columns +2 (patient's left)
    offset, dice, ncc = bench.structure_offset(moved, ref, v["aorta_mr"] > 0, abdomen.GRID_SPACING)
    np.testing.assert_allclose(offset, [-3 * 1.5625, 2 * 1.5625], atol=0.3)
    assert ncc > 0.95 and dice < 0.9


def test_tiny_run_end_to_end_json_has_per_method_aorta_metrics_and_both_dice(tmp_path):
    args = argparse.Namespace(quick=True, device="cpu", out=str(tmp_path / "bench"), methods=["cyclegan", "dicyc"],
                              iterations=None, n_test=None, jobs=1, json=None)
    tiny = {"n_subjects": 3, "n_test": 2, "n_slices": 3, "spacing": 8.0, "slice_size": 48, "ngf": 4, "n_blocks": 1,
            "ndf": 4, "iterations": 2, "batch_size": 1, "reports": False, "epoch_length": 2, "checkpoint_every": 2}
    try:
        result = bench.run(args, log=lambda message: None, settings=tiny)
    except DicycError as exc:
        if "pydicom" in str(exc):
            pytest.skip(str(exc))
        raise
    text = json.dumps(result)
    data = json.loads(text)
    rows = {(r["method"], r["direction"]): r for r in data["results"]}
    for method in ("cyclegan", "dicyc", bench.CONTROL):
        for direction in ("T2*->CT", "CT->T2*"):
            row = rows[(method, direction)]
            assert row["n"] == 2
            for metric in ("mse", "psnr", "ssim", "dice_aorta", "dice_spine", "reproduced"):
                assert np.isfinite(row[metric]) and f"{metric}_sd" in row, (method, direction, metric)
        assert "table_ml" in rows[(method, "T2*->CT")] and "table_signal" in rows[(method, "CT->T2*")]
    tests = {(t["direction"], t["metric"]) for t in data["tests"]}
    assert ("T2*->CT", "ssim") in tests and ("CT->T2*", "dice_spine") in tests
    assert all(t["versus"] == "cyclegan" for t in data["tests"])
    assert len(data["cases"]) == 3 * 2 * 2  # (two methods + the control) x two subjects x two directions
    assert data["config"]["methods"] == ["cyclegan", "dicyc"] and data["config"]["iterations"] == 2
    figure = data["figures"]["checkerboards"]
    import matplotlib.image

    assert matplotlib.image.imread(figure).shape[0] > 300
    assert "Dice aorta" in bench.summary(result) and "other-posture" in bench.summary(result)


def test_quick_settings_and_the_command_line():
    from dicyc.cli import build_parser

    quick = bench.SETTINGS["quick"]
    assert quick["slice_size"] * quick["spacing"] >= 300  # the body and the table's top in every training slice
    assert bench.DEFAULT_METHODS == ("cyclegan", "gcc-cyclegan", "mind-cyclegan", "dicyc")
    args = build_parser().parse_args(["bench", "abdomen", "--quick", "--json", "out.json", "--iterations", "50"])
    assert args.quick and args.json == "out.json" and args.iterations == 50 and args.bench == "abdomen"
