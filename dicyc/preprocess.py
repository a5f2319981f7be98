"""Preprocessing between a scanner volume and the model's 2-D slice space, and back.

Synthesis must return a volume on the input's exact grid with intensities in the input
domain's units, so every step here that synthesis uses is invertible and records its inverse
as plain numbers (JSON-serialisable), to travel in a model card:

* :func:`to_canonical` / :func:`from_canonical_array` — axial slices whatever the acquisition:
  every volume is viewed in one orientation (LPS) by exact axis permutations and flips.
* :func:`resample_to_spacing` / :func:`resample_to_grid` — linear for images, nearest for masks.
* :func:`crop_pad_axial` / :func:`uncrop_axial` — fit axial slices to a square size around the body.
* :func:`body_mask` — threshold + largest connected component + hole filling.
* :class:`Normalization` — per-modality intensity mapping to [-1, 1] and its inverse.
* :func:`n4_bias_correct` — optional N4 bias-field correction for MR.
"""

from dataclasses import asdict, dataclass

import numpy as np

from dicyc.errors import DicycError
from dicyc.volume import Volume


def _sitk():
    import SimpleITK as sitk

    return sitk


# ===================================================================== orientation
def canonical_axes(direction):
    """For each patient axis L, P, S: (source ITK axis, flipped?) of a grid with ``direction``.

    The source axis is the image axis (0 = i/x, 1 = j/y, 2 = k/z) closest to that patient axis,
    flipped where it runs the opposite way — the orientation ``sitk.DICOMOrient(image, "LPS")``
    produces. Networks train on slices along the canonical S axis, so a sagittally acquired MR
    and an axial CT both give axial slices, in one in-plane orientation.
    """
    import itertools

    d = np.asarray(direction, dtype=float).reshape(3, 3)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[t, p[t]]) for t in range(3)))
    return tuple((int(best[t]), bool(d[t, best[t]] < 0)) for t in range(3))


def _canonical_perm(axes):
    # numpy axis of ITK axis a is 2 - a; the canonical numpy order is (S, P, L) = ITK (2, 1, 0)
    return [2 - axes[2][0], 2 - axes[1][0], 2 - axes[0][0]]


def canonical_array(array, axes):
    """View (no copy) of a (z, y, x) array as (S, P, L): indices increase superior, posterior, left."""
    view = np.transpose(array, _canonical_perm(axes))
    for numpy_axis, (_, flip) in zip((2, 1, 0), axes):
        if flip:
            view = np.flip(view, axis=numpy_axis)
    return view


def from_canonical_array(array, axes):
    """Inverse of :func:`canonical_array`: back to the source grid's (z, y, x) layout (a view)."""
    view = array
    for numpy_axis, (_, flip) in zip((2, 1, 0), axes):
        if flip:
            view = np.flip(view, axis=numpy_axis)
    return np.transpose(view, np.argsort(_canonical_perm(axes)))


def canonical_index(point, size, axes):
    """Voxel index (i, j, k) of the source grid → index (L, P, S) of the canonical view."""
    return tuple((size[src] - 1 - point[src]) if flip else point[src] for src, flip in axes)


def to_canonical(volume):
    """The same voxels, viewed in canonical LPS orientation, with matching geometry.

    Returns (volume, axes); ``from_canonical_array(result.array, axes)`` gives back the
    original array exactly, so a synthesis can be put back onto its input's grid.
    """
    axes = canonical_axes(volume.direction)
    size = volume.size
    direction = np.zeros((3, 3))
    start = [0, 0, 0]
    for t, (src, flip) in enumerate(axes):
        direction[:, t] = volume.direction[:, src] * (-1.0 if flip else 1.0)
        if flip:
            start[src] = size[src] - 1
    origin = (volume.ijk_to_lps() @ np.array([*start, 1.0]))[:3]
    spacing = [volume.spacing[src] for src, _ in axes]
    return Volume(canonical_array(volume.array, axes), spacing, origin, direction), axes


# ===================================================================== resampling
def _interpolator(interpolation):
    sitk = _sitk()
    try:
        return {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[interpolation]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}") from None


