"""Real head MR→CT without ground truth (BENCHMARKS.md §2): Colin27 T1 → InVesalius CT.

The two scans are different people, so nothing can be scored voxel for voxel against a real
CT. What DiCyc promises can still be measured:

* **alignment with the source** — Dice of the head outline of the synthetic CT against the
  source MR's, NMI between source MR and synthetic CT, and whether the CT's head-rest (a
  domain-specific object no MR shows) is hallucinated: non-air voxels outside the source head;
* **realism** — the 1-D Wasserstein distance between the HU histogram inside the head and the
  real CT's, and the air / soft-tissue / bone fractions of both;
* **slice consistency** — the streaks slice-wise synthesis leaves
  (:func:`dicyc.metrics.slice_streaks`), relative to the real CT's.

Checkerboard and error views of source vs synthesis are written for each method. The outlines,
NMI and streaks are the engine's (:mod:`dicyc.metrics`), so ``dicyc compare``, ``dicyc evaluate``
and the demo report (:mod:`dicyc.report`) give the same numbers for the same volumes.
"""

import time
from pathlib import Path

import numpy as np

from dicyc.bench import mean_sd
from dicyc.errors import DicycError
from dicyc.metrics import dice

SETTINGS = {
    "quick": {"spacing": 4.0, "slice_size": 64, "ngf": 16, "n_blocks": 3, "ndf": 16, "iterations": 1500, "batch_size": 4},
    "full": {"spacing": 1.8, "slice_size": 128, "ngf": 64, "n_blocks": 9, "ndf": 64, "iterations": 40000, "batch_size": 1},
}
DEFAULT_METHODS = ("cyclegan", "dicyc")
#: HU bands for tissue fractions inside the head
BANDS = {"air": (-np.inf, -200.0), "soft_tissue": (-200.0, 300.0), "bone": (300.0, np.inf)}


def tissue_fractions(hu):
    hu = np.asarray(hu, dtype=np.float64)
    return {name: float(np.mean((hu >= lo) & (hu < hi))) for name, (lo, hi) in BANDS.items()} if hu.size else {}


def alignment_masks(synthetic, source_mr, mr_head=None):
    """The masks the §2 scores are made of, for scores and figures alike (:mod:`dicyc.report`).

    ``mr_head`` and ``syn_head``: the outlines of the source MR and of the synthetic CT
    (:func:`dicyc.metrics.body_outline`, MR and CT rules); ``outside``: everything beyond the
    MR head dilated by two voxels (a margin for partial-volume skin); ``hallucinated``: what
    the synthesis puts there with a density above -500 HU, where the source has only air, such
    as the CT's head-rest. ``mr_head`` is the source's outline where the caller has it (it is
    the same for every synthesis of one source).
    """
    from scipy import ndimage

    from dicyc.metrics import body_outline

    mr_head = body_outline(source_mr, "MR") if mr_head is None else np.asarray(mr_head, bool)
    syn_head = body_outline(synthetic, "CT")
    outside = ~ndimage.binary_dilation(mr_head, iterations=2)
    hallucinated = outside & (np.asarray(synthetic.array) > -500.0)
    return {"mr_head": mr_head, "syn_head": syn_head, "outside": outside, "hallucinated": hallucinated}


