"""Image-synthesis metrics of a prediction against a reference: MSE, PSNR, SSIM, SSIM(HG), MAE, NMI.

The definitions are the ones printed by ``dicyc evaluate --help`` (``EVALUATE_NOTES`` in
:mod:`dicyc.cli`); this module is their single implementation so the CLI, the Slicer module and
the training reports all report the same numbers.

* MSE and MAE are in the volumes' own units (HU for CT); MSE equals
  ``skimage.metrics.mean_squared_error`` on the same voxels.
* PSNR uses a data range ``R`` (default: the reference's max - min in the evaluated region),
  because a synthetic CT's error only means something relative to the intensity span it covers.
* SSIM is computed slice-wise on axial (y, x) planes, because the seed papers (DiCyc, CycleGAN
  baselines) synthesise and score 2-D slices; a 3-D window would mix slices of different
  thickness. The full map (no border crop) is averaged over the evaluated voxels, so a mask
  that touches the image border is scored on all its voxels.
* SSIM(HG) averages the same map over high-gradient voxels (top 20 % of the reference's
  in-plane Sobel magnitude), where blurred synthesis loses structure (Yang et al. 2018).
* NMI compares intensity *relations*, so it stays meaningful across modalities.

Across modalities (a synthetic CT against its source MR, see :mod:`dicyc.modality`) MSE, PSNR and
SSIM measure the contrast difference between the modalities, not the synthesis, so
:func:`cross_modality_metrics` reports what is valid there: NMI, the Dice of the two body
outlines (each found by its own modality's rule) and the distance between the outlines in mm.
:func:`slice_streaks` measures the slice-to-slice streaks that slice-wise synthesis leaves.

Volumes of 512 x 512 x 300 voxels are processed in slabs of axial slices, so only a few
slab-sized float64 temporaries exist at a time.
"""

import math
import warnings

import numpy as np

from dicyc.errors import DicycError

#: SSIM constants of Wang et al. 2004.
K1 = 0.01
K2 = 0.03
#: Gaussian SSIM window: sigma 1.5 px truncated at 3.5 sigma = an 11 x 11 window (as skimage).
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
#: Fraction of region voxels with the largest reference gradient that count as "high gradient".
HG_FRACTION = 0.20
#: Joint-histogram bins per axis for NMI.
NMI_BINS = 64
#: Voxels per processing slab (float64 temporaries of this size; ~16 MB each).
_SLAB_VOXELS = 2_000_000

METRIC_KEYS = ("mse", "psnr", "ssim", "ssim_hg", "mae", "nmi", "n_voxels", "data_range")


# ===================================================================== helpers
def _slabs(shape):
    """Slices over axis 0 covering about ``_SLAB_VOXELS`` voxels each (whole axial planes)."""
    plane = max(1, int(np.prod(shape[1:])))
    step = max(1, _SLAB_VOXELS // plane)
    for z0 in range(0, shape[0], step):
        yield slice(z0, min(z0 + step, shape[0]))


def _as_3d(array, name):
    array = np.asarray(array)
    if array.ndim == 2:  # a single slice: treat as one axial plane
        array = array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"{name} must be a (z, y, x) array; got shape {array.shape}")
    return array


def _inplane_gradient(ref_slab, scale):
    """In-plane Sobel gradient magnitude of each axial plane of a float64 slab, divided by
    ``scale`` (the same for every slab) and stored as float32.

    Only the ranking of the magnitudes matters (for the top-20 % threshold), so dividing by the
    reference's range keeps them near 1, where float32 neither underflows nor overflows; float32
    halves the memory of the per-voxel copy the percentile needs.
    """
    from scipy import ndimage

    gx = ndimage.correlate1d(ndimage.correlate1d(ref_slab, [-1.0, 0.0, 1.0], axis=2), [1.0, 2.0, 1.0], axis=1)
    gy = ndimage.correlate1d(ndimage.correlate1d(ref_slab, [-1.0, 0.0, 1.0], axis=1), [1.0, 2.0, 1.0], axis=2)
    magnitude = np.hypot(gx, gy)
    magnitude /= scale
    return magnitude.astype(np.float32)


