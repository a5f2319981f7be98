"""Choosing the torch device and a low precision that is actually fast on it.

Users type ``--device auto|cpu|cuda|cuda:N|mps``; a typo or a missing GPU must give one clear
sentence, not a torch traceback deep inside inference. torch is imported lazily so the CLI
starts fast.
"""

import json
import os
import re
import time

from dicyc.errors import DicycError

NO_CUDA_MESSAGE = (
    "CUDA was requested (--device cuda) but this machine has no usable CUDA GPU; use --device cpu or auto."
)

NO_MPS_MESSAGE = (
    "Apple MPS was requested (--device mps) but PyTorch has no usable MPS device here; use --device cpu or auto."
)

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: the CPU features that decide which arithmetic is fast, recorded with benchmark results
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
#: "auto" uses bf16 on a CPU only where a bf16 matrix product runs at least this much faster
#: than a float32 one: a CPU can have AVX512-BF16 and still compute bf16 at half the float32
#: rate (a 2-core Xeon VM with avx512_bf16 and no AMX: 76 against 144 GFLOP/s, 2026-12-01)
CPU_BF16_MIN_SPEEDUP = 1.3
#: environment override of the bf16 decision: 1 uses bf16 where native, 0 never
CPU_BF16_ENV = "DICYC_CPU_BF16"
#: environment switch: 0 keeps the probes' results in this process only (no cache file)
PROBE_CACHE_ENV = "DICYC_PROBE_CACHE"


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


def cpu_features():
    """{flag: bool} for :data:`CPU_FEATURES`, plus the torch CPU capability and the CPU's name."""
    import torch

    flags = _cpu_flags()
    out = {flag: flag in flags for flag in CPU_FEATURES}
    try:
        out["torch_capability"] = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch builds lack the query
        out["torch_capability"] = None
    out["model"] = _cpu_model()
    return out


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_key():
    """What a probe's result depends on: CPU model and features, torch version, ISA limits."""
    import torch

    parts = [_cpu_model(), ",".join(sorted(f for f in _cpu_flags() if f in CPU_FEATURES)), torch.__version__]
    parts += [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
              if os.environ.get(k)]
    return "|".join(parts)


_PROBES = {}


def _probe_file():
    from dicyc.samples import default_cache_dir

    return default_cache_dir() / "probes.json"


def _stored_probes():
    if os.environ.get(PROBE_CACHE_ENV, "1").strip() == "0":
        return None, {}
    path = _probe_file()
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    return path, stored if isinstance(stored, dict) else {}


def probe_lookup(name):
    """The cached result of probe ``name`` on this machine (:func:`machine_key`), or None."""
    key = f"{machine_key()}|{name}"
    if key not in _PROBES:
        _, stored = _stored_probes()
        if key in stored:
            _PROBES[key] = stored[key]
    return _PROBES.get(key)


def probe_store(name, value):
    """Keep probe ``name``'s JSON-serialisable result for this machine in ``<cache>/probes.json``.

    With ``DICYC_PROBE_CACHE=0`` results live in this process only.
    """
    key = f"{machine_key()}|{name}"
    _PROBES[key] = value
    path, stored = _stored_probes()
    if path is not None:
        try:
            from dicyc.atomic import write_text

            path.parent.mkdir(parents=True, exist_ok=True)
            stored[key] = value
            write_text(path, json.dumps(stored, indent=1, sort_keys=True))
        except OSError:  # a read-only cache only costs a probe next time
            pass
    return value


def probe_cached(name, measure, refresh=False):
    """``measure()`` once per machine and ``name`` (:func:`probe_lookup`, :func:`probe_store`)."""
    value = None if refresh else probe_lookup(name)
    return probe_store(name, measure()) if value is None else value


def cpu_matmul_speedup(dtype="bf16", n=768, repeats=5):
    """float32 time / ``dtype`` time of an ``n`` x ``n`` matrix product on one core (medians, interleaved).

    One thread, timed in CPU time: the ratio is a property of the core's vector units, and a
    shared machine's other processes then change it least.
    """
    import statistics

    import torch

    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    gen = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a16, b16 = a32.to(low), b32.to(low)
    times = {"fp32": [], "low": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            torch.mm(a32, b32), torch.mm(a16, b16)  # warm-up
            for _ in range(max(1, int(repeats))):
                for kind, (x, y) in (("fp32", (a32, b32)), ("low", (a16, b16))):
                    t0 = time.thread_time()
                    torch.mm(x, y)
                    times[kind].append(time.thread_time() - t0)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times["fp32"]) / max(statistics.median(times["low"]), 1e-9)


def cpu_bf16_speedup():
    """The measured bf16 over float32 matrix-product speed-up of this CPU (probed once per machine)."""
    return probe_cached("cpu-bf16-matmul-speedup", lambda: round(cpu_matmul_speedup("bf16"), 3))


def cpu_bf16_is_fast():
    """True where "auto" should compute in bf16 on this CPU: native bf16 that is measurably faster.

    Native (AVX512-BF16 or AMX) is required; then a cached probe must find a bf16 matrix
    product at least :data:`CPU_BF16_MIN_SPEEDUP` times faster than a float32 one.
    ``DICYC_CPU_BF16=1`` skips the probe, ``0`` never uses bf16.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced == "0":
        return False
    if not cpu_has_native_bf16():
        return False
    if forced == "1":
        return True
    return cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP


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
    native hardware support that is measurably faster than float32 (:func:`cpu_bf16_is_fast`).
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
        return torch.bfloat16 if cpu_bf16_is_fast() else None
    return None
