"""Unpaired 2-D slice data for training: listing, preprocessing cache, sampling, augmentation.

Why it is shaped like this:

* Every volume is preprocessed once (in-plane resampling, body mask, normalisation to [-1, 1],
  crop/pad around the body) and cached as a float16 ``.npy`` that training opens memory-mapped:
  a run never holds every volume in RAM and never decompresses a ``.nii.gz`` per slice.
* The cache key hashes the source file's identity (path, size, mtime) and every parameter, so a
  changed file or setting is prepared again and a stale array is never used.
* Unpaired methods draw A and B slices independently; the samplers add the seed papers' options
  (same patient per minibatch, position-matched slices after Yang et al. 2018) and are
  reproducible and resumable from a JSON-serialisable state.
* Augmentation is one affine warp per sample, applied alike for every method so that method
  comparisons differ only in the method.

torch is imported inside the functions that need it: listing and preparing data work without it.
"""

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicyc.atomic import atomic_path, write_text
from dicyc.errors import DicycError
from dicyc.volume import IMAGE_EXTENSIONS

#: Bump when the preprocessing changes, so old cache entries are never reused.
CACHE_VERSION = 2

#: Fraction of the slice area the body must cover for a slice to be drawn.
BODY_FRACTION = 0.01

#: Per-volume MR normalisation parameters (recorded in the model card to redo it on new volumes).
MR_PERCENTILES = (0.5, 99.5)
MR_K = 3.0

LIST_EXTENSIONS = (".txt", ".lst")

_SLAB = 32  # slices normalised at a time: bounds float32 temporaries for big volumes


# ===================================================================== listing
def _is_image_file(path):
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(IMAGE_EXTENSIONS)


def _dicom_series_ids(folder):
    import SimpleITK as sitk

    from dicyc.itklog import itk_messages

    with itk_messages():  # GDCM's notes on the non-DICOM files it meets are not for the user's terminal
        try:
            return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())
        except RuntimeError:
            return ()


def _list_folder(folder):
    """Image files in ``folder`` plus DICOM series (the folder itself or its subfolders)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    out = []
    # DICOM slices are one volume together, not one each: if the folder is itself a series,
    # it stands for its .dcm / extension-less files.
    maybe_dicom = [p for p in files if p.name.lower().endswith(".dcm") or "." not in p.name]
    own_series = bool(maybe_dicom) and bool(_dicom_series_ids(folder))
    if own_series:
        out.append(folder)
    for p in files:
        if _is_image_file(p) and not (own_series and p.name.lower().endswith(".dcm")):
            out.append(p)
    for p in entries:
        if p.is_dir() and _dicom_series_ids(p):
            out.append(p)
    return sorted(out)


def _list_file(list_path, seen):
    out = []
    base = list_path.parent
    try:
        text = list_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DicycError(f"{list_path} is not a text file of volume paths (one per line).") from None
    except OSError as exc:
        raise DicycError(f"{list_path} cannot be read: {exc.strerror or exc}.") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line).expanduser()
        if not entry.is_absolute():
            entry = base / entry
        if not entry.exists():
            raise DicycError(f"{list_path} line {number} names {line}, which does not exist.")
        out.extend(_list_spec(entry, seen))
    if not out:
        raise DicycError(f"{list_path} holds no image volumes (every line is blank or a comment).")
    return out


def _list_spec(spec, seen):
    if isinstance(spec, (list, tuple)):
        out = []
        for item in spec:
            out.extend(_list_spec(item, seen))
        return out
    path = Path(os.fspath(spec)).expanduser()
    if not path.exists():
        raise DicycError(f"{path} does not exist.")
    if path.is_dir():
        found = _list_folder(path)
        if not found:
            raise DicycError(f"{path} holds no image volumes (NIfTI, NRRD, MHA/MHD, DICOM).")
        return found
    if path.suffix.lower() in LIST_EXTENSIONS:
        key = path.resolve()
        if key in seen:
            raise DicycError(f"{path} includes itself (directly or through another list file).")
        return _list_file(path, seen | {key})
    return [path]


def list_volumes(spec):
    """Volumes named by ``spec``: a file, a folder, a ``.txt``/``.lst`` list file, or a list of these.

    A folder gives its image files (by extension, sorted) and the DICOM series in it or in its
    subfolders; a list file gives one path per line (relative to the list file's folder; blank
    lines and ``#`` comments skipped). Raises :class:`DicycError` naming the path at fault.
    """
    if isinstance(spec, (list, tuple)) and not spec:
        raise DicycError("no volumes were given (an empty list).")
    return _list_spec(spec, frozenset())


# ===================================================================== preparing
def _source_identity(path):
    """(size, mtime_ns) of a file, or of a DICOM folder's files together."""
    st = path.stat()
    if not path.is_dir():
        return int(st.st_size), int(st.st_mtime_ns)
    size, mtime = 0, int(st.st_mtime_ns)
    for p in path.iterdir():
        if p.is_file():
            s = p.stat()
            size += int(s.st_size)
            mtime = max(mtime, int(s.st_mtime_ns))
    return size, mtime


def _is_ct(modality):
    return str(modality).upper() == "CT"


def _cache_key(path, modality, spacing, slice_size, mr_method):
    size, mtime = _source_identity(path)
    fields = [
        str(path.resolve()),
        size,
        mtime,
        str(modality).upper(),
        [float(s) for s in spacing],
        int(slice_size),
        None if _is_ct(modality) else str(mr_method),  # CT ignores it: don't invalidate CT caches
        CACHE_VERSION,
    ]
    return hashlib.sha1(json.dumps(fields).encode("utf-8")).hexdigest()


def _cache_stem(path, key):
    name = path.name
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40] or "volume"
    return f"{name}-{key}"


