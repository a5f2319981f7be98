"""The quality and head benchmarks run end to end (tiny settings: this checks the protocol, not the numbers)."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

TINY_QUALITY = {"n_subjects": 4, "n_test": 2, "spacing": 8.0, "slice_size": 28, "ngf": 4, "n_blocks": 1, "ndf": 4,
                "iterations": 2, "batch_size": 1, "deformation_px": 2.0}


def _args(tmp_path, methods=None):
    return argparse.Namespace(quick=True, out=str(tmp_path), device="cpu", methods=methods, json=None)


def test_quality_protocol_structure_and_scores(tmp_path):
    from dicyc.bench import quality

    result = quality.run(_args(tmp_path), log=lambda m: None, settings=TINY_QUALITY)
    rows = result["results"]
    assert {(r["method"], r["direction"], r["deformed"]) for r in rows} == {
        (m, d, s) for m in ("cyclegan", "dicyc") for d in ("PD->T2", "T2->PD") for s in (True, False)
    }
    for r in rows:
        assert set(r) >= {"method", "direction", "deformed", "mse", "psnr", "ssim", "mse_sd", "psnr_sd", "ssim_sd", "n"}
        assert r["n"] == 2 and np.isfinite([r["mse"], r["psnr"], r["ssim"]]).all()
    assert {t["metric"] for t in result["tests"]} == {"mse", "psnr", "ssim"}
    assert result["config"]["iterations"] == 2 and "machine" in result
    json.dumps(result)  # JSON-ready
    assert "PD->T2" in quality.summary(result)
    for setting in ("deformed", "undeformed"):  # one figure per setting, a real PNG
        figure = Path(result["figures"][setting])
        assert figure.parent == tmp_path / "figures" and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_score_is_zscored_in_the_mask():
    from dicyc.bench.quality import score
    from dicyc.volume import Volume

    rng = np.random.default_rng(0)
    ref = Volume(rng.normal(size=(3, 16, 16)).astype(np.float32))
    mask = np.ones(ref.shape, bool)
    same = score(ref.with_array(ref.array * 40 + 7), ref, mask)  # MR units do not matter
    assert same["mse"] == pytest.approx(0.0, abs=1e-10) and same["ssim"] == pytest.approx(1.0)


def test_head_benchmark_scores(tmp_path):
    from dicyc.bench import head

    settings = {"spacing": 8.0, "slice_size": 32, "ngf": 4, "n_blocks": 1, "ndf": 4, "iterations": 2, "batch_size": 1}
    result = head.run(_args(tmp_path, methods=["cyclegan"]), log=lambda m: None, settings=settings)
    (row,) = result["results"]
    assert 0.0 <= row["dice_head"] <= 1.0 and 0.0 <= row["nmi_source"] <= 1.0
    assert row["headrest_ml"] >= 0 and row["hu_wasserstein"] >= 0
    assert abs(sum(row["real_fractions"].values()) - 1.0) < 1e-6
    assert (tmp_path / "report-cyclegan" / "compare.png").exists()
    assert "head Dice" in head.summary(result)


def test_head_alignment_scores_on_constructed_volumes():
    """A synthetic CT that is the source head exactly scores Dice 1 and no head-rest; a rest is counted."""
    from dicyc.bench.head import alignment_and_realism
    from dicyc.volume import Volume

    z, y, x = np.indices((8, 48, 48))
    head = ((y - 24) ** 2 + (x - 24) ** 2) < 15 ** 2
    mr = Volume(np.where(head, 300.0, 0.0).astype(np.float32), (2, 2, 2))
    ct = Volume(np.where(head, 40.0, -1000.0).astype(np.float32), (2, 2, 2))
    scores = alignment_and_realism(ct, mr, ct)
    assert scores["dice_head"] == pytest.approx(1.0) and scores["headrest_ml"] == 0.0
    assert scores["hu_wasserstein"] == pytest.approx(0.0)
    rest = ct.array.copy()
    rest[:, 44, 8:40] = 300.0  # a thin, dense arc behind the head: hallucinated head-rest
    scores = alignment_and_realism(ct.with_array(rest), mr, ct)
    assert scores["headrest_ml"] == pytest.approx(8 * 32 * 8 / 1000.0)


def test_benchmark_runs_are_reused_only_for_the_same_configuration(toy_pair, tmp_path):
    """A finished run is reused by an identical rerun; changed options train in a new folder."""
    from dicyc.bench import train_or_reuse
    from dicyc.train import resolve_config

    mr, ct = toy_pair

    def config(**extra):
        return resolve_config(None, {"method": "cyclegan", "ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32,
                                     "spacing": [2.0, 2.0], "iterations": 2, "checkpoint_every": 2,
                                     "cache_dir": str(tmp_path / "cache"), **extra})

    logs = []
    first, seconds = train_or_reuse(tmp_path / "runs", config(), mr, ct, "cpu", logs.append)
    assert seconds is not None and first.exists()
    again, seconds = train_or_reuse(tmp_path / "runs", config(), mr, ct, "cpu", logs.append)
    assert again == first and seconds is None and "reused" in logs[-1]
    other, seconds = train_or_reuse(tmp_path / "runs", config(lambda_cycle=5.0), mr, ct, "cpu", logs.append)
    assert other.parent != first.parent and seconds is not None
