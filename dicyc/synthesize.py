"""Volume → synthetic volume with a trained 2-D generator.

The generator was trained on axial slices at the card's in-plane spacing with intensities in
[-1, 1], so synthesis (1) maps the input's intensities the way training did, (2) resamples
in-plane to the training spacing, (3) runs the generator slice by slice on full-size slices
(it is fully convolutional; each slice is only padded to a multiple of 4; a 2.5-D model runs on
the slab of neighbouring slices around each slice and averages each slice's overlapping
predictions, see :class:`_SlabAverage`), (4) maps the output
back to the target domain's units (HU for CT) and (5) resamples onto the input's exact grid,
so the result overlays the input voxel for voxel.

Memory: a 512x512x300 CT is ~300 MB per float32 copy. Resampling runs slab by slab
(:func:`resample_slabs`) straight into one float32 array, so SimpleITK never holds a
whole-volume copy; the model-space volume is built once and normalised in place; generator
results go batch by batch over their own input slices (one view; for a 2.5-D model once a
slice's last overlapping prediction is in) or into one preallocated
float32 array (several views); the inverse intensity map runs in place; and each whole-volume
intermediate is dropped as soon as the next step no longer needs it (see
:func:`synthesize_volume_with_info`).
"""

import math
import time
import warnings
from pathlib import Path

import numpy as np

from dicyc.errors import DicycError
from dicyc.preprocess import Normalization, body_mask, from_canonical_array, mr_normalization, to_canonical
from dicyc.volume import Volume, check_finite_values, check_not_constant

DIRECTIONS = {"a2b": ("a", "b"), "b2a": ("b", "a")}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
VIEWS = ("axial", "coronal", "sagittal")
_VIEW_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}

#: "auto" keeps low precision only if its output is this close to fp32 on a probe batch.
PSNR_THRESHOLD_DB = 40.0
#: Axes whose spacing is within this fraction of the model's are not resampled: a 1 % scale
#: change is far inside training augmentation, and skipping saves two interpolation blurs.
SPACING_TOLERANCE = 0.01
#: Slices are padded to a multiple of 4 (two stride-2 stages) and at least 8 pixels
#: (the residual blocks' reflection padding needs 2 latent pixels).
_MULTIPLE = 4
_MIN_SIDE = 8


def _sitk():
    import SimpleITK as sitk

    return sitk


# ===================================================================== checks
def _model_name(model):
    path = getattr(model, "path", None)
    return str(path) if path is not None else "the model"


def _check_direction(direction):
    if direction not in DIRECTIONS:
        raise DicycError(f"unknown direction {direction!r}; use 'a2b' or 'b2a'.")


def _check_options(precision, batch, views):
    if precision not in PRECISIONS:
        raise DicycError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DicycError(f"the batch size must be a positive integer, got {batch!r}.")
    if isinstance(views, str):
        views = (views,)
    views = tuple(views)
    if not views:
        raise DicycError("at least one view (axial, coronal or sagittal) is needed.")
    for v in views:
        if v not in VIEWS:
            raise DicycError(f"unknown view {v!r}; use axial, coronal or sagittal.")
    if len(set(views)) != len(views):
        raise DicycError(f"views {views} repeat a view; give each of axial, coronal, sagittal at most once.")
    return views


def _recordable_modality(name):
    """``name`` if a file header can hold it (:func:`dicyc.volume.modality_note`), else None."""
    from dicyc.volume import modality_note

    if not name:
        return None
    try:
        modality_note(name)
    except DicycError:
        return None
    return name


def _domains(model, direction):
    """(source domain dict, target domain dict) of the card for ``direction``."""
    name = _model_name(model)
    domains = (getattr(model, "card", None) or {}).get("domains")
    if not isinstance(domains, dict) or not all(isinstance(domains.get(k), dict) for k in "ab"):
        raise DicycError(f"{name} has a model card without the two domains 'a' and 'b'.")
    src, tgt = DIRECTIONS[direction]
    return domains[src], domains[tgt]


def _label(domain):
    return str(domain.get("name") or domain.get("modality") or "?")


def check_target(model, direction, expect_target):
    """Refuse a model that does not produce ``expect_target`` (a domain name or modality, e.g. "CT")."""
    if not expect_target:
        return
    src, tgt = _domains(model, direction)
    wanted = str(expect_target).strip().lower()
    if wanted not in (str(tgt.get("name", "")).lower(), str(tgt.get("modality", "")).lower()):
        raise DicycError(
            f"model {_model_name(model)} synthesises {_label(tgt)} from {_label(src)} ({direction}), not {expect_target}."
        )


def model_context(model, views=("axial",)):
    """K, the axial slices the model's generators read and predict at once (1 for cards without it).

    Refuses in one sentence a card whose generators do not have K channels in and out, and
    views other than axial for K > 1: the model's context runs along the axial stack only.
    """
    card = getattr(model, "card", None) or {}
    context = card.get("context_slices", 1)
    arch = card.get("architecture") or {}
    if arch.get("input_nc", 1) != context or arch.get("output_nc", 1) != context:
        if "context_slices" not in card:
            raise DicycError(f"{_model_name(model)} has a multi-channel generator; synthesis handles single-channel volumes only.")
        raise DicycError(f"{_model_name(model)} has generators of {arch.get('input_nc')} and {arch.get('output_nc')} "
                         f"channels for a context of {context} slices; the file is inconsistent.")
    if context > 1 and tuple(views) != ("axial",):
        raise DicycError(f"{_model_name(model)} is a 2.5-D model (context_slices {context}) that already averages "
                         "neighbouring axial slices, so it synthesises the axial view only; leave --views at axial.")
    return int(context)