def _normalization_dict(norm):
    d = norm.to_dict()
    if norm.kind == "mr-percentile":
        d["percentiles"] = list(MR_PERCENTILES)
    elif norm.kind == "mr-meanstd":
        d["k"] = MR_K
    return d


def _centroid_yx(mask):
    """Body-mask centroid (y, x) from its projections: no index arrays of the whole volume."""
    py = mask.sum(axis=(0, 2), dtype=np.int64)
    px = mask.sum(axis=(0, 1), dtype=np.int64)
    total = py.sum()
    if total == 0:
        return None
    return float((py * np.arange(py.size)).sum() / total), float((px * np.arange(px.size)).sum() / total)


def _no_body(path):
    return DicycError(f"{path} has no slice with body in it (is it empty or all background?).")


def _resample_in_plane(vol, spacing):
    """Linear in-plane resampling, a slab of slices at a time (slices stay where they are).

    Slab by slab, a big CT never needs a full float32 copy beside the source and the result.
    """
    from dicyc.preprocess import resample_to_spacing
    from dicyc.volume import Volume

    default = float(vol.array.min())
    array = first = None
    for z0 in range(0, vol.shape[0], _SLAB):
        origin = np.asarray(vol.origin) + vol.direction @ np.array([0.0, 0.0, z0 * vol.spacing[2]])
        slab = Volume(vol.array[z0 : z0 + _SLAB], vol.spacing, tuple(origin), vol.direction)
        part = resample_to_spacing(slab, spacing, interpolation="linear", default_value=default)
        if array is None:
            first = part
            array = np.empty((vol.shape[0],) + part.shape[1:], dtype=part.array.dtype)
        array[z0 : z0 + part.shape[0]] = part.array
    return Volume(array, first.spacing, first.origin, first.direction)


def preprocess_volume(path, modality, spacing, slice_size, mr_method="percentile"):
    """One volume → (float16 array (z, S, S) in [-1, 1], sidecar dict): exactly what training sees.

    Canonical orientation, in-plane resampling, normalisation, crop/pad around the body. Frees as
    it goes. The sidecar records the crop (``crop``, ``body_centroid_yx``) and the body slices.
    """
    from dicyc.preprocess import body_mask, crop_pad_axial, mr_normalization, normalization_for, to_canonical
    from dicyc.volume import check_not_constant, read_volume

    vol = read_volume(path)  # refuses 2-D, 4-D, colour, NaN/Inf
    check_not_constant(vol, path)
    # axial slices in one in-plane orientation for every volume, whatever the acquisition
    vol = to_canonical(vol)[0]
    source = {"shape": list(vol.shape), "spacing": list(vol.spacing)}
    target = (float(spacing[0]), float(spacing[1]), vol.spacing[2])
    if not np.allclose(vol.spacing, target, rtol=1e-6, atol=1e-6):
        vol = _resample_in_plane(vol, target)
    mask = body_mask(vol)
    center = _centroid_yx(mask)
    if center is None:
        raise _no_body(path)
    mask_crop, crop = crop_pad_axial(mask, slice_size, center=center, fill=False)
    counts = mask_crop.sum(axis=(1, 2))
    body = np.nonzero(counts >= BODY_FRACTION * slice_size * slice_size)[0]
    if body.size == 0:
        raise _no_body(path)
    del mask_crop
    if _is_ct(modality):
        norm = normalization_for(modality, vol, mask)
    else:
        norm = mr_normalization(vol.array, mask=mask, method=mr_method, percentiles=MR_PERCENTILES, k=MR_K)
    del mask
    arr = vol.array
    out = np.empty((arr.shape[0], slice_size, slice_size), dtype=np.float16)
    for z0 in range(0, arr.shape[0], _SLAB):
        slab = norm.forward(arr[z0 : z0 + _SLAB])
        out[z0 : z0 + _SLAB] = crop_pad_axial(slab, slice_size, center=center, fill=-1.0)[0]
    meta = {
        "cache_version": CACHE_VERSION,
        "source": str(Path(path).resolve()),
        "modality": str(modality),
        "mr_method": None if _is_ct(modality) else str(mr_method),
        "source_shape": source["shape"],
        "source_spacing": source["spacing"],
        "spacing": [float(s) for s in vol.spacing],
        "slice_size": int(slice_size),
        "normalization": _normalization_dict(norm),
        "body_slices": [int(k) for k in body],
        "body_centroid_yx": [float(c) for c in center],
        "crop": crop.to_dict(),
        "shape": list(out.shape),
    }
    return out, meta


