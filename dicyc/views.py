"""Comparison views: is a synthetic volume aligned with its reference, and where does it differ?

A radiologist or physicist checks alignment by looking, not by a number: do the aorta, the
spine and the skull edges continue across the tiles of a checkerboard of the two volumes, and
where is the error image bright? This module writes

* ``checkerboard.nii.gz`` — A and B alternating in 3-D tiles, each in its own [0, 1] display
  window so an MR and a CT are both readable (float32, A's exact geometry, so Slicer overlays it);
* ``error.nii.gz`` — ``|A - B|`` (float32, A's geometry) in the volumes' own units or in
  display-window units;
* ``compare.png`` — a montage: axial / coronal / sagittal rows, columns A, B, checkerboard and
  error, in radiological orientation with the true physical aspect ratio, plus the metrics
  of A against B;
* ``metrics.json`` — the same metrics, machine-readable.

The metrics depend on whether A and B are one modality (:mod:`dicyc.modality`: the caller's
word, what the files record, a CT's HU statistics). For one modality: MSE, PSNR, SSIM, SSIM(HG),
MAE and NMI. For two (a synthetic CT against its source MR) those voxel-wise differences only
measure the contrast gap between CT and MR, so the report gives NMI, the Dice of the two body
outlines and the distance between them (:func:`dicyc.metrics.cross_modality_metrics`), draws
both outlines in the views, and shows the error image in display-window units.

B is resampled onto A's grid (the common grid) where the grids differ. Everything is validated
and computed in memory before the first file is written, so bad input leaves no output, and
every file is written atomically.
"""

import io
import json
import math
import warnings
from pathlib import Path

import numpy as np

from dicyc.errors import DicycError
from dicyc.volume import check_not_constant

ERROR_UNITS = ("raw", "window")

#: Output file names inside ``out_dir``.
CHECKERBOARD_NAME = "checkerboard.nii.gz"
ERROR_NAME = "error.nii.gz"
MONTAGE_NAME = "compare.png"
METRICS_NAME = "metrics.json"


def check_tiles(tiles):
    """The checkerboard's tile count as an int ≥ 1, or one sentence saying why not."""
    try:
        tiles = int(tiles)
    except (TypeError, ValueError):
        raise DicycError(f"tiles must be a whole number; got {tiles!r}.") from None
    if tiles < 1:
        raise DicycError(f"tiles must be at least 1; got {tiles}.")
    return tiles


# ===================================================================== intensities

def display_window(array, mask=None, percentiles=(1, 99.5)):
    """Robust (low, high) display window from percentiles of ``array`` (inside ``mask`` if given).

    Percentiles rather than min/max so a few hot voxels (metal in CT, flow artefacts in MR) do
    not wash the image out; this works for MR (no absolute units) and CT alike. Falls back to
    min/max, then to a unit-wide window, so the result always has ``high > low``.
    """
    arr = np.asarray(array)
    values = arr[np.asarray(mask, dtype=bool)] if mask is not None and np.any(mask) else arr.ravel()
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if not high > low:
        low, high = float(values.min()), float(values.max())
    if not high > low:
        high = low + 1.0
    return low, high


