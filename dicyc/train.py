"""The one training loop every method runs (``dicyc train``).

It owns what every method shares: configuration, data, devices, the optimisers and the
schedule, checkpoints and exact resume, the JSON-lines events, previews and the loss curve,
and multi-process data parallelism under ``torchrun``. What differs between methods — the
networks and the losses of each step — comes from a recipe in :mod:`dicyc.methods`.

Output folder of a run::

    config.json              the resolved configuration (resume reads it back)
    checkpoint.safetensors   everything to continue exactly (atomic; the latest)
    model.safetensors        the synthesis model at the latest checkpoint (with its model card)
    model_best.safetensors   the synthesis model of the best epoch (lowest monitored loss)
    events.jsonl             the JSON-lines events (also to --progress-jsonl)
    previews/epoch_NNNN.png  A→B and B→A on fixed slices, once per epoch
    loss_curve.png           losses over iterations
"""

import datetime
import json
import math
import os
import time
from pathlib import Path

from dicyc import __version__
from dicyc.atomic import write_text
from dicyc.errors import DicycError

DEFAULT_CONFIG = {
    "method": "dicyc",
    # data
    "modality_a": "MR",
    "modality_b": "CT",
    "name_a": None,
    "name_b": None,
    "spacing": [1.8, 1.8],
    "slice_size": 128,
    "sampling": "random",
    "position_offset": 5,
    "augment": True,
    "mr_normalization": "percentile",
    # 2.5-D context: each network sees and predicts this many neighbouring axial slices (odd; 1 = 2-D)
    "context_slices": 1,
    # networks
    "ngf": 64,
    "n_blocks": 9,
    "ndf": 64,
    "upsample": "transpose",
    # arithmetic: autocast dtype of the networks (auto: bf16 where the hardware has it natively)
    "precision": "auto",
    # optimisation (CycleGAN reference values)
    "batch_size": 1,
    "lr": 2e-4,
    "beta1": 0.5,
    "beta2": 0.999,
    "lambda_cycle": 10.0,
    "lambda_identity": 0.0,
    "pool_size": 50,
    # schedule: a fixed iteration count, or epochs with the papers' early-stop rule
    "iterations": None,
    "epoch_length": None,
    "max_epochs": 200,
    "constant_epochs": 100,
    "patience_constant": 10,
    "patience_decay": 20,
    "decay_epochs": 100,
    # bookkeeping
    "checkpoint_every": 500,
    "log_every": 10,
    "seed": 0,
    "cache_dir": None,
}

#: keys that fix the networks or the data space: a resumed run cannot change them.
FROZEN_ON_RESUME = ("method", "ngf", "n_blocks", "ndf", "upsample", "slice_size", "spacing", "modality_a", "modality_b",
                    "shared_blocks", "tps_grid", "offset_grid", "precision", "context_slices")

_INT_KEYS = ("slice_size", "context_slices", "position_offset", "ngf", "n_blocks", "ndf", "batch_size", "pool_size",
             "max_epochs", "constant_epochs", "patience_constant", "patience_decay", "decay_epochs", "checkpoint_every", "log_every", "seed")
_FLOAT_KEYS = ("lr", "beta1", "beta2", "lambda_cycle", "lambda_identity")

#: values of the ``precision`` option (``dicyc train --precision``)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: methods for which "auto" keeps fp32 even where bf16 is native. The quality benchmark decides:
#: in bf16, CycleGAN and DiCyc scored within fp32's own seed-to-seed spread (README, "Quality
#: parity of bf16 training", 2026-12-01), so none is here.
AUTO_KEEPS_FP32 = frozenset()


