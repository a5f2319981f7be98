"""Abdomen T2* ↔ CT: the 2021 DiCyc paper's Table 2 protocol on the abdominal phantom (BENCHMARKS.md §3).

The paper trained on unpaired abdominal T2*-weighted MR and CT of aneurysm patients, scanned on
different tables in different postures, and scored each synthesis inside the segmented aorta;
its Fig. 6 checkerboards asked whether the aorta *and* the spine line up at once. Here the data
are the :mod:`dicyc.abdomen` phantom (real CT anatomy, simulated MR and posture), which has what
the paper lacked: each modality in the other's geometry, so every score has a ground truth.

Every method is trained unpaired (A = T2*-weighted MR, B = CT; the training subjects' volumes
of both modalities, random slices) with the same budget, then scored on held-out subjects in
both directions. A synthesis must keep its *source's* geometry:

* **T2*→CT**: the MR (MR posture, flat table) → synthetic CT, against the subject's CT in the
  MR posture (``ct_in_mr``: noise-free, no table), inside the MR's aorta;
* **CT→T2***: the CT (CT posture, curved table) → synthetic MR, against the subject's MR in the
  CT posture (``mr_in_ct``: noise- and bias-free), inside the CT's aorta.

Scores per test subject, method and direction:

* ``mse``, ``psnr``, ``ssim`` inside the aorta on intensities z-scored per volume over the
  source's body (so MR units do not matter), with the data range of the z-scored reference over
  the body; ``mae_hu`` inside the aorta in HU for T2*→CT;
* ``dice_aorta``, ``dice_spine``, each structure separately: where does the synthesis put it?
  Thresholding a synthesis cannot answer that here: in this contrast-enhanced CT the aorta
  (~230 HU) and the vertebral marrow (~220 HU) it lies on share their HU, and in the T2*-weighted
  MR blood matches liver and spleen. So each structure is *registered*: the ground truth in the
  source's geometry (same modality as the synthesis, its structure known) is moved rigidly
  in-plane to best match the synthesis around that structure (normalised cross-correlation
  over the structure and an 8 mm rim, exhaustive search of +-14 mm at the grid's pixel, then
  a parabolic sub-pixel step): the structure's mask moved by that offset is where the synthesis
  has it, and its Dice with the source's mask is the score. ``offset_aorta_mm`` and
  ``offset_spine_mm`` are those offsets, ``ncc_aorta``/``ncc_spine`` the match quality (a
  synthesis that lost the structure matches poorly wherever it is put), and ``reproduced`` the
  fraction of the domain's aorta-versus-spine shift the synthesis carries (1: it reproduces the
  other domain's posture, as CycleGAN is expected to; 0: it keeps the source's geometry);
* ``table_ml``: CT-table-like density (> -500 HU) in the synthetic CT behind and outside the
  source MR's body (dilated by 3 mm), where the MR has no table; ``table_fraction``: the share
  of the CT table's own voxels that the synthesis fills so; for CT→T2*, ``table_signal``: the
  synthetic MR's mean over the CT table's voxels relative to the body's median (an MR shows no
  table).

Results: mean (sd) over test subjects, paired t-tests over subjects of DiCyc against the best
baseline (by aorta SSIM), per direction and metric. A control row, ``other-posture``, scores the
target modality's own scan in its own posture (the real CT, table included, for T2*→CT; the MR
for CT→T2*) as if it were a synthesis: what a synthesis that reproduced the other domain's
posture completely would score (``reproduced`` near 1, aorta Dice well under 1).

Figures: one checkerboard panel per method and direction (synthesis against its source, the
paper's Fig. 6), zoomed on the aorta and spine with both outlined, and each method's ``dicyc
compare`` report centred on the aorta with the spine in its own views.
"""

import time
from pathlib import Path

import numpy as np

from dicyc.bench import mean_sd
from dicyc.errors import DicycError

