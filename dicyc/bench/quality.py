"""Quality under domain-specific deformation: the seed papers' IXI protocol on real anatomy.

BENCHMARKS.md §1. PD stays undeformed; every T2 volume is deformed by one "scanner"
distribution of smooth in-plane deformations (:mod:`dicyc.deform`). Each method is trained
unpaired (A = PD, B = T2) on the same budget and augmentation, then scored on held-out subjects:

* PD→T2 against the *undeformed* T2 — a synthesis that reproduces the scanner's deformation
  is penalised, which is the point;
* T2→PD against the PD deformed with that T2's own field (the source geometry).

MSE, PSNR and SSIM are computed in the brain mask on intensities normalised per volume
(z-scores inside the mask, so MR units do not matter), mean (sd) over test subjects, with a
paired t-test of DiCyc against the best baseline. The undeformed control trains on undeformed
T2 and shows that nothing is lost where there is no deformation.
"""

import json
import time
from pathlib import Path

import numpy as np

#: protocol settings; ``quick`` fits in minutes on 2 CPU cores, ``full`` is the papers' size (GPU)
SETTINGS = {
    "quick": {
        "n_subjects": 9, "n_test": 3, "spacing": 3.6, "slice_size": 64, "ngf": 16, "n_blocks": 3, "ndf": 16,
        "iterations": 1500, "batch_size": 4, "deformation_px": 4.0,
    },
    "full": {
        "n_subjects": 24, "n_test": 6, "spacing": 1.8, "slice_size": 128, "ngf": 64, "n_blocks": 9, "ndf": 64,
        "iterations": 40000, "batch_size": 1, "deformation_px": 8.0,
    },
}
DEFAULT_METHODS = ("cyclegan", "dicyc")
METRICS = ("mse", "psnr", "ssim")


def _zscore(array, mask):
    values = array[mask]
    sd = float(values.std())
    return (array - float(values.mean())) / (sd if sd > 0 else 1.0)


def score(pred, ref, mask):
    """MSE/PSNR/SSIM of two volumes in ``mask`` after per-volume z-scoring inside the mask."""
    from dicyc.metrics import compute_metrics

    p = _zscore(np.asarray(pred.array, dtype=np.float64), mask)
    r = _zscore(np.asarray(ref.array, dtype=np.float64), mask)
    m = compute_metrics(p, r, mask=mask)
    return {k: float(m[k]) for k in METRICS}


def _deformed_cohort(cohort_dir, data_dir, deformation_px, seed, log):
    """Per subject: T2 and PD (and mask) deformed with that subject's scanner field."""
    from dicyc.deform import ScannerDeformation, deform_volume
    from dicyc.phantom import load_cohort
    from dicyc.volume import read_volume, write_volume

    cohort = load_cohort(cohort_dir)
    scanner = ScannerDeformation(seed=seed, magnitude_px=deformation_px)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    subjects = []
    for index, subject in enumerate(cohort["subjects"]):
        paths = {k: Path(cohort_dir) / subject[k] for k in ("pd", "t2", "mask")}
        out = {f"{k}_def": data_dir / f"{Path(subject[k]).name.replace('.nii.gz', '')}_def.nii.gz" for k in ("pd", "t2", "mask")}
        if not all(p.exists() for p in out.values()):
            t2 = read_volume(paths["t2"])
            field = scanner.field_for(t2, index)
            for key in ("pd", "t2", "mask"):
                vol = t2 if key == "t2" else read_volume(paths[key])
                interp = "nearest" if key == "mask" else "linear"
                write_volume(deform_volume(vol, field, interpolation=interp), out[f"{key}_def"])
        subjects.append({"name": subject.get("name", f"sub-{index:02d}"), "split": subject["split"], **paths, **out})
    log(f"deformed cohort ready: {len(subjects)} subjects ({deformation_px:g} px scanner deformation)")
    return subjects


def _write_list(path, paths):
    from dicyc.atomic import write_text

    write_text(path, "".join(f"{p}\n" for p in paths))
    return str(path)