# ===================================================================== configuration
def load_config_file(path):
    """Read a JSON config; unknown keys are refused (a typo must not be silently ignored)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DicycError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise DicycError(f"{path} is a folder, not a JSON file of training options.") from None
    except OSError as exc:
        raise DicycError(f"{path} cannot be read: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise DicycError(f"{path} is not a text file, so it cannot be a JSON file of training options.") from None
    except ValueError as exc:
        raise DicycError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise DicycError(f"{path} must hold a JSON object of training options.")
    return data


def resolve_config(file_config=None, overrides=None):
    """Defaults ← the method's own defaults ← config file ← command-line overrides, validated.

    The method (from the overrides, the file, or the default) decides which method-specific
    keys exist, so a typo or an option of another method is refused rather than ignored.
    """
    from dicyc.methods import get_method

    sources = [file_config or {}, {k: v for k, v in (overrides or {}).items() if v is not None}]
    method = DEFAULT_CONFIG["method"]
    for source in sources:
        method = source.get("method") or method
    if not isinstance(method, str):
        raise DicycError(f"the training method must be a name (see `dicyc methods`); got {method!r}.")
    config = dict(DEFAULT_CONFIG)
    config.update(get_method(method).defaults)
    for source in sources:
        unknown = sorted(set(source) - set(config))
        if unknown:
            raise DicycError(
                f"unknown training option(s) {', '.join(unknown)} for method {method}; valid: {', '.join(sorted(config))}."
            )
        config.update(source)
    config["method"] = method
    for key, default in get_method(method).defaults.items():  # method options take their default's type
        if isinstance(default, int) and not isinstance(default, bool) and config[key] is not None:
            config[key] = _as_int(key, config[key])
        elif isinstance(default, float) and config[key] is not None:
            try:
                if isinstance(config[key], bool):
                    raise TypeError
                config[key] = float(config[key])
            except (TypeError, ValueError):
                raise DicycError(f"training option {key} must be a number; got {config[key]!r}.") from None
        elif isinstance(default, str) and not isinstance(config[key], str):
            raise DicycError(f"training option {key} must be text; got {config[key]!r}.")
    return validate_config(config)


def _as_int(key, value):
    """An option's whole number: 3, 3.0 or "3"; True, 2.5 or "x" are refused in one sentence."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float) and not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise DicycError(f"training option {key} must be an integer; got {value!r}.") from None


def validate_config(config):
    """Types and ranges of every option, refused in one sentence before anything is written or trained."""
    for key in _INT_KEYS:
        config[key] = _as_int(key, config[key])
    for key in _FLOAT_KEYS:
        try:
            if isinstance(config[key], bool):
                raise TypeError
            config[key] = float(config[key])
        except (TypeError, ValueError):
            raise DicycError(f"training option {key} must be a number; got {config[key]!r}.") from None
        if not math.isfinite(config[key]):
            raise DicycError(f"training option {key} must be a finite number; got {config[key]!r}.")
    # torch's Adam refuses these with a traceback, and a negative weight turns a loss into a reward
    if not config["lr"] > 0:
        raise DicycError(f"the learning rate (lr) must be positive; got {config['lr']!r}.")
    for key in ("beta1", "beta2"):
        if not 0.0 <= config[key] < 1.0:
            raise DicycError(f"training option {key} must be at least 0 and below 1; got {config[key]!r}.")
    for key, value in config.items():  # method options too: numbers finite, loss weights not negative
        if isinstance(value, float) and not math.isfinite(value):
            raise DicycError(f"training option {key} must be a finite number; got {value!r}.")
        if key.startswith("lambda_") and isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise DicycError(f"training option {key} is a loss weight and must not be negative; got {value!r}.")
    for key in ("slice_size", "ngf", "n_blocks", "ndf", "batch_size", "checkpoint_every", "log_every", "max_epochs"):
        if config[key] < 1:
            raise DicycError(f"training option {key} must be at least 1; got {config[key]}.")
    for key in ("position_offset", "pool_size", "constant_epochs", "patience_constant", "patience_decay", "decay_epochs"):
        if config[key] < 0:
            raise DicycError(f"training option {key} must not be negative; got {config[key]}.")
    if not isinstance(config["augment"], bool):
        raise DicycError(f"training option augment must be true or false; got {config['augment']!r}.")
    for key in ("modality_a", "modality_b"):
        if not isinstance(config[key], str) or not config[key].strip():
            raise DicycError(f"training option {key} must be a modality name such as MR, T2 or CT; got {config[key]!r}.")
    for key in ("name_a", "name_b", "cache_dir"):
        if config[key] is not None and not isinstance(config[key], str):
            raise DicycError(f"training option {key} must be text; got {config[key]!r}.")
    if config["mr_normalization"] not in ("percentile", "meanstd"):
        raise DicycError(f"mr_normalization must be percentile or meanstd; got {config['mr_normalization']!r}.")
    if config["slice_size"] % 4:
        raise DicycError(f"slice_size must be a multiple of 4 (two stride-2 stages); got {config['slice_size']}.")
    from dicyc.data import check_context_slices

    check_context_slices(config["context_slices"])
    if config["iterations"] is not None:
        config["iterations"] = _as_int("iterations", config["iterations"])
        if config["iterations"] < 1:
            raise DicycError(f"iterations must be at least 1; got {config['iterations']}.")
    if config["epoch_length"] is not None:
        config["epoch_length"] = _as_int("epoch_length", config["epoch_length"])
        if config["epoch_length"] < 1:
            raise DicycError(f"epoch_length must be at least 1; got {config['epoch_length']}.")
    spacing = config["spacing"]
    if isinstance(spacing, (int, float)):
        spacing = [spacing, spacing]
    elif isinstance(spacing, (list, tuple)) and len(spacing) == 1:
        spacing = [spacing[0], spacing[0]]
    try:
        config["spacing"] = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise DicycError(f"spacing must be one or two numbers (mm); got {spacing!r}.") from None
    if len(config["spacing"]) != 2 or not all(math.isfinite(s) and s > 0 for s in config["spacing"]):
        raise DicycError(f"spacing must be two positive in-plane values (mm); got {spacing!r}.")
    if config["sampling"] not in ("random", "same-patient", "position"):
        raise DicycError(f"sampling must be random, same-patient or position; got {config['sampling']!r}.")
    if config["upsample"] not in ("transpose", "resize"):
        raise DicycError(f"upsample must be transpose or resize; got {config['upsample']!r}.")
    if config["precision"] not in PRECISIONS:
        raise DicycError(f"precision must be one of {', '.join(PRECISIONS)}; got {config['precision']!r}.")
    config["name_a"] = config["name_a"] or config["modality_a"]
    config["name_b"] = config["name_b"] or config["modality_b"]
    return config


