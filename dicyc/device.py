"""Choosing the torch device and a low precision that is actually fast on it.

Users type ``--device auto|cpu|cuda|cuda:N|mps``; a typo or a missing GPU must give one clear
sentence, not a torch traceback deep inside inference. torch is imported lazily so the CLI
starts fast.
"""

import re

from dicyc.errors import DicycError

NO_CUDA_MESSAGE = (
    "CUDA was requested (--device cuda) but this machine has no usable CUDA GPU; use --device cpu or auto."
)

NO_MPS_MESSAGE = (
    "Apple MPS was requested (--device mps) but PyTorch has no usable MPS device here; use --device cpu or auto."
)

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def mps_available():
    """True where PyTorch can run on Apple's Metal (MPS) GPU (Apple silicon, torch built with MPS)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    try:
        return bool(backend is not None and backend.is_available())
    except Exception:  # a build without the MPS runtime
        return False


def resolve_device(spec="auto"):
    """``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` | ``"mps"`` (or a torch.device) → ``torch.device``.

    ``auto`` takes a CUDA GPU when one is usable so the default is the fast path; Apple's MPS is
    used only when asked for by name.
    """
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not mps_available():
            raise DicycError(NO_MPS_MESSAGE)
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise DicycError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps.")
    if not torch.cuda.is_available():
        raise DicycError(NO_CUDA_MESSAGE)
    if match.group(1) is None:
        return torch.device("cuda")
    index = int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        raise DicycError(
            f"CUDA device {index} was requested (--device {text}) but this machine has {count} CUDA GPU"
            f"{'s' if count != 1 else ''} (indices 0 to {count - 1})."
        )
    return torch.device("cuda", index)


def _cpu_flags():
    """CPU feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16():
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    import torch

    try:
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # older torch builds lack the query
        capability = ""
    if "BF16" in capability or "AMX" in capability:
        return True
    return any(flag in _cpu_flags() for flag in _CPU_BF16_FLAGS)


def fast_low_precision(device):
    """The low-precision dtype that runs faster than fp32 on ``device``, or None if none does.

    CUDA: bf16 where the GPU has it natively (no emulation), else fp16. CPU: bf16 only with
    native hardware support.
    """
    import torch

    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch without the keyword
            native = torch.cuda.is_bf16_supported()
        return torch.bfloat16 if native else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None