def _train(method, a_list, b_list, runs_dir, s, device, log):
    from dicyc.bench import train_or_reuse, training_config

    extra = {"n_blocks": max(s["n_blocks"], 2)} if method == "unit" else {}
    if method == "cycle-medgan":
        extra["extractor_steps"] = 100
    config = training_config(method, s, modality_a="PD", modality_b="T2", **extra)
    return train_or_reuse(runs_dir, config, a_list, b_list, device, log)


def write_figure(path, setting, examples, methods):
    """One PNG per setting: for each direction, the source, the reference, and each method's
    synthesis with its error image (z-scored, brain mask), middle axial slice of one test subject."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dicyc.atomic import atomic_path

    directions = [d for d in ("pd2t2", "t22pd") if (d, methods[0]) in examples]
    cols = 2 + 2 * len(methods)
    fig, axes = plt.subplots(len(directions), cols, figsize=(2.0 * cols, 2.2 * len(directions)), squeeze=False)
    for row, direction in enumerate(directions):
        src, ref, mask = examples[(direction, "_inputs")]
        label = "PD→T2" if direction == "pd2t2" else "T2→PD"
        panels = [(src, f"{label}: source", "gray"), (ref, "reference", "gray")]
        for method in methods:
            out, ssim = examples[(direction, method)]
            panels.append((out, f"{method} (SSIM {ssim:.3f})", "gray"))
            panels.append((np.abs(out - ref) * mask, f"{method} |error|", "magma"))
        for col, (image, title, cmap) in enumerate(panels):
            ax = axes[row, col]
            vmin, vmax = (0.0, 3.0) if cmap == "magma" else (-2.5, 2.5)
            ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{setting} setting: z-scored intensities, middle axial slice, first test subject", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return str(path)


def _middle_slice(volume, mask):
    """Z-scored middle axial slice of ``volume`` (axial = the first numpy axis of the phantom)."""
    z = volume.shape[0] // 2
    return _zscore(np.asarray(volume.array, dtype=np.float64), mask)[z]


def run(args, log, settings=None):
    """Run the protocol; returns the JSON-ready result (see BENCHMARKS.md §1 and the issue)."""
    from dicyc.bench import machine_info
    from dicyc.metrics import paired_ttest
    from dicyc.modelfile import load_model
    from dicyc.phantom import make_cohort
    from dicyc.samples import default_cache_dir
    from dicyc.synthesize import synthesize_volume
    from dicyc.volume import read_volume

    started = time.monotonic()
    mode = "quick" if args.quick else "full"
    s = dict(SETTINGS[mode], **(settings or {}))
    methods = list(getattr(args, "methods", None) or DEFAULT_METHODS)
    root = Path(args.out) if getattr(args, "out", None) else default_cache_dir() / "bench" / f"quality-{mode}"
    cohort_dir = make_cohort(root / "cohort", n_subjects=s["n_subjects"], n_test=s["n_test"], spacing=s["spacing"],
                             seed=0, log=log)
    subjects = _deformed_cohort(cohort_dir, root / "deformed", s["deformation_px"], seed=1, log=log)
    train_s = [x for x in subjects if x["split"] == "train"]
    test_s = [x for x in subjects if x["split"] == "test"]
    lists = {
        "pd": _write_list(root / "lists" / "train_pd.txt", [x["pd"] for x in train_s]),
        "t2": _write_list(root / "lists" / "train_t2.txt", [x["t2"] for x in train_s]),
        "t2_def": _write_list(root / "lists" / "train_t2_def.txt", [x["t2_def"] for x in train_s]),
    }
    results, per_case, timings, figures, runs = [], {}, {}, {}, {}
    settings_run = tuple(s.get("settings", ("deformed", "undeformed")))
    for setting in settings_run:
        examples = {}
        for method in methods:
            b_list = lists["t2_def"] if setting == "deformed" else lists["t2"]
            model_path, seconds = _train(method, lists["pd"], b_list, root / "runs" / setting, s, args.device, log)
            timings[f"{setting}/{method}"] = seconds
            runs[f"{setting}/{method}"] = str(Path(model_path).parent)
            model = load_model(model_path)
            for direction in ("pd2t2", "t22pd"):
                cases = []
                for x in test_s:
                    if direction == "pd2t2":  # source PD (undeformed) → score against undeformed T2
                        src, ref, mask = x["pd"], x["t2"], x["mask"]
                        synth_dir = "a2b"
                    else:  # source T2 (deformed in that setting) → score against PD in the same geometry
                        deformed = setting == "deformed"
                        src = x["t2_def"] if deformed else x["t2"]
                        ref = x["pd_def"] if deformed else x["pd"]
                        mask = x["mask_def"] if deformed else x["mask"]
                        synth_dir = "b2a"
                    out = synthesize_volume(model, read_volume(src), direction=synth_dir, precision="fp32", device=args.device)
                    ref_vol, mask_arr = read_volume(ref), read_volume(mask).array > 0
                    cases.append(score(out, ref_vol, mask_arr))
                    if x is test_s[0]:  # one subject's middle slice for the figure
                        z = mask_arr.shape[0] // 2
                        examples[(direction, "_inputs")] = (
                            _middle_slice(read_volume(src), mask_arr), _middle_slice(ref_vol, mask_arr), mask_arr[z])
                        examples[(direction, method)] = (_middle_slice(out, mask_arr), cases[-1]["ssim"])
                per_case[(setting, method, direction)] = cases
                row = {"method": method, "direction": "PD->T2" if direction == "pd2t2" else "T2->PD",
                       "deformed": setting == "deformed", "n": len(cases)}
                for k in METRICS:
                    values = np.array([c[k] for c in cases])
                    row[k], row[f"{k}_sd"] = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
                results.append(row)
                log(f"{setting:10s} {method:14s} {row['direction']}: MSE {row['mse']:.3f} PSNR {row['psnr']:.2f} "
                    f"SSIM {row['ssim']:.3f}")
        if examples:
            figures[setting] = write_figure(root / "figures" / f"quality-{setting}.png", setting, examples, methods)
            log(f"figure: {figures[setting]}")
    tests = []
    if "dicyc" in methods and len(methods) > 1 and len(test_s) >= 2:  # a paired t-test needs two cases
        for setting in settings_run:
            for direction in ("pd2t2", "t22pd"):
                baselines = [m for m in methods if m != "dicyc"]
                best = max(baselines, key=lambda m: np.mean([c["ssim"] for c in per_case[(setting, m, direction)]]))
                for k in METRICS:
                    t = paired_ttest([c[k] for c in per_case[(setting, "dicyc", direction)]],
                                     [c[k] for c in per_case[(setting, best, direction)]])
                    tests.append({"setting": setting, "direction": "PD->T2" if direction == "pd2t2" else "T2->PD",
                                  "metric": k, "dicyc_vs": best, **t})
    return {
        "results": results,
        "tests": tests,
        "config": {"mode": mode, "methods": methods, **s, "training_seconds": timings, "runs": runs,
                   "root": str(root)},
        "figures": figures,
        "machine": machine_info(),
        "wall_s": round(time.monotonic() - started, 1),
    }


def summary(result):
    """The results table as text, papers' layout: method, direction, setting, MSE / PSNR / SSIM."""
    lines = [f"{'method':14s} {'direction':9s} {'setting':10s} {'MSE':>14s} {'PSNR':>14s} {'SSIM':>14s}"]
    for r in result["results"]:
        lines.append(
            f"{r['method']:14s} {r['direction']:9s} {'deformed' if r['deformed'] else 'undeformed':10s} "
            f"{r['mse']:6.3f} ({r['mse_sd']:.3f}) {r['psnr']:6.2f} ({r['psnr_sd']:.2f}) {r['ssim']:6.3f} ({r['ssim_sd']:.3f})"
        )
    for t in result.get("tests", []):
        if t["metric"] == "ssim":
            lines.append(f"paired t-test SSIM, {t['setting']} {t['direction']}: dicyc vs {t['dicyc_vs']}: "
                         f"mean difference {t['mean_difference']:+.3f}, p = {t['p']:.3g} (n = {t['n']})")
    lines.append(f"wall time {result['wall_s']:.0f} s on {result['machine'].get('cpu', result['machine'].get('processor'))}")
    return "\n".join(lines)