# ===================================================================== precision
def resolve_precision(requested, device, method=None):
    """The arithmetic a run uses: "fp32", "bf16" or "fp16" for ``requested`` on ``device``.

    "auto" is bf16 only where the hardware computes it natively (a CPU with AVX512-BF16 or
    AMX whose bf16 matrix products are measurably faster than float32 ones, see
    :func:`dicyc.device.cpu_bf16_is_fast`; a CUDA GPU with bf16), and fp32 everywhere else and
    for the methods in :data:`AUTO_KEEPS_FP32`. An explicit bf16 or fp16 is refused in one sentence where this
    torch cannot autocast to it on ``device``.
    """
    import torch

    from dicyc.device import cpu_bf16_is_fast

    if requested not in PRECISIONS:
        raise DicycError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}.")
    if requested == "fp32":
        return "fp32"
    if requested == "auto":
        if method in AUTO_KEEPS_FP32:
            return "fp32"
        if device.type == "cuda":
            try:
                native = torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # torch without the keyword
                native = torch.cuda.is_bf16_supported()
            return "bf16" if native else "fp32"
        return "bf16" if device.type == "cpu" and cpu_bf16_is_fast() else "fp32"
    from dicyc.synthesize import _precision_dtype

    _precision_dtype(requested, device)  # refuses what this device and torch cannot autocast
    return requested


class Precision:
    """How a run computes: the autocast region of each step and, for fp16, the gradient scaler.

    Parameters, gradients, optimiser states, checkpoints and model files stay float32 in every
    precision; autocast runs the convolutions of generators and discriminators in bf16/fp16,
    while the losses that need it stay float32 (NMI, MIND and gradient correlation in
    :mod:`dicyc.similarity`, the offset and TPS warps in :mod:`dicyc.nets.warps`, and the L1 and
    least-squares losses, which autocast keeps in float32).
    """

    def __init__(self, name, device):
        import torch

        self.name = name
        self.device_type = device.type
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        self.scaler = None
        if name == "fp16":
            try:
                self.scaler = torch.amp.GradScaler(device.type)
            except (AttributeError, TypeError, RuntimeError):  # torch < 2.3: CUDA only
                if device.type != "cuda":
                    raise DicycError(f"precision fp16 needs a gradient scaler on {device}, which this torch "
                                     f"{torch.__version__} lacks; use bf16 or fp32.") from None
                self.scaler = torch.cuda.amp.GradScaler()

    def autocast(self):
        import contextlib

        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss):
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizers):
        for opt in optimizers:
            if self.scaler is None:
                opt.step()
            else:
                self.scaler.step(opt)
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self):
        return {"precision": self.name, "grad_scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state):
        if self.scaler is not None and (state or {}).get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])


