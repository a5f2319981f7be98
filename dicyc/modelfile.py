"""The DiCyc model file: one ``.safetensors`` file holding both generators and a JSON card.

Model files get shared and downloaded, so loading one must never run code: we never
unpickle, and we check the bytes ourselves *before* handing the file to the safetensors
library, so a pickle or a ``torch.save`` archive renamed to ``.safetensors`` is refused
with one sentence instead of being parsed. The card (method, architecture, domains and
their normalisation, training spacing, ...) travels in the safetensors metadata under
``"dicyc_card"`` and can be read without torch (:func:`read_card`), which keeps the CLI
and the Slicer module fast when they only need to describe a model.

torch and safetensors are imported inside the functions that need them.
"""

import datetime
import json
import struct
from pathlib import Path

from dicyc.atomic import atomic_path
from dicyc.errors import DicycError

FORMAT = "dicyc-model"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
CARD_KEY = "dicyc_card"
MAX_HEADER_BYTES = 100 * 1024 * 1024
DIRECTIONS = {"a2b": "G_AB", "b2a": "G_BA"}
GENERATOR_NAMES = tuple(DIRECTIONS.values())
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_ARCH_KEYS = {"generator": str, "ngf": int, "n_blocks": int, "upsample": str, "input_nc": int, "output_nc": int}
_GENERATOR_KINDS = ("resnet", "unit")  # as dicyc.nets.GENERATOR_KINDS (kept here: reading a card needs no torch)


# ===================================================================== header and card
def _refuse(path, why, what="DiCyc model file"):
    raise DicycError(f"{path} is not a {what}: {why}.")