def alignment_and_realism(synthetic, source_mr, real_ct, masks=None):
    """The §2 scores of one synthetic CT (on the source MR's grid) against its source and a real CT.

    ``masks`` are :func:`alignment_masks` of the same pair, where the caller has them already.
    """
    from scipy.stats import wasserstein_distance

    from dicyc.metrics import body_outline, nmi, slice_streaks, streak_ratio, surface_distances

    masks = masks or alignment_masks(synthetic, source_mr)
    mr_head, syn_head, outside, hallucinated = (masks[k] for k in ("mr_head", "syn_head", "outside", "hallucinated"))
    syn = np.asarray(synthetic.array, dtype=np.float32)
    voxel_ml = float(np.prod(synthetic.spacing)) / 1000.0
    real = np.asarray(real_ct.array, dtype=np.float32)
    real_head = body_outline(real_ct, "CT")
    rng = np.random.default_rng(0)

    def sample(values, n=200000):
        return values if values.size <= n else rng.choice(values, n, replace=False)

    syn_values, real_values = syn[mr_head], real[real_head]
    distance_mean, distance_95 = surface_distances(syn_head, mr_head, synthetic.spacing)
    streaks = slice_streaks(synthetic, syn_head)["streak_index"]
    streaks_real = slice_streaks(real_ct, real_head)["streak_index"]
    return {
        "dice_head": dice(syn_head, mr_head),
        "surface_distance_mean_mm": distance_mean,
        "surface_distance_95_mm": distance_95,
        "nmi_source": nmi(syn, np.asarray(source_mr.array, dtype=np.float32)),
        "headrest_ml": float(hallucinated.sum() * voxel_ml),
        "headrest_fraction_outside": float(hallucinated.sum() / max(outside.sum(), 1)),
        "hu_wasserstein": float(wasserstein_distance(sample(syn_values), sample(real_values))),
        "fractions": tissue_fractions(syn_values),
        "real_fractions": tissue_fractions(real_values),
        "streak_index": streaks,
        "streak_index_real": streaks_real,
        "streak_ratio": streak_ratio(streaks, streaks_real),
    }


def where_lost(synthetic, masks, model_spacing_mm):
    """Where the head-rest and outline scores are lost, in ml: the numbers behind a missed target.

    A synthesis made on a coarser grid than its source (4 mm in the quick benchmark, against
    Colin27's 1 mm) blurs its skin over about one model voxel, so some "hallucinated" density and
    some missed outline could be the grid's partial volume rather than the generator's invention
    (:func:`outline_ceiling` says how much the grid alone costs the outline). This splits them:

    * ``headrest``: ``near_skin`` (within ``model_spacing_mm`` of the source head, past the
      2-voxel margin), ``no_head_slices`` (slices along the first array axis where the source has
      no head at all, such as the empty slab above a vertex: slices training never draws), and
      ``elsewhere`` (an object the generator put in the air: a head-rest);
    * ``outline_missed``: source-head voxels the synthetic outline leaves out, ``near_skin``
      (within ``model_spacing_mm`` of the source's surface) or ``interior`` (deeper: tissue
      synthesised below -500 HU and open to the outside, so no hole filling closes it);
      ``outline_extra``: synthetic outline outside the source head.
    """
    from scipy import ndimage

    mr_head, syn_head, hallucinated = masks["mr_head"], masks["syn_head"], masks["hallucinated"]
    sampling = tuple(float(v) for v in synthetic.spacing)[::-1]
    voxel_ml = float(np.prod(synthetic.spacing)) / 1000.0
    margin = float(model_spacing_mm)
    outside_mm = ndimage.distance_transform_edt(~mr_head, sampling=sampling)
    no_head = np.broadcast_to(~mr_head.any(axis=(1, 2))[:, None, None], mr_head.shape)
    near = hallucinated & (outside_mm <= margin) & ~no_head
    in_empty = hallucinated & no_head
    del outside_mm
    depth_mm = ndimage.distance_transform_edt(mr_head, sampling=sampling)
    missed = mr_head & ~syn_head
    missed_near = missed & (depth_mm <= margin)

    def ml(mask):
        return round(float(mask.sum()) * voxel_ml, 3)

    return {
        "model_spacing_mm": margin,
        "headrest": {"near_skin": ml(near), "no_head_slices": ml(in_empty),
                     "elsewhere": ml(hallucinated & ~near & ~in_empty)},
        "outline_missed": {"near_skin": ml(missed_near), "interior": ml(missed & ~missed_near)},
        "outline_extra": ml(syn_head & ~mr_head),
    }