# ===================================================================== distributed
class Distributed:
    """Data parallelism across processes started by ``torchrun``.

    Gradients are averaged across ranks explicitly after each backward (one flattened
    all-reduce per optimiser step) instead of through the ``DistributedDataParallel`` wrapper:
    a GAN iteration runs the same network several times per backward and runs discriminators
    inside the generator loss without stepping them, which DDP's bucketed reducer does not
    model; explicit averaging is the same algorithm with none of those pitfalls. Parameters
    are broadcast from rank 0 at the start, so all ranks stay identical.
    """

    def __init__(self, device):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        self.enabled = self.world_size > 1
        if self.enabled:
            import torch
            import torch.distributed as dist

            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                self.device = torch.device("cuda", local)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group(backend)
            self.rank = dist.get_rank()

    @property
    def is_main(self):
        return self.rank == 0

    def broadcast_parameters(self, nets):
        if not self.enabled:
            return
        import torch.distributed as dist

        for net in nets.values():
            for tensor in net.state_dict().values():
                dist.broadcast(tensor, 0)

    def average_gradients(self, params):
        if not self.enabled:
            return
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def any_rank(self, flag):
        """True on every rank when ``flag`` is true on any: ranks must agree to stop, or the others hang."""
        if not self.enabled:
            return bool(flag)
        import torch
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self):
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