def resample_to_grid(volume, reference, interpolation="linear", default_value=None):
    """Resample ``volume`` onto ``reference``'s grid (size, spacing, origin, direction).

    Voxels outside ``volume`` get ``default_value`` (default: the volume's minimum, i.e. air
    for CT and background for MR). Integer images resampled linearly become float32.
    """
    sitk = _sitk()
    image = volume.to_sitk()
    if interpolation != "nearest" and not np.issubdtype(volume.array.dtype, np.floating):
        image = sitk.Cast(image, sitk.sitkFloat32)
    if default_value is None:
        default_value = float(volume.array.min()) if volume.array.size else 0.0
    out = sitk.Resample(image, reference.to_sitk(), sitk.Transform(), _interpolator(interpolation), float(default_value))
    return Volume.from_sitk(out)


def resample_to_spacing(volume, spacing, interpolation="linear", default_value=None):
    """Resample to a new spacing (x, y, z mm) covering the same physical extent.

    The new grid keeps the origin and direction; sizes are rounded so the extent is preserved.
    """
    spacing = tuple(float(s) for s in spacing)
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(volume.size, volume.spacing, spacing)]
    # keep the physical centre of the first voxel's cell edge: origin shifts by half the spacing change
    offset = volume.direction @ (0.5 * (np.array(spacing) - np.array(volume.spacing)))
    grid = Volume(np.zeros(size[::-1], dtype=np.uint8), spacing, tuple(np.array(volume.origin) + offset), volume.direction)
    return resample_to_grid(volume, grid, interpolation=interpolation, default_value=default_value)


# ===================================================================== body mask
def body_mask(volume, threshold=None, modality=None):
    """Boolean mask of the body: threshold, keep the largest 3-D component, fill holes per slice.

    ``threshold`` defaults to -500 HU for CT and otherwise to a fraction of a robust maximum
    (MR background is near zero). Where ``modality`` is given ("CT" or an MR weighting) it picks
    the rule, since a comparison that knows its modalities should not guess them; without it,
    data with a minimum below -500 are taken for CT, so it works for both.
    """
    from scipy import ndimage

    arr = np.asarray(volume.array, dtype=np.float32)
    if threshold is None:
        ct = arr.min() < -500 if modality is None else str(modality).strip().upper() == "CT"
        threshold = -500.0 if ct else 0.1 * float(np.percentile(arr, 99))
    mask = arr > threshold
    if not mask.any():
        return mask
    # an opening detaches thin objects (CT couch, head-rest) touching the body before labelling
    mask = ndimage.binary_opening(mask, structure=np.ones((1, 3, 3), bool))
    labels, n = ndimage.label(mask)
    if n > 1:
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        mask = labels == counts.argmax()
    elif n == 0:
        return mask
    filled = np.empty_like(mask)
    for k in range(mask.shape[0]):
        filled[k] = ndimage.binary_fill_holes(mask[k])
    return filled


# ===================================================================== crop / pad
@dataclass
class CropPad:
    """How axial slices were cropped/padded to ``size`` x ``size``; plain numbers, invertible.

    ``y0``/``x0`` are where the output window starts in the input (may be negative: padding).
    """

    in_shape: tuple
    size: int
    y0: int
    x0: int

    def to_dict(self):
        return asdict(self)