#: protocol settings. ``quick`` trains without augmentation, as the quality benchmark's quick protocol
#: does: at a budget of a few thousand iterations, random affine augmentation hides a domain's
#: geometry from the discriminators, so CycleGAN never starts to reproduce it and the benchmark would
#: not test what DiCyc is for (measured on the quality benchmark; README, *Benchmarks*). ``full`` is the paper's (1.56 mm, 192 x 192 slices, 30 training and 10 test volumes; a GPU).
#: ``quick`` is sized for about 25 minutes on a 2-core CPU: 4 mm pixels and 80 x 80 slices (320 mm: the
#: body and the table's top in every slice; the aorta 4-12 pixels across), the quality benchmark's small
#: networks, 2000 iterations of batch 1 for every method. Measured at 80 x 80 with one torch thread per run,
#: GCC-, MIND-CycleGAN and DiCyc cost 1.1, 1.5 and 2.3 times CycleGAN's iteration; from CycleGAN's ~12
#: iterations/s at 64 x 64 (about 7.7 at 80 x 80) the four runs, two side by side, take about 16 minutes,
#: and the 20-subject cohort, inference, scoring and figures about 6 more.
SETTINGS = {
    "quick": {
        "n_subjects": 20, "n_test": 8, "n_slices": 32, "spacing": 4.0, "slice_size": 80, "ngf": 16, "n_blocks": 3,
        "ndf": 16, "iterations": 2000, "batch_size": 1, "augment": False,
    },
    "full": {
        "n_subjects": 40, "n_test": 10, "n_slices": 32, "spacing": 1.5625, "slice_size": 192, "ngf": 64, "n_blocks": 9,
        "ndf": 64, "iterations": 40000, "batch_size": 1,
    },
}
DEFAULT_METHODS = ("cyclegan", "gcc-cyclegan", "mind-cyclegan", "dicyc")
#: the control row: the other modality's real scan in its own posture, scored like a synthesis
CONTROL = "other-posture"
#: per direction: (source, the control's volume, the reference, the source geometry's suffix)
CONTROL_KEYS = {"mr2ct": ("mr", "ct", "ct_in_mr", "mr"), "ct2mr": ("ct", "mr", "mr_in_ct", "ct")}
DIRECTIONS = {"mr2ct": "T2*->CT", "ct2mr": "CT->T2*"}
METRICS = ("mse", "psnr", "ssim", "mae_hu", "dice_aorta", "dice_spine", "offset_aorta_mm", "offset_spine_mm",
           "ncc_aorta", "ncc_spine", "reproduced", "table_ml", "table_fraction", "table_signal")
#: structure registration: the rim around the structure that must match, and the search range (mm)
RIM_MM = 8.0
SEARCH_MM = 14.0
#: CT-table-like density
TABLE_HU = -500.0


# ===================================================================== scores
def _zscore(array, mask):
    values = array[mask]
    sd = float(values.std())
    return (array - float(values.mean())) / (sd if sd > 0 else 1.0)


def roi_scores(pred, ref, body, roi):
    """MSE, PSNR, SSIM inside ``roi`` after z-scoring each volume over ``body`` (arrays on one grid)."""
    from dicyc.metrics import compute_metrics

    p = _zscore(np.asarray(pred, np.float64), body)
    r = _zscore(np.asarray(ref, np.float64), body)
    data_range = float(r[body].max() - r[body].min())
    # SSIM is computed per axial slice with an 11-pixel window: a box 8 pixels wider than the ROI
    # in-plane gives the same numbers as the whole slice, at a fraction of the cost
    zs, ys, xs = np.nonzero(roi)
    box = (slice(zs.min(), zs.max() + 1), slice(max(ys.min() - 8, 0), ys.max() + 9), slice(max(xs.min() - 8, 0), xs.max() + 9))
    m = compute_metrics(p[box], r[box], mask=np.asarray(roi, bool)[box], data_range=data_range)
    return {"mse": float(m["mse"]), "psnr": float(m["psnr"]), "ssim": float(m["ssim"])}