def outline_ceiling(source_mr, spacing_mm, mr_head=None):
    """What the outline scores would be for a perfect CT made on the model's grid: the Dice column's ceiling.

    Why: the synthesis is made on a coarser grid than Colin27's 1 mm (4 mm in the quick
    protocol) and resampled back, so part of a missed outline could be that round trip
    rather than the generator. An ideal CT of the source head (soft tissue, 40 HU, inside the
    MR's outline; -1000 HU outside) makes the same round trip (the synthesis's own grid rule and
    linear resampling, :mod:`dicyc.synthesize`) and is scored by the same rules. Returns
    ``{"dice", "missed_ml", "extra_ml", "headrest_ml"}``: the last is the head-rest score of that
    ideal CT (skin blurred past the 2-voxel margin), the floor of the head-rest column.
    """
    from dicyc.metrics import body_outline
    from dicyc.preprocess import from_canonical_array, to_canonical
    from dicyc.synthesize import _model_grid, resample_slabs
    from dicyc.volume import Volume

    mr_head = body_outline(source_mr, "MR") if mr_head is None else np.asarray(mr_head, bool)
    ideal = Volume(np.where(mr_head, 40.0, -1000.0).astype(np.float32), source_mr.spacing, source_mr.origin,
                   source_mr.direction.copy())
    work, axes = to_canonical(ideal)
    spacing, size, origin = _model_grid(work, (float(spacing_mm), float(spacing_mm)), isotropic=False)
    coarse = resample_slabs(work.array, work.spacing, work.origin, work.direction, size[::-1], spacing, origin, -1000.0)
    back = resample_slabs(coarse, spacing, origin, work.direction, work.shape, work.spacing, work.origin, -1000.0)
    back = Volume(from_canonical_array(back, axes), source_mr.spacing, source_mr.origin, source_mr.direction.copy())
    masks = alignment_masks(back, source_mr, mr_head)
    head = masks["syn_head"]
    voxel_ml = float(np.prod(source_mr.spacing)) / 1000.0
    return {"dice": float(dice(head, mr_head)), "missed_ml": round(float((mr_head & ~head).sum()) * voxel_ml, 3),
            "extra_ml": round(float((head & ~mr_head).sum()) * voxel_ml, 3),
            "headrest_ml": round(float(masks["hallucinated"].sum()) * voxel_ml, 3)}


