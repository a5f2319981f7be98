"""The quality and head benchmarks run end to end (tiny settings: this checks the protocol, not the numbers)."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

TINY_QUALITY = {"n_subjects": 4, "n_test": 2, "spacing": 8.0, "slice_size": 28, "ngf": 4, "n_blocks": 1, "ndf": 4,
                "iterations": 2, "batch_size": 1, "deformation_px": 1.0, "families": ["bspline"]}


def _args(tmp_path, methods=None, **extra):
    return argparse.Namespace(quick=True, out=str(tmp_path), device="cpu", methods=methods, json=None, **extra)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    from dicyc.bench import quality

    out = tmp_path_factory.mktemp("quality")
    # both settings (--quick alone runs the deformed one: the control doubles its time)
    assert quality.SETTINGS["quick"]["settings"] == ["deformed"]
    return quality.run(_args(out, seeds=2, settings=["deformed", "undeformed"]), log=lambda m: None,
                       settings=TINY_QUALITY), out


def test_quality_protocol_structure_and_scores(tiny_result):
    from dicyc.bench import quality

    result, out = tiny_result
    rows = result["results"]
    assert {(r["method"], r["direction"], r["setting"], r["family"]) for r in rows} == {
        (m, d, s, f) for m in ("cyclegan", "dicyc") for d in ("PD->T2", "T2->PD")
        for s, f in (("deformed", "bspline"), ("undeformed", None))
    }
    for r in rows:
        deformed_only = ("reproduced", "outline_other")  # measured against the scanner deformation
        assert set(r) >= {"method", "direction", "deformed", "n", "seeds",
                          *[m for m in quality.METRICS if m not in deformed_only], "ssim_sd", "ssim_seed_sd", "ssim_clean_sd"}
        assert r["n"] == 4 and r["seeds"] == [0, 1]  # 2 test subjects x 2 seeds
        assert np.isfinite([r["mse"], r["psnr"], r["ssim"], r["ssim_clean"], r["displacement_mm"]]).all()
        assert all((key in r) == r["deformed"] for key in deformed_only)
    assert {t["metric"] for t in result["tests"]} >= {"mse", "psnr", "ssim", "ssim_clean", "displacement_mm"}
    assert all(t["n"] == 4 for t in result["tests"])  # paired over subject x seed cases
    assert result["config"]["iterations"] == 2 and result["config"]["seeds"] == 2 and "machine" in result
    json.dumps(result)  # JSON-ready
    assert "PD->T2" in quality.summary(result)
    for setting in ("deformed:bspline", "undeformed"):  # one figure per setting, a real PNG
        figure = Path(result["figures"][setting])
        assert figure.parent == out / "figures" and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_rows_per_seed(tiny_result):
    result, _ = tiny_result
    per_seed = result["per_seed"]
    assert {r["seed"] for r in per_seed} == {0, 1}
    assert all(r["n"] == 2 for r in per_seed)
    # the overall mean is the mean of the seeds' means (equal subjects per seed)
    for row in result["results"]:
        seeds = [r for r in per_seed if all(r[k] == row[k] for k in ("setting", "family", "method", "direction"))]
        assert row["ssim"] == pytest.approx(np.mean([r["ssim"] for r in seeds]))


def test_quality_shows_what_the_deformed_pass_learned(tiny_result):
    result, _ = tiny_result
    learned = result["learned"]
    assert {(x["method"], x["direction"]) for x in learned} == {("dicyc", "PD->T2"), ("dicyc", "T2->PD")}
    assert all(np.isfinite(x["reproduced"]) for x in learned) and len(learned) == 2 * 2 * 2  # subjects x dirs x seeds
    figure = Path(result["figures"]["learned/deformed:bspline/dicyc"])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deformed_pass_scores_on_the_control_and_its_tool(tiny_result, capsys, tmp_path):
    import importlib.util

    from dicyc.bench.learned import deformed_pass_scores

    result, out = tiny_result
    run = Path(result["config"]["runs"]["undeformed/dicyc/seed0"])
    scores = deformed_pass_scores(run, out / "cohort-seed0", n_slices=2)
    for direction in ("AB", "BA"):
        assert len(scores[direction]["undeformed"]) == len(scores[direction]["deformed"]) == 2  # test subjects
        assert np.isfinite(scores[direction]["undeformed"] + scores[direction]["deformed"]).all()
    spec = importlib.util.spec_from_file_location("deformed_pass_ssim",
                                                  Path(__file__).parents[1] / "tools" / "deformed_pass_ssim.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(run), "--slices", "2"]) == 0  # the cohort found beside runs/
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["A->B", "B->A"] and all("G_T(x)" in line for line in printed)
    assert tool.main([str(tmp_path)]) == 1  # not a run: one sentence, no scores
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and "not a finished training run" in err.err
    assert tool.main([result["config"]["runs"]["undeformed/cyclegan/seed0"]]) == 1  # no deformed pass to score
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and "has no deformed pass" in err.err


def test_method_variants_are_parsed_and_refused_in_one_sentence():
    from dicyc.bench.quality import parse_method
    from dicyc.errors import DicycError

    assert parse_method("dicyc") == ("dicyc", "dicyc", {})
    label, name, options = parse_method("dicyc[dicyc_loss=commutation, lambda_align=2]")
    assert name == "dicyc" and options == {"dicyc_loss": "commutation", "lambda_align": 2}
    assert label == 'dicyc[dicyc_loss="commutation",lambda_align=2]'
    for bad in ("dicyc[lambda_align]", "Dicyc!", "dicyc[=2]"):
        with pytest.raises(DicycError):
            parse_method(bad)


def test_paired_tests_pick_the_pairs_of_the_ablation():
    from dicyc.bench.quality import _paired_tests

    cases = []
    for method, shift in (("cyclegan", 0.0), ("nmi-cyclegan", 0.01), ("dicyc", 0.1), ("dicyc[lambda_align=2]", 0.05)):
        for subject in range(3):
            for seed in range(2):
                cases.append({"setting": "deformed", "family": "bspline", "direction": "pd2t2", "method": method,
                              "subject": f"s{subject}", "seed": seed, "ssim_clean": 0.5 + shift + 0.01 * subject + 0.003 * seed})
    tests = {(t["method"], t["versus"], t["kind"]) for t in _paired_tests(cases, [c["method"] for c in cases[::6]])}
    assert tests == {("dicyc", "nmi-cyclegan", "best baseline"), ("dicyc", "nmi-cyclegan", "counterpart"),
                     ("dicyc[lambda_align=2]", "dicyc", "variant")}


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
    lost = row["where_lost"]
    assert lost["model_spacing_mm"] == 8.0
    assert sum(lost["headrest"].values()) == pytest.approx(row["headrest_ml"], abs=1e-2)
    summary = head.summary(result)
    assert "head Dice" in summary and "where it is lost" in summary
    assert 0.9 < result["outline_ceiling"]["dice"] <= 1.0 and "ceiling: an ideal CT" in summary


def test_head_benchmark_takes_method_variants(tmp_path):
    """``NAME[key=value]`` trains the named method with that option, and its files get a plain name."""
    from dicyc.bench import head
    from dicyc.errors import DicycError
    from dicyc.modelfile import read_card

    settings = {"spacing": 8.0, "slice_size": 32, "ngf": 4, "n_blocks": 1, "ndf": 4, "iterations": 2, "batch_size": 1}
    result = head.run(_args(tmp_path, methods=["dicyc[lambda_adv_local=1]"]), log=lambda m: None, settings=settings)
    (row,) = result["results"]
    assert row["method"] == "dicyc[lambda_adv_local=1]"
    training = read_card(Path(row["run"]) / "model.safetensors")["training"]
    assert training["method"] == "dicyc" and training["lambda_adv_local"] == 1
    assert (tmp_path / "report-dicyc_lambda_adv_local_1" / "compare.png").exists()
    assert (tmp_path / "synthetic-ct-dicyc_lambda_adv_local_1.nii.gz").exists()
    with pytest.raises(DicycError, match="named once"):
        head.run(_args(tmp_path, methods=["cyclegan", "cyclegan"]), log=lambda m: None, settings=settings)


def test_head_benchmark_seeds(tmp_path):
    """``--seeds 2`` trains each method twice, seed 0 under a one-seed run's names, and summarises both."""
    from dicyc.bench import head
    from dicyc.errors import DicycError

    settings = {"spacing": 8.0, "slice_size": 32, "ngf": 4, "n_blocks": 1, "ndf": 4, "iterations": 2, "batch_size": 1}
    result = head.run(_args(tmp_path, methods=["cyclegan"], seeds=2), log=lambda m: None, settings=settings)
    rows = result["results"]
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["run"] != rows[1]["run"]
    assert result["config"]["seeds"] == 2
    (summary_row,) = result["over_seeds"]
    dice = summary_row["dice_head"]
    assert dice["values"] == [r["dice_head"] for r in rows]
    assert dice["mean"] == pytest.approx(np.mean(dice["values"]))
    assert dice["sd"] == pytest.approx(np.std(dice["values"], ddof=1))
    assert summary_row["air"]["values"] == [r["fractions"]["air"] for r in rows]
    assert (tmp_path / "synthetic-ct-cyclegan.nii.gz").exists()
    assert (tmp_path / "synthetic-ct-cyclegan-seed1.nii.gz").exists()
    assert "mean ± sd over 2 seeds" in head.summary(result)
    with pytest.raises(DicycError, match="cannot be combined"):
        head.run(_args(tmp_path, methods=["cyclegan[seed=3]"], seeds=2), log=lambda m: None, settings=settings)


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