def _looks_like_text(data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _diagnose(path, size, start, what):
    """Refuse a file that has no safetensors header, saying what it looks like instead."""
    if size == 0:
        why = "it is empty"
    elif start[:1] == b"\x80":
        why = "it looks like a Python pickle, and DiCyc never unpickles files"
    elif start[:4] == b"PK\x03\x04":
        why = "it is a zip archive (what torch.save writes, holding pickled data), and DiCyc never unpickles files"
    elif start[:2] == b"\x1f\x8b":
        why = "it is gzip-compressed (an image such as .nii.gz?), not a .safetensors file"
    elif size < 8:
        why = f"it is only {size} bytes long"
    elif _looks_like_text(start):
        why = "it looks like a text file, not a .safetensors file"
    else:
        why = "it has no valid safetensors header (wrong format or truncated)"
    _refuse(path, why, what)


def check_safetensors_header(path, what="DiCyc model file"):
    """Return the JSON header of the safetensors file ``path``, checked byte by byte.

    Used before the safetensors library ever sees a file (model files here, training
    checkpoints in :mod:`dicyc.checkpoint`); ``what`` names the expected kind of file in
    the one-sentence :class:`DicycError` that refuses anything else.
    """
    path = Path(path)
    if not path.exists():
        raise DicycError(f"{what} {path} does not exist.")
    if path.is_dir():
        raise DicycError(f"{path} is a folder, not a {what} (.safetensors).")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        plausible = 0 < length <= min(size - 8, MAX_HEADER_BYTES)
        raw = fh.read(length) if plausible else b""
        if not raw.startswith(b"{"):
            # Not a safetensors header. Only now look at magic numbers, so a valid header
            # whose length happens to start with 0x80 is never mistaken for a pickle.
            fh.seek(0)
            _diagnose(path, size, fh.read(512), what)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        _refuse(path, "its safetensors header is not valid JSON (wrong format or damaged)", what)
    if not isinstance(header, dict):
        _refuse(path, "its safetensors header is not a JSON object", what)
    try:  # a file cut short (a full disk, an interrupted copy) lacks the end of its tensor data
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        _refuse(path, "its safetensors header lists tensors without valid data offsets", what)
    if size < 8 + length + end:
        raise DicycError(f"{path} is incomplete: it holds {size - 8 - length} bytes of tensor data where its header "
                         f"announces {end}, so the file was cut short.")
    return header


def _card_from_header(path, header):
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or CARD_KEY not in meta:
        raise DicycError(
            f"{path} is a safetensors file without a DiCyc model card ('{CARD_KEY}' metadata), "
            "so it was not written by DiCyc and cannot be used as a DiCyc model."
        )
    try:
        card = json.loads(meta[CARD_KEY])
    except (TypeError, ValueError):
        raise DicycError(f"{path} has a DiCyc model card that is not valid JSON; the file is damaged.") from None
    check_card(card, path)
    return card


def check_card(card, path="model card"):
    """Raise :class:`DicycError` naming ``path`` and the key if ``card`` lacks what synthesis needs."""

    def bad(key, why):
        raise DicycError(f"{path} has an invalid DiCyc model card: {key} {why}.")

    if not isinstance(card, dict):
        bad("the card", "is not a JSON object")
    if card.get("format") != FORMAT:
        bad("'format'", f"is {card.get('format')!r}, expected {FORMAT!r}")
    version = card.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        bad("'format_version'", f"is missing or not an integer ({version!r})")
    if version not in SUPPORTED_VERSIONS:
        raise DicycError(
            f"{path} is a DiCyc model of format version {version}, but this DiCyc reads only "
            f"version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}; update DiCyc to use it."
        )
    if not isinstance(card.get("method"), str) or not card["method"]:
        bad("'method'", "is missing or not a name")
    arch = card.get("architecture")
    if not isinstance(arch, dict):
        bad("'architecture'", "is missing or not an object")
    for key, kind in _ARCH_KEYS.items():
        if key not in arch:
            bad(f"'architecture.{key}'", "is missing")
        value = arch[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            bad(f"'architecture.{key}'", f"should be {'an integer' if kind is int else 'a string'}, got {value!r}")
    if arch["generator"] not in _GENERATOR_KINDS:
        bad("'architecture.generator'", f"is {arch['generator']!r}; this DiCyc knows {' and '.join(map(repr, _GENERATOR_KINDS))}")
    if arch["upsample"] not in ("transpose", "resize"):
        bad("'architecture.upsample'", f"is {arch['upsample']!r}, expected 'transpose' or 'resize'")
    for key, minimum in (("ngf", 1), ("input_nc", 1), ("output_nc", 1), ("n_blocks", 0)):
        if arch[key] < minimum:
            bad(f"'architecture.{key}'", f"must be at least {minimum}, got {arch[key]}")
    if arch["generator"] == "unit":
        # UNIT: the last shared_blocks encoder blocks and the first decoder blocks serve both domains
        shared = arch.get("shared_blocks", 1)
        if isinstance(shared, bool) or not isinstance(shared, int):
            bad("'architecture.shared_blocks'", f"should be an integer, got {shared!r}")
        if shared < 1:
            bad("'architecture.shared_blocks'", f"must be at least 1, got {shared}")
        if arch.get("direction", "a2b") not in DIRECTIONS:
            bad("'architecture.direction'", f"is {arch['direction']!r}, expected 'a2b' or 'b2a' (or none)")
    # 2.5-D models (absent: a 2-D model, as every card before the option): the generators read and
    # write K neighbouring slices as channels, so their channel counts must be K
    from dicyc.data import valid_context_slices

    context = card.get("context_slices", 1)
    if not valid_context_slices(context):
        bad("'context_slices'", f"must be an odd integer of at least 1, got {context!r}")
    if "context_slices" in card and not arch["input_nc"] == arch["output_nc"] == context:
        bad("'architecture.input_nc' and 'output_nc'",
            f"must both equal context_slices {context}, got {arch['input_nc']} and {arch['output_nc']}")
    domains = card.get("domains")
    if not isinstance(domains, dict):
        bad("'domains'", "is missing or not an object")
    for side in ("a", "b"):
        domain = domains.get(side)
        if not isinstance(domain, dict):
            bad(f"'domains.{side}'", "is missing or not an object")
        for key in ("name", "modality"):
            if not isinstance(domain.get(key), str):
                bad(f"'domains.{side}.{key}'", "is missing or not a string")
        if not isinstance(domain.get("normalization"), dict):
            bad(f"'domains.{side}.normalization'", "is missing or not an object")
    return card


def read_card(path):
    """Return the model card of ``path`` (validated); reads only the header, never tensors."""
    return _card_from_header(path, check_safetensors_header(path))


# ===================================================================== saving
def _json_default(obj):
    # numpy scalars/arrays, tuples-as-objects and paths reach cards from training configs
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _resolve_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    try:
        return names[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use float32, float16 or bfloat16") from None


def _state_dict(part):
    sd = part.state_dict() if hasattr(part, "state_dict") else dict(part)
    # DistributedDataParallel and torch.compile wrap the module and prefix its names
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _expected_shapes(arch):
    """Parameter names and shapes of the card's architecture, without allocating weights."""
    import torch

    from dicyc.nets import build_generator

    with torch.device("meta"):
        net = build_generator(arch, init=False)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _mismatch(path, name, found, expected):
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s) such as {name}.{missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) such as {name}.{unexpected[0]}")
    if wrong:
        k = wrong[0]
        problems.append(f"{name}.{k} has shape {list(found[k])} instead of {list(expected[k])}")
    if problems:
        raise DicycError(f"{path}: the {name} weights do not match the card's architecture ({'; '.join(problems)}).")


def save_model(path, generators, card, dtype=None):
    """Write ``generators`` ({"G_AB": module or state_dict, "G_BA": ...}) and ``card`` to ``path``.

    ``format``, ``format_version``, ``code_version`` and ``created`` are filled in when the
    card lacks them; the card is validated and the weights checked against its
    architecture before anything is written, and the file appears atomically.
    ``dtype=torch.float16`` halves the file (used for the bundled demo model).
    """
    import torch
    import safetensors.torch

    from dicyc import __version__

    card = dict(card)
    card.setdefault("format", FORMAT)
    card.setdefault("format_version", FORMAT_VERSION)
    card.setdefault("code_version", __version__)
    card.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    check_card(card, path)
    card_json = json.dumps(card, default=_json_default, allow_nan=False)

    if not generators:
        raise ValueError("save_model needs at least one generator")
    dtype = _resolve_dtype(dtype)
    expected = _expected_shapes(card["architecture"])
    tensors = {}
    for name, part in generators.items():
        if name not in GENERATOR_NAMES:
            raise ValueError(f"generator names must be among {GENERATOR_NAMES}, got {name!r}")
        sd = _state_dict(part)
        _mismatch(path, name, {k: tuple(v.shape) for k, v in sd.items()}, expected)
        for key, value in sd.items():
            t = value.detach().to("cpu")
            t = t.to(dtype if dtype is not None else torch.float32)
            tensors[f"{name}.{key}"] = t.contiguous()

    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt", CARD_KEY: card_json})
    return Path(path)


# ===================================================================== loading
class LoadedModel:
    """A checked model file: ``.card``, ``.path``, and ``.generator(direction)`` on demand.

    Tensor names and shapes are verified when the model is opened; weights are read only
    when a direction is first asked for (synthesis usually needs one), then cached.
    """

    def __init__(self, path, card, device, present):
        self.path = Path(path)
        self.card = card
        self.device = device
        self._present = present
        self._cache = {}

    @property
    def directions(self):
        """The directions ("a2b", "b2a") this file holds weights for."""
        return [d for d, name in DIRECTIONS.items() if name in self._present]

    def generator(self, direction="a2b"):
        """The eval-mode float32 generator for ``direction`` ("a2b"/"b2a", or "G_AB"/"G_BA")."""
        name = DIRECTIONS.get(direction, direction)
        if name not in GENERATOR_NAMES:
            raise DicycError(f"direction must be 'a2b' or 'b2a', got {direction!r}.")
        if name not in self._present:
            raise DicycError(f"{self.path} holds no {name} generator, so it cannot translate {direction}.")
        if name not in self._cache:
            self._cache[name] = self._build(name)
        return self._cache[name]

    def _build(self, name):
        import torch
        from safetensors import safe_open

        from dicyc.nets import build_generator

        prefix = name + "."
        sd = {}
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as fh:
                for key in fh.keys():
                    if key.startswith(prefix):
                        sd[key[len(prefix):]] = fh.get_tensor(key).to(torch.float32)
        except Exception as exc:  # safetensors raises its own error types for damaged data
            raise DicycError(f"{self.path} could not be read ({exc}); the file is damaged.") from None
        arch = self.card["architecture"]
        if arch["generator"] == "unit":  # one layout serves both directions; name the translator's
            arch = dict(arch, direction={v: k for k, v in DIRECTIONS.items()}[name])
        with torch.device("meta"):
            net = build_generator(arch, init=False)
        try:
            net.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as exc:
            raise DicycError(f"{self.path}: the {name} weights do not fit the card's architecture ({exc}).") from None
        return net.to(self.device).eval()

    def __repr__(self):
        return f"LoadedModel({str(self.path)!r}, method={self.card.get('method')!r}, directions={self.directions})"


def _resolve_device(device):
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(path, device="cpu"):
    """Open a DiCyc model file safely and check its tensors against the card's architecture."""
    from safetensors import safe_open

    header = check_safetensors_header(path)
    card = _card_from_header(path, header)
    device = _resolve_device(device)
    expected = _expected_shapes(card["architecture"])
    found = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in fh.keys():
                piece = fh.get_slice(key)
                found[key] = (tuple(piece.get_shape()), piece.get_dtype())
    except Exception as exc:  # offsets beyond the file, overlapping tensors, ...
        raise DicycError(f"{path} is damaged: its safetensors data is inconsistent ({exc}).") from None

    per_generator = {}
    for key, (shape, dtype) in found.items():
        name, _, param = key.partition(".")
        if name not in GENERATOR_NAMES or not param:
            raise DicycError(f"{path} holds an unexpected tensor {key!r}; a DiCyc model holds only G_AB and G_BA weights.")
        if dtype not in _FLOAT_DTYPES:
            raise DicycError(f"{path}: tensor {key!r} has type {dtype}, but generator weights must be floating point.")
        per_generator.setdefault(name, {})[param] = shape
    if not per_generator:
        raise DicycError(f"{path} holds no generator weights.")
    for name, shapes in per_generator.items():
        _mismatch(path, name, shapes, expected)
    _check_finite_weights(path, list(found))
    return LoadedModel(path, card, device, frozenset(per_generator))


def _check_finite_weights(path, keys):
    """Refuse NaN/Inf weights at load: a diverged training's model would give a NaN "result" volume.

    Tensors are read one at a time (memory stays at one tensor), before any synthesis starts.
    """
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in keys:
                if not bool(torch.isfinite(fh.get_tensor(key)).all()):
                    raise DicycError(f"{path} holds NaN or infinite weights (tensor {key}), so it cannot synthesise; "
                                     "the training that wrote it diverged or the file is damaged.")
    except DicycError:
        raise
    except Exception as exc:  # safetensors' own error types for data beyond the end of the file
        raise DicycError(f"{path} could not be read ({exc}); the file is damaged.") from None