def to_unit(array, window):
    """Map ``array`` linearly onto [0, 1] with ``window`` = (low, high), clipping; float32."""
    low, high = (float(v) for v in window)
    if not high > low:
        raise ValueError(f"display window needs high > low; got {window}")
    out = (np.asarray(array, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def _tile_index(n, tiles):
    """Tile number of each of ``n`` positions split into ``min(tiles, n)`` near-equal tiles."""
    t = max(1, min(int(tiles), n))
    return (np.arange(n) * t) // n


def checkerboard(a01, b01, tiles):
    """3-D checkerboard: A in tiles whose (x + y + z) tile parity is even, B in the others.

    Alternating along all three axes lets misalignment show in every plane (an axial-only
    checkerboard hides a shift in z). Axes shorter than ``tiles`` (few slices) get one tile per
    voxel, i.e. ``min(tiles, n)`` tiles.
    """
    a01 = np.asarray(a01)
    b01 = np.asarray(b01)
    if a01.shape != b01.shape:
        raise ValueError(f"checkerboard needs arrays of one shape; got {a01.shape} and {b01.shape}")
    if a01.ndim != 3:
        raise ValueError(f"checkerboard needs 3-D (z, y, x) arrays; got shape {a01.shape}")
    if int(tiles) < 1:
        raise ValueError(f"tiles must be at least 1; got {tiles}")
    nz, ny, nx = a01.shape
    parity = (
        _tile_index(nz, tiles)[:, None, None] + _tile_index(ny, tiles)[None, :, None] + _tile_index(nx, tiles)[None, None, :]
    ) % 2
    return np.where(parity == 0, a01, b01).astype(np.float32)


def error_image(a, b):
    """``|a - b|`` as float32 (integer inputs are converted first, so int16 CT cannot overflow)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"error image needs arrays of one shape; got {a.shape} and {b.shape}")
    return np.abs(a - b)


# ===================================================================== orientation
# The LPS display view is the engine's canonical orientation (dicyc.preprocess).
from dicyc.preprocess import canonical_axes as lps_axes  # noqa: E402
from dicyc.preprocess import canonical_array as _to_lps  # noqa: E402
from dicyc.preprocess import canonical_index as _point_to_lps  # noqa: E402


# ===================================================================== validation
def _check_point(point, volume, label="point"):
    """A voxel index (i, j, k) inside ``volume``; one clear sentence otherwise."""
    try:
        point = tuple(int(v) for v in point)
    except (TypeError, ValueError):
        raise DicycError(f"{label} {point!r} is not three voxel indices i,j,k.") from None
    if len(point) != 3:
        raise DicycError(f"{label} {point!r} is not three voxel indices i,j,k.")
    size = volume.size
    if any(p < 0 or p >= n for p, n in zip(point, size)):
        raise DicycError(
            f"{label} {','.join(map(str, point))} is outside A (size {'x'.join(map(str, size))}; "
            f"indices run from 0 to {','.join(str(n - 1) for n in size)})."
        )
    return point


def _default_point(volume, mask):
    """The mask centroid (rounded to a voxel) if there is a mask, else the centre of A."""
    if mask is not None:
        k, j, i = (int(np.floor(float(c.mean()) + 0.5)) for c in np.nonzero(mask))
        return (i, j, k)
    nx, ny, nz = volume.size
    return (nx // 2, ny // 2, nz // 2)


def _short(name, limit=48):
    """A file name short enough for a figure title."""
    text = Path(str(name)).name or str(name)
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _json_safe(value):
    """inf/NaN → None and numpy scalars → Python numbers, so the JSON is standard."""
    try:
        from dicyc.metrics import json_safe
    except ImportError:
        json_safe = None
    if json_safe is not None:
        value = json_safe(value)

    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return clean(value)


# ===================================================================== main entry points
def compare_volumes(
    a_vol,
    b_vol,
    out_dir,
    tiles=8,
    mask=None,
    point=None,
    error_units=None,
    a_name="A",
    b_name="B",
    center_on=None,
    also=None,
    center_name="structure",
    also_name="second structure",
    zoom_mm=None,
    modality_a=None,
    modality_b=None,
    cross_modality=None,
    modalities=None,
):
    """Write the checkerboard, the error image, the montage PNG and metrics.json of A against B.

    ``mask`` is a boolean array on A's grid (metrics inside it, planes through its centroid);
    ``point`` a voxel index (i, j, k) of A the planes go through. B is resampled (linear) onto
    A's grid with a warning where the grids differ. Returns the written paths by kind.

    Two structures can be judged at once, which is how an abdominal synthesis is checked (is the
    aorta aligned *and* the spine?): ``center_on`` (a boolean array on A's grid, e.g. the aorta)
    puts the planes through that structure's centroid (unless ``point`` is given) and outlines it
    in every panel; ``also`` (e.g. the spine) adds a second set of axial, coronal and sagittal
    rows through its own centroid, outlined in another colour. ``zoom_mm`` crops every panel to
    that many millimetres around its point, so a 20 mm aorta fills the panel. The names label the
    rows and go into metrics.json with each structure's centroid.

    ``modality_a``/``modality_b`` (e.g. "CT", "MR") and ``cross_modality`` (True/False) say what
    is known about the modalities; what is not given is judged from the HU statistics
    (:func:`dicyc.modality.resolve`), or taken whole from ``modalities``, an already resolved
    answer (:func:`compare_files` adds what the files record). ``error_units`` None means
    "window" across modalities and "raw" otherwise.
    """
    from dicyc import modality as modality_rules
    from dicyc.atomic import atomic_group, check_writable, write_bytes, write_text
    from dicyc.metrics import compute_metrics
    from dicyc.preprocess import resample_to_grid
    from dicyc.volume import write_volume

    # ---- validate everything before any file is written
    if modalities is None:
        modalities = modality_rules.resolve(a_vol, b_vol, modality_a, modality_b, cross_modality)
    cross = bool(modalities["cross_modality"])
    if error_units is None:
        error_units = "window" if cross else "raw"
    if error_units not in ERROR_UNITS:
        raise DicycError(f"error units must be one of {', '.join(ERROR_UNITS)}; got {error_units!r}.")
    tiles = check_tiles(tiles)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DicycError(f"{out_dir} exists and is not a folder; give a folder for the comparison files.")
    check_writable(out_dir, "output folder")
    check_not_constant(a_vol, a_name)
    check_not_constant(b_vol, b_name)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a_vol.shape:
            raise DicycError(f"the mask's shape {mask.shape} does not match A's grid {a_vol.shape}.")
        if not mask.any():
            raise DicycError("the mask has no voxels inside A.")
    structures = []
    for label, m, name in (("center_on", center_on, center_name), ("also", also, also_name)):
        if m is None:
            continue
        m = np.asarray(m, dtype=bool)
        if m.shape != a_vol.shape:
            raise DicycError(f"the {name} mask's shape {m.shape} does not match A's grid {a_vol.shape}.")
        if not m.any():
            raise DicycError(f"the {name} mask has no voxels inside A.")
        structures.append({"role": label, "name": str(name), "mask": m, "point": _default_point(a_vol, m)})
    if zoom_mm is not None and not (np.isfinite(float(zoom_mm)) and float(zoom_mm) > 0):
        raise DicycError(f"the zoom must be a positive number of millimetres; got {zoom_mm!r}.")
    centre = next((st for st in structures if st["role"] == "center_on"), None)
    if point is None:
        point = centre["point"] if centre is not None else _default_point(a_vol, mask)
    else:
        point = _check_point(point, a_vol)

    resampled = not a_vol.same_grid(b_vol)
    b_display_window = display_window(b_vol.array)  # from B's own voxels, before padding by resampling
    if resampled:
        if not a_vol.overlaps(b_vol):
            raise DicycError(
                f"{b_name} and {a_name} do not overlap in space, so they cannot be compared voxel by voxel "
                "(check the origins and orientations)."
            )
        warnings.warn(
            f"{b_name} is on another grid than {a_name} ({b_vol.size} vs {a_vol.size} voxels); "
            f"resampled onto {a_name}'s grid (linear) for the comparison.",
            stacklevel=2,
        )
        b_vol = resample_to_grid(b_vol, a_vol, interpolation="linear")
        check_not_constant(b_vol, f"{b_name} resampled onto {a_name}'s grid")

    # ---- compute everything in memory
    a_window = display_window(a_vol.array)
    a01 = to_unit(a_vol.array, a_window)
    b01 = to_unit(b_vol.array, b_display_window)
    board = checkerboard(a01, b01, tiles)
    error = error_image(a_vol.array, b_vol.array) if error_units == "raw" else error_image(a01, b01)
    outlines = None
    if cross:
        from dicyc.metrics import body_outline, cross_modality_metrics

        ma, mb = modalities["a"]["modality"], modalities["b"]["modality"]
        outlines = (body_outline(a_vol, ma), body_outline(b_vol, mb))
        metrics = cross_modality_metrics(a_vol, b_vol, ma, mb, mask=mask, outlines=outlines)
    else:
        metrics = compute_metrics(a_vol.array, b_vol.array, mask=mask)

    summary = {
        "a": str(a_name),
        "b": str(b_name),
        "grid": "A",
        "b_resampled": bool(resampled),
        "region": "mask" if mask is not None else "whole volume",
        "point_ijk": list(point),
        "structures": [{"role": st["role"], "name": st["name"], "centroid_ijk": list(st["point"]),
                        "n_voxels": int(st["mask"].sum())} for st in structures],
        "zoom_mm": None if zoom_mm is None else float(zoom_mm),
        "tiles": tiles,
        "error_units": error_units,
        "comparison": "cross-modality" if cross else "same-modality",
        "modalities": {"a": modalities["a"], "b": modalities["b"], "decided_by": modalities.get("decided_by")},
        "display_window_a": list(a_window),
        "display_window_b": list(b_display_window),
        "metrics": dict(metrics),
    }
    png = render_montage(
        a_vol, a01, b01, board, error, point, mask=mask, metrics=metrics, a_name=a_name, b_name=b_name,
        error_units=error_units, tiles=tiles, resampled=resampled, windows=(a_window, b_display_window),
        structures=structures, zoom_mm=zoom_mm, outlines=outlines, modalities=modalities,
    )
    metrics_text = json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n"

    # ---- write: all four files are written and checked, then published together (or none is)
    paths = {
        "checkerboard": out_dir / CHECKERBOARD_NAME,
        "error": out_dir / ERROR_NAME,
        "montage": out_dir / MONTAGE_NAME,
        "metrics": out_dir / METRICS_NAME,
    }
    with atomic_group(paths) as tmp:
        write_volume(a_vol.with_array(board), tmp["checkerboard"])
        write_volume(a_vol.with_array(error.astype(np.float32, copy=False)), tmp["error"])
        write_bytes(tmp["montage"], png)
        write_text(tmp["metrics"], metrics_text)
    return paths


def compare_files(a_path, b_path, out_dir, tiles=8, mask_path=None, point=None, error_units=None,
                  center_on_path=None, also_path=None, zoom_mm=None, modality_a=None, modality_b=None,
                  cross_modality=None):
    """Read A, B (and optional masks onto A's grid) and run :func:`compare_volumes`.

    2-D images (PNG, single DICOM slices) are accepted as single-slice volumes. ``center_on_path``
    and ``also_path`` are segment masks (label maps; any non-zero voxel) named after their files.
    The modalities are the given ones, else what each file records, else the HU rule
    (:func:`dicyc.modality.resolve`).
    """
    from dicyc import modality as modality_rules
    from dicyc.volume import read_mask, read_volume

    a_vol = read_volume(a_path, allow_2d=True)
    b_vol = read_volume(b_path, allow_2d=True)
    modalities = modality_rules.resolve(a_vol, b_vol, modality_a, modality_b, cross_modality, a_path, b_path)
    mask = read_mask(mask_path, a_vol, reference_name=str(a_path)) if mask_path is not None else None
    center_on = read_mask(center_on_path, a_vol, reference_name=str(a_path)) if center_on_path is not None else None
    also = read_mask(also_path, a_vol, reference_name=str(a_path)) if also_path is not None else None
    if point is not None:
        point = _check_point(point, a_vol, label="--point")
    return compare_volumes(
        a_vol, b_vol, out_dir, tiles=tiles, mask=mask, point=point, error_units=error_units,
        a_name=str(a_path), b_name=str(b_path), center_on=center_on, also=also,
        center_name=_structure_name(center_on_path), also_name=_structure_name(also_path), zoom_mm=zoom_mm,
        modalities=modalities,
    )


def _structure_name(path):
    """A structure's display name from its mask file: ``aorta.nii.gz`` → ``aorta``."""
    if path is None:
        return None
    from dicyc.atomic import split_extension

    return split_extension(Path(str(path)))[0] or "structure"


# ===================================================================== montage
_PLANES = ("axial", "coronal", "sagittal")
#: outline colours of the structures of ``center_on`` and ``also`` (and their names in the title)
STRUCTURE_COLOURS = ("#ff3bd4", "#ffa500")
STRUCTURE_COLOUR_NAMES = ("magenta", "orange")
#: body outlines of A and B across modalities (and their names in the title)
OUTLINE_COLOURS = ("#ffd400", "#1e90ff")
OUTLINE_COLOUR_NAMES = ("yellow", "blue")
#: Screen orientation letters (left, right, top, bottom) of each plane, radiological convention.
_LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def _plane(view, plane, idx):
    """2-D plane of an (S, P, L) view at LPS index ``idx``, oriented for the screen.

    Axial: rows anterior → posterior, columns patient right → left (patient's right on screen
    left, as if looking up from the feet). Coronal and sagittal: superior at the top.
    """
    li, pi, si = idx
    if plane == "axial":
        return view[si]
    if plane == "coronal":
        return view[::-1, pi, :]
    return view[::-1, :, li]


def _plane_geometry(plane, lps_spacing, lps_size, idx):
    """(pixel aspect height/width, marker x, marker y, physical width, physical height) of a plane."""
    (sl, sp, ss), (nl, np_, ns) = lps_spacing, lps_size
    li, pi, si = idx
    if plane == "axial":
        return sp / sl, li, pi, nl * sl, np_ * sp
    if plane == "coronal":
        return ss / sl, li, ns - 1 - si, nl * sl, ns * ss
    return ss / sp, pi, ns - 1 - si, np_ * sp, ns * ss


def _modality_text(modalities):
    """"A CT from the file, B not CT from its HU statistics", for the figure."""

    def one(d):
        source = {"option": "the option", "file": "the file", "HU statistics": "its HU statistics",
                  "unknown": "its HU statistics"}.get(d.get("source"), d.get("source"))
        return f"{d.get('modality') or 'not CT'} from {source}"

    return f"A {one(modalities['a'])}, B {one(modalities['b'])}"


def _format_value(value):
    if value is None:
        return "—"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return f"{value:.4g}"


def render_montage(
    a_vol, a01, b01, board, error, point, mask=None, metrics=None, a_name="A", b_name="B",
    error_units="raw", tiles=8, resampled=False, windows=None, structures=None, zoom_mm=None, outlines=None,
    modalities=None,
):
    """Draw the comparison montage and return it as PNG bytes (nothing is written to disk).

    ``a01``, ``b01``, ``board`` and ``error`` are arrays on ``a_vol``'s grid; ``point`` is (i, j, k).

    Rows axial / coronal / sagittal (axial only for a single slice), columns A, B, checkerboard
    and error, each plane in radiological orientation with its physical aspect ratio.
    ``structures`` (from :func:`compare_volumes`: dicts with ``role``, ``name``, ``mask``,
    ``point``) are outlined in every panel, and the ``also`` structure gets its own rows through
    its centroid; ``zoom_mm`` crops every panel to that many millimetres around its point.
    ``outlines`` (A's and B's body outlines, across modalities) are drawn over A, B and the
    checkerboard, and ``modalities`` (:func:`dicyc.modality.resolve`) picks the metrics table:
    NMI and the outline measures across modalities, the voxel-wise metrics otherwise.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    structures = list(structures or [])
    axes_map = lps_axes(a_vol.direction)
    size = a_vol.size
    lps_spacing = tuple(a_vol.spacing[src] for src, _ in axes_map)
    lps_size = tuple(size[src] for src, _ in axes_map)
    views = {
        "A": _to_lps(a01, axes_map),
        "B": _to_lps(b01, axes_map),
        "board": _to_lps(board, axes_map),
        "error": _to_lps(error, axes_map),
    }
    mask_view = _to_lps(mask, axes_map) if mask is not None else None
    cross = bool(modalities and modalities.get("cross_modality"))
    body_views = [(_to_lps(m, axes_map), colour) for m, colour in zip(outlines or (), OUTLINE_COLOURS)]
    outlines = [(_to_lps(st["mask"], axes_map), STRUCTURE_COLOURS[i % len(STRUCTURE_COLOURS)], st["name"])
                for i, st in enumerate(structures)]
    # a single slice (nz == 1; or a single sagittal/coronal slice) has only its own plane to show
    flat = [t for t in range(3) if lps_size[t] == 1]
    planes = (("sagittal", "coronal", "axial")[flat[-1]],) if flat else _PLANES
    # the rows: every plane through the main point, then through the second structure's centroid
    row_specs = [(plane, point, None) for plane in planes]
    for st in structures:
        if st["role"] == "also":
            row_specs += [(plane, st["point"], st["name"]) for plane in planes]

    err_values = error[mask] if mask is not None else error
    err_max = float(np.percentile(err_values, 99.5)) if err_values.size else 0.0
    if not err_max > 0:
        err_max = float(error.max()) if error.size and error.max() > 0 else 1.0
    err_label = "|A − B| in the volumes' own units" if error_units == "raw" else "|A − B| in display-window units"

    cell_w = 3.0
    geoms = [_plane_geometry(p, lps_spacing, lps_size, _point_to_lps(pt, size, axes_map)) for p, pt, _ in row_specs]
    if zoom_mm is not None:
        heights = [cell_w] * len(row_specs)
    else:
        heights = [cell_w * min(max(h / w, 0.3), 2.0) for (_, _, _, w, h) in geoms]
    table_h = 1.35
    title_h = 1.0 + (0.25 if structures or zoom_mm is not None or body_views else 0.0)
    fig_w = 4 * cell_w + 1.3
    fig_h = title_h + sum(heights) + 0.35 * len(row_specs) + table_h
    fig = Figure(figsize=(fig_w, fig_h), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        len(row_specs) + 1, 5, height_ratios=[h + 0.35 for h in heights] + [table_h],
        width_ratios=[1, 1, 1, 1, 0.07], left=0.05, right=0.95, bottom=0.02, top=1 - title_h / fig_h,
        wspace=0.08, hspace=0.12,
    )

    i, j, k = point
    notes = [f"{st['name']} outlined in {STRUCTURE_COLOUR_NAMES[n % len(STRUCTURE_COLOURS)]}"
             for n, st in enumerate(structures)]
    if body_views:
        notes.append(f"body outline of A in {OUTLINE_COLOUR_NAMES[0]}, of B in {OUTLINE_COLOUR_NAMES[1]}")
    if zoom_mm is not None:
        notes.append(f"{float(zoom_mm):g} mm around each view's point")
    names = ("\n" + "; ".join(notes)) if notes else ""
    fig.suptitle(
        f"A: {_short(a_name)}    vs    B: {_short(b_name)}"
        + ("   (B resampled onto A's grid)" if resampled else "")
        + f"\nplanes through voxel i,j,k = {i},{j},{k} of A; radiological view (patient's right on screen left)"
        + names,
        fontsize=10.5,
    )
    col_titles = [
        f"A: {_short(a_name, 30)}",
        f"B: {_short(b_name, 30)}",
        f"checkerboard ({tiles} tiles/axis)",
        "error |A − B|" + (" (window units)" if error_units == "window" else ""),
    ]
    if windows is not None:
        col_titles[0] += f"\nwindow {_format_value(windows[0][0])} … {_format_value(windows[0][1])}"
        col_titles[1] += f"\nwindow {_format_value(windows[1][0])} … {_format_value(windows[1][1])}"
    # plane indices in A's own voxel numbering: which original axis the plane's normal is
    normal_axis = {"axial": axes_map[2][0], "coronal": axes_map[1][0], "sagittal": axes_map[0][0]}
    # physical size of a panel pixel (horizontal, vertical) per plane, for the zoom window
    sl, sp_, ss = lps_spacing
    pixel_mm = {"axial": (sl, sp_), "coronal": (sl, ss), "sagittal": (sp_, ss)}

    err_image = None
    for r, ((plane, pt, about), (aspect, mx, my, _, _)) in enumerate(zip(row_specs, geoms)):
        idx = _point_to_lps(pt, size, axes_map)
        for c, key in enumerate(("A", "B", "board", "error")):
            ax = fig.add_subplot(grid[r, c])
            data = _plane(views[key], plane, idx)
            if key == "error":
                im = ax.imshow(data, cmap="inferno", vmin=0.0, vmax=err_max, aspect=aspect, interpolation="antialiased")
                err_image = im
            else:
                ax.imshow(data, cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="antialiased")
            if mask_view is not None:
                m = _plane(mask_view, plane, idx)
                if m.any() and min(m.shape) > 1:
                    ax.contour(m.astype(np.float32), levels=[0.5], colors=["#39ff14"], linewidths=0.8)
            for view, colour, _ in outlines:
                m = _plane(view, plane, idx)
                if m.any() and min(m.shape) > 1:
                    ax.contour(m.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.9)
            if key != "error":
                for view, colour in body_views:
                    m = _plane(view, plane, idx)
                    if m.any() and min(m.shape) > 1:
                        ax.contour(m.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.9)
            ax.plot([mx], [my], marker="+", color="#00e5ff", markersize=10, markeredgewidth=1.2)
            if zoom_mm is not None:
                hx = 0.5 * float(zoom_mm) / pixel_mm[plane][0]
                hy = 0.5 * float(zoom_mm) / pixel_mm[plane][1]
                ax.set_xlim(mx - hx, mx + hx)
                ax.set_ylim(my + hy, my - hy)
            else:
                ax.set_xlim(-0.5, data.shape[1] - 0.5)
                ax.set_ylim(data.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0:
                axis_name = "ijk"[normal_axis[plane]]
                label = f"{plane}" + (f" ({about})" if about else "")
                ax.set_ylabel(f"{label}\n{axis_name} = {pt[normal_axis[plane]]}", fontsize=9)
                left, right, top, bottom = _LETTERS[plane]
                style = dict(color="yellow", fontsize=8, fontweight="bold", transform=ax.transAxes)
                ax.text(0.02, 0.5, left, ha="left", va="center", **style)
                ax.text(0.98, 0.5, right, ha="right", va="center", **style)
                ax.text(0.5, 0.98, top, ha="center", va="top", **style)
                ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)

    cax = fig.add_subplot(grid[: len(row_specs), 4])
    bar = fig.colorbar(err_image, cax=cax)
    bar.set_label(f"{err_label}\n(scale to the 99.5th percentile: {_format_value(err_max)})", fontsize=8)
    bar.ax.tick_params(labelsize=7)

    table_ax = fig.add_subplot(grid[len(row_specs), :])
    table_ax.axis("off")
    if metrics is not None:
        region = "inside the mask" if mask is not None else "whole volume"
        if cross:
            columns = [
                ("NMI", "nmi"), ("outline Dice", "dice_outline"), ("outline dist. (mm)", "surface_distance_mean_mm"),
                ("outline HD95 (mm)", "surface_distance_95_mm"), ("voxels (NMI)", "n_voxels"),
            ]
            note = (f"A and B are different modalities ({_modality_text(modalities)}): NMI and the body outlines, "
                    "not MSE/PSNR/SSIM, which would only measure the contrast gap")
        else:
            columns = [
                ("MSE", "mse"), ("PSNR (dB)", "psnr"), ("SSIM", "ssim"), ("SSIM(HG)", "ssim_hg"),
                ("MAE", "mae"), ("NMI", "nmi"), ("voxels", "n_voxels"), ("data range", "data_range"),
            ]
            note = ("metrics of A (as prediction) against B (as reference) on A's grid; "
                    "MSE and MAE in the volumes' own units")
        cells = [[region] + [_format_value(metrics.get(key)) for _, key in columns]]
        table = table_ax.table(
            cellText=cells, colLabels=["A vs B"] + [label for label, _ in columns],
            loc="center", cellLoc="center", bbox=[0.02, 0.15, 0.96, 0.55],
        )
        table.auto_set_font_size(False)
        table.set_fontsize(10)
        for (row, _), cell in table.get_celld().items():
            if row == 0:
                cell.set_facecolor("#e8e8e8")
                cell.set_text_props(fontweight="bold")
        table_ax.text(0.5, 0.92, note, ha="center", va="center", fontsize=9, transform=table_ax.transAxes)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    return buffer.getvalue()