def test_outline_ceiling_is_what_the_model_grid_alone_costs():
    """An ideal CT of the head scores Dice 1 on the MR's own grid, and a little less the coarser the model's grid."""
    from dicyc.bench.head import outline_ceiling
    from dicyc.volume import Volume

    z, y, x = np.indices((24, 64, 64))
    head = (z - 12) ** 2 + (y - 32) ** 2 + (x - 32) ** 2 < 20 ** 2
    mr = Volume(np.where(head, 300.0, 0.0).astype(np.float32), (1, 1, 1))
    same = outline_ceiling(mr, 1.0)
    assert same == {"dice": 1.0, "missed_ml": 0.0, "extra_ml": 0.0, "headrest_ml": 0.0}
    coarse, finer = outline_ceiling(mr, 4.0), outline_ceiling(mr, 2.0)
    assert 0.95 < coarse["dice"] < finer["dice"] < 1.0
    assert coarse["missed_ml"] + coarse["extra_ml"] > finer["missed_ml"] + finer["extra_ml"] > 0


def test_where_lost_splits_head_rest_and_missed_outline_by_cause():
    """Each constructed fault lands in its own part of :func:`where_lost`, in ml."""
    from dicyc.bench.head import alignment_masks, where_lost
    from dicyc.volume import Volume

    z, y, x = np.indices((10, 48, 48))
    r = np.hypot(y - 24, x - 24)
    head = (r < 15) & (z < 6)  # slices 6 to 9: no head; 8 and 9 beyond the 2-voxel margin
    mr = Volume(np.where(head, 300.0, 0.0).astype(np.float32), (2, 2, 2))
    syn = np.where(head, 40.0, -1000.0).astype(np.float32)
    syn[:6, 20:29, 24:48] = -1000.0  # a channel of air from the centre out through the skin
    ring = (r >= 17.5) & (r < 18.5) & (z < 4)  # about 3 voxels (6 mm) out: near the skin at 8 mm
    syn[ring] = 40.0
    syn[:, 44:46, 2:6] = 300.0  # a dense block far from the head, in every slice
    syn[9, 20:28, 20:28] = 300.0  # density above the vertex, where the source has no head
    synthetic = Volume(syn, (2, 2, 2))
    masks = alignment_masks(synthetic, mr)
    lost = where_lost(synthetic, masks, model_spacing_mm=8.0)
    voxel_ml = 8 / 1000.0
    assert lost["model_spacing_mm"] == 8.0
    assert lost["headrest"]["no_head_slices"] == pytest.approx((64 + 4 * 8) * voxel_ml)  # vertex block, 4 block rows
    assert lost["headrest"]["near_skin"] == pytest.approx(ring.sum() * voxel_ml)
    assert lost["headrest"]["elsewhere"] == pytest.approx(6 * 8 * voxel_ml)  # the block beside the head
    missed = masks["mr_head"] & ~masks["syn_head"]
    assert lost["outline_missed"]["interior"] > 0 and lost["outline_missed"]["near_skin"] > 0
    total = lost["outline_missed"]["near_skin"] + lost["outline_missed"]["interior"]
    assert total == pytest.approx(missed.sum() * voxel_ml, abs=1e-3)
    assert lost["outline_extra"] == pytest.approx((masks["syn_head"] & ~masks["mr_head"]).sum() * voxel_ml, abs=1e-3)


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


