"""The one-look report of synthetic CTs from several models beside their source MR.

Why: what DiCyc fixes is geometry, and geometry is seen, not read from a table. A plain
CycleGAN trained on unpaired heads gives a CT that looks right slice by slice, yet its head
outline follows the other person's CT, it paints the CT's head-rest where the MR has only air,
and its slices disagree with each other. So the report puts the source MR and each model's
synthetic CT side by side, in three planes:

* the source MR with its own head outline (white, dashed) and each CT's head outline in the
  model's colour, so a CT that leaves the head shows as a line off the MR's;
* each synthetic CT, one CT window for all, with the hallucinated head-rest (density above
  -500 HU where the source has only air) in red and the MR's outline dashed;
* each CT's checkerboard against the MR: skull, brain and skin edges continue across the tiles
  only where the CT is aligned with its source.

Below, a table of the §2 scores of each model (:func:`dicyc.bench.head.alignment_and_realism`,
the head benchmark's own code, so the report and ``dicyc bench head`` agree): head-outline Dice
and distance, NMI with the MR, millilitres of hallucinated head-rest, HU Wasserstein distance
and tissue fractions against a real CT, and slice-to-slice streaks relative to the real CT's.

The axial plane is the one where the models hallucinate most (the head-rest, if any), the other
two go through the centre of the MR head. ``report.png`` and ``report.json`` are written
atomically, after everything has been computed.
"""

import io
import json
import warnings
from pathlib import Path

import numpy as np

from dicyc.errors import DicycError

REPORT_PNG = "report.png"
REPORT_JSON = "report.json"
#: each model's outline colour (its name in the legend), in the order given
MODEL_COLOURS = (("#ffa500", "orange"), ("#00e5ff", "cyan"), ("#ff3bd4", "magenta"), ("#7fff00", "green"))
HEADREST_RGBA = (1.0, 0.1, 0.1, 0.75)
MR_OUTLINE_COLOUR = "white"


def _on_source_grid(synthetic, source, label):
    """The synthetic CT on the source MR's grid (the scores compare them voxel for voxel)."""
    from dicyc.preprocess import resample_to_grid

    if synthetic.same_grid(source):
        return synthetic
    if not synthetic.overlaps(source):
        raise DicycError(f"the synthetic CT {label} does not overlap the source MR, so it cannot be its synthesis.")
    warnings.warn(f"the synthetic CT {label} is not on the source MR's grid; resampled onto it (linear).", stacklevel=3)
    return resample_to_grid(synthetic, source, default_value=-1024.0)


def _centre(mask):
    """Rounded centroid index of a (non-empty) mask along each axis of its array."""
    return tuple(
        int(round(float(np.average(np.arange(n), weights=mask.sum(axis=tuple(a for a in range(3) if a != ax))))))
        for ax, n in enumerate(mask.shape)
    )


def model_report(source_mr, synthetics, real_ct, out_dir, source_name="source MR", real_name="real CT", tiles=8):
    """Score and draw ``synthetics`` (a list of (label, Volume)) against their source MR; write the report.

    Each synthetic CT should be on the source's grid (``dicyc synthesize`` output is); another
    grid is resampled onto it with a warning. ``real_ct`` is a CT in HU of anyone (the realism
    scores compare distributions, not voxels). Returns ``{"png": path, "json": path, "models":
    [{"label", **scores}]}``.
    """
    from dicyc.atomic import write_bytes, write_text
    from dicyc.bench.head import alignment_and_realism, alignment_masks
    from dicyc.metrics import body_outline
    from dicyc.views import _json_safe, check_tiles

    synthetics = list(synthetics)
    if not synthetics:
        raise DicycError("the report needs at least one synthetic CT.")
    labels = [str(label) for label, _ in synthetics]
    if len(set(labels)) != len(labels):
        raise DicycError(f"the synthetic CTs need distinct names; got {', '.join(labels)}.")
    tiles = check_tiles(tiles)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DicycError(f"{out_dir} exists and is not a folder; give a folder for the report.")

    mr_head = body_outline(source_mr, "MR")
    if not mr_head.any():
        raise DicycError(f"no head was found in {source_name}, so there is nothing to align with.")
    models = []
    for label, volume in synthetics:
        volume = _on_source_grid(volume, source_mr, label)
        masks = alignment_masks(volume, source_mr, mr_head=mr_head)
        scores = alignment_and_realism(volume, source_mr, real_ct, masks=masks)
        models.append({"label": label, "volume": volume, "masks": masks, "scores": scores})

    png = render_report(source_mr, models, real_ct, source_name=source_name, real_name=real_name, tiles=tiles)
    rows = [{"label": m["label"], **m["scores"]} for m in models]
    summary = {"source": str(source_name), "real_ct": str(real_name), "tiles": tiles, "models": rows,
               "figure": REPORT_PNG}
    text = json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": out_dir / REPORT_PNG, "json": out_dir / REPORT_JSON}
    write_bytes(paths["png"], png)
    write_text(paths["json"], text)
    return {**paths, "models": rows}