def _model_spacing(model):
    spacing = model.card.get("spacing")
    try:
        sx, sy = (float(s) for s in spacing)
    except (TypeError, ValueError):
        raise DicycError(f"{_model_name(model)} has a model card without a valid in-plane 'spacing' [sx, sy].") from None
    if not (sx > 0 and sy > 0 and math.isfinite(sx) and math.isfinite(sy)):
        raise DicycError(f"{_model_name(model)} has a model card with a non-positive 'spacing' {spacing}.")
    return sx, sy


def _modality_warnings(array, src):
    """Cheap look at whether the input looks like the source modality; warn, never refuse."""
    modality = str(src.get("modality", "")).upper()
    out = []
    if modality == "CT" and float(array.min()) > -200:
        out.append(
            f"the model expects {_label(src)} (CT) in HU, but the input has no voxel below -200 HU (no air); "
            "is it really a CT?"
        )
    elif modality and modality != "CT":
        below = np.count_nonzero(array < -500) / array.size
        if below > 0.05:
            out.append(
                f"the model expects {_label(src)} ({modality}), but {below:.0%} of the input voxels are below -500, "
                "which looks like a CT in HU."
            )
    return out


# ===================================================================== intensities
def source_normalization(domain, array, mask, model_name="the model"):
    """The forward intensity map of the source domain, fitted to this volume where per-volume.

    CT uses the card's fixed HU window; MR recomputes low/high on this volume inside the body
    mask with the card's method, since MR has no absolute unit.
    """
    nd = domain.get("normalization") or {}
    kind = nd.get("kind")
    if kind == "ct-window":
        return Normalization.from_dict(nd)
    if kind == "mr-percentile":
        percentiles = tuple(float(p) for p in nd.get("percentiles", (0.5, 99.5)))
        return mr_normalization(array, mask=mask, method="percentile", percentiles=percentiles)
    if kind == "mr-meanstd":
        return mr_normalization(array, mask=mask, method="meanstd", k=float(nd.get("k", 3.0)))
    raise DicycError(f"{model_name} has an unknown normalisation {kind!r} for domain {_label(domain)}.")


def target_normalization(domain, model_name="the model"):
    """The card's recorded map of the target domain, used to invert the generator's [-1, 1] output."""
    nd = domain.get("normalization")
    try:
        norm = Normalization.from_dict(nd)
    except (TypeError, KeyError, ValueError):
        norm = None
    if norm is None or not (norm.high > norm.low) or not all(map(math.isfinite, (norm.low, norm.high))):
        raise DicycError(
            f"{model_name} has no usable intensity normalisation (kind, low < high) for domain {_label(domain)}."
        )
    return norm


def _normalize_inplace(array, norm):
    """``norm.forward`` without temporaries (``array`` is owned float32)."""
    array -= np.float32(norm.low)
    array *= np.float32(2.0 / (norm.high - norm.low))
    array -= np.float32(1.0)
    np.clip(array, -1.0, 1.0, out=array)
    return array


def _denormalize_inplace(array, norm):
    """``norm.inverse`` without temporaries."""
    array += np.float32(1.0)
    array *= np.float32((norm.high - norm.low) / 2.0)
    array += np.float32(norm.low)
    return array


# ===================================================================== resampling
def _model_grid(volume, spacing_xy, isotropic):
    """Spacing, size and origin of the model-space grid (the same rule as ``resample_to_spacing``).

    In-plane spacing becomes the card's; z is kept for axial-only synthesis and set to the
    in-plane spacing when other views run, so coronal/sagittal slices have the trained pixel size.
    """
    sx, sy = spacing_xy
    wanted = (sx, sy, (sx + sy) / 2.0 if isotropic else volume.spacing[2])
    spacing = tuple(
        s_in if abs(w - s_in) <= SPACING_TOLERANCE * s_in else w for w, s_in in zip(wanted, volume.spacing)
    )
    size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(volume.size, volume.spacing, spacing))
    offset = volume.direction @ (0.5 * (np.array(spacing) - np.array(volume.spacing)))
    origin = tuple(np.array(volume.origin) + offset)
    return spacing, size, origin


#: Voxels per output slab when resampling: bounds the SimpleITK buffers to a few tens of MB.
SLAB_VOXELS = 4_000_000


def resample_slabs(array, src_spacing, src_origin, direction, dst_shape, dst_spacing, dst_origin, default,
                   slab_voxels=SLAB_VOXELS):
    """Linear resampling between two grids sharing ``direction``, slab of output slices by slab.

    Equal to one whole-volume SimpleITK resample, but only the source slices each output slab
    needs are copied (as float32) into SimpleITK, and results go straight into one float32
    array: no whole-volume SimpleITK copies, whatever the input's dtype. Edge voxels use nearest
    extrapolation instead of ``default`` so a grid covering the same extent gets no border of
    background.
    """
    sitk = _sitk()
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    flat_dir = tuple(float(v) for v in d.ravel())
    src_spacing = tuple(float(v) for v in src_spacing)
    dst_spacing = tuple(float(v) for v in dst_spacing)
    src_origin = np.asarray(src_origin, dtype=float)
    dst_origin = np.asarray(dst_origin, dtype=float)
    nz_in = array.shape[0]
    nz, ny, nx = (int(v) for v in dst_shape)
    # continuous source z index of output slice k is a + k * b (the grids share their axes)
    a = float((d.T @ (dst_origin - src_origin))[2]) / src_spacing[2]
    b = dst_spacing[2] / src_spacing[2]
    per = max(1, int(slab_voxels) // max(1, ny * nx))
    result = np.empty((nz, ny, nx), dtype=np.float32)
    for k0 in range(0, nz, per):
        k1 = min(nz, k0 + per)
        z0 = min(max(int(math.floor(a + k0 * b)) - 1, 0), nz_in - 1)
        z1 = min(max(int(math.ceil(a + (k1 - 1) * b)) + 2, z0 + 1), nz_in)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array[z0:z1], dtype=np.float32))
        image.SetSpacing(src_spacing)
        image.SetOrigin(tuple(src_origin + d @ np.array([0.0, 0.0, z0 * src_spacing[2]])))
        image.SetDirection(flat_dir)
        slab = sitk.Resample(
            image,
            [nx, ny, k1 - k0],
            sitk.Transform(),
            sitk.sitkLinear,
            tuple(dst_origin + d @ np.array([0.0, 0.0, k0 * dst_spacing[2]])),
            dst_spacing,
            flat_dir,
            float(default),
            sitk.sitkFloat32,
            True,
        )
        del image
        result[k0:k1] = sitk.GetArrayViewFromImage(slab)
        del slab
    return result