def run(args, log, settings=None):
    from dicyc.bench import machine_info, parse_method, train_or_reuse, training_config
    from dicyc.metrics import body_outline
    from dicyc.modelfile import load_model
    from dicyc.samples import default_cache_dir, prepare
    from dicyc.synthesize import synthesize_volume
    from dicyc.views import compare_volumes
    from dicyc.volume import read_volume, write_volume

    started = time.monotonic()
    mode = "quick" if args.quick else "full"
    s = dict(SETTINGS[mode], **(settings or {}))
    n_seeds = int(getattr(args, "seeds", None) or 1)
    if n_seeds < 1:
        raise DicycError(f"--seeds must be at least 1; got {n_seeds}.")
    specs = [parse_method(m) for m in (getattr(args, "methods", None) or DEFAULT_METHODS)]
    methods = [label for label, _, _ in specs]
    if len(set(methods)) != len(methods):
        raise DicycError(f"each method may be named once; got {', '.join(methods)}.")
    if n_seeds > 1 and any("seed" in options for _, _, options in specs):
        raise DicycError("a method's own seed option and --seeds cannot be combined; drop one of them.")
    root = Path(args.out) if getattr(args, "out", None) else default_cache_dir() / "bench" / f"head-{mode}"
    paths = prepare(["head-mr", "head-ct"], log=log)
    mr, ct = read_volume(paths["head-mr"]), read_volume(paths["head-ct"])
    mr_head = body_outline(mr, "MR")  # one source, one outline: for the ceiling and every method's scores
    ceiling = outline_ceiling(mr, s["spacing"], mr_head)
    log(f"an ideal CT made on the {s['spacing']:g} mm model grid: head Dice {ceiling['dice']:.3f} "
        f"(outline missed {ceiling['missed_ml']:.1f} ml, beyond the MR's {ceiling['extra_ml']:.1f} ml), "
        f"head-rest {ceiling['headrest_ml']:.1f} ml")
    results = []
    for seed in range(n_seeds):
        for method, name, options in specs:
            config = training_config(name, s, modality_a="MR", modality_b="CT", name_a="Colin27 T1",
                                     name_b="InVesalius CT", **{"seed": seed, **options})
            # seed 0 keeps the file names of a one-seed run
            stem = file_stem(method) + (f"-seed{seed}" if seed else "")
            model_path, seconds = train_or_reuse(root / "runs", config, str(paths["head-mr"]),
                                                 str(paths["head-ct"]), args.device, log)
            # unmasked: the head-rest score needs to see what the generator puts outside the head
            # (blank input slices excepted: synthesis returns them as background either way)
            synthetic = synthesize_volume(load_model(model_path), mr, direction="a2b", precision="fp32",
                                          device=args.device, mask_background=False)
            write_volume(synthetic, root / f"synthetic-ct-{stem}.nii.gz")
            masks = alignment_masks(synthetic, mr, mr_head)
            scores = alignment_and_realism(synthetic, mr, ct, masks=masks)
            scores["where_lost"] = where_lost(synthetic, masks, s["spacing"])
            del masks
            compare_volumes(synthetic, mr, root / f"report-{stem}", tiles=8, error_units="window",
                            a_name=f"synthetic CT ({method})", b_name="source MR (Colin27 T1)", modality_a="CT",
                            modality_b="MR")
            results.append({"method": method, "seed": int(config["seed"]), "training_seconds": seconds,
                            "run": str(model_path.parent), **scores})
            tag = f"{method} seed {seed}" if n_seeds > 1 else method
            log(f"{tag}: head Dice {scores['dice_head']:.3f}, NMI(source) {scores['nmi_source']:.3f}, "
                f"head-rest {scores['headrest_ml']:.1f} ml, HU W1 {scores['hu_wasserstein']:.1f}, "
                f"streaks {_number(scores['streak_ratio'], '.2f')} x the real CT's")
            lost = scores["where_lost"]
            log(f"{tag}: head-rest near the skin {lost['headrest']['near_skin']:.1f} ml, in slices without head "
                f"{lost['headrest']['no_head_slices']:.1f} ml, elsewhere {lost['headrest']['elsewhere']:.1f} ml; "
                f"outline missed near the skin {lost['outline_missed']['near_skin']:.1f} ml, inside "
                f"{lost['outline_missed']['interior']:.1f} ml")
    return {"results": results, "over_seeds": over_seeds(results, methods), "outline_ceiling": ceiling,
            "config": {"mode": mode, "methods": methods, "seeds": n_seeds, **s, "root": str(root)},
            "machine": machine_info(), "wall_s": round(time.monotonic() - started, 1)}


#: the scores summarised over seeds, each as a path into a result row
SEED_MEASURES = {
    "dice_head": ("dice_head",), "surface_distance_mean_mm": ("surface_distance_mean_mm",),
    "surface_distance_95_mm": ("surface_distance_95_mm",), "nmi_source": ("nmi_source",),
    "headrest_ml": ("headrest_ml",), "hu_wasserstein": ("hu_wasserstein",), "streak_ratio": ("streak_ratio",),
    "air": ("fractions", "air"), "soft_tissue": ("fractions", "soft_tissue"), "bone": ("fractions", "bone"),
}


def over_seeds(results, methods):
    """Per method: mean, sample sd (None for one seed) and the per-seed values of each score.

    One real pair and one seed cannot tell a method's gain from its seed's luck; the spread over
    training seeds is the only error bar this benchmark has (there is one source and one CT).
    """
    rows = []
    for method in methods:
        mine = sorted((r for r in results if r["method"] == method), key=lambda r: r["seed"])
        row = {"method": method, "seeds": [r["seed"] for r in mine]}
        for name, path in SEED_MEASURES.items():
            values = []
            for r in mine:
                value = r
                for key in path:
                    value = value.get(key) if isinstance(value, dict) else None
                values.append(None if value is None else float(value))
            mean, sd = mean_sd((v for v in values if v is not None and np.isfinite(v)), single_sd=None)
            row[name] = {"mean": mean, "sd": sd, "values": values}
        rows.append(row)
    return rows