def ssim_map(pred, ref, data_range):
    """The full SSIM map (same shape as the inputs), computed independently on each axial plane.

    Per plane this equals ``skimage.metrics.structural_similarity(p, r, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=R, full=True)[1]`` (skimage then averages
    only the interior, cropping 5 pixels at each border; we keep the whole map so every
    evaluated voxel counts). SSIM is unchanged when the images and ``R`` are scaled together,
    so the map is computed on ``(image - c) / R`` with ``R = 1`` (``c`` the reference's mid-range,
    added back for the luminance term): the constants C1, C2 can then neither underflow for tiny
    ranges nor be swamped by cancellation in the variances of data far from zero (CT at -1000 HU).
    """
    from scipy import ndimage

    pred = _as_3d(pred, "pred").astype(np.float64, copy=False)
    ref = _as_3d(ref, "ref").astype(np.float64, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref shapes differ: {pred.shape} vs {ref.shape}")
    R = float(data_range)
    c1 = K1**2
    c2 = K2**2
    offset = 0.5 * float(ref.min()) + 0.5 * float(ref.max()) if ref.size else 0.0

    def smooth(a):
        return ndimage.gaussian_filter(a, sigma=(0.0, SSIM_SIGMA, SSIM_SIGMA), truncate=SSIM_TRUNCATE, mode="reflect")

    x = (pred - offset) / R
    y = (ref - offset) / R
    ux = smooth(x)
    uy = smooth(y)
    vx = smooth(x * x) - ux * ux
    vy = smooth(y * y) - uy * uy
    vxy = smooth(x * y) - ux * uy
    ux += offset / R
    uy += offset / R
    a1 = 2.0 * ux * uy + c1
    a2 = 2.0 * vxy + c2
    b1 = ux * ux + uy * uy + c1
    b2 = vx + vy + c2
    return (a1 * a2) / (b1 * b2)


def _entropy(counts):
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def _bin_index(values, lo, hi):
    """Bin ``values`` into ``NMI_BINS`` equal bins spanning [lo, hi] (all in bin 0 when lo == hi)."""
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.intp)
    idx = ((values - lo) / (hi - lo) * NMI_BINS).astype(np.intp)
    return np.clip(idx, 0, NMI_BINS - 1, out=idx)


def _nmi_from_joint(joint):
    """2 I(P;R) / (H(P) + H(R)) from a joint histogram, clipped to [0, 1].

    When both marginals are constant (H(P) + H(R) = 0) each determines the other exactly, so
    the score is 1; when only one is constant the mutual information is 0, and so is the score
    (a collapsed, constant generator gets the worst value, not an error).
    """
    hp = _entropy(joint.sum(axis=1))
    hr = _entropy(joint.sum(axis=0))
    if hp + hr <= 0.0:
        return 1.0
    mi = hp + hr - _entropy(joint.ravel())
    return float(min(1.0, max(0.0, 2.0 * mi / (hp + hr))))


def _check_data_range(data_range):
    try:
        R = float(data_range)
    except (TypeError, ValueError):
        raise DicycError(f"the data range must be a number; got {data_range!r}.") from None
    if not math.isfinite(R) or R <= 0:
        raise DicycError(f"the data range must be a positive finite number; got {data_range!r}.")
    return R