# ===================================================================== inference
def _instance_norm_as_group_norm(norm):
    """A module computing exactly what ``norm`` (an InstanceNorm2d without running statistics) does.

    Instance norm is group norm with one channel per group; torch's CPU group-norm kernel is
    2-3x faster than its instance-norm path (which reshapes to a batch norm) and keeps
    channels-last tensors channels-last, and it accumulates bf16 statistics in fp32.
    """
    import torch.nn.functional as F
    from torch import nn

    class InstanceNormAsGroupNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.eps = norm.eps
            self.weight, self.bias = (norm.weight, norm.bias) if norm.affine else (None, None)

        def forward(self, x):
            return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)

    return InstanceNormAsGroupNorm()


#: environment override of the CPU float32 inference path: "LAYOUT:BATCH" with LAYOUT
#: "cl" (channels-last copy, instance norms as group norms) or "nchw" (the module as trained)
PATH_ENV = "DICYC_SYNTH_PATH"
#: The path probe's reference: the module as trained, one slice at a time (what plain code does).
REFERENCE_PATH = ("nchw", 1)
#: Another path replaces the reference only if the probe finds it at least this much faster per
#: slice: a tie is noise, and the reference is never the wrong choice by more than this margin.
REFERENCE_MARGIN = 0.05
#: Timed rounds per candidate, interleaved (A B C A B C) so that a burst of load hits all alike.
PROBE_ROUNDS = 2
#: A probe is kept in the cache only if each of its candidates' rounds agree within this factor;
#: an unsteady probe (other work loading the CPU) decides the current run only.
PROBE_STEADY_RATIO = 1.3


def choose_path(seconds_per_slice, margin=None):
    """The path key to run, from the probe's best seconds per slice of each candidate.

    The fastest candidate wins unless the reference (:data:`REFERENCE_PATH`) was measured and
    is within ``margin`` of it: then the reference runs, so a close call never costs speed.
    """
    margin = REFERENCE_MARGIN if margin is None else margin
    fastest = min(seconds_per_slice, key=seconds_per_slice.get)
    ref = seconds_per_slice.get(REFERENCE_PATH)
    if ref is not None and seconds_per_slice[fastest] > ref * (1.0 - margin):
        return REFERENCE_PATH
    return fastest


def probe_is_steady(rounds, ratio=None):
    """True if every candidate's timed rounds (seconds per slice) agree within ``ratio``."""
    ratio = PROBE_STEADY_RATIO if ratio is None else ratio
    return all(len(r) >= 2 and max(r) <= ratio * min(r) for r in rounds.values())


LAYOUTS = ("nchw", "cl")


def _parse_path(text, batch):
    """("cl"|"nchw", batch size) from ``DICYC_SYNTH_PATH``; the batch is at most ``batch``."""
    layout, _, size = str(text).strip().lower().partition(":")
    try:
        size = int(size) if size else batch
    except ValueError:
        size = 0
    if layout not in LAYOUTS or size < 1:
        raise DicycError(f"{PATH_ENV}={text!r} is not LAYOUT:BATCH with LAYOUT cl or nchw, e.g. cl:8 or nchw:1.")
    return layout, min(size, batch)


class _InferenceModel:
    """The generator as synthesis runs it: the fp32 module, plus fast copies for the CPU.

    On a CPU, bf16 autocast leaves most of the time outside the convolutions: it casts every
    activation back to fp32 around each reflection pad (an fp32 op for CPU autocast) and to
    bf16 again for the next convolution, and oneDNN reorders NCHW tensors for every
    convolution. The fast copy is made once per synthesis: weights in bf16, channels-last
    memory format (oneDNN's native layout; its bf16 3x3 convolutions then run near the bf16
    matmul ceiling) and instance norms computed by the equivalent group norm. It computes what
    autocast computes (convolutions in bf16, pads exact, residual stream in bf16 as under
    autocast) with fewer casts; the "auto" precision probe still compares it against fp32.
    In float32 on a CPU the same channels-last copy (float32 weights) is one of the paths the
    runner's path probe times (see :class:`_Runner`). CUDA and fp16 keep plain autocast.
    """

    def __init__(self, module):
        self.module = module
        self._fast = {}

    def fast(self, dtype, device, layout="cl"):
        """The channels-last copy for ``dtype`` (None: float32) on ``device``, or None where the module runs as is."""
        import copy

        import torch

        if device.type != "cpu" or layout != "cl" or dtype not in (None, torch.bfloat16):
            return None
        if dtype not in self._fast:
            net = copy.deepcopy(self.module)
            for parent in list(net.modules()):
                for name, child in list(parent.named_children()):
                    if isinstance(child, torch.nn.InstanceNorm2d) and not child.track_running_stats:
                        setattr(parent, name, _instance_norm_as_group_norm(child))
            net = net.to(dtype=dtype or torch.float32).to(memory_format=torch.channels_last)
            self._fast[dtype] = net.eval().requires_grad_(False)
        return self._fast[dtype]