def crop_pad_axial(array, size, center=None, fill=None):
    """Crop or pad the (y, x) plane of a (z, y, x) array to ``size`` x ``size`` around ``center``.

    ``center`` (y, x) defaults to the array centre; pass the body-mask centroid to keep the body
    in view. Returns (array, CropPad). ``fill`` defaults to the array minimum.
    """
    array = np.asarray(array)
    nz, ny, nx = array.shape
    cy, cx = ((ny - 1) / 2.0, (nx - 1) / 2.0) if center is None else center
    y0 = int(round(cy - (size - 1) / 2.0))
    x0 = int(round(cx - (size - 1) / 2.0))
    if ny <= size:  # the whole axis fits: centre it rather than follow the body
        y0 = -((size - ny) // 2)
    else:
        y0 = min(max(y0, 0), ny - size)
    if nx <= size:
        x0 = -((size - nx) // 2)
    else:
        x0 = min(max(x0, 0), nx - size)
    fill = float(array.min()) if fill is None and array.size else (0 if fill is None else fill)
    out = np.full((nz, size, size), fill, dtype=array.dtype)
    sy0, sy1 = max(y0, 0), min(y0 + size, ny)
    sx0, sx1 = max(x0, 0), min(x0 + size, nx)
    out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[:, sy0:sy1, sx0:sx1]
    return out, CropPad(tuple(int(v) for v in array.shape), int(size), y0, x0)


def uncrop_axial(array, crop, fill):
    """Inverse of :func:`crop_pad_axial`: put the window back into an array of the input shape."""
    nz, ny, nx = crop.in_shape
    if array.shape[1:] != (crop.size, crop.size):
        raise ValueError(f"expected slices of {crop.size}x{crop.size}, got {array.shape[1:]}")
    out = np.full((array.shape[0], ny, nx), fill, dtype=array.dtype)
    sy0, sy1 = max(crop.y0, 0), min(crop.y0 + crop.size, ny)
    sx0, sx1 = max(crop.x0, 0), min(crop.x0 + crop.size, nx)
    out[:, sy0:sy1, sx0:sx1] = array[:, sy0 - crop.y0 : sy1 - crop.y0, sx0 - crop.x0 : sx1 - crop.x0]
    return out


# ===================================================================== intensities
@dataclass
class Normalization:
    """A linear intensity map to the networks' [-1, 1] range, with its inverse as plain numbers.

    ``kind`` says how ``low``/``high`` were chosen:

    * ``"ct-window"`` — a fixed HU window (default -1024 … 2000 HU): the same for every scan, so
      synthetic CT comes back in HU; values outside are clipped.
    * ``"mr-percentile"`` — robust per-volume percentiles (default 0.5 % and 99.5 % inside the body),
      since MR intensities have no absolute unit.
    * ``"mr-meanstd"`` — the seed papers' per-volume z-score: ``low``/``high`` = mean ∓ ``k``·std.

    ``forward`` maps ``low`` → -1 and ``high`` → +1 and clips; ``inverse`` undoes the linear part.
    """

    kind: str
    low: float
    high: float

    def forward(self, array):
        a = (np.asarray(array, dtype=np.float32) - self.low) / (self.high - self.low) * 2.0 - 1.0
        return np.clip(a, -1.0, 1.0, out=a)

    def inverse(self, array):
        return ((np.asarray(array, dtype=np.float32) + 1.0) / 2.0) * (self.high - self.low) + self.low

    def to_dict(self):
        return {"kind": self.kind, "low": float(self.low), "high": float(self.high)}

    @classmethod
    def from_dict(cls, data):
        return cls(str(data["kind"]), float(data["low"]), float(data["high"]))


CT_WINDOW = (-1024.0, 2000.0)


def ct_normalization(window=CT_WINDOW):
    """Fixed HU window to [-1, 1]."""
    return Normalization("ct-window", float(window[0]), float(window[1]))


def mr_normalization(array, mask=None, method="percentile", percentiles=(0.5, 99.5), k=3.0):
    """Per-volume MR normalisation from the voxels in ``mask`` (default: all non-background)."""
    arr = np.asarray(array, dtype=np.float32)
    values = arr[mask] if mask is not None and np.any(mask) else arr[arr > arr.min()] if np.any(arr > arr.min()) else arr.ravel()
    if method == "percentile":
        low, high = (float(v) for v in np.percentile(values, percentiles))
        kind = "mr-percentile"
    elif method == "meanstd":
        mean, std = float(values.mean()), float(values.std())
        low, high = mean - k * std, mean + k * std
        kind = "mr-meanstd"
    else:
        raise ValueError(f"unknown MR normalisation {method!r}")
    if not high > low:
        raise DicycError("the MR volume has no intensity contrast to normalise (constant inside the body).")
    return Normalization(kind, low, high)


def normalization_for(modality, volume, mask=None, method="percentile"):
    """The normalisation the engine uses for a volume of ``modality`` ("CT" or an MR weighting)."""
    if str(modality).upper() == "CT":
        return ct_normalization()
    return mr_normalization(volume.array, mask=mask, method=method)


# ===================================================================== bias field
def n4_bias_correct(volume, mask=None, shrink=4, iterations=(50, 50, 30)):
    """N4 bias-field correction (Tustison et al. 2010) for MR; returns a float32 volume.

    The field is estimated on a ``shrink``-times downsampled image for speed and applied at
    full resolution, so the output keeps the input grid exactly.
    """
    sitk = _sitk()
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    if mask is None:
        mask = body_mask(volume)
    mask_img = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    mask_img.CopyInformation(image)
    small = sitk.Shrink(image, [shrink] * 3 if min(volume.size) >= shrink else [1, 1, 1])
    small_mask = sitk.Shrink(mask_img, [shrink] * 3 if min(volume.size) >= shrink else [1, 1, 1])
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    corrected = image / sitk.Exp(log_field)
    return Volume.from_sitk(corrected)