def test_an_inert_default_leaves_a_runs_name_as_before_the_option_existed():
    """DiCyc's local discriminators at λ 0 train as before they existed: the run digest ignores them there."""
    from dicyc.bench import INERT_DEFAULTS, digest_config
    from dicyc.methods import DiCyc
    from dicyc.train import resolve_config

    # the papers' recipe (λ_warp 0): every inert option at its inert value, none in the digest
    config = resolve_config(None, {"method": "dicyc", "lambda_warp": 0})
    inert = set(DiCyc.inert_defaults) | set(INERT_DEFAULTS)
    assert inert <= set(config) <= set(digest_config(config)) | inert
    assert not inert & set(digest_config(config))
    # today's default ties the passes, which trains differently: its λ_warp names the run
    assert digest_config(resolve_config(None, {"method": "dicyc"}))["lambda_warp"] == 3.0
    on = resolve_config(None, {"method": "dicyc", "lambda_adv_local": 1.0})
    assert digest_config(on)["lambda_adv_local"] == 1.0 and digest_config(on) != digest_config(config)
    deeper = resolve_config(None, {"method": "dicyc", "lambda_adv_local": 1.0, "local_d_layers": 2})
    assert digest_config(deeper) != digest_config(on)


def test_readme_tables_are_made_from_the_json(tiny_result, tmp_path, capsys):
    """tools/quality_tables.py turns a result file into the README's tables (rows for every result)."""
    import importlib.util

    result, _ = tiny_result
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(result))
    spec = importlib.util.spec_from_file_location("quality_tables", Path(__file__).parents[1] / "tools" / "quality_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(path)]) == 0
    out = capsys.readouterr().out
    table = module.results_table(result)
    assert table in out
    assert table.count("| `cyclegan` |") == 4 and table.count("| `dicyc` |") == 4  # 2 settings x 2 directions each
    assert "best baseline" in out and "deformed pass" in out
    # --versus: the same paired test the benchmark ran, computed from the cases alone
    ran = {(t["setting"], t["direction"]): t for t in result["tests"]
           if t["metric"] == "ssim_clean" and (t["method"], t["versus"]) == ("dicyc", "cyclegan")}
    rows = module.versus_table(result, "dicyc", "cyclegan", "ssim_clean").splitlines()[2:]
    assert len(rows) == len(ran) == 4
    for t in ran.values():
        assert f"| {t['direction'].replace('->', '→')} | `dicyc` | `cyclegan` | {t['mean_difference']:+.3f} | {t['p']:.2g} |" in "\n".join(rows)
    assert module.main([str(path), "--versus", "dicyc", "cyclegan"]) == 0