def _load_cached(npy, sidecar, slice_size):
    """The cached (memmap, meta) or None when missing or unreadable (then it is rebuilt)."""
    if not (npy.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("cache_version") != CACHE_VERSION or list(arr.shape) != meta.get("shape") or arr.shape[1:] != (
        slice_size,
        slice_size,
    ):
        return None
    return arr, meta


@dataclass
class DomainData:
    """One image domain's preprocessed volumes, memory-mapped from the cache.

    ``volumes[i]`` is a read-only float16 memmap (z, S, S) in [-1, 1] (background -1);
    ``body_slices[i]`` the slice indices that may be drawn.
    """

    modality: str
    volumes: list
    body_slices: list
    normalizations: list
    sources: list
    crops: list
    spacing: tuple
    slice_size: int
    mr_method: str = "percentile"

    @property
    def n_slices(self):
        """Total number of body slices (the slices that training draws from)."""
        return int(sum(len(b) for b in self.body_slices))

    def __len__(self):
        return len(self.volumes)

    @classmethod
    def prepare(cls, paths, modality, spacing, slice_size, cache_dir, log=None, mr_method="percentile"):
        """Preprocess (or reuse from ``cache_dir``) every volume named by ``paths``.

        ``paths`` is anything :func:`list_volumes` accepts; ``spacing`` the in-plane (x, y) mm
        (a single number for both); each volume keeps its own slice spacing. ``log`` gets one
        line per volume ("prepared" or "cached").
        """
        from dicyc.preprocess import CropPad, Normalization

        if np.ndim(spacing) == 0:
            spacing = (float(spacing), float(spacing))
        spacing = tuple(float(s) for s in spacing)[:2]
        if len(spacing) != 2 or min(spacing) <= 0:
            raise DicycError(f"the training spacing must be two positive numbers (x, y mm); got {spacing}.")
        slice_size = int(slice_size)
        if slice_size < 4:
            raise DicycError(f"the slice size must be at least 4 pixels; got {slice_size}.")
        if not _is_ct(modality) and mr_method not in ("percentile", "meanstd"):
            raise DicycError(f"unknown MR normalisation {mr_method!r}; use 'percentile' or 'meanstd'.")
        from dicyc.atomic import prepare_folder

        cache_dir = prepare_folder(Path(cache_dir).expanduser(), "preprocessing cache folder")
        log = log or (lambda message: None)
        volumes, bodies, norms, sources, crops = [], [], [], [], []
        for path in list_volumes(paths):
            key = _cache_key(path, modality, spacing, slice_size, mr_method)
            stem = _cache_stem(path, key)
            npy, sidecar = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
            cached = _load_cached(npy, sidecar, slice_size)
            if cached is None:
                arr, meta = preprocess_volume(path, modality, spacing, slice_size, mr_method)
                with atomic_path(npy) as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, arr)
                del arr
                # the sidecar is written last: its presence marks a complete entry
                write_text(sidecar, json.dumps(meta, indent=1))
                cached = _load_cached(npy, sidecar, slice_size)
                if cached is None:
                    raise DicycError(f"the preprocessing cache {npy} could not be read back after writing it.")
                log(f"{path}: prepared ({len(meta['body_slices'])} body slices)")
            else:
                log(f"{path}: cached")
            arr, meta = cached
            volumes.append(arr)
            bodies.append(np.asarray(meta["body_slices"], dtype=np.int64))
            norms.append(Normalization.from_dict(meta["normalization"]))
            sources.append(Path(meta["source"]))
            crop = meta["crop"]
            crops.append(CropPad(tuple(crop["in_shape"]), crop["size"], crop["y0"], crop["x0"]))
        return cls(str(modality), volumes, bodies, norms, sources, crops, spacing, slice_size, mr_method)

    def normalization_summary(self):
        """The model card's ``normalization`` entry for this domain (enough to invert and to redo)."""
        from dicyc.preprocess import ct_normalization

        if _is_ct(self.modality):
            return ct_normalization().to_dict()
        low = float(np.mean([n.low for n in self.normalizations]))
        high = float(np.mean([n.high for n in self.normalizations]))
        if self.mr_method == "meanstd":
            return {"kind": "mr-meanstd", "k": MR_K, "low": low, "high": high}
        return {"kind": "mr-percentile", "percentiles": list(MR_PERCENTILES), "low": low, "high": high}


