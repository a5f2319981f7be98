"""Quality under domain-specific deformation: the seed papers' IXI protocol on real anatomy.

BENCHMARKS.md §1. PD stays undeformed; every T2 volume is deformed by a "scanner" distribution
of smooth in-plane deformations (a *family* of :mod:`dicyc.deform`). Each method is trained
unpaired (A = PD, B = T2) on the same budget and augmentation, then scored on held-out subjects:

* PD→T2 against the *undeformed* T2: a synthesis that reproduces the scanner's deformation
  is penalised, which is the point;
* T2→PD against the PD deformed with that T2's own field (the source geometry).

Scores, per test subject and training seed (a *case*):

* MSE, PSNR and SSIM in the brain mask on intensities z-scored per volume inside the mask, against
  the noisy, bias-affected phantom volume (``mse``, ``psnr``, ``ssim``) and against its
  noise-free, bias-free signal (``*_clean``): Rician noise in the reference caps SSIM and blurs
  the differences between methods, and the papers scored against real scans of far lower noise;
* geometry apart from intensity (:mod:`dicyc.geometry`): the displacement that registers the
  synthesis onto the clean reference (``displacement_mm``) and, in the deformed setting, the
  fraction of the scanner deformation the synthesis reproduced (``reproduced``); and the Dice of
  the synthesis' outline with the source's brain mask (``outline_source``) and, in the deformed
  setting, with the other geometry's (``outline_other``), which survives a poor appearance.

Each setting reports mean and sd over cases, the spread of the per-seed means, per-seed rows,
and paired t-tests over subject x seed cases: DiCyc against the best baseline, each DiCyc-family
method against its CycleGAN counterpart (the 2021 paper's Table 3), and each option variant
against DiCyc. The undeformed control trains on undeformed T2 and shows that nothing is lost
where there is no deformation. For DiCyc-family runs the benchmark also measures what the
deformed pass learned against the true field (:mod:`dicyc.bench.learned`).

Methods may be variants of a registered method with options, written ``NAME[key=value,...]``
(e.g. ``dicyc[dicyc_loss=commutation]``): the ablations of the README are such variants.
"""

import json
import re
import time
from pathlib import Path

import numpy as np

from dicyc.bench import mean_sd, parse_method
from dicyc.errors import DicycError

#: protocol settings; ``quick`` fits a 2-core CPU, ``full`` is the papers' size (a GPU)
SETTINGS = {
    "quick": {
        "n_subjects": 14, "n_test": 8, "spacing": 3.6, "slice_size": 64, "ngf": 16, "n_blocks": 3, "ndf": 16,
        "iterations": 3000, "batch_size": 1, "deformation_px": 4.0, "families": ["bspline"], "augment": False,
        # the deformed setting only: the undeformed control doubles the time (--settings deformed undeformed)
        "settings": ["deformed"],
    },
    "full": {
        "n_subjects": 32, "n_test": 8, "spacing": 1.8, "slice_size": 128, "ngf": 64, "n_blocks": 9, "ndf": 64,
        "iterations": 40000, "batch_size": 1, "deformation_px": 8.0, "families": ["bspline", "radial"], "augment": True,
        "settings": ["deformed", "undeformed"],
    },
}
DEFAULT_METHODS = ("cyclegan", "dicyc")
#: the scanner: the seed of every family's distribution (its systematic component)
SCANNER_SEED = 1
METRICS = ("mse", "psnr", "ssim", "mse_clean", "psnr_clean", "ssim_clean", "displacement_mm", "reproduced",
           "outline_source", "outline_other")
#: what the summary and the tests sort by: higher is better for these
HIGHER_IS_BETTER = {"psnr", "ssim", "psnr_clean", "ssim_clean"}
DIRECTIONS = {"pd2t2": "PD->T2", "t22pd": "T2->PD"}
#: each DiCyc-family method and its CycleGAN counterpart (the 2021 paper's ablation, Table 3)
COUNTERPARTS = {"dicyc": "nmi-cyclegan", "gcc-dicyc": "gcc-cyclegan", "mind-dicyc": "mind-cyclegan"}
DICYC_FAMILY = ("dicyc", "gcc-dicyc", "mind-dicyc", "dicyclegan")