# ===================================================================== arrays
def compute_metrics(pred, ref, mask=None, data_range=None):
    """All metrics of ``pred`` against ``ref`` (arrays (z, y, x) of one shape) over ``mask``.

    ``mask`` is a boolean array of the same shape (default: every voxel). ``data_range`` is the
    ``R`` of PSNR and SSIM; by default the reference's max - min inside the region, and a
    reference that is constant there is refused (PSNR and SSIM are undefined without a range).
    A constant *prediction* is fine: it just scores badly. Returns plain Python numbers with
    the keys :data:`METRIC_KEYS`; PSNR is ``inf`` when the inputs are identical in the region.
    """
    pred = _as_3d(pred, "pred")
    ref = _as_3d(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref shapes differ: {pred.shape} vs {ref.shape}")
    if mask is not None:
        mask = _as_3d(mask, "mask")
        if mask.shape != ref.shape:
            raise ValueError(f"mask shape {mask.shape} does not match the volumes {ref.shape}")
        mask = mask.astype(bool, copy=False)
        if not mask.any():
            raise DicycError("the mask selects no voxels, so there is nothing to evaluate.")
    if ref.size == 0:
        raise DicycError("the volumes are empty, so there is nothing to evaluate.")
    slabs = list(_slabs(ref.shape))
    grad_scale = 0.5 * float(ref.max()) - 0.5 * float(ref.min())
    if not (math.isfinite(grad_scale) and grad_scale > 0):
        grad_scale = 1.0

    # ---- pass 1: voxel-wise sums, region ranges and the reference gradient in the region
    n = 0
    sse = 0.0
    sae = 0.0
    pmin = rmin = math.inf
    pmax = rmax = -math.inf
    grads = []
    for sl in slabs:
        p = pred[sl].astype(np.float64)
        r = ref[sl].astype(np.float64)
        for arr, what in ((p, "the prediction"), (r, "the reference")):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            if bad:
                raise DicycError(f"{what} contains NaN or infinite voxels, so no metric can be computed.")
        if mask is not None:
            m = mask[sl]
            if not m.any():
                continue
        g = _inplane_gradient(r, grad_scale)
        if mask is not None:
            pv, rv, gv = p[m], r[m], g[m]
        else:
            pv, rv, gv = p.ravel(), r.ravel(), g.ravel()
        d = pv - rv
        n += d.size
        sse += float(np.dot(d, d))
        sae += float(np.abs(d).sum())
        pmin, pmax = min(pmin, float(pv.min())), max(pmax, float(pv.max()))
        rmin, rmax = min(rmin, float(rv.min())), max(rmax, float(rv.max()))
        grads.append(gv)

    if data_range is None:
        if not rmax > rmin:
            raise DicycError(
                f"the reference is constant inside the evaluated region (every voxel is {rmin:g}), "
                "so PSNR and SSIM are undefined; pass --data-range."
            )
        R = rmax - rmin
    else:
        R = _check_data_range(data_range)
    mse = sse / n
    mae = sae / n
    psnr = math.inf if mse == 0.0 else 20.0 * math.log10(R) - 10.0 * math.log10(mse)

    grads = np.concatenate(grads) if len(grads) > 1 else grads[0]
    threshold = min(float(np.percentile(grads, 100.0 * (1.0 - HG_FRACTION))), float(grads.max()))

    # ---- pass 2: the SSIM map (averaged over region and high-gradient voxels) and the joint histogram
    ssim_sum = 0.0
    hg_sum = 0.0
    hg_n = 0
    joint = np.zeros(NMI_BINS * NMI_BINS, dtype=np.int64)
    offset = 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for sl in slabs:
            if mask is not None:
                m = mask[sl]
                if not m.any():
                    continue
            p = pred[sl].astype(np.float64)
            r = ref[sl].astype(np.float64)
            s = ssim_map(p, r, R)
            if mask is not None:
                sv, pv, rv = s[m], p[m], r[m]
            else:
                sv, pv, rv = s.ravel(), p.ravel(), r.ravel()
            hg = grads[offset : offset + sv.size] >= threshold
            offset += sv.size
            ssim_sum += float(sv.sum())
            hg_sum += float(sv[hg].sum())
            hg_n += int(np.count_nonzero(hg))
            joint += np.bincount(
                _bin_index(pv, pmin, pmax) * NMI_BINS + _bin_index(rv, rmin, rmax), minlength=NMI_BINS * NMI_BINS
            )
    ssim = ssim_sum / n
    ssim_hg = hg_sum / hg_n
    if not (math.isfinite(ssim) and math.isfinite(ssim_hg)):
        raise DicycError(
            f"SSIM cannot be computed for these volumes: their intensities lie too far outside the data "
            f"range {R:g}; pass a larger --data-range."
        )
    return {
        "mse": float(mse),
        "psnr": float(psnr),
        "ssim": float(min(1.0, max(-1.0, ssim))),
        "ssim_hg": float(min(1.0, max(-1.0, ssim_hg))),
        "mae": float(mae),
        "nmi": _nmi_from_joint(joint.reshape(NMI_BINS, NMI_BINS)),
        "n_voxels": int(n),
        "data_range": float(R),
    }


# ===================================================================== across modalities
def nmi(pred, ref, mask=None):
    """NMI of ``pred`` and ``ref`` over ``mask``: the same number :func:`compute_metrics` gives.

    The 64-bin joint histogram spans each volume's own range inside the region, so the two
    volumes' units never meet: the score only asks whether one intensity predicts the other.
    Computed slab by slab, without the SSIM that makes :func:`compute_metrics` slow.
    """
    pred = _as_3d(pred, "pred")
    ref = _as_3d(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref shapes differ: {pred.shape} vs {ref.shape}")
    if mask is not None:
        mask = _as_3d(mask, "mask").astype(bool, copy=False)
        if mask.shape != ref.shape:
            raise ValueError(f"mask shape {mask.shape} does not match the volumes {ref.shape}")
        if not mask.any():
            raise DicycError("the mask selects no voxels, so there is nothing to evaluate.")
    slabs = list(_slabs(ref.shape))

    def region(sl):
        p, r = pred[sl].astype(np.float64), ref[sl].astype(np.float64)
        if mask is None:
            return p.ravel(), r.ravel()
        m = mask[sl]
        return p[m], r[m]

    pmin = rmin = math.inf
    pmax = rmax = -math.inf
    n = 0
    for sl in slabs:
        pv, rv = region(sl)
        if pv.size:
            if not (np.all(np.isfinite(pv)) and np.all(np.isfinite(rv))):
                raise DicycError("the volumes contain NaN or infinite voxels, so no metric can be computed.")
            pmin, pmax = min(pmin, float(pv.min())), max(pmax, float(pv.max()))
            rmin, rmax = min(rmin, float(rv.min())), max(rmax, float(rv.max()))
            n += pv.size
    if n == 0:
        raise DicycError("the volumes are empty, so there is nothing to evaluate.")
    joint = np.zeros(NMI_BINS * NMI_BINS, dtype=np.int64)
    for sl in slabs:
        pv, rv = region(sl)
        if pv.size:
            joint += np.bincount(
                _bin_index(pv, pmin, pmax) * NMI_BINS + _bin_index(rv, rmin, rmax), minlength=NMI_BINS * NMI_BINS
            )
    return _nmi_from_joint(joint.reshape(NMI_BINS, NMI_BINS))


def dice(a, b):
    """Dice overlap 2|A∩B| / (|A| + |B|) of two boolean masks; two empty masks agree (1)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def body_outline(volume, modality=None):
    """The body (head) outline of ``volume`` by its modality's rule, as a boolean mask.

    :func:`dicyc.preprocess.body_mask` with the modality's threshold: CT above -500 HU (air is
    -1000, the thinnest soft tissue is far above); MR above a tenth of its 99th percentile (MR
    has no absolute unit, and its background is near 0). Both are then opened (which detaches a
    thin CT head-rest or couch touching the head), reduced to the largest connected component
    and hole-filled slice by slice (sinuses, the skull's low MR signal). ``modality`` None falls
    back on the HU look of the data. The head benchmark's outlines are this function.
    """
    from dicyc.preprocess import body_mask
    from dicyc.volume import Volume

    if not isinstance(volume, Volume):
        volume = Volume(_as_3d(volume, "volume"))
    return body_mask(volume, modality=modality)


def _surface(mask, inside_only=True):
    """Boundary voxels of ``mask``: in the mask with a 6-neighbour outside it.

    With ``inside_only`` a neighbour past the edge of the volume does not count: where the field
    of view cuts the body (the neck of a head scan) both outlines share that cut, which is where
    the scan ends, not a surface of the anatomy, and would pull every distance towards 0.
    """
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=1 if inside_only else 0)


def surface_distances(a, b, spacing=(1.0, 1.0, 1.0)):
    """Symmetric surface distances between two masks on one grid, in mm.

    Returns ``(mean, p95)``: the mean of the distances from every boundary voxel of each mask to
    the nearest boundary voxel of the other (the average symmetric surface distance), and the
    larger of the two directed 95th percentiles (the usual 95 % Hausdorff distance, HD95), which
    says how far the outlines part where they part most, without one stray voxel deciding it.
    ``spacing`` is (x, y, z) in mm; distances are between voxel centres (a rotation of the grid
    changes nothing). Faces where the volume's edge cuts a mask are not surface
    (:func:`_surface`), unless a mask fills the whole volume and has no other. A missing outline
    is infinitely far from the other: ``(inf, inf)``, and 0 when both are missing.
    """
    from scipy.spatial import cKDTree

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes: {a.shape} and {b.shape}")
    if not a.any() or not b.any():
        return (0.0, 0.0) if not a.any() and not b.any() else (math.inf, math.inf)
    scale = np.asarray(spacing, dtype=np.float64)[::-1][: a.ndim]
    sa, sb = _surface(a), _surface(b)
    if not sa.any() or not sb.any():
        sa, sb = _surface(a, inside_only=False), _surface(b, inside_only=False)
    pa = np.argwhere(sa) * scale
    pb = np.argwhere(sb) * scale
    d_ab = cKDTree(pb).query(pa, k=1)[0]
    d_ba = cKDTree(pa).query(pb, k=1)[0]
    mean = float(np.concatenate([d_ab, d_ba]).mean())
    p95 = float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
    return mean, p95


def outline_metrics(a_outline, b_outline, spacing=(1.0, 1.0, 1.0)):
    """Dice and surface distances (mm) of two outlines on one grid; keys as in :func:`cross_modality_metrics`."""
    mean, p95 = surface_distances(a_outline, b_outline, spacing)
    return {
        "dice_outline": dice(a_outline, b_outline),
        "surface_distance_mean_mm": mean,
        "surface_distance_95_mm": p95,
        "outline_voxels_pred": int(np.count_nonzero(a_outline)),
        "outline_voxels_ref": int(np.count_nonzero(b_outline)),
    }


#: what :func:`cross_modality_metrics` returns (with ``n_voxels``, the voxels NMI was computed on)
CROSS_MODALITY_KEYS = ("nmi", "dice_outline", "surface_distance_mean_mm", "surface_distance_95_mm", "n_voxels")


def cross_modality_metrics(pred_vol, ref_vol, pred_modality=None, ref_modality=None, mask=None, outlines=None):
    """The measures that are valid between two modalities, of volumes on one grid.

    * ``nmi`` -- :func:`nmi` over ``mask`` (default: every voxel);
    * ``dice_outline`` -- Dice of the two body outlines (:func:`body_outline`, each with its own
      modality's rule), over the whole volume: an outline is a property of the whole body;
    * ``surface_distance_mean_mm``, ``surface_distance_95_mm`` -- :func:`surface_distances` of
      those outlines.

    A synthesis that keeps its source's anatomy scores NMI well above 0 and an outline that lies
    on the source's; one that moved the head or added objects (a CT head-rest) parts from it.
    ``outlines`` = (pred's, ref's) where the caller has computed them already (to draw them).
    """
    pred = np.asarray(pred_vol.array)
    ref = np.asarray(ref_vol.array)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref shapes differ: {pred.shape} vs {ref.shape}")
    n_voxels = int(np.count_nonzero(mask)) if mask is not None else int(ref.size)
    result = {"nmi": nmi(pred, ref, mask), "n_voxels": n_voxels}
    if outlines is None:
        outlines = (body_outline(pred_vol, pred_modality), body_outline(ref_vol, ref_modality))
    result.update(outline_metrics(outlines[0], outlines[1], ref_vol.spacing))
    return result


# ===================================================================== slice consistency
#: the outline is eroded by this much before streaks are measured: the skin-air edge is a large
#: difference in every direction, and the head's shape (flat on top, round at the sides) would
#: otherwise decide the score
STREAK_ERODE_MM = 3.0


def _mean_abs_step(view, mask, axis, lag):
    """Mean |I(p + lag·e_axis) - I(p)| over voxel pairs both inside ``mask``, and the pair count."""
    total, count = 0.0, 0
    n0 = view.shape[0]
    step = max(1, _SLAB_VOXELS // max(1, view.shape[1] * view.shape[2]))
    if view.shape[axis] <= lag:
        return None, 0
    for z0 in range(0, n0, step):
        z1 = min(z0 + step, n0)
        if axis == 0:
            z1 = min(z1, n0 - lag)
            if z1 <= z0:
                break
            a, b = view[z0:z1], view[z0 + lag : z1 + lag]
            m = mask[z0:z1] & mask[z0 + lag : z1 + lag]
        else:
            lo = [slice(z0, z1), slice(None), slice(None)]
            hi = list(lo)
            lo[axis], hi[axis] = slice(0, view.shape[axis] - lag), slice(lag, None)
            a, b = view[tuple(lo)], view[tuple(hi)]
            m = mask[tuple(lo)] & mask[tuple(hi)]
        if m.any():
            d = np.abs(a[m].astype(np.float64) - b[m].astype(np.float64))
            total += float(d.sum())
            count += d.size
    return (total / count if count else None), count


def _mean_abs_at(view, mask, axis, lag):
    """:func:`_mean_abs_step` at a fractional lag: linear between the two whole lags around it."""
    lo = max(1, int(math.floor(lag + 1e-9)))
    w = lag - lo
    d_lo, n = _mean_abs_step(view, mask, axis, lo)
    if d_lo is None or w < 1e-6:
        return d_lo, n
    d_hi, _ = _mean_abs_step(view, mask, axis, lo + 1)
    return (d_lo if d_hi is None else (1.0 - w) * d_lo + w * d_hi), n


def slice_streaks(volume, mask=None, erode_mm=STREAK_ERODE_MM):
    """How much more ``volume`` changes from one axial slice to the next than within a slice.

    Why: synthesis runs a 2-D network on each axial slice on its own, so neighbouring slices
    disagree by more than anatomy explains, and coronal and sagittal views show horizontal
    streaks. The measure: the mean |difference| between neighbouring voxels along the
    superior-inferior axis (neighbouring rows of a coronal view), divided by the same mean along
    the two in-plane axes, over voxel pairs inside ``mask`` (default: the whole volume) eroded
    by ``erode_mm``. Dividing by the in-plane differences makes it a property of the volume's
    consistency, not of its contrast or noise level, so an MR, a real CT and a synthetic CT on
    different grids can be set side by side; a volume as consistent along z as in-plane scores
    about 1, and streaks raise it.

    Axes are the canonical ones synthesis slices along (:func:`dicyc.preprocess.to_canonical`).
    On anisotropic voxels every axis is compared at the same physical step (the coarsest
    spacing): the in-plane means at a fractional voxel lag are interpolated linearly between
    the whole lags around it, which leaves the image itself unresampled (resampling would
    smooth noise along some axes only).

    Returns ``{"streak_index", "mean_abs_diff_si", "mean_abs_diff_inplane", "step_mm",
    "n_pairs"}``; the index is None where it cannot be measured (fewer than two slices, an
    empty region, no in-plane change).
    """
    from scipy import ndimage

    from dicyc.preprocess import canonical_array, canonical_axes

    axes = canonical_axes(volume.direction)
    view = canonical_array(np.asarray(volume.array), axes)  # (S, P, L)
    spacing_spl = [volume.spacing[axes[t][0]] for t in (2, 1, 0)]
    region = np.ones(view.shape, bool) if mask is None else canonical_array(np.asarray(mask, bool), axes)
    if erode_mm and erode_mm > 0 and region.any():
        eroded = region.astype(np.uint8)  # a box erosion, axis by axis (fast where a 3-D structure is not)
        for axis, sp in enumerate(spacing_spl):
            r = int(round(float(erode_mm) / sp))
            if r > 0:
                eroded = ndimage.minimum_filter1d(eroded, 2 * r + 1, axis=axis, mode="constant", cval=0)
        region = eroded.astype(bool)
    step_mm = float(max(spacing_spl))
    empty = {"streak_index": None, "mean_abs_diff_si": None, "mean_abs_diff_inplane": None, "step_mm": step_mm,
             "n_pairs": 0}
    if view.shape[0] < 2 or not region.any():
        return empty
    d_s, n = _mean_abs_at(view, region, 0, step_mm / spacing_spl[0])
    d_p, _ = _mean_abs_at(view, region, 1, step_mm / spacing_spl[1])
    d_l, _ = _mean_abs_at(view, region, 2, step_mm / spacing_spl[2])
    if d_s is None or d_p is None or d_l is None:
        return empty
    inplane = 0.5 * (d_p + d_l)
    return {
        "streak_index": float(d_s / inplane) if inplane > 0 else None,
        "mean_abs_diff_si": float(d_s),
        "mean_abs_diff_inplane": float(inplane),
        "step_mm": step_mm,
        "n_pairs": int(n),
    }


def streak_ratio(index, reference_index):
    """``index`` relative to a reference volume's (a real CT's): above 1 is streakier than the reference."""
    if index is None or reference_index is None or not reference_index > 0:
        return None
    return float(index) / float(reference_index)


# ===================================================================== volumes and files
def _onto_reference(pred_vol, ref_vol, mask, pred_name, ref_name):
    """(pred on the reference grid, mask as a boolean array or None, resampled?) -- see :func:`evaluate_volumes`."""
    from dicyc.volume import Volume

    resampled = False
    covered = None
    if not pred_vol.same_grid(ref_vol):
        if not pred_vol.overlaps(ref_vol):
            raise DicycError(
                f"{pred_name} and {ref_name} do not overlap in space, so there are no voxels to compare."
            )
        from dicyc.preprocess import resample_to_grid

        pred_vol_on_ref = resample_to_grid(pred_vol, ref_vol)
        # voxels of the reference that the prediction does not cover are left out, not
        # scored against a fill value
        covered = resample_to_grid(
            pred_vol.with_array(np.ones(pred_vol.shape, np.uint8)), ref_vol, interpolation="nearest", default_value=0
        ).array.astype(bool)
        coverage = float(covered.mean())
        warnings.warn(
            f"{pred_name} is on a different grid than {ref_name}; resampling it (linear) onto the reference grid"
            + ("." if coverage == 1.0 else f" and scoring only the {100 * coverage:.1f}% of the reference it covers."),
            stacklevel=3,
        )
        pred_vol = pred_vol_on_ref
        resampled = True
    if isinstance(mask, Volume):
        if not mask.same_grid(ref_vol):
            from dicyc.preprocess import resample_to_grid

            mask = resample_to_grid(
                mask.with_array((mask.array != 0).astype(np.uint8)), ref_vol, interpolation="nearest"
            )
        mask = mask.array != 0
    if resampled and not covered.all():
        mask = covered if mask is None else (np.asarray(mask, bool) & covered)
        if not mask.any():
            raise DicycError(f"{pred_name} covers none of the evaluated region of {ref_name}.")
    return pred_vol, mask, resampled


def evaluate_volumes(pred_vol, ref_vol, mask=None, data_range=None, pred_name="the prediction", ref_name="the reference"):
    """Metrics of ``pred_vol`` against ``ref_vol`` on the reference grid.

    A prediction on another (overlapping) grid is resampled linearly onto the reference grid
    with a warning, since metrics are only meaningful voxel for voxel; grids that do not overlap
    are refused. The reference must hold an image (not constant); a constant prediction is
    accepted, because a collapsed generator must get a bad score rather than an error.
    ``mask`` is a boolean array on the reference grid (e.g. from :func:`dicyc.volume.read_mask`)
    or a :class:`~dicyc.volume.Volume` label map. Adds ``"resampled"`` to the metrics.
    These are the same-modality metrics; :func:`evaluate_cross_modality` is for two modalities.
    """
    from dicyc.volume import check_finite_values, check_not_constant

    check_finite_values(pred_vol, pred_name)
    check_finite_values(ref_vol, ref_name)
    check_not_constant(ref_vol, ref_name)
    pred_vol, mask, resampled = _onto_reference(pred_vol, ref_vol, mask, pred_name, ref_name)
    result = compute_metrics(pred_vol.array, ref_vol.array, mask=mask, data_range=data_range)
    result["resampled"] = resampled
    return result


def evaluate_cross_modality(pred_vol, ref_vol, pred_modality=None, ref_modality=None, mask=None,
                            pred_name="the prediction", ref_name="the reference"):
    """:func:`cross_modality_metrics` of two volumes of different modalities, on the reference grid.

    Grids, masks and refusals as in :func:`evaluate_volumes`; adds ``"resampled"``.
    """
    from dicyc.volume import check_finite_values, check_not_constant

    check_finite_values(pred_vol, pred_name)
    check_finite_values(ref_vol, ref_name)
    check_not_constant(ref_vol, ref_name)
    pred_on_ref, mask, resampled = _onto_reference(pred_vol, ref_vol, mask, pred_name, ref_name)
    result = cross_modality_metrics(pred_on_ref, ref_vol, pred_modality, ref_modality, mask=mask)
    result["resampled"] = resampled
    return result


def streak_scores(pred_vol, ref_vol, pred_modality=None, ref_modality=None):
    """Slice streaks of a prediction and a reference, each inside its own body outline on its own grid.

    ``{"streak_index", "streak_index_ref", "streak_ratio"}`` (:func:`slice_streaks`): the ratio
    above 1 says the prediction is streakier than the reference (a real CT, or the source MR the
    prediction came from, which was acquired as a volume).
    """
    pred = slice_streaks(pred_vol, body_outline(pred_vol, pred_modality))["streak_index"]
    ref = slice_streaks(ref_vol, body_outline(ref_vol, ref_modality))["streak_index"]
    return {"streak_index": pred, "streak_index_ref": ref, "streak_ratio": streak_ratio(pred, ref)}


def evaluate_files(pred_path, ref_path, mask_path=None, data_range=None, modality_pred=None, modality_ref=None,
                   cross_modality=None):
    """Evaluate a prediction file against a reference file (or DICOM folders); 2-D images count as one slice.

    The two modalities are settled first (:func:`dicyc.modality.resolve`: the given names, what
    each file records, a CT's HU statistics), and decide the measures: :func:`evaluate_volumes`
    for one modality, :func:`evaluate_cross_modality` for two (then ``data_range``, which only
    PSNR and SSIM use, is ignored with a warning). Slice streaks (:func:`streak_scores`) are
    added either way. Adds the paths as ``"pred"``, ``"ref"`` and ``"mask"`` (``None`` without
    a mask), ``"comparison"`` ("same-modality" or "cross-modality") and ``"modalities"``.
    """
    from dicyc import modality
    from dicyc.volume import read_mask, read_volume

    pred_vol = read_volume(pred_path, allow_2d=True)
    ref_vol = read_volume(ref_path, allow_2d=True)
    mask = None
    if mask_path is not None:
        mask = read_mask(mask_path, ref_vol, reference_name=str(ref_path))
    resolved = modality.resolve(pred_vol, ref_vol, modality_pred, modality_ref, cross_modality, pred_path, ref_path)
    m_pred, m_ref = resolved["a"]["modality"], resolved["b"]["modality"]
    if resolved["cross_modality"]:
        if data_range is not None:
            warnings.warn("the data range is ignored: it is for PSNR and SSIM, which are not computed across "
                          "modalities.", stacklevel=2)
        result = evaluate_cross_modality(pred_vol, ref_vol, m_pred, m_ref, mask=mask, pred_name=str(pred_path),
                                         ref_name=str(ref_path))
    else:
        result = evaluate_volumes(
            pred_vol, ref_vol, mask=mask, data_range=data_range, pred_name=str(pred_path), ref_name=str(ref_path)
        )
    result.update(streak_scores(pred_vol, ref_vol, m_pred, m_ref))
    result["comparison"] = "cross-modality" if resolved["cross_modality"] else "same-modality"
    result["modalities"] = {"pred": resolved["a"], "ref": resolved["b"], "decided_by": resolved["decided_by"]}
    result["pred"] = str(pred_path)
    result["ref"] = str(ref_path)
    result["mask"] = None if mask_path is None else str(mask_path)
    return result


# ===================================================================== reporting
def json_safe(result):
    """A copy fit for ``json.dumps``: NaN/inf become ``None`` (JSON has no inf), numpy scalars
    become Python numbers, paths and other objects become strings."""
    if isinstance(result, dict):
        return {str(k): json_safe(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [json_safe(v) for v in result]
    if isinstance(result, np.ndarray):
        return [json_safe(v) for v in result.tolist()]
    if result is None or isinstance(result, (bool, np.bool_)):
        return None if result is None else bool(result)
    if isinstance(result, (int, np.integer)):
        return int(result)
    if isinstance(result, (float, np.floating)):
        value = float(result)
        return value if math.isfinite(value) else None
    if isinstance(result, str):
        return result
    return str(result)


def _fmt(value, spec):
    if value is None:
        return "n/a"
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def _modality_line(result):
    """"modalities: CT (file) vs not CT (unknown): cross-modality", where the result says."""
    mods = result.get("modalities")
    if not mods:
        return None

    def one(d):
        return f"{d.get('modality') or 'not CT'} ({d.get('source')})"

    return f"modalities: {one(mods['pred'])} vs {one(mods['ref'])}: {result.get('comparison', '')}"


def format_table(result):
    """The metrics as an aligned text table for the terminal."""
    cross = result.get("comparison") == "cross-modality"
    region = "inside the mask" if result.get("mask") else "whole volume"
    if cross:
        rows = [
            ("NMI", _fmt(result.get("nmi"), ".4f"), "64-bin joint histogram; valid across modalities"),
            ("outline Dice", _fmt(result.get("dice_outline"), ".4f"), "body outlines, each by its modality's rule"),
            ("outline dist", _fmt(result.get("surface_distance_mean_mm"), ".3f"),
             "mm, mean symmetric surface distance"),
            ("outline HD95", _fmt(result.get("surface_distance_95_mm"), ".3f"), "mm, 95th-percentile surface distance"),
            ("voxels", str(result.get("n_voxels", "n/a")), f"NMI {region}; outlines whole volume"),
        ]
    else:
        psnr = result.get("psnr")
        if psnr is not None and math.isinf(float(psnr)) and float(psnr) > 0:
            psnr_text = "inf (identical)"
        else:
            psnr_text = _fmt(psnr, ".3f")
        rows = [
            ("MSE", _fmt(result.get("mse"), ".6g"), "intensity units squared (HU^2 for CT)"),
            ("PSNR", psnr_text, "dB, 10*log10(R^2 / MSE)"),
            ("SSIM", _fmt(result.get("ssim"), ".4f"), "axial slices, 11x11 Gaussian window; 1 = identical"),
            ("SSIM(HG)", _fmt(result.get("ssim_hg"), ".4f"), "SSIM over the top 20% reference gradient voxels"),
            ("MAE", _fmt(result.get("mae"), ".6g"), "intensity units (HU for CT)"),
            ("NMI", _fmt(result.get("nmi"), ".4f"), "64-bin joint histogram; 1 = each intensity bin maps to one bin"),
        ]
        rows.append(("voxels", str(result.get("n_voxels", "n/a")), region))
        rows.append(("data range", _fmt(result.get("data_range"), ".6g"), "R used by PSNR and SSIM"))
    if "streak_index" in result:
        pair = f"{_fmt(result.get('streak_index'), '.3f')} / {_fmt(result.get('streak_index_ref'), '.3f')}"
        rows.append(("streaks", pair, "prediction / reference, slice-to-slice over in-plane change "
                     f"(ratio {_fmt(result.get('streak_ratio'), '.3f')})"))
    w0 = max(len("metric"), max(len(r[0]) for r in rows))
    w1 = max(len("value"), max(len(r[1]) for r in rows))
    lines = []
    for key, label in (("pred", "prediction"), ("ref", "reference"), ("mask", "mask")):
        if result.get(key):
            lines.append(f"{label}: {result[key]}")
    if _modality_line(result):
        lines.append(_modality_line(result))
    if result.get("resampled"):
        lines.append("(the prediction was resampled linearly onto the reference grid)")
    if lines:
        lines.append("")
    lines.append(f"{'metric':<{w0}}  {'value':>{w1}}  notes")
    lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * 5}")
    for name, value, note in rows:
        lines.append(f"{name:<{w0}}  {value:>{w1}}  {note}")
    return "\n".join(lines)


# ===================================================================== statistics
def paired_ttest(scores_a, scores_b):
    """Paired t-test (``scipy.stats.ttest_rel``) of two methods scored on the same cases.

    Returns ``{"t", "p", "mean_difference", "n"}`` with the difference taken as a - b. Identical
    score lists give t = 0, p = 1 (no evidence of a difference) instead of scipy's NaN; a
    constant non-zero difference gives t = +/-inf, p = 0. Refuses fewer than two pairs, lists of
    different lengths and non-finite scores (e.g. PSNR = inf of an identical case).
    """
    from scipy import stats

    a = np.asarray(scores_a, dtype=np.float64).ravel()
    b = np.asarray(scores_b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise DicycError(f"a paired t-test needs one score per case from each method; got {a.size} and {b.size} scores.")
    if a.size < 2:
        raise DicycError(f"a paired t-test needs at least two cases; got {a.size}.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise DicycError("a paired t-test needs finite scores; some are NaN or infinite (e.g. PSNR of identical volumes).")
    d = a - b
    mean_difference = float(d.mean())
    if np.all(d == d[0]):
        if d[0] == 0:
            t, p = 0.0, 1.0
        else:
            t, p = math.copysign(math.inf, float(d[0])), 0.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
    return {"t": t, "p": p, "mean_difference": mean_difference, "n": int(a.size)}