def file_stem(label):
    """A method label as a file-name part: ``dicyc[lambda_adv_local=1]`` → ``dicyc_lambda_adv_local_1``."""
    import re

    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_")


def _number(value, spec):
    return "n/a" if value is None else format(value, spec)


def _mean_sd_text(x, spec):
    """``mean ± sd`` of an :func:`over_seeds` entry (no ± for one seed)."""
    if x["mean"] is None:
        return "n/a"
    return format(x["mean"], spec) + ("" if x["sd"] is None else " ± " + format(x["sd"], spec))


def summary(result):
    w = max([12] + [len(r["method"]) + 4 for r in result["results"]])
    lines = [f"{'method':{w}s} {'head Dice':>9s} {'dist mm':>7s} {'NMI(src)':>8s} {'head-rest ml':>12s} {'HU W1':>7s} "
             f"{'streaks':>7s}  air/soft/bone (real)"]
    seeded = result.get("config", {}).get("seeds", 1) > 1
    for r in result["results"]:
        f, g = r["fractions"], r["real_fractions"]
        label = f"{r['method']} s{r.get('seed', 0)}" if seeded else r["method"]
        lines.append(
            f"{label:{w}s} {r['dice_head']:9.3f} {_number(r.get('surface_distance_mean_mm'), '7.2f')} "
            f"{r['nmi_source']:8.3f} {r['headrest_ml']:12.1f} {r['hu_wasserstein']:7.1f} "
            f"{_number(r.get('streak_ratio'), '7.2f')}  "
            f"{f['air']:.2f}/{f['soft_tissue']:.2f}/{f['bone']:.2f} ({g['air']:.2f}/{g['soft_tissue']:.2f}/{g['bone']:.2f})"
        )
    lines.append("dist: mean surface distance of the head outlines; streaks: slice-to-slice streak index relative to "
                 "the real CT's (1 = as consistent)")
    ceiling = result.get("outline_ceiling")
    if ceiling:
        lines.append(f"ceiling: an ideal CT made on the model grid has head Dice {ceiling['dice']:.3f} "
                     f"(missed {ceiling['missed_ml']:.1f} ml, beyond {ceiling['extra_ml']:.1f} ml) "
                     f"and head-rest {ceiling['headrest_ml']:.1f} ml")
    if seeded:
        lines.append(f"mean ± sd over {result['config']['seeds']} seeds:")
        for row in result.get("over_seeds", []):
            lines.append(f"{row['method']:{w}s} head Dice {_mean_sd_text(row['dice_head'], '.3f')}, "
                         f"NMI {_mean_sd_text(row['nmi_source'], '.3f')}, head-rest {_mean_sd_text(row['headrest_ml'], '.1f')} ml, "
                         f"HU W1 {_mean_sd_text(row['hu_wasserstein'], '.0f')}, streaks {_mean_sd_text(row['streak_ratio'], '.2f')}")
    lost = [(f"{r['method']} s{r.get('seed', 0)}" if seeded else r["method"], r["where_lost"])
            for r in result["results"] if r.get("where_lost")]
    if lost:
        margin = lost[0][1]["model_spacing_mm"]
        lines.append(f"where it is lost (ml; near the skin = within one model voxel, {margin:g} mm):")
        lines.append(f"{'method':{w}s} {'rest: skin':>10s} {'no-head':>8s} {'elsewhere':>9s} {'missed: skin':>12s} "
                     f"{'inside':>7s} {'extra':>7s}")
        for method, x in lost:
            h, m = x["headrest"], x["outline_missed"]
            lines.append(f"{method:{w}s} {h['near_skin']:10.1f} {h['no_head_slices']:8.1f} {h['elsewhere']:9.1f} "
                         f"{m['near_skin']:12.1f} {m['interior']:7.1f} {x['outline_extra']:7.1f}")
    lines.append(f"wall time {result['wall_s']:.0f} s; reports under {result['config']['root']}")
    return "\n".join(lines)