def _forward(generator, batch, dtype, layout="cl"):
    """Run the generator on a (N, 1, H, W) batch; autocast to ``dtype`` unless None; float32 out.

    ``generator`` is a module or an :class:`_InferenceModel` (which runs CPU bf16 through its
    fast copy, and CPU float32 through it where ``layout`` is "cl"). Kept as one small function
    so tests can replace the low-precision path.
    """
    import torch

    if isinstance(generator, _InferenceModel):
        if dtype is not None or layout == "cl":
            fast = generator.fast(dtype, batch.device, layout if dtype is None else "cl")
            if fast is not None:
                return fast(batch.to(dtype or torch.float32).contiguous(memory_format=torch.channels_last)).float()
        generator = generator.module
    if dtype is None:
        return generator(batch).float()
    with torch.autocast(device_type=batch.device.type, dtype=dtype):
        return generator(batch).float()


def model_frame(model):
    """The side of the square slices the model was trained on (the card's ``slice_size``).

    Why: training crops every slice to that square around the body and fills the rest with
    background (-1). The generators' instance normalisation makes their output depend on how
    much background a slice holds, so a slice whose anatomy fills its field of view (a head at
    the edge of its scan, on a coarse model grid) came out darker and thinner than training
    ever made it. Synthesis pads smaller slices with background up to this side
    (:func:`_pad_batch`), so each slice is seen as training saw it. Cards without the field
    keep the plain minimum.
    """
    card = getattr(model, "card", None) or {}
    try:
        side = int(card.get("slice_size") or 0)
    except (TypeError, ValueError):
        side = 0
    return max(_MIN_SIDE, side)