# ===================================================================== data
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
    return {k: float(m[k]) for k in ("mse", "psnr", "ssim")}


def _deformed_cohort(cohort_dir, data_dir, scanner, log):
    """Per subject: every volume (noisy, clean, mask) deformed with that subject's scanner field."""
    from dicyc.deform import deform_volume
    from dicyc.phantom import load_cohort
    from dicyc.volume import read_volume, write_volume

    cohort = load_cohort(cohort_dir)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = ("pd", "t2", "mask", "pd_clean", "t2_clean")
    subjects = []
    for index, subject in enumerate(cohort["subjects"]):
        paths = {k: Path(cohort_dir) / subject[k] for k in keys}
        out = {f"{k}_def": data_dir / f"{subject['name']}_{k}_def.nii.gz" for k in keys}
        if not all(p.exists() for p in out.values()):
            t2 = read_volume(paths["t2"])
            field = scanner.field_for(t2, index)
            for key in keys:
                vol = t2 if key == "t2" else read_volume(paths[key])
                interp = "nearest" if key == "mask" else "linear"
                write_volume(deform_volume(vol, field, interpolation=interp), out[f"{key}_def"])
        subjects.append({"name": subject["name"], "index": index, "split": subject["split"], **paths, **out})
    log(f"{scanner.family} cohort ready: {len(subjects)} subjects ({scanner.magnitude_px:g} px scanner deformation)")
    return subjects


def _write_list(path, paths):
    from dicyc.atomic import write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(f"{p}\n" for p in paths))
    return str(path)


def _config(name, options, s, seed):
    from dicyc.bench import training_config

    extra = {"n_blocks": max(s["n_blocks"], 2)} if name == "unit" else {}
    if name == "cycle-medgan":
        extra["extractor_steps"] = 100
    extra["augment"] = s.get("augment", True)
    extra.update(options)
    return training_config(name, s, modality_a="PD", modality_b="T2", seed=seed, **extra)


class TrainingJob:
    """One benchmark training run: its resolved configuration, data lists and runs folder."""

    def __init__(self, config, a, b, runs_dir):
        self.config, self.a, self.b, self.runs_dir = config, a, b, runs_dir

    def cost(self):
        """A rough relative cost, to start the longest runs first."""
        heavy = self.config["method"] in DICYC_FAMILY
        return self.config["iterations"] * self.config["batch_size"] * (2.2 if heavy else 1.0)


def _run_job(job, device, threads, label):
    """Worker body: train (or reuse) one run with ``threads`` torch threads; (model path, seconds)."""
    import sys

    import torch

    from dicyc.bench import train_or_reuse

    torch.set_num_threads(threads)

    def log(message):
        print(f"[{label}] {message}", file=sys.stderr, flush=True)

    path, seconds = train_or_reuse(job.runs_dir, job.config, job.a, job.b, device, log)
    return str(path), seconds