# ===================================================================== sampling
SAMPLING_MODES = ("random", "same-patient", "position")


class _Index:
    """Flat arrays over one domain's body slices, for vectorised drawing."""

    def __init__(self, data):
        self.data = data
        self.counts = np.array([len(b) for b in data.body_slices], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.vol = np.repeat(np.arange(len(self.counts)), self.counts)
        self.slice = np.concatenate([np.asarray(b, dtype=np.int64) for b in data.body_slices])
        self.pos = np.concatenate([np.arange(n) for n in self.counts]).astype(np.int64)
        self.total = int(self.counts.sum())

    def gather(self, vols, slices, context=1):
        """Batch (N, K, S, S) float32, K = ``context``: slab n holds slices ``slices[n]`` - K//2 …
        ``slices[n]`` + K//2 of volume ``vols[n]``, clamped to the volume's first and last slice.

        Why clamped: synthesis builds its end slabs the same way (:mod:`dicyc.synthesize`), so a
        network never meets at synthesis an edge it was not trained on; the drawn centre slices
        are body slices, and their neighbours may be any slice of the same volume. Each memmap is
        fancy-indexed once, on the sorted distinct slices its slabs need.
        """
        s = self.data.slice_size
        out = np.empty((len(vols), int(context), s, s), dtype=np.float32)
        for v in np.unique(vols):
            volume = self.data.volumes[int(v)]
            sel = np.nonzero(vols == v)[0]
            wanted = slab_indices(slices[sel], context, volume.shape[0])
            unique, inverse = np.unique(wanted.ravel(), return_inverse=True)
            out[sel] = volume[unique][inverse.reshape(wanted.shape)]
        return out


def slab_indices(centres, context, length):
    """(N, K) slice indices of the slabs centred on ``centres``, K = ``context``, clamped to 0 … length-1.

    Training (:meth:`_Index.gather`) and synthesis (:func:`dicyc.synthesize._take_slabs`) build
    slabs with this one rule, so a network never meets at synthesis an edge it was not trained on.
    """
    half = int(context) // 2
    steps = np.arange(-half, half + 1, dtype=np.int64)
    return np.clip(np.asarray(centres, dtype=np.int64)[:, None] + steps[None, :], 0, int(length) - 1)


def valid_context_slices(value):
    """Whether ``value`` can be a ``context_slices``: a whole number, odd and at least 1.

    Odd, because a slab is a centre slice with as many neighbours above as below it: the centre
    is the slice a drawn index names, and synthesis averages the slabs around each slice. The one
    rule behind the training option (:func:`check_context_slices`) and the model card's field
    (:func:`dicyc.modelfile.check_card`).
    """
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1 and value % 2 == 1


def check_context_slices(value):
    """``context_slices`` as an int, refused in one sentence unless :func:`valid_context_slices`."""
    if not valid_context_slices(value):
        raise DicycError(f"context_slices must be an odd whole number of at least 1 (1, 3, 5, …); got {value!r}.")
    return int(value)


class UnpairedSampler:
    """Endless iterator of unpaired ``(a, b)`` float32 tensor batches (N, K, S, S).

    K = ``context_slices`` (1: single slices; 3: each sample is a slab of a drawn body slice
    and its two neighbours in the same volume, as channels, for 2.5-D networks). Every mode
    below draws the centre slices; the neighbours come with them (:meth:`_Index.gather`).

    Modes: ``"random"`` (uniform over all body slices, A and B independent); ``"same-patient"``
    (a minibatch's A slices come from one volume and its B slices from one volume, the volume
    drawn in proportion to its body slices); ``"position"`` (Yang et al. 2018: each B slice sits
    at the A slice's relative position within the body-slice range of a random B volume, ± up
    to ``offset`` slices). Ranks of a distributed run draw independent streams of the same seed.
    """

    def __init__(self, data_a, data_b, batch_size, mode="random", offset=5, seed=0, rank=0, world_size=1,
                 context_slices=1):
        context_slices = check_context_slices(context_slices)
        if mode not in SAMPLING_MODES:
            raise DicycError(f"unknown sampling mode {mode!r}; use one of {', '.join(SAMPLING_MODES)}.")
        if data_a.slice_size != data_b.slice_size:
            raise DicycError(
                f"the two domains have different slice sizes ({data_a.slice_size} and {data_b.slice_size})."
            )
        if int(batch_size) < 1:
            raise DicycError(f"the batch size must be at least 1; got {batch_size}.")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        self.a, self.b = _Index(data_a), _Index(data_b)
        for name, index in (("A", self.a), ("B", self.b)):
            if index.total == 0:
                raise DicycError(f"domain {name} has no body slices to train on.")
        self.batch_size = int(batch_size)
        self.mode = mode
        self.offset = max(0, int(offset))
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.context_slices = context_slices
        self.batches_drawn = 0

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        (va, sa), (vb, sb) = self.draw_indices()
        k = self.context_slices
        return torch.from_numpy(self.a.gather(va, sa, k)), torch.from_numpy(self.b.gather(vb, sb, k))

    def _batch_rng(self, t):
        """Batch ``t``'s generator: a pure function of (seed, rank, t).

        Why not one running generator: the state then is just the batch count, the same on every
        rank, so a resumed distributed run can hand rank 0's state to all ranks. ``spawn_key``
        keeps ranks independent (``seed + rank`` would make (seed 1, rank 0) repeat (seed 0, rank 1)).
        """
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.rank, int(t))))

    @staticmethod
    def _uniform(rng, index, n):
        return rng.integers(0, index.total, size=n)

    @staticmethod
    def _one_volume(rng, index, n):
        v = int(rng.choice(len(index.counts), p=index.counts / index.total))
        count = int(index.counts[v])
        local = rng.choice(count, size=n, replace=count < n)
        return index.starts[v] + local

    def draw_indices(self):
        """The next batch as ((A volumes, A slices), (B volumes, B slices)) index arrays."""
        n = self.batch_size
        rng = self._batch_rng(self.batches_drawn)
        if self.mode == "random":
            fa, fb = self._uniform(rng, self.a, n), self._uniform(rng, self.b, n)
        elif self.mode == "same-patient":
            fa, fb = self._one_volume(rng, self.a, n), self._one_volume(rng, self.b, n)
        else:
            fa = self._uniform(rng, self.a, n)
            na = self.a.counts[self.a.vol[fa]]
            p = np.where(na > 1, self.a.pos[fa] / np.maximum(na - 1, 1), 0.5)
            vb = rng.integers(0, len(self.b.counts), size=n)
            nb = self.b.counts[vb]
            j = np.rint(p * (nb - 1)).astype(np.int64) + rng.integers(-self.offset, self.offset + 1, size=n)
            j = np.clip(j, 0, nb - 1)
            fb = self.b.starts[vb] + j
        self.batches_drawn += 1
        return (self.a.vol[fa], self.a.slice[fa]), (self.b.vol[fb], self.b.slice[fb])

    def state_dict(self):
        """JSON-serialisable state: a resumed run continues the identical stream."""
        return {"version": 1, "mode": self.mode, "seed": self.seed, "rank": self.rank, "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state):
        """Continue from :meth:`state_dict`'s output (also after a JSON round trip).

        Any rank's state fits every rank (ranks draw in step): each keeps its own rank's stream.
        """
        if int(state.get("version", 0)) != 1 or "batches_drawn" not in state:
            raise ValueError("not a DiCyc sampler state (version 1)")
        self.seed = int(state["seed"])
        self.batches_drawn = int(state["batches_drawn"])


# ===================================================================== augmentation
AUGMENT_DEFAULTS = {"flip": 0.5, "rotate_deg": 10.0, "shear": 0.1, "translate": 0.05, "scale": (0.9, 1.1)}


def _augment_config(cfg):
    if cfg is None:
        return dict(AUGMENT_DEFAULTS)
    if cfg is False:
        return None
    if not isinstance(cfg, dict):
        raise DicycError(f"the augmentation setting must be a dict, null or false; got {cfg!r}.")
    unknown = sorted(set(cfg) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise DicycError(
            f"unknown augmentation setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"the settings are {', '.join(AUGMENT_DEFAULTS)}."
        )
    out = dict(AUGMENT_DEFAULTS)
    out.update(cfg)
    scale = out["scale"]
    scale = (float(scale), float(scale)) if np.ndim(scale) == 0 else tuple(float(s) for s in scale)
    if len(scale) != 2 or min(scale) <= 0:
        raise DicycError(f"augmentation 'scale' must be [low, high] > 0; got {out['scale']!r}.")
    out["scale"] = scale
    if not (out["flip"] or out["rotate_deg"] or out["shear"] or out["translate"] or scale != (1.0, 1.0)):
        return None
    return out


def augment(batch, generator=None, cfg=None):
    """Random per-sample flip, rotation, shear, translation and scaling of a (N, C, H, W) batch.

    The seed papers (CycleGAN-family synthesis, DiCyc) augment the training slices of every
    method alike, so comparisons measure the method, not the augmentation. Each sample gets one
    affine matrix (``affine_grid`` + bilinear ``grid_sample``), applied alike to all its
    channels, so the neighbouring slices of a 2.5-D slab stay aligned with each other; pixels
    brought in from outside are the background value -1. ``generator`` (a CPU ``torch.Generator``) makes it
    reproducible. ``cfg`` overrides :data:`AUGMENT_DEFAULTS` (``flip`` probability,
    ``rotate_deg`` ±, ``shear`` ±, ``translate`` ± fraction of the size, ``scale`` [low, high]);
    ``False`` or all-zero ranges return the batch unchanged.
    """
    import torch
    import torch.nn.functional as F

    cfg = _augment_config(cfg)
    if cfg is None:
        return batch
    n, _, h, w = batch.shape
    u = torch.rand((n, 6), generator=generator, dtype=torch.float64)
    sym = u * 2.0 - 1.0
    flip = torch.where(u[:, 0] < float(cfg["flip"]), -1.0, 1.0).to(torch.float64)
    angle = sym[:, 1] * np.deg2rad(float(cfg["rotate_deg"]))
    shear = sym[:, 2] * float(cfg["shear"])
    tx = sym[:, 3] * 2.0 * float(cfg["translate"])  # normalised coordinates span 2
    ty = sym[:, 4] * 2.0 * float(cfg["translate"])
    lo, hi = cfg["scale"]
    scale = lo + u[:, 5] * (hi - lo)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output → input map in pixel units: flip · rotation · shear / scale
    m = torch.zeros((n, 2, 2), dtype=torch.float64)
    m[:, 0, 0] = flip * cos / scale
    m[:, 0, 1] = flip * (cos * shear - sin) / scale
    m[:, 1, 0] = sin / scale
    m[:, 1, 1] = (sin * shear + cos) / scale
    # affine_grid works in normalised coordinates; conjugate by the pixel aspect so a
    # rotation stays a rotation on non-square slices
    d = torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64)
    m = m * d[None, None, :] / d[None, :, None]
    theta = torch.cat([m, torch.stack([tx, ty], dim=1)[:, :, None]], dim=2)
    theta = theta.to(device=batch.device, dtype=batch.dtype)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(batch + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    return out.clamp_(-1.0, 1.0)


# ===================================================================== benchmarks
def loader_throughput(sampler, n_batches=50, cfg=None, seed=0):
    """Batches per second drawn and augmented (both domains): the loader must not limit training.

    The sampler's stream is restored afterwards, so measuring does not change a run.
    """
    import torch

    state = sampler.state_dict()
    gen = torch.Generator().manual_seed(int(seed))
    try:
        a, b = next(sampler)  # warm-up: first touches of the memmaps, torch kernels
        augment(a, gen, cfg), augment(b, gen, cfg)
        start = time.perf_counter()
        for _ in range(int(n_batches)):
            a, b = next(sampler)
            augment(a, gen, cfg)
            augment(b, gen, cfg)
        elapsed = time.perf_counter() - start
    finally:
        sampler.load_state_dict(state)
    return float(n_batches) / max(elapsed, 1e-9)