def _pad_amounts(n, frame=_MIN_SIDE):
    target = max(frame, _MIN_SIDE, -(-n // _MULTIPLE) * _MULTIPLE)
    extra = target - n
    return extra // 2, extra - extra // 2


def _pad_batch(slab, frame=_MIN_SIDE):
    """Pad (B, H, W) slices or (B, K, H, W) slabs to sides that are multiples of 4 and at least ``frame``.

    A slice smaller than the frame is filled with background (-1) around it, as training's crop
    fills it (:func:`model_frame`); a larger one is only rounded up, by reflection.
    """
    h, w = slab.shape[-2:]
    (t, b), (l, r) = _pad_amounts(h, frame), _pad_amounts(w, frame)
    if t == b == l == r == 0:
        return np.ascontiguousarray(slab, dtype=np.float32), (0, 0)
    reflect = min(h, w) >= max(frame, _MIN_SIDE)  # then each pad is at most 2 pixels, under the side
    widths = ((0, 0),) * (slab.ndim - 2) + ((t, b), (l, r))
    if reflect:
        padded = np.pad(slab, widths, mode="reflect")
    else:
        padded = np.pad(slab, widths, mode="constant", constant_values=-1.0)
    return np.ascontiguousarray(padded, dtype=np.float32), (t, l)


def _take(x, axis, s, e):
    """Slices s..e of ``x`` along ``axis`` as (B, H, W) (a view; no copy)."""
    if axis == 0:
        return x[s:e]
    if axis == 1:
        return x[:, s:e, :].transpose(1, 0, 2)
    return x[:, :, s:e].transpose(2, 0, 1)


def _take_slabs(x, s, e, context):
    """(B, K, H, W) copy of the axial slabs centred on slices s..e of ``x``, K = ``context``.

    Indices beyond the volume's ends are clamped to its first or last slice by the training
    sampler's own rule (:func:`dicyc.data.slab_indices`). A copy of one batch only: memory
    stays bounded by the batch, not by the volume.
    """
    from dicyc.data import slab_indices

    return x[slab_indices(np.arange(s, e), context, x.shape[0])]


#: how the K predictions of one slice are weighted (position j of K in the slab that predicted it)
CONTEXT_WEIGHTS = ("triangular", "uniform")


def context_weights(context, kind="triangular"):
    """Weights of the K slab positions: "triangular" (1, 2, …, h+1, …, 2, 1), "uniform" (all 1).

    Triangular trusts a slice most where it was the centre of its slab (context on both sides)
    and least where it was an edge channel; small integers keep the weighted mean of identical
    predictions exact.
    """
    if kind not in CONTEXT_WEIGHTS:
        raise DicycError(f"unknown context weighting {kind!r}; use {' or '.join(CONTEXT_WEIGHTS)}.")
    half = context // 2
    if kind == "uniform":
        return np.ones(context, dtype=np.float64)
    return np.array([half + 1 - abs(j - half) for j in range(context)], dtype=np.float64)


class _SlabAverage:
    """The weighted mean of every axial slice's overlapping predictions, written in place.

    A 2.5-D model predicts K slices per slab; slab c covers slices c-h … c+h (h = K//2), so each
    slice is predicted by the slabs of every centre within h of it (fewer at the volume's ends).
    Their weighted mean is what suppresses the slice-to-slice streaks of independent 2-D
    predictions. Why in place: the slabs that *read* slice z are exactly the slabs that *predict*
    it, so once slice z has its last prediction no slab will read it again and its mean can
    overwrite the normalised input, which keeps synthesis at one model-space volume (the 2-D path's
    memory). Sums of the slices still waiting are float64 and a few batches deep at most.
    """

    def __init__(self, out, context, weights):
        self.out, self.context, self.half = out, int(context), int(context) // 2
        self.weights = np.asarray(weights, dtype=np.float64)
        nz = out.shape[0]
        z = np.arange(nz)
        self.remaining = np.minimum(z, self.half) + np.minimum(nz - 1 - z, self.half) + 1
        self.pending = {}

    def add(self, s, e, result):
        """Add the (B, K, H, W) predictions of the slabs centred on s..e; finish the slices they complete."""
        nz = self.out.shape[0]
        for i, c in enumerate(range(s, e)):
            for j in range(self.context):
                z = c - self.half + j
                if not 0 <= z < nz:
                    continue  # a clamped copy of an end slice, predicted again from its own position
                total = self.pending.get(z)
                if total is None:
                    total = self.pending[z] = [np.zeros(result.shape[-2:], dtype=np.float64), 0.0]
                total[0] += self.weights[j] * result[i, j]
                total[1] += self.weights[j]
                self.remaining[z] -= 1
                if self.remaining[z] == 0:
                    values, weight = self.pending.pop(z)
                    self.out[z] = values / weight

    def done(self):
        return not self.pending and not self.remaining.any()


def _put(out, axis, s, e, result, accumulate):
    """Write (B, H, W) ``result`` back into ``out`` along ``axis``."""
    if axis == 0:
        target = out[s:e]
    elif axis == 1:
        target = out[:, s:e, :].transpose(1, 0, 2)
    else:
        target = out[:, :, s:e].transpose(2, 0, 1)
    if accumulate:
        target += result
    else:
        target[...] = result


def _psnr(a, b, data_range=2.0):
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10.0 * math.log10(data_range**2 / max(mse, 1e-20))


def _is_oom(exc):
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    text = str(exc).lower()
    return isinstance(exc, oom_type) or "out of memory" in text or "can't allocate memory" in text


_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def _precision_dtype(precision, device):
    """torch dtype for an explicit low precision, refusing what this device cannot autocast."""
    import torch

    dtype = getattr(torch, _DTYPES[precision])
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DicycError(f"--precision bf16 is not supported by this GPU ({torch.cuda.get_device_name(device)}); use fp16 or fp32.")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast(device_type=device.type, dtype=dtype):
                pass
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise DicycError(f"--precision {precision} is not supported on {device} by this torch ({exc}); use fp32.") from None
    if any("autocast" in str(w.message).lower() and "support" in str(w.message).lower() for w in caught):
        raise DicycError(f"--precision {precision} is not supported on {device} by this torch; use fp32.")
    return dtype


def _dtype_name(dtype):
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


class _Runner:
    """Runs views slice batch by slice batch; decides precision on the first batch for "auto".

    On a CPU in float32 it also decides *how* to run the generator, because the fastest way
    differs between CPUs: the channels-last copy (:meth:`_InferenceModel.fast`) at the full
    batch is fastest on AVX-512 Xeons, while an AVX2-only EPYC ran batches of 8 at 0.74x the
    speed of one slice at a time (its caches hold one slice's activations, not eight). The
    candidates (:meth:`_candidates`: channels-last at the full batch and at batch 1, and the
    module as trained at batch 1, i.e. the plain reference) are each run once to warm up, then
    timed in :data:`PROBE_ROUNDS` interleaved rounds, on the volume's own slices (no work is
    wasted: every candidate computes the same result, to float32 rounding). Each candidate's
    best round counts, and :func:`choose_path` keeps the reference unless another path is
    clearly faster. A steady probe (:func:`probe_is_steady`) is kept per machine, generator size
    and slice size in ``<cache>/probes.json`` (:func:`dicyc.device.probe_store`), so later
    syntheses skip it; an unsteady one, measured while other work loaded the CPU, decides this
    run only. ``DICYC_SYNTH_PATH`` (e.g. ``cl:8`` or ``nchw:1``) overrides it. ``batch`` is the
    largest batch used.
    """

    def __init__(self, generator, device, precision, batch, progress, total=0, cache=True, context=1,
                 weights="triangular", frame=_MIN_SIDE):
        self.generator, self.device, self.batch = _InferenceModel(generator), device, batch
        self.frame = int(frame)  # slices are padded with background to at least this side (model_frame)
        self.context = int(context)
        self.weights = context_weights(self.context, weights)
        self.average = None  # the 2.5-D slab average of the axial view (context > 1)
        self.progress, self.total, self.done = progress, total, 0
        self.precision = precision
        self.dtype = None  # decided before the first batch for explicit precisions, at it for auto
        self.probe_dtype = None
        self.psnr = None
        self.decided = False
        self.cache = cache
        self.layout = "nchw" if device.type != "cpu" else None  # None: decided once the precision is
        self.path_source = "device" if self.layout else None
        self.path_times = {}
        self.path_rounds = {}
        self.path_steady = None
        self._trials = None
        self._shape = None

    def decide_explicit(self):
        from dicyc.device import fast_low_precision

        if self.precision == "fp32":
            self.decided = True
        elif self.precision == "auto":
            self.probe_dtype = fast_low_precision(self.device)
            self.decided = self.probe_dtype is None
        else:
            self.dtype = _precision_dtype(self.precision, self.device)
            self.decided = True

    # ---- the CPU path: layout and batch size
    def _path_key(self):
        import torch

        arch = getattr(self.generator.module, "architecture", lambda: {})()
        size = f"{arch.get('generator')}-ngf{arch.get('ngf')}-b{arch.get('n_blocks')}-{arch.get('upsample')}"
        if self.context > 1:
            size += f"-c{self.context}"
        h, w = self._shape
        # "v2": choices cached by the earlier probe (one timing per candidate, no margin) are measured again
        return f"synthesis-fp32-path-v2|{size}|{h}x{w}|batch{self.batch}|threads{torch.get_num_threads()}"

    def _candidates(self):
        """(layout, batch, batches per timed trial) for the path probe, the default first."""
        out = [("cl", self.batch, 1)]
        if self.batch > 1:
            out.append(("cl", 1, 2))
        out.append(("nchw", 1, 2))
        return out

    def _decide_path(self, padded_shape):
        """Choose the layout for this run: fixed where only one makes sense, else override, cache or probe."""
        import os

        self._shape = tuple(padded_shape)
        if self.dtype is not None:  # bf16 runs its channels-last copy; fp16 runs autocast
            self.layout, self.path_source = ("cl", "low precision") if self.generator.fast(
                self.dtype, self.device) is not None else ("nchw", "low precision")
            return
        override = os.environ.get(PATH_ENV, "").strip()
        if override:
            self.layout, self.batch = _parse_path(override, self.batch)
            self.path_source = PATH_ENV
            return
        from dicyc.device import probe_lookup

        cached = probe_lookup(self._path_key()) if self.cache else None
        if cached:
            self.layout, self.batch = cached["layout"], min(int(cached["batch"]), self.batch)
            self.path_source = "cache"
            return
        self._trials = self._probe_plan()
        self.layout, self.path_source = "cl", "probe"  # until the probe has decided

    def _probe_plan(self):
        """The probe's batches: (layout, batch, timed, batches per trial), warm-ups first."""
        plan = [(layout, b, False, 1) for layout, b, _ in self._candidates()]
        for _ in range(PROBE_ROUNDS):
            plan += [(layout, b, True, n) for layout, b, n in self._candidates()]
        return plan

    def probe_slices(self):
        """Slices the CPU path probe runs before the chosen path takes over (0 where none runs)."""
        if self.device.type != "cpu":
            return 0
        return sum(b * n for _, b, _, n in self._probe_plan())

    def _finish_probe(self):
        from dicyc.device import probe_store

        complete = (len(self.path_rounds) == len(self._candidates())
                    and all(len(r) == PROBE_ROUNDS for r in self.path_rounds.values()))
        self._trials = None
        if not self.path_rounds:
            self.layout = "cl"
            return
        self.path_times = {k: min(r) for k, r in self.path_rounds.items()}
        key = self._path_key()  # the requested batch names the entry: a batch-1 winner must not rename it
        self.layout, self.batch = choose_path(self.path_times)
        self.path_steady = complete and probe_is_steady(self.path_rounds)
        # a probe cut short by a small volume, or unsteady under load, decides this run only
        if self.cache and self.path_steady:
            probe_store(key, {"layout": self.layout, "batch": self.batch,
                                           "seconds_per_slice": {f"{k[0]}:{k[1]}": v for k, v in self.path_times.items()}})

    def _next(self):
        """(layout, batch size, trial) for the next batch; ``trial`` is the probe's entry or None."""
        if self._trials:
            layout, b, timed, n = self._trials[0]
            return layout, b, self._trials[0]
        return self.layout, self.batch, None

    def _infer(self, slab, layout=None):
        """Generator output for (B, H, W) slices, or for (B, K, H, W) slabs of a 2.5-D model (same shape out)."""
        import torch

        padded, (top, left) = _pad_batch(slab, self.frame)
        h, w = slab.shape[-2:]
        batch = torch.from_numpy(padded if padded.ndim == 4 else padded[:, None]).to(self.device)
        del padded
        channels = 0 if slab.ndim == 3 else slice(None)
        y = _forward(self.generator, batch, self.dtype, layout or self.layout or "nchw")
        if not self.decided:
            low = _forward(self.generator, batch, self.probe_dtype)
            crop = (slice(None), channels, slice(top, top + h), slice(left, left + w))
            self.psnr = _psnr(low[crop], y[crop])
            if self.psnr >= PSNR_THRESHOLD_DB:
                self.dtype = self.probe_dtype
                y = low
            self.decided = True
        return y[:, channels, top : top + h, left : left + w].cpu().numpy()

    def run_range(self, x, out, axis, start, stop, accumulate):
        """Slices start..stop along ``axis``, ``self.batch`` at a time (halved on out-of-memory)."""
        import torch

        s = start
        while s < stop:
            if self.decided and self.layout is None:
                self._decide_path(self._padded_shape(x, axis))
            layout, size, trial = self._next()
            e = min(s + size * (trial[3] if trial else 1), stop)
            t0 = time.perf_counter()
            try:
                if self.context > 1:
                    result = self._infer(_take_slabs(x, s, e, self.context), layout)
                else:
                    result = self._infer(_take(x, axis, s, e), layout)
            except (RuntimeError, MemoryError) as exc:
                if not _is_oom(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.batch == 1:
                    raise DicycError(
                        f"synthesis ran out of {'GPU ' if self.device.type == 'cuda' else ''}memory on {self.device} "
                        "even one slice at a time; use --device cpu or a smaller input."
                    ) from None
                halved = max(1, self.batch // 2)
                if self._trials:  # a probe that ran out of memory stops at what it measured
                    self._finish_probe()
                self.batch = min(self.batch, halved)
                continue
            if trial is not None:
                self._trials.pop(0)
                if trial[2]:
                    self.path_rounds.setdefault((trial[0], trial[1]), []).append((time.perf_counter() - t0) / (e - s))
                if not self._trials:
                    self._finish_probe()
            if self.context > 1:
                self.average.add(s, e, result)
            else:
                _put(out, axis, s, e, result, accumulate)
            del result
            self.done += e - s
            if self.progress is not None:
                self.progress(self.done, self.total)
            s = e

    def _padded_shape(self, x, axis):
        """(H, W) of this view's slices after padding (multiples of 4, at least the model's frame)."""
        shape = [n for i, n in enumerate(x.shape) if i != axis]
        return tuple(sum(_pad_amounts(n, self.frame)) + n for n in shape)

    def path_info(self):
        """How the generator ran: layout, batch, where the choice came from, the probe's seconds per slice."""
        return {"layout": self.layout or "nchw", "batch": self.batch, "source": self.path_source,
                "seconds_per_slice": {f"{k[0]}:{k[1]}": v for k, v in self.path_times.items()} or None,
                "rounds": {f"{k[0]}:{k[1]}": v for k, v in self.path_rounds.items()} or None,
                "steady": self.path_steady}

    def finish_probe(self):
        """Decide from what the path probe measured so far (a view shorter than the probe)."""
        if self._trials:
            self._finish_probe()

    def run_view(self, x, out, axis, accumulate):
        if self.context > 1:  # 2.5-D: axial slabs, each slice's predictions averaged into ``out`` (which is ``x``)
            if axis != 0 or accumulate or out is not x:
                raise RuntimeError("a 2.5-D model runs the axial view alone, in place")
            self.average = _SlabAverage(out, self.context, self.weights)
        n = x.shape[axis]
        if self.decided:
            self.run_range(x, out, axis, 0, n, accumulate)
            return
        # the precision probe runs on the middle batch, where the body is, not on empty end slices
        middle = max(0, min(n - self.batch, n // 2 - self.batch // 2))
        self.run_range(x, out, axis, middle, n, accumulate)
        self.run_range(x, out, axis, 0, middle, accumulate)


def _blank_slices(x):
    """Boolean per axial slice of the model-grid input ``x`` (z, y, x): one value throughout.

    Why: a blank slice holds no signal, and training never draws one (the sampler takes body
    slices only). What a generator returns for it comes from its zero-padded borders, which
    instance normalisation then blows up to full contrast: the head benchmark found 12 to 13 ml
    of such "density" in the six blank slices above Colin27's vertex, most of DiCyc's
    hallucinated head-rest. A slice with any variation at all, noise included, is left to the
    generator.
    """
    flat = x.reshape(x.shape[0], -1)
    return flat.min(axis=1) == flat.max(axis=1)


def synthesize_volume_with_info(
    model,
    volume,
    direction="a2b",
    device="auto",
    precision="auto",
    batch=8,
    views=("axial",),
    progress=None,
    expect_target=None,
    mask_background=True,
    name="the input volume",
    context_weighting="triangular",
):
    """Synthesise the other domain from ``volume``; returns ``(Volume, info)``.

    ``info``: {"precision": "fp32"|"bf16"|"fp16", "device", "psnr_low_vs_fp32" (the "auto"
    probe, else None), "slices" (2-D slices run, all views), "seconds", "batch" (after any
    out-of-memory halving), "views", "model_grid" (z, y, x), "direction", "warnings"}.

    ``views`` other than axial run the same 2-D generator on coronal/sagittal slices of an
    isotropic model grid and average the results: this reduces slice-to-slice flicker, but the
    model was trained on axial slices only, so those views are an approximation.
    A 2.5-D model (card ``context_slices`` K > 1) runs on the slab of K neighbouring axial
    slices centred on each slice (clamped at the ends, as in training) and predicts all K of
    them; each slice's up to K predictions are averaged, weighted by ``context_weighting``
    (:func:`context_weights`: "triangular", the default, trusts the centre most, or "uniform"),
    in place as the last prediction of a slice arrives (:class:`_SlabAverage`). It runs as
    many generator passes as a 2-D model, whose first and last convolutions are the only
    wider ones, and holds no more memory.
    ``progress(done, total)`` counts slices and is called after every batch.
    ``mask_background`` sets voxels outside the input's body mask to the target background
    (-1024 HU for CT) rather than whatever the generator hallucinated in the air. Blank axial
    slices (one value throughout, such as the empty slab above a head in an MNI-space volume)
    become the target background either way (:func:`_blank_slices`); ``info["blank_slices"]``
    counts them on the model grid.

    Memory: besides the input, one model-space float32 volume is alive during single-view
    inference (each batch's results overwrite its own normalised input slices), two with
    several views (normalised input, output accumulator), plus a boolean body mask and one
    batch on the device; resampling back needs the model-space output plus the final float32
    result. Short-lived extra copies come from the body mask and the MR percentiles (model
    space); the body mask's connected-component labels are the peak (``dicyc bench speed``
    measures about 2.5 float32 copies beyond an int16 input when no resampling is needed).
    """
    import torch

    from dicyc.device import resolve_device

    t0 = time.perf_counter()
    _check_direction(direction)
    views = _check_options(precision, batch, views)
    if not isinstance(volume, Volume):
        raise DicycError(f"{name} is not a 3-D volume.")
    check_finite_values(volume, name)
    check_not_constant(volume, name)
    model_name = _model_name(model)
    src, tgt = _domains(model, direction)
    check_target(model, direction, expect_target)
    context = model_context(model, views)
    spacing_xy = _model_spacing(model)
    tgt_norm = target_normalization(tgt, model_name)
    dev = resolve_device(device)
    runner = _Runner(model.generator(direction).to(dev).eval(), dev, precision, batch, progress, context=context,
                     weights=context_weighting, frame=model_frame(model))
    runner.decide_explicit()  # an unsupported --precision fails before any heavy work
    notes = _modality_warnings(volume.array, src)
    for note in notes:
        warnings.warn(note, stacklevel=2)

    # ---- model space: owned float32, resampled in-plane (and in z for other views), in the
    # canonical orientation the model was trained in (axial slices, one in-plane orientation)
    work, axes = to_canonical(volume)
    isotropic = views != ("axial",)
    spacing, size, origin = _model_grid(work, spacing_xy, isotropic)
    resampled = spacing != work.spacing
    if resampled:
        default = float(work.array.min())
        x = resample_slabs(work.array, work.spacing, work.origin, work.direction, size[::-1], spacing, origin, default)
    else:
        x = work.array.astype(np.float32, copy=True)
    blank = _blank_slices(x)
    mask = None
    if mask_background or (src.get("normalization") or {}).get("kind") != "ct-window":
        mask = body_mask(Volume(x, spacing, origin, work.direction))
        if not mask.any():
            mask = None
    norm = source_normalization(src, x, mask, model_name)
    _normalize_inplace(x, norm)

    # ---- inference: one view writes each batch's results over its own input slices (a batch
    # is read whole before it is written, and no other batch reads those slices), which saves
    # a whole float32 volume; several views read every slice once per view, so they
    # accumulate into a separate array
    out = x if len(views) == 1 else np.zeros(x.shape, dtype=np.float32)
    total = runner.total = sum(x.shape[_VIEW_AXIS[v]] for v in views)
    with torch.inference_mode():
        for i, view in enumerate(views):
            runner.run_view(x, out, _VIEW_AXIS[view], accumulate=i > 0)
    runner.finish_probe()
    if runner.average is not None and not runner.average.done():  # every slice gets its last prediction
        raise RuntimeError("the 2.5-D slab average left slices unfinished")
    del x
    if len(views) > 1:
        out /= np.float32(len(views))
    np.clip(out, -1.0, 1.0, out=out)
    out[blank] = -1.0  # whatever the background choice: no signal, nothing to translate
    if mask_background and mask is not None:
        out[~mask] = -1.0
    del mask
    _denormalize_inplace(out, tgt_norm)
    model_grid = out.shape

    # ---- back onto the input's exact grid
    if resampled:
        background = float(tgt_norm.low)
        result = resample_slabs(out, spacing, origin, work.direction, work.shape, work.spacing, work.origin, background)
        del out
    else:
        result = out
    result = np.ascontiguousarray(from_canonical_array(result, axes))  # exact: permutes and flips only
    if result.shape != volume.shape:  # the sitk grid is built from the input size, so this is a bug
        raise RuntimeError(f"synthesis produced shape {result.shape} for an input of shape {volume.shape}")
    synthetic = Volume(result, volume.spacing, volume.origin, volume.direction.copy())
    info = {
        "precision": _dtype_name(runner.dtype),
        "device": str(dev),
        "psnr_low_vs_fp32": runner.psnr,
        "slices": total,
        "seconds": time.perf_counter() - t0,
        "batch": runner.batch,
        "path": runner.path_info(),
        "views": list(views),
        "context_slices": context,
        "blank_slices": int(blank.sum()),
        "model_grid": list(model_grid),
        "direction": direction,
        "warnings": notes,
    }
    return synthetic, info


def synthesize_volume(model, volume, direction="a2b", device="auto", precision="auto", batch=8, views=("axial",),
                      progress=None, **kw):
    """Synthesise the other domain from ``volume`` on its exact grid (see :func:`synthesize_volume_with_info`)."""
    return synthesize_volume_with_info(
        model, volume, direction=direction, device=device, precision=precision, batch=batch, views=views,
        progress=progress, **kw
    )[0]


def synthesize_file(model_path, input_path, output_path, direction="a2b", device="auto", precision="auto", batch=8,
                    views=("axial",), progress=None, expect_target=None, mask_background=True, overwrite=False):
    """Read ``input_path``, synthesise, write ``output_path`` atomically; returns the info dict.

    Everything cheap is checked before the heavy work, and nothing is written unless the
    whole synthesis succeeded (and the written file checked). Problems raise
    :class:`DicycError` naming the file. An existing folder at ``output_path`` is replaced by
    the DICOM series only if DiCyc wrote it, it is empty, or ``overwrite``.
    """
    from dicyc.device import resolve_device
    from dicyc.modelfile import load_model
    from dicyc.volume import check_output_path, read_volume, write_volume

    _check_direction(direction)
    _check_options(precision, batch, views)
    # an unknown extension, a folder of the user's files or a read-only place fail now, not after minutes of work
    check_output_path(output_path, overwrite=overwrite)
    dev = resolve_device(device)
    model = load_model(model_path, device=dev)
    check_target(model, direction, expect_target)
    model_context(model, _check_options(precision, batch, views))  # a 2.5-D model with other views fails before the volume is read
    if direction not in getattr(model, "directions", DIRECTIONS):
        src, tgt = _domains(model, direction)
        raise DicycError(
            f"{model_path} holds no generator for {direction} ({_label(src)} to {_label(tgt)}); "
            f"it has {', '.join(model.directions) or 'none'}."
        )
    volume = read_volume(input_path)
    synthetic, info = synthesize_volume_with_info(
        model, volume, direction=direction, device=dev, precision=precision, batch=batch, views=views,
        progress=progress, mask_background=mask_background, name=str(input_path),
    )
    del volume
    # the target modality goes into the file's header, so a later compare/evaluate against the
    # source knows the two are different modalities (dicyc.modality)
    target = (_domains(model, direction)[1] or {}).get("modality")
    try:
        written = write_volume(synthetic, output_path, modality=_recordable_modality(target), overwrite=overwrite)
    except OSError as exc:
        raise DicycError(f"could not write {output_path}: {exc.strerror or exc}.") from None
    info.update({"input": str(input_path), "output": str(written), "model": str(Path(model_path))})
    return info