def _disk(radius):
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= radius * radius)[None]


def structure_offset(synthesis, reference, mask, spacing):
    """Where the synthesis has a structure: the in-plane offset (rows, cols in mm) of ``reference``'s.

    ``reference`` (same modality as ``synthesis``, the source's geometry) shows the structure
    at ``mask``; the offset maximises the normalised cross-correlation of the shifted reference
    with the synthesis over the structure and its rim (see the module docstring). Returns
    ``(offset_mm (2,), dice, ncc)``: the Dice of the mask moved by the offset with the mask.
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    px = float(spacing[0])
    rim = ndimage.binary_dilation(mask, _disk(RIM_MM / px))
    reach = int(np.ceil(SEARCH_MM / px))
    zs, ys, xs = np.nonzero(rim)
    z0, z1 = zs.min(), zs.max() + 1
    y0, y1 = max(ys.min() - reach - 1, 0), min(ys.max() + reach + 2, mask.shape[1])
    x0, x1 = max(xs.min() - reach - 1, 0), min(xs.max() + reach + 2, mask.shape[2])
    box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    syn = np.asarray(synthesis, np.float64)[box]
    ref = np.asarray(reference, np.float64)[box]
    win = rim[box]
    # the window's bounding rows/cols inside the box; a shift (dy, dx) reads the reference at p - (dy, dx)
    wy, wx = np.nonzero(win.any(axis=(0, 2)))[0], np.nonzero(win.any(axis=(0, 1)))[0]
    a, b, c, d = wy.min(), wy.max() + 1, wx.min(), wx.max() + 1
    w = win[:, a:b, c:d]
    target = syn[:, a:b, c:d][w]
    target = target - target.mean()
    t_norm = float(np.sqrt((target * target).sum()))
    scores = np.full((2 * reach + 1, 2 * reach + 1), -np.inf)
    for i, dy in enumerate(range(-reach, reach + 1)):
        for j, dx in enumerate(range(-reach, reach + 1)):
            if a - dy < 0 or c - dx < 0 or b - dy > ref.shape[1] or d - dx > ref.shape[2]:
                continue
            moved = ref[:, a - dy : b - dy, c - dx : d - dx][w]
            moved = moved - moved.mean()
            den = t_norm * float(np.sqrt((moved * moved).sum()))
            scores[i, j] = float((target * moved).sum() / den) if den > 0 else 0.0
    i, j = np.unravel_index(np.argmax(scores), scores.shape)

    def vertex(lo, mid, hi):
        den = lo - 2.0 * mid + hi
        return 0.0 if not np.isfinite(den) or den >= 0 else float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5))

    fy = vertex(scores[i - 1, j], scores[i, j], scores[i + 1, j]) if 0 < i < 2 * reach else 0.0
    fx = vertex(scores[i, j - 1], scores[i, j], scores[i, j + 1]) if 0 < j < 2 * reach else 0.0
    offset = np.array([i - reach + fy, j - reach + fx]) * px
    moved = ndimage.shift(mask.astype(np.float32), (0.0, offset[0] / px, offset[1] / px), order=1, mode="constant") >= 0.5
    total = moved.sum() + mask.sum()
    dice = float(2.0 * (moved & mask).sum() / total) if total else 1.0
    return offset, dice, float(scores[i, j])


def table_scores(synthetic_ct, source_body, table_mask, spacing):
    """CT-table-like density in a synthetic CT where the source MR has no body and no table."""
    from scipy import ndimage

    body = np.asarray(source_body, bool)
    near = ndimage.binary_dilation(body, _disk(3.0 / float(spacing[0])))
    rows = np.nonzero(body.any(axis=(0, 2)))[0]
    behind = np.zeros(body.shape, bool)
    behind[:, int(rows.mean()) if rows.size else 0 :, :] = True  # behind the body's centre: where a table would be
    dense = np.asarray(synthetic_ct) > TABLE_HU
    hallucinated = dense & ~near & behind
    voxel_ml = float(np.prod(spacing)) / 1000.0
    table = np.asarray(table_mask, bool) & ~near
    return {"table_ml": float(hallucinated.sum() * voxel_ml),
            "table_fraction": float(dense[table].mean()) if table.any() else 0.0}


def score_case(synthesis, source, reference, masks, direction, posture_shift, spacing):
    """Every score of one synthesis (arrays on the phantom grid); see the module docstring.

    ``masks`` holds the source geometry's ``aorta``, ``spine``, ``body`` and the CT's ``table``;
    ``posture_shift`` is the subject's MR-minus-CT aorta shift (mm; rows, cols).
    """
    out = roi_scores(synthesis, reference, masks["body"], masks["aorta"])
    if direction == "mr2ct":
        out["mae_hu"] = float(np.abs(np.asarray(synthesis, np.float64) - reference)[masks["aorta"]].mean())
    offsets = {}
    for name in ("aorta", "spine"):
        offset, dice, ncc = structure_offset(synthesis, reference, masks[name], spacing)
        offsets[name] = offset
        out.update({f"dice_{name}": dice, f"offset_{name}_mm": float(np.hypot(*offset)), f"ncc_{name}": ncc})
    # the other domain's geometry: MR aorta = CT aorta + shift; a synthesis into the other domain reproduces it
    target = np.asarray(posture_shift, float) * (-1.0 if direction == "mr2ct" else 1.0)
    norm = float(target @ target)
    out["reproduced"] = float((offsets["aorta"] - offsets["spine"]) @ target / norm) if norm > 0 else 0.0
    if direction == "mr2ct":
        out.update(table_scores(synthesis, masks["body"], masks["table"], spacing))
    else:
        body = np.asarray(masks["body"], bool)
        med = float(np.median(np.asarray(synthesis)[body]))
        table = np.asarray(masks["table"], bool)
        out["table_signal"] = float(np.asarray(synthesis)[table].mean() / med) if med > 0 and table.any() else 0.0
    return out


# ===================================================================== aggregation
def aggregate(cases):
    """Rows of mean (sd) over test subjects per (method, direction)."""
    groups = {}
    for c in cases:
        groups.setdefault((c["method"], c["direction"]), []).append(c)
    rows = []
    for (method, direction), members in groups.items():
        row = {"method": method, "direction": DIRECTIONS[direction], "n": len(members)}
        for metric in METRICS:
            if any(m.get(metric) is not None for m in members):
                row[metric], row[f"{metric}_sd"] = mean_sd(m.get(metric) for m in members)
        rows.append(row)
    return rows


def paired_tests(cases, methods):
    """DiCyc against the best baseline (highest mean aorta SSIM), per direction and metric, over subjects."""
    from dicyc.metrics import paired_ttest

    by = {}
    for c in cases:
        by.setdefault((c["direction"], c["method"]), {})[c["subject"]] = c
    baselines = [m for m in methods if m != "dicyc"]
    tests = []
    if "dicyc" not in methods or not baselines:
        return tests
    for direction in DIRECTIONS:
        best = max(baselines, key=lambda m: np.mean([c["ssim"] for c in by.get((direction, m), {}).values()] or [-1]))
        a, b = by.get((direction, "dicyc"), {}), by.get((direction, best), {})
        common = sorted(set(a) & set(b))
        if len(common) < 2:
            continue
        for metric in METRICS:
            xa, xb = [a[s].get(metric) for s in common], [b[s].get(metric) for s in common]
            if any(v is None or not np.isfinite(v) for v in xa + xb):
                continue
            tests.append({"direction": DIRECTIONS[direction], "metric": metric, "method": "dicyc", "versus": best,
                          **paired_ttest(xa, xb)})
    return tests


# ===================================================================== figures
def write_checkerboards(path, examples, methods, tiles_mm=12.0, zoom_mm=110.0):
    """The paper's Fig. 6: per direction (rows) and method (columns), a checkerboard of the synthesis
    and its source on the axial slice through the aorta's centre, zoomed on aorta and spine, with the
    source's aorta (magenta) and spine (orange) outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dicyc.atomic import atomic_path
    from dicyc.views import checkerboard, display_window, to_unit

    directions = [d for d in DIRECTIONS if (d, "_inputs") in examples]
    fig, axes = plt.subplots(len(directions), len(methods) + 1, figsize=(2.6 * (len(methods) + 1), 2.9 * len(directions)),
                             squeeze=False)
    for row, direction in enumerate(directions):
        source, aorta, spine, px = examples[(direction, "_inputs")]
        k = int(round(np.nonzero(aorta)[0].mean()))
        cy, cx = (float(c.mean()) for c in np.nonzero(aorta[k]))
        half = 0.5 * zoom_mm / px
        y0, y1 = int(max(cy - 0.6 * half, 0)), int(min(cy + 1.4 * half, source.shape[1]))
        x0, x1 = int(max(cx - half, 0)), int(min(cx + half, source.shape[2]))
        ct_window = (-250.0, 350.0)  # an abdominal soft-tissue window for the CT side; MR by percentiles
        src01 = to_unit(source[k : k + 1], ct_window if direction == "ct2mr" else display_window(source))
        tiles = max(int(round(source.shape[2] * px / tiles_mm)), 1)
        panels = [(src01[0], f"{DIRECTIONS[direction].replace('->', '→')}: source")]
        for method in methods:
            synth, ssim, dice_a, dice_s = examples[(direction, method)]
            syn01 = to_unit(synth[k : k + 1], ct_window if direction == "mr2ct" else display_window(synth))
            board = checkerboard(np.repeat(syn01, 2, axis=0), np.repeat(src01, 2, axis=0), tiles)[0]
            panels.append((board, f"{method}\nSSIM {ssim:.3f}, Dice aorta {dice_a:.2f} spine {dice_s:.2f}"))
        for col, (image, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image[y0:y1, x0:x1], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            for m, colour in ((aorta[k], "#ff3bd4"), (spine[k], "#ffa500")):
                if m[y0:y1, x0:x1].any():
                    ax.contour(m[y0:y1, x0:x1].astype(float), levels=[0.5], colors=[colour], linewidths=0.8)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("synthesis | source checkerboards through the aorta (source outlines: aorta magenta, spine orange); "
                 "first test subject", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return str(path)


# ===================================================================== the protocol
def _write_list(path, paths):
    from dicyc.atomic import write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(f"{p}\n" for p in paths))
    return str(path)


def _settings(s, args):
    s = dict(s)
    for key in ("iterations", "n_test"):
        value = getattr(args, key, None)
        if value is not None:
            s[key] = int(value)
    s["n_subjects"] = max(s["n_subjects"], s["n_test"] + 2)
    return s


def run(args, log, settings=None):
    """Run the protocol; returns the JSON-ready result (see the module docstring)."""
    from dicyc.abdomen import cohort_name, make_cohort
    from dicyc.bench import machine_info, training_config
    from dicyc.bench.quality import TrainingJob, train_all
    from dicyc.modelfile import load_model
    from dicyc.samples import default_cache_dir
    from dicyc.synthesize import synthesize_volume
    from dicyc.views import compare_volumes
    from dicyc.volume import read_volume, write_volume

    started = time.monotonic()
    mode = "quick" if args.quick else "full"
    s = _settings(dict(SETTINGS[mode], **(settings or {})), args)
    methods = list(getattr(args, "methods", None) or DEFAULT_METHODS)
    if len(set(methods)) != len(methods):
        raise DicycError(f"each method may be named once; got {', '.join(methods)}.")
    root = Path(args.out) if getattr(args, "out", None) else default_cache_dir() / "bench" / f"abdomen-{mode}"
    phantom_options = {k: s[k] for k in ("n_slices",) if k in s}
    phantom_options.update(s.get("phantom", {}))
    cohort_dir = make_cohort(root / "cohort" / cohort_name(s["n_subjects"], s["n_test"], 0, **phantom_options),
                             n_subjects=s["n_subjects"], n_test=s["n_test"], seed=0, log=log, **phantom_options)
    from dicyc.abdomen import load_cohort

    cohort = load_cohort(cohort_dir)
    subjects = [dict(x, **{k: cohort_dir / x[k] for k in ("mr", "ct", "ct_in_mr", "mr_in_ct", "aorta_mr", "spine_mr",
                                                          "body_mr", "aorta_ct", "spine_ct", "body_ct", "table_ct")})
                for x in cohort["subjects"]]
    train_s = [x for x in subjects if x["split"] == "train"]
    test_s = [x for x in subjects if x["split"] == "test"]
    lists = {"mr": _write_list(root / "lists" / "train_mr.txt", [x["mr"] for x in train_s]),
             "ct": _write_list(root / "lists" / "train_ct.txt", [x["ct"] for x in train_s])}
    jobs = {}
    for method in methods:
        extra = {"n_blocks": max(s["n_blocks"], 2)} if method == "unit" else {}
        if method == "cycle-medgan":
            extra["extractor_steps"] = 100
        extra.update({k: s[k] for k in ("epoch_length", "checkpoint_every", "augment") if k in s})
        config = training_config(method, s, modality_a="MR", modality_b="CT", name_a="T2*-weighted MR",
                                 name_b="CT", **extra)
        jobs[method] = TrainingJob(config, lists["mr"], lists["ct"], str(root / "runs"))
    trained = train_all(jobs, args.device, getattr(args, "jobs", None), log)

    cases, figures, examples, timings, run_dirs = [], {}, {}, {}, {}
    # the control: the target modality's own scan, in its own posture (with the CT's table), scored as if it
    # were a synthesis; a synthesis that reproduced the other domain's posture completely would score this
    for x in test_s:
        for direction, (src_key, own_key, ref_key, geo) in CONTROL_KEYS.items():
            source = read_volume(x[src_key])
            masks = {k: read_volume(x[f"{k}_{geo}"]).array > 0 for k in ("aorta", "spine", "body")}
            masks["table"] = read_volume(x["table_ct"]).array > 0
            scores = score_case(read_volume(x[own_key]).array, source.array, read_volume(x[ref_key]).array, masks,
                                direction, x["posture"]["aorta_shift"], source.spacing)
            cases.append({"method": CONTROL, "subject": x["name"], "direction": direction, **scores})
    for method in methods:
        model_path, seconds = trained[method]
        timings[method], run_dirs[method] = seconds, str(Path(model_path).parent)
        model = load_model(model_path)
        for x in test_s:
            for direction in DIRECTIONS:
                if direction == "mr2ct":
                    src_key, ref_key, geo, synth_dir = "mr", "ct_in_mr", "mr", "a2b"
                else:
                    src_key, ref_key, geo, synth_dir = "ct", "mr_in_ct", "ct", "b2a"
                source = read_volume(x[src_key])
                synthetic = synthesize_volume(model, source, direction=synth_dir, precision="fp32", device=args.device,
                                              mask_background=False)
                reference = read_volume(x[ref_key]).array
                masks = {k: read_volume(x[f"{k}_{geo}"]).array > 0 for k in ("aorta", "spine", "body")}
                masks["table"] = read_volume(x["table_ct"]).array > 0
                scores = score_case(synthetic.array, source.array, reference, masks, direction,
                                    x["posture"]["aorta_shift"], source.spacing)
                cases.append({"method": method, "subject": x["name"], "direction": direction, **scores})
                if x is test_s[0]:
                    write_volume(synthetic, root / "synthetic" / f"{x['name']}-{direction}-{method}.nii.gz")
                    examples[(direction, "_inputs")] = (np.asarray(source.array, np.float32), masks["aorta"],
                                                        masks["spine"], source.spacing[0])
                    examples[(direction, method)] = (np.asarray(synthetic.array, np.float32), scores["ssim"],
                                                     scores["dice_aorta"], scores["dice_spine"])
                if x is test_s[0] and s.get("reports", True):
                    report = compare_volumes(
                        synthetic, source, root / "reports" / f"{direction}-{method}", tiles=16, error_units="window",
                        a_name=f"synthetic {'CT' if direction == 'mr2ct' else 'T2*'} ({method})",
                        b_name=f"source {'T2*-weighted MR' if direction == 'mr2ct' else 'CT'} ({x['name']})",
                        center_on=masks["aorta"], also=masks["spine"], center_name="aorta", also_name="spine",
                        zoom_mm=110.0)
                    figures[f"report/{direction}/{method}"] = str(report["montage"])
        for direction in DIRECTIONS:
            group = [c for c in cases if c["method"] == method and c["direction"] == direction]
            log(f"{method:14s} {DIRECTIONS[direction]:8s} aorta SSIM {np.mean([c['ssim'] for c in group]):.3f} "
                f"PSNR {np.mean([c['psnr'] for c in group]):.2f}  Dice aorta {np.mean([c['dice_aorta'] for c in group]):.3f} "
                f"spine {np.mean([c['dice_spine'] for c in group]):.3f}  reproduced {np.mean([c['reproduced'] for c in group]):+.2f}"
                + (f"  table {np.mean([c['table_ml'] for c in group]):.1f} ml" if direction == "mr2ct" else ""))
    if examples:
        figures["checkerboards"] = write_checkerboards(root / "figures" / "abdomen-checkerboards.png", examples, methods)
        log(f"figure: {figures['checkerboards']}")
    return {
        "results": aggregate(cases),
        "tests": paired_tests(cases, methods),
        "cases": cases,
        "config": {"mode": mode, "methods": methods, **s, "training_seconds": timings, "runs": run_dirs,
                   "root": str(root), "cohort": str(cohort_dir)},
        "figures": figures,
        "machine": machine_info(),
        "wall_s": round(time.monotonic() - started, 1),
    }


def _fmt(row, metric, digits=3):
    if row.get(metric) is None:
        return "—"
    return f"{row[metric]:.{digits}f} ({row.get(f'{metric}_sd') or 0:.{digits}f})"


def summary(result):
    """The paper's Table 2 layout (aorta MSE / PSNR / SSIM) plus the structure Dice and the table."""
    lines = [f"{'method':14s} {'direction':9s} {'MSE':>15s} {'PSNR':>15s} {'SSIM':>15s} {'Dice aorta':>15s} "
             f"{'Dice spine':>15s} {'reproduced':>10s} {'table ml':>9s}"]
    for r in result["results"]:
        lines.append(f"{r['method']:14s} {r['direction']:9s} {_fmt(r, 'mse'):>15s} {_fmt(r, 'psnr', 2):>15s} "
                     f"{_fmt(r, 'ssim'):>15s} {_fmt(r, 'dice_aorta'):>15s} {_fmt(r, 'dice_spine'):>15s} "
                     f"{(r.get('reproduced') or 0):>+10.2f} "
                     + (f"{r['table_ml']:>9.1f}" if r.get("table_ml") is not None else f"{'—':>9s}"))
    for t in result.get("tests", []):
        if t["metric"] in ("ssim", "dice_aorta", "dice_spine"):
            lines.append(f"paired t-test {t['metric']}, {t['direction']}: dicyc vs {t['versus']}: "
                         f"{t['mean_difference']:+.3f}, p = {t['p']:.3g} (n = {t['n']})")
    machine = result["machine"]
    lines.append(f"wall time {result['wall_s']:.0f} s on {machine.get('cpu', machine.get('processor'))}; "
                 f"figures under {result['config']['root']}")
    return "\n".join(lines)