def _planes_point(source_mr, models, axes_map):
    """(L, P, S) index of the canonical view: centre of the MR head; S where the models hallucinate most."""
    from dicyc.views import _to_lps

    head = _to_lps(models[0]["masks"]["mr_head"], axes_map)  # (S, P, L)
    s, p, lr = _centre(head)
    per_slice = sum(_to_lps(m["masks"]["hallucinated"], axes_map).sum(axis=(1, 2)) for m in models)
    # only slices through the head itself: a slice at the volume's edge, where a generator paints
    # its border, would show the hallucination but no anatomy to judge it against
    area = head.sum(axis=(1, 2))
    per_slice = np.where(area >= 0.25 * area.max(), per_slice, 0) if area.max() > 0 else per_slice
    if per_slice.max() > 0:
        s = int(np.argmax(per_slice))
    return (lr, p, s)


def render_report(source_mr, models, real_ct, source_name="source MR", real_name="real CT", tiles=8):
    """The report figure as PNG bytes (see the module notes); ``models`` as built by :func:`model_report`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from dicyc.views import (_LETTERS, _plane, _plane_geometry, _short, _to_lps, checkerboard, display_window,
                             lps_axes, to_unit)

    axes_map = lps_axes(source_mr.direction)
    lps_spacing = tuple(source_mr.spacing[src] for src, _ in axes_map)
    lps_size = tuple(source_mr.size[src] for src, _ in axes_map)
    idx = _planes_point(source_mr, models, axes_map)
    mr01 = to_unit(source_mr.array, display_window(source_mr.array))
    ct_window = display_window(real_ct.array)  # one CT window for every model, from the real CT
    mr_view = _to_lps(mr01, axes_map)
    mr_head = _to_lps(models[0]["masks"]["mr_head"], axes_map)
    per_model = []
    for n, m in enumerate(models):
        ct01 = to_unit(m["volume"].array, ct_window)
        per_model.append({
            "label": m["label"],
            "ct": _to_lps(ct01, axes_map),
            "board": _to_lps(checkerboard(mr01, ct01, tiles), axes_map),
            "outline": _to_lps(m["masks"]["syn_head"], axes_map),
            "rest": _to_lps(m["masks"]["hallucinated"], axes_map),
            "colour": MODEL_COLOURS[n % len(MODEL_COLOURS)],
        })

    planes = ("axial", "coronal", "sagittal")
    geoms = [_plane_geometry(p, lps_spacing, lps_size, idx) for p in planes]
    cell = 2.9
    n_cols = 1 + 2 * len(models)
    heights = [cell * min(max(h / w, 0.3), 2.0) for (_, _, _, w, h) in geoms]
    table_h = 0.55 + 0.32 * (len(models) + 2)
    title_h = 1.25
    fig_w = n_cols * cell + 0.6
    fig_h = title_h + sum(heights) + 0.35 * len(planes) + table_h
    fig = Figure(figsize=(fig_w, fig_h), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(planes) + 1, n_cols, height_ratios=[h + 0.35 for h in heights] + [table_h],
                            left=0.03, right=0.99, bottom=0.01, top=1 - title_h / fig_h, wspace=0.05, hspace=0.12)
    names = " · ".join(f"{d['label']} ({d['colour'][1]})" for d in per_model)
    fig.suptitle(
        f"Synthetic CT from {_short(source_name)}: {' vs '.join(m['label'] for m in models)}\n"
        f"outlines on the MR: the MR head (white, dashed) and each CT's head — {names}; "
        "red: density the CT puts where the MR has only air (hallucinated head-rest)\n"
        f"CTs in one window ({ct_window[0]:.0f} … {ct_window[1]:.0f} HU, from {_short(real_name, 30)}); "
        f"checkerboards of MR and CT ({tiles} tiles/axis); radiological view (patient's right on screen left)",
        fontsize=10,
    )

    def outline(ax, mask2d, colour, style="solid", width=1.0):
        if mask2d.any() and min(mask2d.shape) > 1:
            ax.contour(mask2d.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width, linestyles=style)

    for r, (plane, (aspect, _, _, _, _)) in enumerate(zip(planes, geoms)):
        head2d = _plane(mr_head, plane, idx)
        panels = [("mr", None)] + [("ct", d) for d in per_model] + [("board", d) for d in per_model]
        for c, (kind, d) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            if kind == "mr":
                ax.imshow(_plane(mr_view, plane, idx), cmap="gray", vmin=0, vmax=1, aspect=aspect)
                outline(ax, head2d, MR_OUTLINE_COLOUR, "dashed", 1.1)
                for e in per_model:
                    outline(ax, _plane(e["outline"], plane, idx), e["colour"][0], "solid", 1.2)
                title = f"{_short(source_name, 28)}\nhead outlines"
            elif kind == "ct":
                ax.imshow(_plane(d["ct"], plane, idx), cmap="gray", vmin=0, vmax=1, aspect=aspect)
                rest = _plane(d["rest"], plane, idx)
                if rest.any():
                    overlay = np.zeros(rest.shape + (4,), np.float32)
                    overlay[rest] = HEADREST_RGBA
                    ax.imshow(overlay, aspect=aspect, interpolation="nearest")
                outline(ax, head2d, MR_OUTLINE_COLOUR, "dashed", 0.8)
                title = f"{d['label']} CT\nhead-rest in red"
            else:
                ax.imshow(_plane(d["board"], plane, idx), cmap="gray", vmin=0, vmax=1, aspect=aspect)
                title = f"{d['label']} CT vs MR\ncheckerboard"
            if kind != "mr":
                for spine in ax.spines.values():
                    spine.set_edgecolor(d["colour"][0])
                    spine.set_linewidth(2.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(plane, fontsize=9)
                left, right, top, bottom = _LETTERS[plane]
                style = dict(color="yellow", fontsize=8, fontweight="bold", transform=ax.transAxes)
                ax.text(0.02, 0.5, left, ha="left", va="center", **style)
                ax.text(0.98, 0.5, right, ha="right", va="center", **style)
                ax.text(0.5, 0.98, top, ha="center", va="top", **style)
                ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)

    table_ax = fig.add_subplot(grid[len(planes), :])
    table_ax.axis("off")
    header = ["model", "head-outline Dice ↑", "outline distance mm ↓", "NMI with the MR ↑", "head-rest ml ↓",
              "HU Wasserstein ↓", "air / soft / bone", "streaks × real CT ↓"]

    def num(value, spec):
        return "—" if value is None or not np.isfinite(value) else format(value, spec)

    def fractions(f):
        return f"{f['air']:.2f} / {f['soft_tissue']:.2f} / {f['bone']:.2f}" if f else "—"

    cells = []
    for m in models:
        s = m["scores"]
        cells.append([m["label"], num(s["dice_head"], ".3f"),
                      f"{num(s['surface_distance_mean_mm'], '.1f')} (95%: {num(s['surface_distance_95_mm'], '.1f')})",
                      num(s["nmi_source"], ".3f"), num(s["headrest_ml"], ".1f"), num(s["hu_wasserstein"], ".0f"),
                      fractions(s["fractions"]), num(s["streak_ratio"], ".2f")])
    real_fractions = fractions(models[0]["scores"]["real_fractions"])
    cells.append([_short(real_name, 24), "—", "—", "—", "—", "0", real_fractions, "1"])
    table = table_ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center",
                           bbox=[0.01, 0.0, 0.98, 0.95])
    table.auto_set_font_size(False)
    table.set_fontsize(9.5)
    for (row, col), cell_obj in table.get_celld().items():
        if row == 0:
            cell_obj.set_facecolor("#e8e8e8")
            cell_obj.set_text_props(fontweight="bold")
        elif row <= len(models) and col == 0:
            cell_obj.set_facecolor(per_model[row - 1]["colour"][0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    return buffer.getvalue()


def parse_synthetic(spec):
    """``LABEL=PATH`` → (label, path); a bare existing PATH is labelled by its file name."""
    from dicyc.atomic import split_extension

    text = str(spec)
    if "=" in text and not Path(text).exists():
        label, path = text.split("=", 1)
        if not label.strip() or not path.strip():
            raise DicycError(f"{spec!r} is not LABEL=PATH, e.g. DiCyc=synthetic-ct-dicyc.nii.gz.")
        return label.strip(), path.strip()
    return split_extension(Path(text))[0], text


def report_files(source_path, synthetic_specs, real_ct_path, out_dir, tiles=8):
    """Read the volumes, check their modalities, and run :func:`model_report`.

    ``synthetic_specs`` are ``LABEL=PATH`` strings (:func:`parse_synthetic`). Refused in one
    sentence: a source that is a CT, a synthetic volume that records another modality than CT,
    and a "real CT" that is not one (by its record or its HU statistics).
    """
    from dicyc.modality import detect, is_ct
    from dicyc.volume import read_volume

    pairs = [parse_synthetic(spec) for spec in synthetic_specs]
    source = read_volume(source_path)
    found = detect(source, path=source_path)
    if is_ct(found["modality"]):
        raise DicycError(f"the source {source_path} is a CT ({found['source']}); the report shows CTs "
                         "synthesised from an MR.")
    real = read_volume(real_ct_path)
    found = detect(real, path=real_ct_path)
    if not is_ct(found["modality"]):
        raise DicycError(f"{real_ct_path} is not a CT in Hounsfield units (nothing records it and its intensities do "
                         "not look like HU), so it cannot be the real CT.")
    synthetics = []
    for label, path in pairs:
        volume = read_volume(path)
        found = detect(volume, path=path)
        if found["source"] == "file" and not is_ct(found["modality"]):
            raise DicycError(f"{path} records modality {found['modality']}, not CT.")
        synthetics.append((label, volume))
    return model_report(source, synthetics, real, out_dir, source_name=str(source_path), real_name=str(real_ct_path),
                        tiles=tiles)