# ===================================================================== figures
def _save_preview(path, nets, fixed_a, fixed_b, names):
    """A→B→A and B→A→B on fixed slices, as a 2×3 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dicyc.atomic import atomic_path

    with torch.no_grad():
        fake_b = nets["G_AB"](fixed_a)
        rec_a = nets["G_BA"](fake_b)
        fake_a = nets["G_BA"](fixed_b)
        rec_b = nets["G_AB"](fake_a)
    a, b = names
    rows = [
        (fixed_a, f"real {a}"), (fake_b, f"{a}→{b}"), (rec_a, f"{a}→{b}→{a}"),
        (fixed_b, f"real {b}"), (fake_a, f"{b}→{a}"), (rec_b, f"{b}→{a}→{b}"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.2))
    for ax, (img, title) in zip(axes.ravel(), rows):
        centre = img.shape[1] // 2  # the slab's middle slice (the only one of a 2-D model)
        ax.imshow(img[0, centre].float().cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def _save_loss_curve(path, history):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dicyc.atomic import atomic_path

    if not history:
        return
    names = sorted({k for h in history for k in h["losses"]})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    its = [h["iteration"] for h in history]
    for name in names:
        ax.plot(its, [h["losses"].get(name, float("nan")) for h in history], label=name, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


# ===================================================================== model card
def model_card(recipe, config, data_a, data_b, iterations_done, epoch, precision="fp32"):
    return {
        "format": "dicyc-model",
        "format_version": 1,
        "method": recipe.name,
        "architecture": recipe.architecture(),
        "domains": {
            "a": {"name": config["name_a"], "modality": config["modality_a"], "normalization": data_a.normalization_summary()},
            "b": {"name": config["name_b"], "modality": config["modality_b"], "normalization": data_b.normalization_summary()},
        },
        "spacing": list(config["spacing"]),
        "slice_size": config["slice_size"],
        "context_slices": int(config.get("context_slices", 1)),
        "training": dict(config, iterations_done=int(iterations_done), epoch=int(epoch), precision_used=precision),
        "precision": {"training": precision, "weights": "fp32"},
        "method_details": recipe.card_details(),
        "code_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ===================================================================== the loop
def _unique_parameters(nets, members):
    """Parameters of the named networks, each once (networks may share layers, as UNIT's do)."""
    seen, params = set(), []
    for name in members:
        for p in nets[name].parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def step_groups(name):
    """The optimiser groups one recipe step updates: a name, or a tuple of names sharing one backward."""
    return (name,) if isinstance(name, str) else tuple(name)


def run_iteration(steps, nets, groups, optimizers, ctx, lr, average_gradients=None, precision=None):
    """One training iteration: each recipe step's loss, one backward, and its optimisers' steps.

    A step may name several optimiser groups (DiCyc's joint E and M step): they share the one
    backward pass, and each optimiser then steps with the gradients of its own parameters.
    Only the networks of the step's groups take gradients, so a generator step leaves the
    discriminators' gradients alone. ``precision`` (a :class:`Precision`; None is fp32) puts
    each step's forward pass under autocast and scales fp16 losses. Returns the logged loss
    values of all steps.
    """
    logged = {}
    for names, step in steps:
        names = step_groups(names)
        members = {member for name in names for member in groups[name]}
        for name, net in nets.items():
            net.requires_grad_(name in members)
        opts = [optimizers[name] for name in names]
        for opt in opts:
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
        if precision is None:
            loss, values = step(nets, ctx)
            loss.backward()
        else:
            with precision.autocast():
                loss, values = step(nets, ctx)
            precision.backward(loss)
        if average_gradients is not None:  # scaled fp16 gradients average alike: every rank has one scale
            average_gradients([p for opt in opts for group in opt.param_groups for p in group["params"]])
        if precision is None:
            for opt in opts:
                opt.step()
        else:
            precision.step(opts)
        logged.update(values)
    return logged


def _saved_precision(ckpt_path):
    """The precision a checkpoint was trained in ("fp32" for checkpoints from before the option)."""
    from dicyc.checkpoint import read_checkpoint_extra

    state = read_checkpoint_extra(ckpt_path).get("precision") or {}
    return state.get("precision") or "fp32"


def _fixed_slice(data, context=1):
    """The middle body slice of the first volume (with its neighbours for 2.5-D): the same preview every epoch."""
    import numpy as np
    import torch

    from dicyc.data import _Index

    idx = data.body_slices[0][len(data.body_slices[0]) // 2]
    slab = _Index(data).gather(np.zeros(1, np.int64), np.array([idx], np.int64), context)
    return torch.from_numpy(slab)


def train(a, b, out_dir, config, resume=False, device="auto", progress_jsonl=None, log=None, show_progress=None,
          on_checkpoint=None):
    """Train ``config["method"]`` on domains ``a`` and ``b`` into ``out_dir``; returns the model path.

    ``a``/``b`` are volume specs (files, folders, list files; see :func:`dicyc.data.list_volumes`).
    ``on_checkpoint(nets, iteration, rank)`` is called on every rank at each checkpoint, for
    scripts that embed training (and the test that checks ranks stay in sync).
    """
    import numpy as np
    import torch

    from dicyc.checkpoint import load_checkpoint, save_checkpoint
    from dicyc.data import DomainData, UnpairedSampler, augment, list_volumes
    from dicyc.device import resolve_device
    from dicyc.events import EventLog, ProgressBar
    from dicyc.losses import ImagePool
    from dicyc.methods import get_method
    from dicyc.modelfile import save_model
    from dicyc.atomic import prepare_folder, remove_stale_temporaries
    from dicyc.runlock import RunLock
    from dicyc.samples import cache_folder
    from dicyc.schedule import Schedule

    log = log or (lambda message: None)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoint.safetensors"
    dist = Distributed(resolve_device(device))
    dev = dist.device
    lock, new_events_file = None, False
    try:
        if dist.is_main:
            prepare_folder(out_dir, "run folder")
            lock = RunLock(out_dir).acquire()  # one trainer per run folder (re-entrant for the CLI)
            stale = remove_stale_temporaries(out_dir)  # a killed run's half-written temporary files
            if stale:
                log(f"removed {len(stale)} temporary file(s) an interrupted run left in {out_dir}")
        events_path = out_dir / "events.jsonl"
        new_events_file = not events_path.exists()
        events = EventLog([events_path, progress_jsonl] if dist.is_main else [])
    except DicycError:
        if lock is not None:
            if not resume and not ckpt_path.exists():
                _forget_refused_run(out_dir, new_events_file)
            lock.release()
        dist.close()
        raise
    started = time.monotonic()
    begun = False  # the "start" event is out: from then on a failure is a failed run, not a refusal
    try:
        recipe = get_method(config["method"])(config)
        paths_a, paths_b = list_volumes(a), list_volumes(b)
        if config.get("cache_dir"):
            cache = prepare_folder(config["cache_dir"], "preprocessing cache folder")
        else:
            cache = cache_folder("slices")
        spacing, size = config["spacing"], config["slice_size"]
        log(f"preparing domain A ({config['name_a']}, {len(paths_a)} volume(s)) and B ({config['name_b']}, {len(paths_b)})")
        data_a = DomainData.prepare(paths_a, config["modality_a"], spacing, size, cache, log=log, mr_method=config["mr_normalization"])
        data_b = DomainData.prepare(paths_b, config["modality_b"], spacing, size, cache, log=log, mr_method=config["mr_normalization"])

        torch.manual_seed(config["seed"])
        np.random.seed(config["seed"])
        saved = _saved_precision(ckpt_path) if resume and ckpt_path.exists() else None
        # a resumed run keeps the arithmetic it was trained in ("auto" is not decided again)
        precision = Precision(saved or resolve_precision(config["precision"], dev, config["method"]), dev)
        recipe.prepare(data_a, data_b, dev, log)
        nets = {name: net.to(dev) for name, net in recipe.build_networks().items()}
        dist.broadcast_parameters(nets)
        groups = recipe.optimizer_groups()
        optimizers = {
            name: torch.optim.Adam(_unique_parameters(nets, members), lr=config["lr"], betas=(config["beta1"], config["beta2"]))
            for name, members in groups.items()
        }
        aug_gen = torch.Generator().manual_seed(config["seed"] * 1000 + 17 + dist.rank)
        pool_gen = torch.Generator().manual_seed(config["seed"] * 1000 + 29 + dist.rank)
        pools = {name: ImagePool(config["pool_size"], pool_gen) for name in recipe.pools()}
        sampler = UnpairedSampler(
            data_a, data_b, config["batch_size"], mode=config["sampling"], offset=config["position_offset"],
            seed=config["seed"], rank=dist.rank, world_size=dist.world_size, context_slices=config["context_slices"],
        )
        epoch_length = config["epoch_length"] or max(1, max(data_a.n_slices, data_b.n_slices) // config["batch_size"])
        schedule = Schedule(config, epoch_length)
        iteration, epoch, history, epoch_losses = 0, 0, [], {}
        if resume and ckpt_path.exists():
            extra = load_checkpoint(ckpt_path, nets, optimizers, pools, dev, {"augment": aug_gen, "pool": pool_gen})
            iteration, epoch, history = extra["iteration"], extra["epoch"], extra["history"]
            epoch_losses = extra.get("epoch_losses", {})
            schedule.load_state_dict(extra["schedule"])
            sampler.load_state_dict(extra["sampler"])  # one state fits every rank (per-rank streams)
            precision.load_state_dict(extra.get("precision"))
            log(f"resuming {out_dir} from iteration {iteration} (epoch {epoch})")
        total = schedule.total_iterations
        context = config["context_slices"]
        fixed_a, fixed_b = _fixed_slice(data_a, context).to(dev), _fixed_slice(data_b, context).to(dev)
        names = (config["name_a"], config["name_b"])

        def write_outputs(kind, improved=False):
            """Checkpoint + latest model (+ best model); only rank 0 writes."""
            if on_checkpoint is not None:
                on_checkpoint(nets, iteration, dist.rank)
            if not dist.is_main:
                return
            extra = {
                "iteration": iteration, "epoch": epoch, "history": history, "epoch_losses": epoch_losses,
                "schedule": schedule.state_dict(), "sampler": sampler.state_dict(), "config": config,
                "precision": precision.state_dict(),
            }
            save_checkpoint(ckpt_path, nets, optimizers, pools, extra, {"augment": aug_gen, "pool": pool_gen})
            card = model_card(recipe, config, data_a, data_b, iteration, epoch, precision.name)
            synth = {n: nets[n] for n in recipe.synthesis_networks()}
            save_model(out_dir / "model.safetensors", synth, card)
            events.emit("checkpoint", iteration=iteration, epoch=epoch, total_iterations=total, path=str(ckpt_path),
                        message=kind)
            if improved:
                save_model(out_dir / "model_best.safetensors", synth, card)

        events.emit("start", iteration=iteration, epoch=epoch, total_iterations=total, path=str(out_dir),
                    message=f"{recipe.name}: {len(paths_a)} {names[0]} and {len(paths_b)} {names[1]} volume(s) on {dev}"
                    f" in {precision.name}"
                    + (f", {dist.world_size} processes" if dist.enabled else ""))
        begun = True
        bar = ProgressBar(total, label=recipe.name, enabled=show_progress if dist.is_main else False)
        run_start_it, run_start_t = iteration, time.monotonic()
        steps = recipe.steps()
        recent = {}
        stopped = schedule.state["stopped"]
        while iteration < total and not stopped:
            real_a, real_b = next(sampler)
            real_a, real_b = real_a.to(dev), real_b.to(dev)
            if config["augment"]:
                real_a, real_b = augment(real_a, aug_gen), augment(real_b, aug_gen)
            lr = config["lr"] * schedule.lr_factor(iteration)
            ctx = {"real_a": real_a, "real_b": real_b, "pools": pools, "iteration": iteration}
            logged = run_iteration(steps, nets, groups, optimizers, ctx, lr, dist.average_gradients, precision)
            iteration += 1
            diverged = sorted(k for k, v in logged.items() if not math.isfinite(v))
            if dist.any_rank(diverged):  # stop before a NaN network reaches a checkpoint or a model file
                what = (f"the {', '.join(diverged)} loss became {logged[diverged[0]]}" if diverged
                        else "a loss became NaN or infinite in another process")
                raise DicycError(
                    f"training diverged at iteration {iteration}: {what}; the last checkpoint in {out_dir} is intact, "
                    "so resume it with a lower learning rate (--lr)."
                )
            for k, v in logged.items():
                recent.setdefault(k, []).append(v)
                epoch_losses.setdefault(k, []).append(v)
            elapsed = time.monotonic() - run_start_t
            rate = (iteration - run_start_it) / elapsed if elapsed > 0 else None
            eta = (total - iteration) / rate if rate else None
            bar.update(iteration, eta_s=eta, rate=rate, suffix=" ".join(f"{k}={np.mean(v):.3f}" for k, v in sorted(recent.items())[:4]))
            if iteration % config["log_every"] == 0 or iteration == total:
                means = {k: float(np.mean(v)) for k, v in recent.items()}
                history.append({"iteration": iteration, "losses": means})
                events.emit("iteration", iteration=iteration, epoch=epoch, total_iterations=total, losses=means, lr=lr,
                            elapsed_s=round(time.monotonic() - started, 2), eta_s=None if eta is None else round(eta, 1))
                recent = {}
            epoch_done = iteration % epoch_length == 0 or iteration == total
            if epoch_done:
                epoch += 1
                means = {k: float(np.mean(v)) for k, v in epoch_losses.items()}
                improved, stopped = schedule.end_epoch(recipe.monitored_loss(means), iteration)
                epoch_losses = {}
                events.emit("epoch", iteration=iteration, epoch=epoch, total_iterations=total, losses=means, lr=lr,
                            elapsed_s=round(time.monotonic() - started, 2), eta_s=None if eta is None else round(eta, 1),
                            message=schedule.state["phase"])
                write_outputs("epoch", improved)
                if dist.is_main:
                    preview = out_dir / "previews" / f"epoch_{epoch:04d}.png"
                    _save_preview(preview, nets, fixed_a, fixed_b, names)
                    _save_loss_curve(out_dir / "loss_curve.png", history)
                    events.emit("preview", iteration=iteration, epoch=epoch, path=str(preview))
            elif iteration % config["checkpoint_every"] == 0:
                write_outputs("iteration")
        bar.close()
        if not (out_dir / "model.safetensors").exists():
            write_outputs("final")
        events.emit("done", iteration=iteration, epoch=epoch, total_iterations=total,
                    elapsed_s=round(time.monotonic() - started, 2), path=str(out_dir / "model.safetensors"),
                    message="stopped early: loss stopped improving" if stopped and iteration < total else "finished")
        return out_dir / "model.safetensors"
    except DicycError as exc:
        events.emit_quietly("error", message=str(exc))
        if not begun and not resume and dist.is_main and not ckpt_path.exists():
            _forget_refused_run(out_dir, new_events_file)
        raise
    except Exception as exc:  # a bug: still tell followers the run ended, then keep the traceback
        events.emit_quietly("error", message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        events.close()
        dist.close()
        if lock is not None:
            lock.release()


def _forget_refused_run(out_dir, new_events_file):
    """A new run refused before it began (bad data, a full cache) leaves no run behind.

    ``config.json`` (written by :func:`prepare_run` for this run) and an ``events.jsonl`` this
    call created are removed, so the folder does not look like a run that can be resumed or
    followed; the error event still went to ``--progress-jsonl``.
    """
    names = ["config.json"] + (["events.jsonl"] if new_events_file else [])
    for name in names:
        try:
            (Path(out_dir) / name).unlink()
        except OSError:
            pass


def _read_saved_run(out_dir):
    """The saved ``config.json`` of a run folder, refused in one sentence when missing or damaged."""
    path = Path(out_dir) / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DicycError(f"{out_dir} holds a checkpoint but no config.json, so the run cannot be resumed.") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DicycError(f"{path} cannot be read ({getattr(exc, 'strerror', None) or exc}), so the run cannot be "
                         "resumed.") from None
    if not (isinstance(saved, dict) and isinstance(saved.get("config"), dict) and saved.get("a") and saved.get("b")):
        raise DicycError(f"{path} is not a DiCyc run configuration (config, a and b are needed to resume).")
    return saved


def checkpoint_progress(path):
    """(iterations done, epochs done) recorded in a checkpoint, read from its header alone (no torch)."""
    from dicyc.modelfile import check_safetensors_header

    header = check_safetensors_header(path, what="training checkpoint")
    try:
        extra = json.loads((header.get("__metadata__") or {})["dicyc_checkpoint"])["extra"]
        return int(extra["iteration"]), int(extra["epoch"])
    except (KeyError, TypeError, ValueError):
        raise DicycError(f"{path} is a safetensors file but not a DiCyc training checkpoint.") from None


def _show(value):
    return json.dumps(value) if not isinstance(value, str) else value


def prepare_run(out_dir, method, a, b, config_file=None, overrides=None, resume=False, log=None):
    """Resolve the configuration of a new or resumed run and write ``config.json``.

    Returns (config, a, b). A new run refuses a folder that already holds a checkpoint (so no
    work is overwritten by accident). A resumed run starts from the saved configuration and data
    specs; a ``config_file`` overrides them, and ``overrides`` given explicitly (not ``None``:
    command-line flags) override both. Changes that would not fit the saved networks are
    refused, and so is a schedule shorter than the work already done; every setting a resume
    changes is logged and recorded in ``config.json`` (``resumes``).
    """
    log = log or (lambda message: None)
    out_dir = Path(out_dir)
    saved_path = out_dir / "config.json"
    explicit = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    if method:
        explicit["method"] = method
    record = {}
    if resume:
        ckpt = out_dir / "checkpoint.safetensors"
        if not ckpt.exists():
            raise DicycError(f"{out_dir} holds no checkpoint to resume (checkpoint.safetensors is missing).")
        saved = _read_saved_run(out_dir)
        old = saved["config"]
        file_config = load_config_file(config_file) if config_file else {}
        old = dict(old)
        old.setdefault("precision", "fp32")  # runs from before the precision option trained in fp32
        old.setdefault("context_slices", 1)  # runs from before the option were 2-D
        changes = {**file_config, **explicit}  # flags given beat the file, the file beats the saved run
        if "max_epochs" in changes and "iterations" not in changes and old.get("iterations") is not None:
            raise DicycError(f"this run counts iterations ({old['iterations']}), so an epoch limit would be ignored; "
                             "give the new length as iterations instead.")
        config = resolve_config(old, changes)
        for key in FROZEN_ON_RESUME:
            if key in old and config.get(key) != old.get(key):
                raise DicycError(f"{key} cannot change when resuming (the run was trained with {old.get(key)!r}).")
        done, epochs = checkpoint_progress(ckpt)
        if config["iterations"] is not None and config["iterations"] < done:
            raise DicycError(f"iterations {config['iterations']} is below the {done} iterations this run has already "
                             f"done; give at least {done} to resume it.")
        if config["iterations"] is None and config["max_epochs"] < epochs:
            raise DicycError(f"max_epochs {config['max_epochs']} is below the {epochs} epochs this run has already "
                             f"done; give at least {epochs} to resume it.")
        a = a or saved["a"]
        b = b or saved["b"]
        changed = {key: [old.get(key), config[key]] for key in config if old.get(key) != config[key]}
        for key, (before, after) in changed.items():
            log(f"resuming with {key} {_show(after)} (was {_show(before)})")
        record = {"resumes": list(saved.get("resumes", []))}
        if changed:
            record["resumes"].append({"iteration": done, "changed": changed})
    else:
        if (out_dir / "checkpoint.safetensors").exists():
            raise DicycError(f"{out_dir} already holds a training run; pass --resume to continue it or choose another --out.")
        if not a or not b:
            raise DicycError("training needs both --a and --b (volumes of the two domains).")
        file_config = load_config_file(config_file) if config_file else {}
        config = resolve_config(file_config, explicit)
    from dicyc.atomic import prepare_folder

    prepare_folder(out_dir, "run folder")
    norm = lambda spec: [str(Path(s).resolve()) for s in spec] if isinstance(spec, (list, tuple)) else str(Path(spec).resolve())
    a, b = norm(a), norm(b)
    if resume and (a, b) != (saved["a"], saved["b"]):
        log("resuming with other training volumes than the run started with")
        record.setdefault("resumes", []).append({"iteration": done, "changed": {"a": [saved["a"], a], "b": [saved["b"], b]}})
    write_text(saved_path, json.dumps({"config": config, "a": a, "b": b, **record}, indent=2))
    return config, a, b
