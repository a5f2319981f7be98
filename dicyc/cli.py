"""The ``dicyc`` command line: one sub-command per task, each a thin shell over the engine.

Every command exits 0 on success. A problem the user can fix (a :class:`DicycError`) is
printed as one sentence on stderr with exit status 1 and no traceback; usage errors exit 2.
Heavy modules are imported inside each handler so ``dicyc --help`` starts instantly.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from dicyc import __version__
from dicyc.errors import DicycError

EVALUATE_NOTES = """\
metrics (computed on the reference grid, over the whole volume or inside --mask):
  MSE, MAE       in the volumes' own intensity units (MSE in units squared,
                 HU^2 for CT); MSE equals skimage.metrics.mean_squared_error on
                 the same voxels.
  PSNR           10*log10(R^2 / MSE) with R the data range: by default the
                 reference's max - min inside the evaluated region (override
                 with --data-range, e.g. 4095 for CT in HU or 2 for [-1, 1]).
                 Identical volumes give PSNR = inf (JSON: null).
  SSIM           Wang et al. 2004 (K1=0.01, K2=0.03, data range R as above),
                 computed slice-wise on axial (x-y) planes with an 11x11
                 Gaussian window (sigma 1.5 px, population covariances), then
                 averaged over the evaluated voxels (the whole map: unlike
                 skimage's scalar, no border is cropped).
  SSIM(HG)       the same SSIM map averaged only over high-gradient voxels:
                 the top 20% of the reference's in-plane Sobel gradient
                 magnitude inside the region (Yang et al. 2018).
  NMI            normalised mutual information 2*I(P;R) / (H(P)+H(R)) from a
                 64x64-bin joint histogram, in [0, 1]: 1 for an affine
                 intensity relation, high for other one-to-one relations, so it
                 compares across modalities (e.g. synthetic CT vs source MR).
If the prediction is on another grid than the reference it is resampled
(linear) onto the reference grid with a warning, and only the reference voxels
it covers are scored; grids that do not overlap are refused.

across modalities (e.g. a synthetic CT against its source MR) MSE, PSNR and
SSIM only measure the contrast gap between the modalities, so they give way to:
  NMI            as above (inside --mask where given);
  outline Dice   Dice of the two body outlines over the whole volume, each by
                 its modality's rule: CT above -500 HU, MR above 10% of its
                 99th percentile; then opened, largest component, holes filled;
  outline dist   mean symmetric surface distance between the outlines, mm;
  outline HD95   the larger of the two directed 95th-percentile surface
                 distances, mm.
The modalities come from --modality-pred/--modality-ref, else from what the
files record (dicyc synthesize writes "modality=CT" into NIfTI descrip, NRRD
and MetaImage headers and DICOM SeriesDescription; scanners' DICOM Modality
tag), else a CT is recognised by its HU statistics (>= 2% of voxels at
-1100..-900 HU and >= 2% at -200..200 HU, none below -3100). CT against a
volume that is not CT is cross-modality, as are two different MR weightings
(T1 vs T2; plain "MR" matches any). --cross-modality/--same-modality decide it.

streaks          slice-to-slice streaks of each volume inside its own body
                 outline (eroded 3 mm): mean |difference| between neighbouring
                 axial slices over the mean |difference| in-plane, at one
                 physical step; about 1 for a volume as consistent along z as
                 in-plane. Ratio: prediction over reference.
"""


def _add_modality_options(p, first, second):
    """--modality-X/--modality-Y and --cross-modality/--same-modality (compare and evaluate).

    ``first``, ``second``: (flag suffix, what it names), e.g. ("pred", "the prediction").
    """
    p.add_argument(f"--modality-{first[0]}", metavar="M", help=f"modality of {first[1]} (CT, MR, T1, T2, ...; "
                   "default: what the file records, else CT where its HU statistics say so)")
    p.add_argument(f"--modality-{second[0]}", metavar="M", help=f"modality of {second[1]}")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--cross-modality", dest="cross_modality", action="store_const", const=True,
                       help="score as two modalities (NMI, outline Dice and distances) whatever is detected")
    which.add_argument("--same-modality", dest="cross_modality", action="store_const", const=False,
                       help="score as one modality (MSE, PSNR, SSIM, ...) whatever is detected")



def _add_samples(sub):
    p = sub.add_parser(
        "samples",
        help="prepare the real sample volumes as NIfTI and print their paths",
        description="Prepare the real sample volumes (shipped inside Debian and PyPI packages) as NIfTI "
        "files with correct geometry in a cache folder, and print their paths, one per line.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="samples to prepare (default: all); see --list")
    p.add_argument("--list", action="store_true", help="list the sample names with a description and exit")
    p.add_argument("--dir", metavar="D", help="folder for the prepared samples (default: $DICYC_CACHE/samples "
                   "or ~/.cache/dicyc/samples)")
    p.set_defaults(handler=_cmd_samples)


def _cmd_samples(args):
    from dicyc import samples

    if args.list:
        entries = samples.list_samples()
        width = max(len(name) for name, _ in entries)
        for name, description in entries:
            print(f"{name:{width}s}  {description}")
        return 0
    paths = samples.prepare(args.names or None, cache_dir=args.dir, log=_log)
    for path in paths.values():
        print(path)
    return 0


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="metrics of a prediction against a reference (MSE, PSNR, SSIM, MAE, NMI, SSIM(HG); across "
        "modalities NMI and body-outline Dice and distances)",
        description="Compare a predicted (synthetic) volume with a reference volume: voxel-wise metrics for one "
        "modality, NMI and body outlines across modalities, and slice-to-slice streaks of both.",
        epilog=EVALUATE_NOTES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pred", required=True, metavar="P", help="predicted volume (file or DICOM folder)")
    p.add_argument("--ref", required=True, metavar="R", help="reference volume (file or DICOM folder)")
    p.add_argument("--mask", metavar="M", help="region to evaluate (non-zero voxels), e.g. a drawn aorta ROI")
    p.add_argument("--data-range", type=float, metavar="R", help="data range for PSNR and SSIM "
                   "(default: reference max - min inside the region)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    _add_modality_options(p, ("pred", "the prediction"), ("ref", "the reference"))
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args):
    from dicyc import metrics

    result = metrics.evaluate_files(args.pred, args.ref, mask_path=args.mask, data_range=args.data_range,
                                    modality_pred=args.modality_pred, modality_ref=args.modality_ref,
                                    cross_modality=args.cross_modality)
    if args.json:
        print(json.dumps(metrics.json_safe(result), indent=2))
    else:
        print(metrics.format_table(result))
    return 0


def _add_compare(sub):
    p = sub.add_parser(
        "compare",
        help="checkerboard, error image and a PNG montage of two volumes",
        description="Write a checkerboard and an error image of two volumes (as NIfTI, on A's grid, so "
        "Slicer can overlay them) and a PNG montage of axial, coronal and sagittal planes with the "
        "metrics of A against B: MSE, PSNR, SSIM, ... for one modality; NMI and the Dice and distance of the "
        "body outlines (drawn in the views) for two, e.g. a synthetic CT against its source MR (see dicyc "
        "evaluate --help for how the modalities are found).",
    )
    p.add_argument("--a", required=True, metavar="A", help="first volume (e.g. the synthetic CT or the source MR)")
    p.add_argument("--b", required=True, metavar="B", help="second volume (the reference; resampled onto A's grid)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--tiles", type=int, default=8, metavar="N", help="checkerboard tiles along each axis (default 8)")
    p.add_argument("--mask", metavar="M", help="ROI: metrics inside it, planes through its centre")
    p.add_argument("--point", metavar="I,J,K", help="voxel index (of A) the planes go through "
                   "(default: the --center-on segment's centre, else the ROI centre, else the centre of A)")
    p.add_argument("--center-on", metavar="SEG", help="a segment mask (e.g. aorta.nii.gz): the planes go through its "
                   "centroid and it is outlined in every view")
    p.add_argument("--also", metavar="SEG", help="a second segment mask (e.g. spine.nii.gz): extra axial, coronal and "
                   "sagittal views through its centroid, outlined in another colour, so both alignments are judged "
                   "in one figure")
    p.add_argument("--zoom", type=float, metavar="MM", help="show MM millimetres around each view's point "
                   "(e.g. 80 for an aorta) instead of the whole plane")
    p.add_argument("--error-units", choices=("raw", "window"),
                   help="error image in the volumes' own units (raw; the default for one modality, e.g. CT vs CT) "
                   "or on each volume's [0, 1] display window (window; the default across modalities)")
    _add_modality_options(p, ("a", "A"), ("b", "B"))
    p.set_defaults(handler=_cmd_compare)


def _cmd_compare(args):
    from dicyc import views

    point = None
    if args.point:
        try:
            point = tuple(int(v) for v in args.point.split(","))
            if len(point) != 3:
                raise ValueError
        except ValueError:
            raise DicycError(f"--point {args.point!r} is not three comma-separated voxel indices like 100,120,40.") from None
    if args.tiles < 1:
        raise DicycError(f"--tiles must be at least 1; got {args.tiles}.")
    if args.zoom is not None and not args.zoom > 0:
        raise DicycError(f"--zoom must be a positive number of millimetres; got {args.zoom}.")
    written = views.compare_files(
        args.a, args.b, args.out, tiles=args.tiles, mask_path=args.mask, point=point, error_units=args.error_units,
        center_on_path=args.center_on, also_path=args.also, zoom_mm=args.zoom, modality_a=args.modality_a,
        modality_b=args.modality_b, cross_modality=args.cross_modality,
    )
    for path in written.values():
        print(path)
    return 0


def _add_report(sub):
    p = sub.add_parser(
        "report",
        help="one figure: source MR beside the synthetic CTs of several models, with outlines, head-rest and scores",
        description="Put a source MR and the synthetic CTs that models made from it side by side (axial, coronal, "
        "sagittal): each CT's head outline drawn over the MR, the hallucinated head-rest (CT density where the MR "
        "has only air) in red, checkerboards of each CT against the MR, and a table of the head benchmark's "
        "scores (head-outline Dice and distance, NMI, head-rest ml, HU Wasserstein distance and tissue fractions "
        "against a real CT, slice streaks). Writes report.png and report.json.",
    )
    p.add_argument("--source", required=True, metavar="MR", help="the source MR the CTs were synthesised from")
    p.add_argument("--synthetic", required=True, nargs="+", metavar="LABEL=CT",
                   help="synthetic CTs on the MR's grid, each LABEL=PATH (e.g. CycleGAN=ct-cyclegan.nii.gz "
                   "DiCyc=ct-dicyc.nii.gz); synthesise with --keep-background so that a hallucinated head-rest shows")
    p.add_argument("--real-ct", required=True, metavar="CT", help="a real CT in HU (any person) for the realism scores")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--tiles", type=int, default=8, metavar="N", help="checkerboard tiles along each axis (default 8)")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args):
    from dicyc.report import report_files

    written = report_files(args.source, args.synthetic, args.real_ct, args.out, tiles=args.tiles)
    for row in written["models"]:
        _log(f"{row['label']}: head-outline Dice {row['dice_head']:.3f}, NMI {row['nmi_source']:.3f}, "
             f"head-rest {row['headrest_ml']:.1f} ml, HU W1 {row['hu_wasserstein']:.0f}"
             + (f", streaks {row['streak_ratio']:.2f} x the real CT's" if row.get("streak_ratio") is not None else ""))
    print(written["png"])
    print(written["json"])
    return 0


def _add_methods(sub):
    p = sub.add_parser("methods", help="list the training methods", description="List every training method with one line.")
    p.set_defaults(handler=_cmd_methods)


def _cmd_methods(args):
    from dicyc.methods import list_methods

    for name, description in list_methods():
        print(f"{name:16s} {description}")
    return 0


#: train options that mirror JSON config keys: (flag, key, type, help)
TRAIN_OPTIONS = [
    ("--modality-a", "modality_a", str, "modality of domain A: CT or an MR weighting such as MR, T1, T2, PD (default MR)"),
    ("--modality-b", "modality_b", str, "modality of domain B (default CT)"),
    ("--name-a", "name_a", str, "display name of domain A (default: its modality)"),
    ("--name-b", "name_b", str, "display name of domain B (default: its modality)"),
    ("--ngf", "ngf", int, "generator base channels (papers: 64)"),
    ("--n-blocks", "n_blocks", int, "generator residual blocks (papers: 9 or 6)"),
    ("--ndf", "ndf", int, "discriminator base channels (papers: 64)"),
    ("--upsample", "upsample", str, "transpose (reference) or resize (against checkerboard artefacts)"),
    ("--slice-size", "slice_size", int, "training slice size in pixels, a multiple of 4 (default 128)"),
    ("--context-slices", "context_slices", int, "2.5-D context: each network sees and predicts N neighbouring axial "
     "slices as channels (odd; default 1, a 2-D model); synthesis averages the N predictions of every slice, "
     "against slice-to-slice streaks in coronal and sagittal views, at about the 2-D model's cost"),
    ("--batch-size", "batch_size", int, "slices per domain per iteration (papers: 1)"),
    ("--precision", "precision", str, "auto (default: bf16 where the CPU or GPU computes it natively, else fp32), "
     "fp32, bf16 or fp16 (autocast; weights, checkpoints and model files stay fp32)"),
    ("--lr", "lr", float, "Adam learning rate (2e-4)"),
    ("--iterations", "iterations", int, "a fixed iteration count (constant lr for half, then linear decay)"),
    ("--epochs", "max_epochs", int, "epochs at most, with the papers' early-stop rule (when --iterations is not set)"),
    ("--epoch-length", "epoch_length", int, "iterations per epoch (default: slices of the larger domain / batch size)"),
    ("--checkpoint-every", "checkpoint_every", int, "iterations between checkpoints (also one per epoch)"),
    ("--sampling", "sampling", str, "random, same-patient or position (Yang et al. 2018)"),
    ("--seed", "seed", int, "random seed (default 0)"),
]


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a synthesis model (any method of `dicyc methods`)",
        description="Train an unpaired synthesis model between domain A and domain B. Options mirror the keys "
        "of --config (JSON); flags override the file. Runs unchanged under `torchrun --nproc_per_node N`.",
    )
    p.add_argument("--method", help="training method (default dicyc; see `dicyc methods`)")
    p.add_argument("--a", nargs="+", metavar="A", help="domain A volumes: files, folders or list files")
    p.add_argument("--b", nargs="+", metavar="B", help="domain B volumes: files, folders or list files")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, model, previews, events)")
    p.add_argument("--config", metavar="JSON", help="JSON file of training options")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (Apple GPU) (default auto)")
    p.add_argument("--progress-jsonl", metavar="FILE", help="also write the JSON-lines events to FILE")
    for flag, key, typ, text in TRAIN_OPTIONS:
        p.add_argument(flag, dest=key, type=typ, help=text)
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="in-plane training spacing in mm (default 1.8)")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False, help="turn augmentation off")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args):
    import contextlib
    import os

    from dicyc.runlock import RunLock
    from dicyc.train import prepare_run, train

    from dicyc.atomic import prepare_folder

    overrides = {key: getattr(args, key) for _, key, _, _ in TRAIN_OPTIONS}
    overrides["spacing"] = args.spacing
    overrides["augment"] = args.augment
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes, and locks
    out = Path(args.out)
    created = main_rank and not out.exists()
    if main_rank:
        prepare_folder(out, "run folder")
    try:
        with RunLock(out) if main_rank else contextlib.nullcontext():  # one trainer per folder, for its whole life
            try:
                config, a, b = prepare_run(out, args.method, args.a, args.b, args.config, overrides,
                                           resume=args.resume, log=_log)
                model = train(a, b, out, config, resume=args.resume, device=args.device,
                              progress_jsonl=args.progress_jsonl, log=_log)
            except DicycError:
                if created:
                    _remove_if_only_lock(out)
                raise
    except DicycError:
        if created:
            _remove_empty_folder(out)
        raise
    print(model)
    return 0


def _remove_if_only_lock(folder):
    """Drop the lock file of a run folder this command created, if nothing else was left in it."""
    from dicyc.runlock import LOCK_NAME

    try:
        if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            (folder / LOCK_NAME).unlink()
    except OSError:
        pass


def _remove_empty_folder(folder):
    """A refused train leaves no run folder it created behind (an empty one only: never anything else)."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _add_synthesize(sub):
    p = sub.add_parser(
        "synthesize",
        help="synthesise a volume of the other domain (e.g. CT from MR)",
        description="Run a trained model slice by slice on a volume. The output has the input's exact size, "
        "spacing, origin and direction (it overlays the input voxel for voxel); CT comes out in HU.",
    )
    p.add_argument("--model", required=True, metavar="M", help="model file (.safetensors written by dicyc train)")
    p.add_argument("--input", required=True, metavar="IN", help="input volume (file or DICOM folder)")
    p.add_argument("--output", required=True, metavar="OUT", help="output volume (.nii.gz, .nrrd, .mha, … or a folder for DICOM)")
    p.add_argument("--direction", default="a2b", choices=("a2b", "b2a"), help="a2b (default) or b2a; see the model card")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (Apple GPU) (default auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto uses bf16/fp16 only where it is fast here and stays within 40 dB PSNR of fp32")
    p.add_argument("--batch", type=int, default=8, metavar="N", help="slices per batch (default 8)")
    p.add_argument("--target", metavar="MODALITY", help="refuse a model that does not synthesise this modality or "
                   "domain name (e.g. CT), so a PD→T2 model cannot be used by mistake")
    p.add_argument("--views", default="axial", help="comma-separated planes to average: axial (default), "
                   "or axial,coronal,sagittal against slice-to-slice flicker")
    p.add_argument("--overwrite", action="store_true", help="allow --output to replace an existing folder that is not a "
                   "DICOM series written by DiCyc (it and every file in it are deleted)")
    p.add_argument("--progress-jsonl", metavar="FILE", help="also write JSON-lines events to FILE (start, iteration = "
                   "slices done of total_iterations, done with the output path, error with the message), e.g. for "
                   "the Slicer progress bar")
    p.add_argument("--keep-background", action="store_true", help="keep what the generator puts outside the input's "
                   "body instead of setting it to the target's background (air for CT); shows hallucinated objects "
                   "such as a CT head-rest, as dicyc report and dicyc bench head score them (blank input slices, one value "
                   "throughout, stay background either way)")
    p.set_defaults(handler=_cmd_synthesize)


def _cmd_synthesize(args):
    from dicyc.events import ProgressBar
    from dicyc.synthesize import synthesize_file

    views = tuple(v.strip() for v in args.views.split(",") if v.strip())
    bad = [v for v in views if v not in ("axial", "coronal", "sagittal")]
    if bad or not views:
        raise DicycError(f"--views takes axial, coronal and/or sagittal; got {args.views!r}.")
    if args.batch < 1:
        raise DicycError(f"--batch must be at least 1; got {args.batch}.")
    bars = {}
    events = _open_event_log(args.progress_jsonl)
    t0 = time.monotonic()
    events.emit("start", path=str(args.input), message=f"synthesising {args.output} from {args.input}")

    def progress(done, total):
        bar = bars.setdefault("bar", ProgressBar(total, label="synthesize"))
        bar.update(done)
        elapsed = time.monotonic() - t0
        eta = elapsed / done * (total - done) if done else None
        events.emit("iteration", iteration=int(done), total_iterations=int(total), elapsed_s=round(elapsed, 3),
                    eta_s=None if eta is None else round(eta, 3))

    try:
        info = synthesize_file(args.model, args.input, args.output, direction=args.direction, device=args.device,
                               precision=args.precision, batch=args.batch, views=views, progress=progress,
                               expect_target=args.target, mask_background=not args.keep_background,
                               overwrite=args.overwrite)
    except KeyboardInterrupt:
        events.emit_quietly("error", message="interrupted.")
        events.close()
        raise
    except Exception as exc:  # the events file must say why the run ended; the error itself propagates
        events.emit_quietly("error", message=str(exc) if isinstance(exc, DicycError) else f"{type(exc).__name__}: {exc}")
        events.close()
        raise
    if "bar" in bars:
        bars["bar"].close()
    events.emit("done", path=str(info.get("output", args.output)), elapsed_s=round(time.monotonic() - t0, 3),
                device=info.get("device"), precision=info.get("precision"))
    events.close()
    _log(f"synthesised {info.get('slices')} slices on {info.get('device')} in {info.get('precision')} "
         f"({info.get('seconds', 0):.1f} s)")
    print(args.output)
    return 0


def _positive_int(text):
    """argparse type: an integer of at least 1, refused in one sentence otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def _add_bench(sub):
    p = sub.add_parser(
        "bench",
        help="quality and speed benchmarks (the numbers in the README)",
        description="Benchmarks that produce the figures quoted in the README. Each records the command, "
        "the machine and the date; --json writes the full result.",
    )
    which = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    which.required = True
    for name, text in (
        ("quality", "PD<->T2 under domain-specific deformation on the multi-sequence phantom (the papers' protocol)"),
        ("head", "real head MR->CT: alignment with the source MR and CT realism, CycleGAN vs DiCyc"),
        ("abdomen", "abdominal T2*<->CT on the aorta-and-spine phantom (the 2021 paper's Table 2): aorta MSE/PSNR/SSIM, "
                    "aorta and spine Dice against the source, table hallucination, checkerboards"),
        ("speed", "synthesis slices/s against an fp32 eager reference, memory, training cost per method"),
    ):
        q = which.add_parser(name, help=text, description=text)
        q.add_argument("--quick", action="store_true", help="small networks and a short schedule (minutes on a CPU)")
        q.add_argument("--json", metavar="FILE", help="write the result as JSON to FILE")
        q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (Apple GPU) (default auto)")
        q.add_argument("--out", metavar="DIR", help="folder for models, volumes and figures (default: a folder in the cache)")
        if name == "abdomen":
            q.add_argument("--methods", nargs="+", metavar="M",
                           help="methods to compare (default: cyclegan gcc-cyclegan mind-cyclegan dicyc)")
            q.add_argument("--iterations", type=_positive_int, metavar="N", help="training iterations (budget)")
            q.add_argument("--n-test", type=_positive_int, metavar="N", help="test subjects (default 8, full 10)")
            q.add_argument("--jobs", type=_positive_int, metavar="N",
                           help="training runs side by side on a CPU (default: one per core)")
        if name in ("quality", "head"):
            q.add_argument("--methods", nargs="+", metavar="M",
                           help="methods to compare (default: the protocol's); a variant with options is "
                                "written NAME[key=value,...], e.g. dicyc[dicyc_loss=commutation]")
        if name == "speed":
            q.add_argument("--methods", nargs="+", metavar="M",
                           help="time these methods' training iterations against CycleGAN's, at both sizes "
                                "(default: every method at the quick size, cyclegan and dicyc at the papers' size); "
                                "variants as NAME[key=value,...]")
        if name in ("quality", "head"):
            q.add_argument("--seeds", type=_positive_int, metavar="N",
                           help="train every method with N seeds (0..N-1); rows per seed and mean ± sd over seeds "
                                "(default 1)")
        if name == "quality":
            q.add_argument("--families", nargs="+", metavar="F",
                           help="scanner-deformation families to test, or 'all' (default: --quick bspline, "
                                "full both); see dicyc/deform.py")
            q.add_argument("--settings", nargs="+", choices=["deformed", "undeformed"],
                           help="the deformed setting, the undeformed control, or both (default: --quick deformed, full both)")
            q.add_argument("--iterations", type=_positive_int, metavar="N", help="training iterations (budget)")
            q.add_argument("--batch-size", type=_positive_int, metavar="N", help="training batch size")
            q.add_argument("--deformation-px", type=float, metavar="PX",
                           help="the scanner deformation's magnitude, pixels of the phantom grid")
            q.add_argument("--n-test", type=_positive_int, metavar="N", help="test subjects (default 8)")
            q.add_argument("--cohort-seed", type=int, metavar="N",
                           help="seed of the pseudo-subjects (default 0); another seed is an unseen cohort")
            q.add_argument("--scanner-seed", type=int, metavar="N",
                           help="seed of the scanner deformation's systematic component (default 1)")
            q.add_argument("--jobs", type=_positive_int, metavar="N",
                           help="training runs side by side on a CPU (default: one per core)")
        q.set_defaults(handler=_cmd_bench)


def _cmd_bench(args):
    import importlib

    if args.json:  # a result file that cannot be written is refused before the benchmark, not after it
        from dicyc.atomic import check_writable

        if Path(args.json).is_dir():
            raise DicycError(f"--json {args.json} is a folder; give a file name for the result.")
        check_writable(Path(args.json).parent, target=args.json)
    module = importlib.import_module(f"dicyc.bench.{args.bench}")
    result = module.run(args, log=_log)
    if args.json:
        from dicyc.atomic import write_text

        write_text(args.json, json.dumps(result, indent=2))
    print(module.summary(result))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dicyc",
        description="DiCyc: deformation-invariant unpaired cross-domain medical image synthesis.",
    )
    parser.add_argument("--version", action="version", version=f"dicyc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_samples(sub)
    _add_methods(sub)
    _add_train(sub)
    _add_synthesize(sub)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_report(sub)
    _add_bench(sub)
    return parser


def _open_event_log(path):
    """An :class:`~dicyc.events.EventLog` on ``path`` (a no-op one without), failing as one sentence."""
    from dicyc.events import EventLog

    return EventLog([path] if path else [])


def _log(message):
    """Progress and notes go to stderr so stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"dicyc: warning: {message}", file=sys.stderr, flush=True)


def _safe_streams():
    """Never crash on a non-UTF-8 terminal: characters it cannot show (λ, →) are escaped."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv=None):
    _safe_streams()
    # started in the background by a GUI (dicyc.background): never outlive it
    from dicyc.background import end_with_parent

    end_with_parent()
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.handler(args) or 0
    except DicycError as exc:
        print(f"dicyc {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"dicyc {args.command}: interrupted.", file=sys.stderr, flush=True)
        return 130
    except MemoryError:
        print(f"dicyc {args.command}: error: this machine ran out of memory for the work (a smaller volume, "
              "--batch or slice size needs less).", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