def _cores():
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def train_all(jobs, device, workers=None, log=print):
    """Train every job of the protocol; returns ``{key: (model path, seconds or None if reused)}``.

    On a CPU the runs go to worker processes, one per core by default (``workers``), each with
    one torch thread: at the benchmark's small sizes one thread keeps about 80 % of the speed of
    two, so two runs side by side finish in about 60 % of the time of one after the other. The
    longest runs start first. On a GPU (or with ``workers`` 1) they run one after the other in
    this process. A run's result does not depend on how it was scheduled.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from dicyc.device import resolve_device

    dev = resolve_device(device)
    order = sorted(jobs, key=lambda k: -jobs[k].cost())
    workers = int(workers or (min(_cores(), len(order)) if dev.type == "cpu" else 1))
    if workers <= 1 or len(order) <= 1:
        from dicyc.bench import train_or_reuse

        results = {}
        for key in order:
            path, seconds = train_or_reuse(jobs[key].runs_dir, jobs[key].config, jobs[key].a, jobs[key].b, device, log)
            results[key] = (str(path), seconds)
        return results
    threads = max(1, _cores() // workers)
    log(f"training {len(order)} runs in {workers} worker processes ({threads} torch thread(s) each)")
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {key: pool.submit(_run_job, jobs[key], device, threads, key) for key in order}
        return {key: future.result() for key, future in futures.items()}


# ===================================================================== scoring
def _case(model, x, direction, deformed, field, device):
    """Scores of one test subject in one direction (see the module docstring), and its figure slice."""
    from dicyc.geometry import geometry_scores, outline_dice
    from dicyc.synthesize import synthesize_volume
    from dicyc.volume import read_volume

    if direction == "pd2t2":  # source PD (undeformed) → against the undeformed T2
        src, ref, clean, mask, synth_dir, sign = x["pd"], x["t2"], x["t2_clean"], x["mask"], "a2b", 1.0
    else:  # source T2 (deformed in that setting) → against the PD in the same geometry
        suffix = "_def" if deformed else ""
        src, ref, clean, mask = (x[k + suffix] for k in ("t2", "pd", "pd_clean", "mask"))
        synth_dir, sign = "b2a", -1.0
    source = read_volume(src)
    out = synthesize_volume(model, source, direction=synth_dir, precision="fp32", device=device)
    mask_arr = read_volume(mask).array > 0
    ref_vol, clean_vol = read_volume(ref), read_volume(clean)
    result = score(out, ref_vol, mask_arr)
    result.update({f"{k}_clean": v for k, v in score(out, clean_vol, mask_arr).items()})
    result.update(geometry_scores(out.array, clean_vol.array, mask_arr, spacing=clean_vol.spacing,
                                  known_field=field if deformed else None, sign=sign))
    result["outline_source"] = outline_dice(out.array, mask_arr)
    if deformed:  # the outline against the other domain's geometry: which one does the synthesis follow?
        other = x["mask_def"] if direction == "pd2t2" else x["mask"]
        result["outline_other"] = outline_dice(out.array, read_volume(other).array > 0)
    z = mask_arr.shape[0] // 2
    slices = tuple(_zscore(np.asarray(v.array, dtype=np.float64), mask_arr)[z] for v in (source, clean_vol, out))
    return result, (*slices, mask_arr[z])


def aggregate(cases, keys):
    """Rows of mean (sd) per group of ``keys`` over cases, with the spread of the per-seed means."""
    groups = {}
    for case in cases:
        groups.setdefault(tuple(case[k] for k in keys), []).append(case)
    rows = []
    for group, members in groups.items():
        row = dict(zip(keys, group))
        row["n"] = len(members)
        seeds = sorted({c["seed"] for c in members})
        row["seeds"] = seeds
        for metric in METRICS:
            if all(c.get(metric) is None for c in members):
                continue
            row[metric], row[f"{metric}_sd"] = mean_sd(c.get(metric) for c in members)
            per_seed = [mean_sd(c.get(metric) for c in members if c["seed"] == s)[0] for s in seeds]
            row[f"{metric}_seed_sd"] = mean_sd(per_seed)[1]
        rows.append(row)
    return rows


def _paired_tests(cases, methods):
    """Paired t-tests over subject x seed cases: DiCyc vs the best baseline, each DiCyc-family
    method vs its CycleGAN counterpart, each option variant vs its plain method."""
    from dicyc.metrics import paired_ttest

    by_key = {}
    for c in cases:
        by_key.setdefault((c["setting"], c["family"], c["direction"], c["method"]), {})[(c["subject"], c["seed"])] = c
    groups = sorted({k[:3] for k in by_key}, key=str)
    plain = [m for m in methods if "[" not in m]
    baselines = [m for m in plain if m not in DICYC_FAMILY]
    tests = []
    for setting, family, direction in groups:
        def values(method):
            return by_key.get((setting, family, direction, method), {})

        pairs = []
        if "dicyc" in plain and baselines:
            best = max(baselines, key=lambda m: np.mean([c["ssim_clean"] for c in values(m).values()] or [-1]))
            pairs.append(("dicyc", best, "best baseline"))
        pairs += [(d, c, "counterpart") for d, c in COUNTERPARTS.items() if d in plain and c in plain]
        pairs += [(m, m.split("[")[0], "variant") for m in methods if "[" in m and m.split("[")[0] in plain]
        for a, b, kind in pairs:
            common = sorted(set(values(a)) & set(values(b)))
            if len(common) < 2:
                continue
            for metric in METRICS:
                xa = [values(a)[k].get(metric) for k in common]
                xb = [values(b)[k].get(metric) for k in common]
                if any(v is None for v in xa + xb):
                    continue
                t = paired_ttest(xa, xb)
                tests.append({"setting": setting, "family": family, "direction": DIRECTIONS[direction], "metric": metric,
                              "method": a, "versus": b, "kind": kind, **t})
    return tests


# ===================================================================== the protocol
def _settings(s, args):
    """The protocol's settings with the command line's overrides."""
    s = dict(s)
    for key in ("iterations", "batch_size", "deformation_px", "n_test"):
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    families = getattr(args, "families", None)
    if families:
        from dicyc.deform import FAMILIES

        families = list(FAMILIES) if families == ["all"] else list(families)
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise DicycError(f"unknown deformation famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                             f"choose from {', '.join(FAMILIES)} or all.")
        s["families"] = families
    s["n_subjects"] = max(s["n_subjects"], s["n_test"] + 2)
    return s


def run(args, log, settings=None):
    """Run the protocol; returns the JSON-ready result (see the module docstring)."""
    from dicyc.bench import machine_info
    from dicyc.deform import scanner_deformation
    from dicyc.modelfile import load_model
    from dicyc.phantom import make_cohort
    from dicyc.samples import default_cache_dir

    started = time.monotonic()
    mode = "quick" if args.quick else "full"
    s = _settings(dict(SETTINGS[mode], **(settings or {})), args)
    specs = [parse_method(m) for m in (getattr(args, "methods", None) or DEFAULT_METHODS)]
    labels = [label for label, _, _ in specs]
    n_seeds = int(getattr(args, "seeds", None) or 1)
    if n_seeds < 1:
        raise DicycError(f"--seeds must be at least 1; got {n_seeds}.")
    cohort_seed = int(getattr(args, "cohort_seed", None) or 0)
    scanner_seed = int(getattr(args, "scanner_seed", None) or SCANNER_SEED)
    settings_run = list(getattr(args, "settings", None) or s.get("settings") or ["deformed", "undeformed"])
    root = Path(args.out) if getattr(args, "out", None) else default_cache_dir() / "bench" / f"quality-{mode}"
    cohort_dir = make_cohort(root / f"cohort-seed{cohort_seed}", n_subjects=s["n_subjects"], n_test=s["n_test"],
                             spacing=s["spacing"], seed=cohort_seed, log=log)
    families = s["families"] if "deformed" in settings_run else []
    runs = [("deformed", f) for f in families] + ([("undeformed", None)] if "undeformed" in settings_run else [])
    scanners = {f: scanner_deformation(f, seed=scanner_seed, magnitude_px=s["deformation_px"]) for f in families}
    cohorts, fields = {}, {}
    for family, scanner in scanners.items():
        data_dir = root / f"deformed-{family}-seed{scanner_seed}-{s['deformation_px']:g}px-c{cohort_seed}"
        cohorts[family] = _deformed_cohort(cohort_dir, data_dir, scanner, log)
        fields[family] = {x["name"]: scanner.field_for(_grid(x), x["index"])
                          for x in cohorts[family] if x["split"] == "test"}
    if not cohorts:
        from dicyc.phantom import load_cohort

        cohort = load_cohort(cohort_dir)
        cohorts[None] = [{"name": x["name"], "index": i, "split": x["split"],
                          **{k: Path(cohort_dir) / x[k] for k in ("pd", "t2", "mask", "pd_clean", "t2_clean")}}
                         for i, x in enumerate(cohort["subjects"])]
    any_cohort = next(iter(cohorts.values()))
    train_s = [x for x in any_cohort if x["split"] == "train"]
    lists_dir = root / "lists" / f"c{cohort_seed}"
    lists = {"pd": _write_list(lists_dir / "train_pd.txt", [x["pd"] for x in train_s]),
             "t2": _write_list(lists_dir / "train_t2.txt", [x["t2"] for x in train_s])}
    for family, subjects in cohorts.items():
        if family is not None:
            lists[family] = _write_list(lists_dir / f"train_t2_def-{family}.txt",
                                        [x["t2_def"] for x in subjects if x["split"] == "train"])
    jobs = {}
    for seed in range(n_seeds):
        for setting, family in runs:
            key = f"{setting}:{family}" if family else setting
            for label, name, options in specs:
                b_list = lists[family] if setting == "deformed" else lists["t2"]
                jobs[f"{key}/{label}/seed{seed}"] = TrainingJob(
                    _config(name, options, s, seed), lists["pd"], b_list, str(root / "runs" / (family or "undeformed")))
    trained = train_all(jobs, args.device, getattr(args, "jobs", None), log)
    cases, timings, run_dirs, figures, learned = [], {}, {}, {}, []
    for seed in range(n_seeds):
        for setting, family in runs:
            subjects = cohorts[family] if family else any_cohort
            test_s = [x for x in subjects if x["split"] == "test"]
            deformed = setting == "deformed"
            key = f"{setting}:{family}" if family else setting
            examples = {}
            for label, name, options in specs:
                model_path, seconds = trained[f"{key}/{label}/seed{seed}"]
                timings[f"{key}/{label}/seed{seed}"] = seconds
                run_dirs[f"{key}/{label}/seed{seed}"] = str(Path(model_path).parent)
                model = load_model(model_path)
                for x in test_s:
                    field = fields[family][x["name"]] if deformed else None
                    for direction in DIRECTIONS:
                        scores, slices = _case(model, x, direction, deformed, field, args.device)
                        cases.append({"setting": setting, "family": family, "method": label, "seed": seed,
                                      "subject": x["name"], "direction": direction, **scores})
                        if x is test_s[0]:
                            examples[(direction, "_inputs")] = (slices[0], slices[1], slices[3])
                            examples[(direction, label)] = (slices[2], scores["ssim_clean"])
                group = [c for c in cases if c["setting"] == setting and c["family"] == family and c["method"] == label
                         and c["seed"] == seed]
                log(f"{key:18s} seed {seed} {label:14s} " + "  ".join(
                    f"{DIRECTIONS[d]}: SSIM {np.mean([c['ssim_clean'] for c in group if c['direction'] == d]):.3f} "
                    f"(noisy ref {np.mean([c['ssim'] for c in group if c['direction'] == d]):.3f}), "
                    f"displacement {np.mean([c['displacement_mm'] for c in group if c['direction'] == d]):.2f} mm"
                    for d in DIRECTIONS))
                if deformed and name in DICYC_FAMILY:
                    learned.extend(_learned(Path(model_path).parent, test_s, fields[family], key, label, seed, root,
                                            figures, log))
            if examples and seed == 0:
                figures[key] = write_figure(root / "figures" / f"quality-{key.replace(':', '-')}.png", key, examples,
                                            labels)
                log(f"figure: {figures[key]}")
    rows = aggregate(cases, ("setting", "family", "method", "direction"))
    per_seed = aggregate(cases, ("setting", "family", "method", "direction", "seed"))
    for r in rows + per_seed:
        r["direction"] = DIRECTIONS[r["direction"]]
        r["deformed"] = r["setting"] == "deformed"
    return {
        "results": rows,
        "per_seed": per_seed,
        "tests": _paired_tests(cases, labels),
        "learned": learned,
        "cases": cases,
        "config": {"mode": mode, "methods": labels, "seeds": n_seeds, "cohort_seed": cohort_seed,
                   "scanner_seed": scanner_seed, **s, "settings": settings_run, "training_seconds": timings,
                   "runs": run_dirs, "root": str(root)},
        "figures": figures,
        "machine": machine_info(),
        "wall_s": round(time.monotonic() - started, 1),
    }


def _grid(x):
    """The phantom grid of a subject (its scanner field is drawn on it)."""
    from dicyc.volume import read_volume

    return read_volume(x["t2"])


def _learned(run_dir, test_s, fields, key, label, seed, root, figures, log):
    """What the deformed pass of a DiCyc-family run learned, per test subject (figure: the first)."""
    from dicyc.bench.learned import analyse, write_figure as learned_figure

    out = []
    for x in test_s:
        analysis = analyse(run_dir, x, fields[x["name"]])
        for direction, a in analysis.items():
            out.append({"setting": key, "method": label, "seed": seed, "subject": x["name"],
                        "direction": "PD->T2" if direction == "AB" else "T2->PD", "reproduced": a["reproduced"]})
        if x is test_s[0] and seed == 0:
            name = f"learned-{key.replace(':', '-')}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.png"
            figures[f"learned/{key}/{label}"] = learned_figure(root / "figures" / name, analysis, f"{label}, {key}")
    for direction in ("PD->T2", "T2->PD"):
        values = [o["reproduced"] for o in out if o["direction"] == direction]
        log(f"{key:18s} seed {seed} {label:14s} deformed pass learned {np.mean(values):.2f} of the scanner "
            f"deformation ({direction}, mean of {len(values)} test slices)")
    return out


# ===================================================================== report
def write_figure(path, setting, examples, methods):
    """One PNG per setting: for each direction, the source, the clean reference, and each method's
    synthesis with its error image (z-scored, brain mask), middle axial slice of one test subject."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dicyc.atomic import atomic_path

    directions = [d for d in DIRECTIONS if (d, methods[0]) in examples]
    cols = 2 + 2 * len(methods)
    fig, axes = plt.subplots(len(directions), cols, figsize=(2.0 * cols, 2.2 * len(directions)), squeeze=False)
    for row, direction in enumerate(directions):
        src, ref, mask = examples[(direction, "_inputs")]
        label = DIRECTIONS[direction].replace("->", "→")
        panels = [(src, f"{label}: source", "gray"), (ref, "reference (noise-free)", "gray")]
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
    fig.suptitle(f"{setting}: z-scored intensities, middle axial slice, first test subject, seed 0", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return str(path)


def _fmt(row, metric, digits=3):
    if row.get(metric) is None:
        return "—"
    seed_sd = row.get(f"{metric}_seed_sd")
    spread = f" ±{seed_sd:.{digits}f}" if seed_sd is not None and len(row.get("seeds", [])) > 1 else ""
    return f"{row[metric]:.{digits}f}{spread}"


def summary(result):
    """The results as text: per setting and direction, each method's scores, then the tests of SSIM."""
    lines = [f"{'setting':18s} {'method':28s} {'direction':9s} {'SSIM clean':>14s} {'SSIM noisy':>14s} "
             f"{'PSNR clean':>14s} {'displ. mm':>10s} {'reproduced':>10s}"]
    for r in result["results"]:
        key = f"{r['setting']}:{r['family']}" if r.get("family") else r["setting"]
        lines.append(f"{key:18s} {r['method']:28s} {r['direction']:9s} {_fmt(r, 'ssim_clean'):>14s} {_fmt(r, 'ssim'):>14s} "
                     f"{_fmt(r, 'psnr_clean', 2):>14s} {_fmt(r, 'displacement_mm', 2):>10s} {_fmt(r, 'reproduced', 2):>10s}")
    for t in result.get("tests", []):
        if t["metric"] in ("ssim_clean", "ssim"):
            key = f"{t['setting']}:{t['family']}" if t.get("family") else t["setting"]
            lines.append(f"paired t-test {t['metric']}, {key} {t['direction']}: {t['method']} vs {t['versus']} "
                         f"({t['kind']}): {t['mean_difference']:+.3f}, p = {t['p']:.3g} (n = {t['n']})")
    seen = {}
    for item in result.get("learned", []):
        seen.setdefault((item["setting"], item["method"], item["direction"]), []).append(item["reproduced"])
    for (setting, method, direction), values in seen.items():
        lines.append(f"deformed pass of {method}, {setting} {direction}: learned {np.mean(values):.2f} of the "
                     f"scanner deformation (n = {len(values)})")
    machine = result["machine"]
    lines.append(f"wall time {result['wall_s']:.0f} s on {machine.get('cpu', machine.get('processor'))}")
    return "\n".join(lines)
