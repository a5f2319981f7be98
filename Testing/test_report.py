"""The demo report (dicyc.report, ``dicyc report``) and the head benchmark's scores it shows (dicyc.bench.head)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dicyc import report
from dicyc.bench.head import alignment_and_realism, alignment_masks
from dicyc.errors import DicycError
from dicyc.volume import Volume, read_modality, read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
SHAPE = (16, 48, 48)


def _head_masks(shrink=0.0):
    z, y, x = np.indices(SHAPE).astype(np.float64)
    r = np.hypot((y - 24) / (15.0 - shrink), (x - 24) / (12.0 - shrink))
    return r < 1.0, (r < 1.0) & (r > 0.78)


def constructed():
    """A source MR head, a real CT, a CT aligned with the MR, and a CT with a head-rest, a smaller head and streaks."""
    rng = np.random.default_rng(0)
    head, skull = _head_masks()
    mr = Volume((np.where(head, 300.0, 4.0) - np.where(skull, 220.0, 0.0) + rng.normal(0, 6, SHAPE)).astype(np.float32),
                (2.0, 2.0, 2.0))
    ct = np.where(head, 35.0, -1000.0) + np.where(skull, 1100.0, 0.0) + rng.normal(0, 12, SHAPE)
    real = Volume(ct.astype(np.float32), (2.0, 2.0, 2.0))
    good = real.with_array((ct + rng.normal(0, 5, SHAPE)).astype(np.float32))
    small, small_skull = _head_masks(shrink=1.5)
    bad = np.where(small, 35.0, -1000.0) + np.where(small_skull, 1100.0, 0.0) + rng.normal(0, 12, SHAPE)
    bad += rng.normal(0, 40.0, (SHAPE[0], 1, 1)) * small  # a different error on every slice: streaks
    bad[:, 42:44, 10:38] = 250.0  # a dense arc behind the head, where the MR has only air
    return mr, real, good, real.with_array(bad.astype(np.float32))


def test_head_scores_on_constructed_volumes():
    mr, real, good, bad = constructed()
    g, b = alignment_and_realism(good, mr, real), alignment_and_realism(bad, mr, real)
    assert {"surface_distance_mean_mm", "surface_distance_95_mm", "streak_index", "streak_index_real",
            "streak_ratio"} <= set(g)
    assert g["headrest_ml"] == 0.0 and b["headrest_ml"] == pytest.approx(SHAPE[0] * 2 * 28 * 8 / 1000.0)
    assert g["dice_head"] > b["dice_head"] and g["surface_distance_mean_mm"] < b["surface_distance_mean_mm"]
    assert g["streak_ratio"] == pytest.approx(1.0, abs=0.15) and b["streak_ratio"] > 1.5 * g["streak_ratio"]
    masks = alignment_masks(bad, mr)
    assert alignment_and_realism(bad, mr, real, masks=masks) == b  # the masks are the scores' own


def _colour_pixels(img, rgb, tol=0.06):
    return int((np.abs(img[..., :3] - np.asarray(rgb)[None, None, :3]).max(axis=2) < tol).sum())


def _hex(colour):
    return [int(colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5)]


def test_model_report_draws_every_panel_and_shows_the_head_scores(tmp_path):
    import matplotlib.image

    mr, real, good, bad = constructed()
    written = report.model_report(mr, [("CycleGAN", bad), ("DiCyc", good)], real, tmp_path / "two",
                                  source_name="mr.nii.gz", real_name="ct.nii.gz", tiles=4)
    img = matplotlib.image.imread(str(written["png"]))
    assert Path(written["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert img.shape[1] > 1200 and img[..., :3].std() > 0.1
    # the head-rest is red in the CycleGAN panels, and each model's colour frames its panels and outlines
    assert _colour_pixels(img, report.HEADREST_RGBA[:3], tol=0.15) > 50
    for colour, _ in report.MODEL_COLOURS[:2]:
        assert _colour_pixels(img, _hex(colour)) > 400
    # one model fewer, two panels fewer per plane
    one = report.model_report(mr, [("DiCyc", good)], real, tmp_path / "one", tiles=4)
    assert matplotlib.image.imread(str(one["png"])).shape[1] < img.shape[1] - 400
    # the numbers are the head benchmark's, for each model
    rows = json.loads(Path(written["json"]).read_text())["models"]
    assert [r["label"] for r in rows] == ["CycleGAN", "DiCyc"]
    for row, volume in zip(rows, (bad, good)):
        expected = alignment_and_realism(volume, mr, real)
        for key in ("dice_head", "nmi_source", "headrest_ml", "hu_wasserstein", "surface_distance_mean_mm",
                    "streak_ratio"):
            assert row[key] == pytest.approx(expected[key]), key
    assert rows[0]["headrest_ml"] > 0 and rows[1]["headrest_ml"] == 0
    with pytest.raises(DicycError, match="distinct names"):
        report.model_report(mr, [("A", good), ("A", bad)], real, tmp_path / "dup")
    with pytest.raises(DicycError, match="at least one"):
        report.model_report(mr, [], real, tmp_path / "none")
    with pytest.raises(DicycError, match="no head"):
        report.model_report(mr.with_array(np.zeros(SHAPE, np.float32)), [("A", good)], real, tmp_path / "empty")
    assert not any((tmp_path / name).exists() for name in ("dup", "none", "empty"))


def test_parse_synthetic_specs(tmp_path):
    assert report.parse_synthetic("DiCyc=out/ct.nii.gz") == ("DiCyc", "out/ct.nii.gz")
    odd = tmp_path / "a=b.nii.gz"
    odd.write_bytes(b"x")
    assert report.parse_synthetic(str(odd)) == ("a=b", str(odd))  # an existing path is a path
    with pytest.raises(DicycError, match="LABEL=PATH"):
        report.parse_synthetic("=ct.nii.gz")


def test_demo_pipeline_with_the_bundled_models(toy_pair, tmp_path, run_dicyc):
    """What `make demo` runs, on a small MR: synthesis that records CT, the report, and a cross-modality compare."""
    from dicyc import views

    mr, ct = toy_pair
    models = sorted((REPO / "Resources" / "Models").glob("*.safetensors"))
    assert models, "no bundled model"
    synthetic = []
    for model in models[:2]:
        out = tmp_path / f"ct-{model.stem}.nii.gz"
        proc = run_dicyc("synthesize", "--model", model, "--input", mr, "--output", out, "--target", "CT",
                         "--keep-background")
        assert proc.returncode == 0, proc.stderr
        assert read_modality(out) == "CT"  # the model card's target, in the file
        synthetic.append(out)
    if len(synthetic) == 1:  # until the second bundled model exists, the one we have stands in for it
        shutil.copy(synthetic[0], tmp_path / "ct-second.nii.gz")
        synthetic.append(tmp_path / "ct-second.nii.gz")
    # --keep-background leaves the generator's output outside the head (the default sets it to -1024 HU)
    body = read_volume(mr).array < 100
    assert np.any(read_volume(synthetic[0]).array[body] != -1024.0)

    proc = run_dicyc("report", "--source", mr, "--real-ct", ct, "--out", tmp_path / "report",
                     "--synthetic", f"CycleGAN={synthetic[0]}", f"DiCyc={synthetic[1]}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["models"]
    assert [r["label"] for r in rows] == ["CycleGAN", "DiCyc"] and "head-outline Dice" in proc.stderr

    summary = json.loads(views.compare_files(synthetic[1], mr, tmp_path / "cmp")["metrics"].read_text())
    assert summary["comparison"] == "cross-modality" and summary["modalities"]["a"]["source"] == "file"
    assert "dice_outline" in summary["metrics"] and "psnr" not in summary["metrics"]

    # a CT as the source, or an MR as the real CT, is refused in one sentence
    for args in (["--source", ct, "--real-ct", ct], ["--source", mr, "--real-ct", mr]):
        proc = run_dicyc("report", *args, "--out", tmp_path / "bad", "--synthetic", f"X={synthetic[0]}")
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_the_axial_plane_goes_through_the_head_not_an_empty_edge_slice():
    """A generator that paints the volume's border puts most 'hallucination' in a slice with no
    head in it; the report's axial plane must still show the head (where hallucination is largest there)."""
    from dicyc.report import _planes_point
    from dicyc.views import lps_axes

    head = np.zeros((20, 16, 16), bool)
    head[4:16, 4:12, 4:12] = True
    hallucinated = np.zeros_like(head)
    hallucinated[0] = True  # an edge slice, no head
    hallucinated[12, 0:2, :] = True  # a little behind the head, inside its slab
    models = [{"masks": {"mr_head": head, "hallucinated": hallucinated}}]
    axes_map = lps_axes(np.eye(3))
    lr, p, s = _planes_point(None, models, axes_map)
    # whatever the axis order of the view, the chosen slice goes through the head and holds
    # the hallucination inside it
    from dicyc.views import _to_lps

    assert _to_lps(head, axes_map)[s].any() and _to_lps(hallucinated, axes_map)[s].any()


def _tiny_run(method, mr, ct, out):
    from dicyc.train import resolve_config, train

    config = resolve_config(None, {"method": method, "ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32,
                                   "spacing": [2.0, 2.0], "iterations": 2, "checkpoint_every": 2, "epoch_length": 100,
                                   "modality_a": "MR", "modality_b": "CT", "cache_dir": str(out.parent / "cache")})
    train(mr, ct, out, config, device="cpu")
    return out


def test_head_passes_of_a_dicyc_run_and_their_tool(toy_pair, tmp_path, capsys):
    """Both passes of a DiCyc MR→CT run on a head, in HU: fractions, examples, figure, JSON; CycleGAN refused."""
    import importlib.util

    from dicyc.bench.learned import passes_on_head

    mr, ct = toy_pair
    run = _tiny_run("dicyc", mr, ct, tmp_path / "dicyc")
    passes = passes_on_head(run, mr, ct, n_show=2)
    for key in ("undeformed", "deformed", "real"):
        assert sum(passes[key].values()) == pytest.approx(1.0)
    # the toy CT: soft tissue at 40 HU in a bone ring at 1000 HU, air only outside the body
    assert passes["real"]["air"] < 0.05 and passes["real"]["soft_tissue"] > 0.3 and passes["real"]["bone"] > 0.2
    assert passes["mean_abs_difference_hu"] >= 0 and passes["slices"] > 0
    assert len(passes["examples"]) == 2
    assert all(e[k].shape == (32, 32) for e in passes["examples"] for k in ("source", "undeformed", "deformed", "real"))

    spec = importlib.util.spec_from_file_location("head_passes", REPO / "tools" / "head_passes.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    figure, out = tmp_path / "passes.png", tmp_path / "passes.json"
    assert tool.main([str(run), "--source", str(mr), "--target", str(ct), "--figure", str(figure), "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed[:3]] == ["G(x), the synthesis", "G_T(x), judged by D", "real CT"]
    assert figure.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(out.read_text())
    assert saved["target"] == str(ct) and saved["real"] == pytest.approx(passes["real"])
    cyclegan = _tiny_run("cyclegan", mr, ct, tmp_path / "cyclegan")
    assert tool.main([str(cyclegan), "--source", str(mr), "--target", str(ct)]) == 1
    assert "has no deformed pass" in capsys.readouterr().err
    with pytest.raises(DicycError, match="has no deformed pass"):
        passes_on_head(cyclegan, mr, ct)
