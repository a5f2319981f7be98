"""``dicyc bench speed``: synthesis throughput against a reference, memory, training and loader cost.

What it measures (BENCHMARKS.md §3), every number a median of repeats, every comparison
against a reference measured in the same process (shared machines are noisy; the result
records the load average before and after):

* **Synthesis** — the papers' generator (ResNet, ngf 64, 9 residual blocks; random weights:
  speed does not depend on them) on 256x256 slices, through the *real* inference loop of
  ``dicyc synthesize`` (:class:`dicyc.synthesize._Runner` with its default precision "auto",
  the 40 dB guard included, and its default batch size, under ``torch.inference_mode``),
  against a plain fp32 eager, batch-1, ``torch.no_grad()`` reference on the same slices.
  Reference and default path alternate repeat by repeat, so a load change hits both. The
  achieved GFLOP/s use an analytic count of the convolutions (:func:`conv_flops`) and are
  set against a large matmul measured in the same run, in the default path's dtype and fp32.
* **Memory** — peak resident memory while ``synthesize_volume_with_info`` (the default path)
  turns a 512x512x300 int16 CT-like volume into the other domain, with a tiny generator (this
  measures the pipeline, not the network), in a fresh subprocess so the peak is its own;
  reported in MB and in float32 copies of the volume beyond the input.
* **2.5-D synthesis** — ``synthesize_volume_with_info`` end to end with a 3-slice model
  (``context_slices`` 3) against a 2-D model of the same size, paired (issue 12's limit: 1.5x).
* **Training** — one iteration (every step of the recipe: forwards, backward, optimiser) of
  each registered method at one network size on random [-1, 1] batches, methods interleaved
  round by round, relative to CycleGAN (the paper: DiCyc 1.75x CycleGAN's time).
* **Loader** — :func:`dicyc.data.loader_throughput` (slices drawn from the memory-mapped cache
  and augmented) on two small prepared domains, against CycleGAN's iterations per second at
  the quick size. Training draws batches in the training process itself, so ``loader_share``
  is the fraction of an iteration spent on data.

``--quick`` shrinks the repeat counts and the training size (a few minutes on 2 CPU cores);
the full run uses the papers' training size (ngf 64, 9 blocks, 128x128).

Test hook: the environment variable ``DICYC_BENCH_TINY=1`` shrinks every setting (tiny
networks, 32x32 slices, a small memory volume, one iteration) so the whole command runs in
seconds; the result says ``"mode": "tiny"``. Its numbers mean nothing; it exists so the test
suite can run ``dicyc bench speed`` end to end.
"""

import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dicyc.bench import machine_info

#: test hook: ``DICYC_BENCH_TINY=1`` shrinks everything (see the module docstring)
TINY_ENV = "DICYC_BENCH_TINY"

#: the papers' generator (CycleGAN's ResNet generator as the seed papers use it)
PAPER_GENERATOR = {"ngf": 64, "n_blocks": 9}

SETTINGS = {
    "full": {
        "synthesis": {"ngf": 64, "n_blocks": 9, "size": 256, "slices": 16, "reference_slices": 8, "repeats": 5,
                      "matmul_size": 4096},
        "memory": {"shape": (300, 512, 512), "spacing": (0.8, 0.8, 0.8), "ngf": 4, "n_blocks": 1},
        "context": {"ngf": 64, "n_blocks": 9, "size": 256, "slices": 24, "repeats": 5, "context": 3},
        "training": {"ngf": 64, "n_blocks": 9, "ndf": 64, "size": 128, "batch": 1, "iterations": 3, "warmup": 1,
                     "settle": 1},
        "loader": {"size": 64, "batch": 1, "n_batches": 100},
    },
    "quick": {
        "synthesis": {"ngf": 64, "n_blocks": 9, "size": 256, "slices": 8, "reference_slices": 4, "repeats": 3,
                      "matmul_size": 4096},
        "memory": {"shape": (300, 512, 512), "spacing": (0.8, 0.8, 0.8), "ngf": 4, "n_blocks": 1},
        "context": {"ngf": 64, "n_blocks": 9, "size": 256, "slices": 12, "repeats": 3, "context": 3},
        "training": {"ngf": 16, "n_blocks": 3, "ndf": 16, "size": 64, "batch": 1, "iterations": 5, "warmup": 1,
                     "settle": 1},
        # the papers' training size for the two methods the precision targets name
        "training_papers": {"methods": ["cyclegan", "dicyc"], "ngf": 64, "n_blocks": 9, "ndf": 64, "size": 128,
                            "batch": 1, "iterations": 2, "warmup": 1, "settle": 0},
        "loader": {"size": 64, "batch": 1, "n_batches": 50},
    },
    "tiny": {
        "synthesis": {"ngf": 4, "n_blocks": 1, "size": 32, "slices": 2, "reference_slices": 2, "repeats": 2,
                      "matmul_size": 128},
        "memory": {"shape": (6, 48, 48), "spacing": (0.8, 0.8, 0.8), "ngf": 4, "n_blocks": 1},
        "context": {"ngf": 4, "n_blocks": 1, "size": 32, "slices": 5, "repeats": 2, "context": 3},
        "training": {"ngf": 4, "n_blocks": 2, "ndf": 4, "size": 32, "batch": 1, "iterations": 1, "warmup": 1,
                     "settle": 0},
        "training_papers": {"methods": ["cyclegan", "dicyc"], "ngf": 4, "n_blocks": 1, "ndf": 4, "size": 32,
                            "batch": 1, "iterations": 1, "warmup": 0, "settle": 0},
        "loader": {"size": 32, "batch": 1, "n_batches": 5},
    },
}
#: the loader is compared with CycleGAN at this size (the quick training size), in every mode
LOADER_TRAINING = SETTINGS["quick"]["training"]
#: the paper's DiCyc time and memory relative to CycleGAN (Wang et al., Information Fusion 2021)
PAPER_DICYC_RELATIVE_TIME = 1.75
PAPER_DICYC_RELATIVE_MEMORY = 1.33
#: training is timed in these precisions, in the same run ("auto" as ``dicyc train`` resolves it)
TRAINING_PRECISIONS = ("fp32", "auto")

CT_WINDOW = {"kind": "ct-window", "low": -1024.0, "high": 2000.0}
MR_RANGE = {"kind": "mr-percentile", "low": 0.0, "high": 1000.0, "percentiles": [0.5, 99.5]}


def _quiet(message):
    pass


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _alternating_times(works, repeats, device=None, progress=None):
    """Seconds of each of ``works`` (callables), timed back to back ``repeats`` times.

    The order alternates from one repeat to the next, so a load that rises or falls through the
    run favours none of them, and the times of one repeat can be paired: on a shared machine the
    ratio within a repeat is far steadier than a ratio of two medians. ``device`` (a torch
    device, or None) is synchronised around each timing; ``progress(repeat, times)`` is called
    after each repeat. Returns one list of seconds per work, in the order given.
    """
    times = [[] for _ in works]
    for r in range(repeats):
        order = range(len(works)) if r % 2 == 0 else reversed(range(len(works)))
        for i in order:
            if device is not None:
                _sync(device)
            t0 = time.perf_counter()
            works[i]()
            if device is not None:
                _sync(device)
            times[i].append(time.perf_counter() - t0)
        if progress is not None:
            progress(r, times)
    return times


def _median(values):
    return float(statistics.median(values))


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ===================================================================== FLOPs
def conv_flops(arch=None, size=256, input_nc=1):
    """FLOPs (2 per multiply-add) of the convolutions of one ``size`` x ``size`` slice.

    Returns ``(flops, flops_transposed_at_output)``. The first is what the hardware executes:
    2·Cin·Cout·k²·Hout·Wout/groups per convolution and 2·Cin·Cout·k²·Hin·Win/groups per
    transposed convolution (each *input* pixel scatters one k x k kernel; for stride 2 that is
    a quarter of the output pixels). The second counts transposed convolutions at their
    output size as if they were stride-1 convolutions, a common shortcut that overcounts
    them 4x; for the papers' generator at 256² it gives the "about 112 GFLOP" of
    BENCHMARKS.md, where the executed count is 97.5 GFLOP. Norms, pads and activations
    (< 0.1 % of the FLOPs) are not counted. Counted on the meta device: nothing is computed.
    """
    import torch
    from torch import nn

    from dicyc.nets import build_generator

    totals = [0, 0]

    def hook(module, inputs, output):
        x = inputs[0]
        k = module.kernel_size[0] * module.kernel_size[1]
        cin, cout, groups = module.in_channels, module.out_channels, module.groups
        out_pixels = output.shape[0] * output.shape[-2] * output.shape[-1]
        if isinstance(module, nn.ConvTranspose2d):
            in_pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
            totals[0] += 2 * cin * cout * k * in_pixels // groups
        else:
            totals[0] += 2 * cin * cout * k * out_pixels // groups
        totals[1] += 2 * cin * cout * k * out_pixels // groups

    with torch.device("meta"):
        net = build_generator(arch or PAPER_GENERATOR, init=False)
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.register_forward_hook(hook)
        net(torch.empty(1, input_nc, size, size))
    return totals[0], totals[1]


def matmul_gflops(n=4096, dtype="fp32", device="cpu", repeats=3):
    """GFLOP/s of an ``n`` x ``n`` matmul in ``dtype`` ("fp32", "bf16", "fp16"), median of repeats."""
    import torch

    from dicyc.device import resolve_device

    dev = resolve_device(device)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dev, torch_dtype)
    b = torch.randn(n, n, generator=gen).to(dev, torch_dtype)
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up
        _sync(dev)
        times = []
        for _ in range(max(1, int(repeats))):
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(dev)
            times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / _median(times) / 1e9


# ===================================================================== phantoms
def _grid(ny, nx):
    y, x = np.meshgrid(np.linspace(-1, 1, ny, dtype=np.float32), np.linspace(-1, 1, nx, dtype=np.float32),
                       indexing="ij")
    return y, x


def ct_like_slice_hu(ny, nx, rng, scale=1.0):
    """One axial CT-like slice in HU (int16): air, an elliptic body of soft tissue, a bone ring."""
    y, x = _grid(ny, nx)
    r = (x / (0.80 * scale)) ** 2 + (y / (0.62 * scale)) ** 2
    hu = np.where(r < 1.0, 40.0, -1000.0).astype(np.float32)
    hu[(r > 0.70) & (r < 0.82)] = 1000.0  # bone ring
    hu[r < 0.15] = 0.0  # a fluid-like core
    hu += rng.normal(0.0, 15.0, hu.shape).astype(np.float32) * (r < 1.0)
    return np.clip(np.rint(hu), -1024, 3000).astype(np.int16)


def ct_like_slices(n, size, seed=0):
    """``n`` CT-like slices (n, size, size) float32 normalised to [-1, 1] as the CT window does."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), dtype=np.float32)
    for k in range(n):
        hu = ct_like_slice_hu(size, size, rng, scale=0.9 + 0.1 * math.cos(k))
        out[k] = (hu.astype(np.float32) - CT_WINDOW["low"]) * (2.0 / (CT_WINDOW["high"] - CT_WINDOW["low"])) - 1.0
    np.clip(out, -1.0, 1.0, out=out)
    return out


def ct_like_volume(shape=(300, 512, 512), spacing=(0.8, 0.8, 0.8), seed=0):
    """An int16 CT-like :class:`~dicyc.volume.Volume` built slice by slice (no whole-volume temporaries)."""
    from dicyc.volume import Volume

    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    array = np.empty(shape, dtype=np.int16)
    for k in range(nz):
        z = (k / max(nz - 1, 1)) * 2.0 - 1.0
        array[k] = ct_like_slice_hu(ny, nx, rng, scale=math.sqrt(max(1.0 - 0.5 * z * z, 0.05)))
    return Volume(array, spacing)


class _BenchModel:
    """The two things synthesis needs of a model: its card and its generator."""

    path = None

    def __init__(self, generator, spacing, context=1):
        self._generator = generator
        self.card = {
            "method": "cyclegan",
            "architecture": generator.architecture(),
            "domains": {
                "a": {"name": "CT", "modality": "CT", "normalization": dict(CT_WINDOW)},
                "b": {"name": "MR", "modality": "MR", "normalization": dict(MR_RANGE)},
            },
            "spacing": [float(spacing[0]), float(spacing[1])],
            "slice_size": 256,
        }
        if context > 1:
            self.card["context_slices"] = int(context)

    def generator(self, direction="a2b"):
        return self._generator


# ===================================================================== synthesis
def default_synthesis_batch():
    """The batch size ``dicyc synthesize`` uses by default."""
    from dicyc.synthesize import synthesize_volume_with_info

    return int(inspect.signature(synthesize_volume_with_info).parameters["batch"].default)


def measure_synthesis(ngf=64, n_blocks=9, size=256, slices=8, reference_slices=4, repeats=3, device="cpu",
                      precision="auto", batch=None, matmul_size=4096, seed=0, log=None):
    """Slices per second of synthesis's inference loop against an fp32 eager batch-1 reference.

    The default path is :class:`dicyc.synthesize._Runner` as ``synthesize_volume_with_info``
    drives it (``precision``, ``batch`` default to synthesis's own defaults; the "auto" probe
    runs during the warm-up), timed on ``slices`` CT-like slices per repeat; the reference runs
    the same fp32 generator on ``reference_slices`` slices one at a time under ``no_grad``.
    Each repeat times the reference and the default path back to back (the order alternating
    between repeats). ``speedup_vs_reference`` is the median of the repeats' paired ratios: two
    timings taken moments apart share the machine's load, which separate medians do not (under
    load average 3.7 the ratio of medians read 0.33x where the paired ratios were 0.99, 0.28 and
    1.26). ``speedup_of_medians`` keeps the ratio of the two medians. Returns the JSON-ready
    ``synthesis`` entry of the result.
    """
    import torch

    from dicyc.device import resolve_device
    from dicyc.nets import build_generator
    from dicyc.synthesize import _dtype_name, _Runner

    log = log or _quiet
    dev = resolve_device(device)
    batch = default_synthesis_batch() if batch is None else int(batch)
    slices, reference_slices, repeats = int(slices), int(reference_slices), max(1, int(repeats))
    torch.manual_seed(seed)
    arch = {"ngf": int(ngf), "n_blocks": int(n_blocks)}
    generator = build_generator(arch).to(dev).eval()
    # a fresh path probe (not this machine's cached choice): the result is this run's own decision
    runner = _Runner(generator, dev, precision, batch, None, cache=False)
    runner.decide_explicit()
    warm = runner.probe_slices() + batch  # the CPU path probe (every candidate, every round), then one batch
    x = ct_like_slices(max(slices, reference_slices, warm), size, seed)
    out = np.zeros_like(x)
    with torch.inference_mode():
        runner.run_view(x[:warm], out[:warm], 0, accumulate=False)  # probes + warm-up
        runner.finish_probe()
    with torch.no_grad():
        generator(torch.from_numpy(x[:1, None]).to(dev)).cpu()  # reference warm-up
    def reference():
        with torch.no_grad():
            for i in range(reference_slices):
                generator(torch.from_numpy(x[i : i + 1, None]).to(dev)).cpu()

    def default():
        with torch.inference_mode():
            runner.run_range(x, out, 0, 0, slices, accumulate=False)

    def progress(r, times):
        log(f"  repeat {r + 1}/{repeats}: reference {reference_slices / times[0][-1]:.3f} slices/s, "
            f"default {slices / times[1][-1]:.3f} slices/s")

    ref_times, default_times = _alternating_times((reference, default), repeats, dev, progress)

    precision_used = _dtype_name(runner.dtype)
    flops, flops_out = conv_flops(arch, size)
    default_rate = _median([slices / t for t in default_times])
    reference_rate = _median([reference_slices / t for t in ref_times])
    paired = [(slices / d) / (reference_slices / r) for d, r in zip(default_times, ref_times)]
    ceiling = matmul_gflops(matmul_size, precision_used, dev)
    ceiling_fp32 = ceiling if precision_used == "fp32" else matmul_gflops(matmul_size, "fp32", dev)
    gflops = flops * default_rate / 1e9
    return {
        "slices_per_s": default_rate,
        "reference_slices_per_s": reference_rate,
        "speedup_vs_reference": _median(paired),
        "speedup_of_medians": default_rate / reference_rate,
        "speedup_per_repeat": paired,
        "gflops": gflops,
        "reference_gflops": flops * reference_rate / 1e9,
        "matmul_ceiling_gflops": ceiling,
        "matmul_ceiling_fp32_gflops": ceiling_fp32,
        "matmul_size": int(matmul_size),
        "fraction_of_ceiling": gflops / ceiling,
        "flops_per_slice": flops,
        "flops_per_slice_transposed_at_output": flops_out,
        "precision": precision_used,
        "psnr_low_vs_fp32": runner.psnr,
        "batch": runner.batch,
        "path": runner.path_info(),
        "size": int(size),
        "ngf": int(ngf),
        "n_blocks": int(n_blocks),
        "slices": slices,
        "reference_slices": reference_slices,
        "repeats": repeats,
        "reference": "fp32 eager, batch 1, torch.no_grad(), same generator, process and threads",
        "default_path": "dicyc.synthesize._Runner (precision 'auto' with its 40 dB guard, default batch as the "
                        "largest, its CPU path probe run fresh during the warm-up), torch.inference_mode()",
    }


# ===================================================================== 2.5-D cost
def measure_context_cost(ngf=64, n_blocks=9, size=256, slices=12, repeats=3, context=3, device="cpu", seed=0,
                         log=None):
    """What a 2.5-D model (``context_slices`` K) costs in synthesis, against a 2-D model of the same size.

    Both run the whole of ``synthesize_volume_with_info`` (intensity map, resampling, the path
    probe's cached choice, the generator, the slab average for K > 1, the inverse map) in fp32 on
    the same CT-like volume of ``slices`` slices of ``size``², each once untimed first (its path
    probe), then timed back to back ``repeats`` times, the order alternating. ``ratio`` is the
    median of the paired ratios, 2.5-D time over 2-D time: issue 12 allows 1.5x for the default
    path.
    """
    import torch

    from dicyc.nets import build_generator
    from dicyc.synthesize import synthesize_volume_with_info

    log = log or _quiet
    torch.manual_seed(seed)
    spacing = (1.0, 1.0, 1.0)
    volume = ct_like_volume((int(slices), int(size), int(size)), spacing, seed)
    models = {}
    for k in (1, int(context)):
        generator = build_generator({"ngf": int(ngf), "n_blocks": int(n_blocks), "input_nc": k, "output_nc": k}).eval()
        models[k] = _BenchModel(generator, spacing[:2], context=k)

    def synthesize(k):
        return lambda: synthesize_volume_with_info(models[k], volume, precision="fp32", device=device)

    for k in models:
        synthesize(k)()  # the path probe of each size, and a warm-up

    def progress(r, times):
        log(f"  repeat {r + 1}: 2-D {times[0][-1]:.2f} s, {context}-slice {times[1][-1]:.2f} s")

    plain, wide = _alternating_times((synthesize(1), synthesize(int(context))), max(1, int(repeats)), None, progress)
    paired = [c / p for p, c in zip(plain, wide)]
    return {
        "context_slices": int(context),
        "seconds_2d": _median(plain),
        "seconds_context": _median(wide),
        "ratio": _median(paired),
        "ratio_per_repeat": paired,
        "slices": int(slices), "size": int(size), "ngf": int(ngf), "n_blocks": int(n_blocks),
        "repeats": max(1, int(repeats)),
        "what": "synthesize_volume_with_info end to end in fp32, a 2.5-D model against a 2-D one of the same size",
    }


# ===================================================================== memory
def _rss_kb(field):
    """``VmRSS`` / ``VmHWM`` of this process in kB from /proc (None where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _memory_child(params):
    """Runs in a fresh process: synthesise the CT-like volume, return the memory facts."""
    import resource
    import tracemalloc

    import torch

    from dicyc.device import resolve_device
    from dicyc.nets import build_generator
    from dicyc.synthesize import synthesize_volume_with_info

    shape, spacing = tuple(params["shape"]), tuple(params["spacing"])
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    dev = resolve_device(params["device"])
    torch.manual_seed(0)
    generator = build_generator({"ngf": params["ngf"], "n_blocks": params["n_blocks"]})
    model = _BenchModel(generator, params.get("model_spacing") or spacing[:2])
    # warm-up on a small volume: imports, kernels, allocator pools (not part of the peak)
    synthesize_volume_with_info(model, ct_like_volume((4, 64, 64), spacing), device=dev)
    volume = ct_like_volume(shape, spacing)
    input_bytes = volume.array.nbytes
    f32_bytes = volume.array.size * 4
    rss_before = _rss_kb("VmRSS")
    reset = _reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tracemalloc.start()
    t0 = time.perf_counter()
    synthetic, info = synthesize_volume_with_info(model, volume, device=dev)
    seconds = time.perf_counter() - t0
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _rss_kb("VmHWM") if reset else None
    peak_kb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = 1024.0 * 1024.0
    out = {
        "shape": list(shape),
        "spacing_mm": list(spacing),
        "input_dtype": str(volume.array.dtype),
        "input_mb": input_bytes / mb,
        "float32_copy_mb": f32_bytes / mb,
        "rss_before_mb": (rss_before or 0) / 1024.0,
        "peak_rss_mb": peak_kb / 1024.0,
        "peak_rss_increase_mb": (peak_kb - (rss_before or 0)) / 1024.0,
        "float32_copies_beyond_input": (peak_kb - (rss_before or 0)) * 1024.0 / f32_bytes,
        "numpy_peak_mb": numpy_peak / mb,
        "numpy_float32_copies": numpy_peak / f32_bytes,
        "peak_measure": "VmHWM after clear_refs" if hwm is not None else "ru_maxrss (process lifetime)",
        "seconds": seconds,
        "precision": info["precision"],
        "batch": info["batch"],
        "model_grid": info["model_grid"],
        "model_spacing_mm": list(model.card["spacing"]),
        "generator": {"ngf": params["ngf"], "n_blocks": params["n_blocks"]},
        "output_dtype": str(synthetic.array.dtype),
    }
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / mb
    return out


def measure_memory(shape=(300, 512, 512), spacing=(0.8, 0.8, 0.8), ngf=4, n_blocks=1, device="cpu",
                   model_spacing=None, threads=None, timeout=1800):
    """Peak memory of ``synthesize_volume_with_info`` (default path) on an int16 CT-like volume.

    Runs in a fresh subprocess so the peak resident set is this synthesis's own. The model's
    spacing defaults to the volume's (no in-plane resampling: the model-space arrays are as
    large as the input, the worst case); ``float32_copies_beyond_input`` is the peak increase
    over the resident set with the input loaded, in float32 copies of the volume. The
    subprocess uses ``threads`` torch threads (default: this process's).
    """
    import torch

    from dicyc.background import child_environment
    from dicyc.device import resolve_device

    params = {"shape": list(shape), "spacing": list(spacing), "ngf": int(ngf), "n_blocks": int(n_blocks),
              "device": str(resolve_device(device)), "model_spacing": model_spacing,
              "threads": int(threads or torch.get_num_threads())}
    code = ("import json, sys\nfrom dicyc.bench.speed import _memory_child\n"
            "print('DICYC-MEMORY ' + json.dumps(_memory_child(json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(params)], capture_output=True, text=True,
                          timeout=timeout, env=child_environment())
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("DICYC-MEMORY "):
            return json.loads(line[len("DICYC-MEMORY "):])
    raise RuntimeError(f"the memory measurement failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


# ===================================================================== end to end
def measure_end_to_end(shape=(300, 512, 512), spacing=(0.8, 0.8, 0.8), ngf=64, n_blocks=9, device="auto",
                       precision="auto", batch=8, workdir=None, suffix=".nii", seed=0):
    """Seconds of ``dicyc synthesize``'s whole job on an int16 CT-like volume: read, synthesise, write.

    A papers'-size generator (random weights) is saved as a model file whose spacing is the
    volume's own, so every slice runs at full size (512x512 for the protocol's CT) with no
    resampling: the most work a volume of this size can ask for. The volume is written
    uncompressed (``suffix``), then :func:`dicyc.synthesize.synthesize_file` is run once on a
    small volume (CUDA context, kernels, the path probe) and timed on the real one.
    """
    import torch

    from dicyc.device import resolve_device
    from dicyc.modelfile import save_model
    from dicyc.nets import build_generator
    from dicyc.synthesize import synthesize_file
    from dicyc.volume import write_volume

    dev = resolve_device(device)
    torch.manual_seed(seed)
    generator = build_generator({"ngf": int(ngf), "n_blocks": int(n_blocks)})
    model = _BenchModel(generator, spacing[:2])
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        model_path = save_model(tmp / "model.safetensors", {"G_AB": generator}, model.card)
        small, big = tmp / f"small{suffix}", tmp / f"ct{suffix}"
        write_volume(ct_like_volume((4, 64, 64), spacing, seed), small)
        t0 = time.perf_counter()
        write_volume(ct_like_volume(tuple(shape), spacing, seed), big)
        write_s = time.perf_counter() - t0
        synthesize_file(model_path, small, tmp / f"small-out{suffix}", device=dev, precision=precision, batch=batch)
        _sync(dev)
        t0 = time.perf_counter()
        info = synthesize_file(model_path, big, tmp / f"out{suffix}", device=dev, precision=precision, batch=batch)
        _sync(dev)
        seconds = time.perf_counter() - t0
        out_mb = (tmp / f"out{suffix}").stat().st_size / 2**20
    result = {
        "seconds": seconds,
        "synthesis_seconds": info["seconds"],
        "read_and_write_seconds": seconds - info["seconds"],
        "input_write_seconds": write_s,
        "shape": list(shape), "spacing_mm": list(spacing), "format": suffix, "output_mb": out_mb,
        "generator": {"ngf": int(ngf), "n_blocks": int(n_blocks)},
        "precision": info["precision"], "batch": info["batch"], "path": info.get("path"), "device": str(dev),
        "slices": info["slices"], "model_grid": info["model_grid"],
        "what": "synthesize_file: read the int16 volume, preprocess, synthesise every axial slice, map to HU, write",
    }
    if dev.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(dev)
    return result


# ===================================================================== training
def _fake_domain(n, size, seed):
    """What a recipe's ``prepare`` reads of a DomainData: ``volumes`` and ``body_slices``."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    volume = rng.uniform(-1.0, 1.0, (n, size, size)).astype(np.float32)
    return SimpleNamespace(volumes=[volume], body_slices=[np.arange(n)], slice_size=size)


def _training_state(spec, ngf, n_blocks, ndf, size, batch, device, seed):
    """Networks, optimisers and pools of one method, ``NAME`` or ``NAME[key=value,...]``."""
    import torch

    from dicyc.bench import parse_method
    from dicyc.losses import ImagePool
    from dicyc.methods import get_method
    from dicyc.train import _unique_parameters, resolve_config

    _, name, options = parse_method(spec)
    overrides = {"method": name, "ngf": ngf, "n_blocks": n_blocks, "ndf": ndf, "slice_size": size,
                 "batch_size": batch, "seed": seed, **options}
    if name == "cycle-medgan":  # its feature extractors' pre-training is a one-off, not an iteration
        overrides.update(extractor_steps=2, extractor_slices=8)
    config = resolve_config({}, overrides)
    recipe = get_method(name)(config)
    torch.manual_seed(seed)
    recipe.prepare(_fake_domain(8, size, seed), _fake_domain(8, size, seed + 1), device, _quiet)
    nets = {k: net.to(device) for k, net in recipe.build_networks().items()}
    groups = recipe.optimizer_groups()
    optimizers = {
        k: torch.optim.Adam(_unique_parameters(nets, members), lr=config["lr"],
                            betas=(config["beta1"], config["beta2"]))
        for k, members in groups.items()
    }
    pool_gen = torch.Generator().manual_seed(seed)
    pools = {k: ImagePool(config["pool_size"], pool_gen) for k in recipe.pools()}
    return {"recipe": recipe, "nets": nets, "groups": groups, "optimizers": optimizers, "pools": pools,
            "steps": recipe.steps(), "gen": torch.Generator().manual_seed(seed + 7), "lr": config["lr"]}


def _iteration(state, batch, size, device, precision=None, steps=None):
    """One training iteration exactly as ``dicyc.train.train`` runs it, on random [-1, 1] batches."""
    import torch

    from dicyc.train import run_iteration

    gen = state["gen"]
    real_a = (torch.rand((batch, 1, size, size), generator=gen) * 2.0 - 1.0).to(device)
    real_b = (torch.rand((batch, 1, size, size), generator=gen) * 2.0 - 1.0).to(device)
    ctx = {"real_a": real_a, "real_b": real_b, "pools": state["pools"], "iteration": 0}
    run_iteration(steps or state["steps"], state["nets"], state["groups"], state["optimizers"], ctx, state["lr"],
                  precision=precision)


def _memory_iteration(state, batch, size, device, precision=None):
    """Run one iteration and count its training memory from the tensors themselves (in bytes).

    ``activations``: the most that one step's forward pass keeps for its backward pass (each
    storage saved by autograd counted once; parameters excluded), the largest over the
    recipe's steps, since each step's saved tensors are freed by its backward. ``state``:
    parameters of every network, plus gradients and Adam's two moments for the trained ones.
    Device-independent (on a GPU the allocator's own peak is ``peak_gpu_mb``).
    """
    import torch

    nets, optimizers = state["nets"], state["optimizers"]
    params = {p.untyped_storage().data_ptr(): p for net in nets.values() for p in net.parameters()}
    trained = {p.untyped_storage().data_ptr(): p for opt in optimizers.values()
               for group in opt.param_groups for p in group["params"]}
    per_step = []

    def wrap(step):
        def run(nets_, ctx):
            seen = {}

            def pack(t):
                try:
                    storage = t.untyped_storage()
                    ptr = storage.data_ptr()
                    if ptr not in params:
                        seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
                except (RuntimeError, NotImplementedError):  # tensors without storage
                    pass
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = step(nets_, ctx)
            per_step.append(sum(seen.values()))
            return out

        return run

    steps = [(names, wrap(step)) for names, step in state["steps"]]
    _iteration(state, batch, size, device, precision, steps)
    param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    trained_bytes = sum(p.numel() * p.element_size() for p in trained.values())
    return {"activations": max(per_step), "state": param_bytes + 3 * trained_bytes}


def measure_training(methods=None, ngf=16, n_blocks=3, ndf=None, size=64, batch=1, iterations=3, warmup=1,
                     settle=1, device="cpu", seed=0, log=None, precisions=("fp32",)):
    """Seconds per training iteration of each method in each precision, ratios to CycleGAN, memory.

    Every method's networks and optimisers are built first, one set per precision; then rounds
    run each method and precision in turn (``warmup`` untimed rounds, ``iterations`` timed
    ones), so a change in machine load hits every method alike. Within a round each runs
    ``settle`` untimed iterations before the timed one: the first iteration after switching
    methods pays for cold caches and fresh pages (up to 2x at small sizes), which a training
    run, one method throughout, does not. ``precisions`` holds "fp32", "bf16", "fp16" or
    "auto" (resolved per method as ``dicyc train`` resolves it; an "auto" that resolves to
    fp32 reuses the fp32 timing). The first warm-up iteration of each counts training memory
    (:func:`_memory_iteration`).

    ``methods`` are names or variants ``NAME[key=value,...]`` (as every benchmark spells them);
    the result is keyed by the variant's label. Returns ``{method: {"iteration_s",
    "relative_to_cyclegan", "iterations_s" (first precision),
    "precisions": {p: {"iteration_s", "iterations_s", "precision", "memory_mb"}},
    "auto_precision", "auto_speedup", "memory_mb", "memory_relative_to_cyclegan"}}`` (plus
    ``peak_gpu_mb`` on CUDA).
    """
    import torch

    from dicyc.bench import parse_method
    from dicyc.device import resolve_device
    from dicyc.methods import METHODS
    from dicyc.train import Precision, resolve_precision

    log = log or _quiet
    dev = resolve_device(device)
    names = {label: name for label, name, _ in map(parse_method, METHODS if methods is None else methods)}
    methods = list(names)  # labels, in order
    precisions = list(precisions)
    ndf = int(ndf if ndf is not None else ngf)
    resolved = {(m, p): resolve_precision(p, dev, names[m]) for m in methods for p in precisions}
    runs = []  # (method, resolved precision) actually timed
    for key, value in resolved.items():
        if (key[0], value) not in runs:
            runs.append((key[0], value))
    states = {run: _training_state(run[0], int(ngf), int(n_blocks), ndf, int(size), int(batch), dev, seed)
              for run in runs}
    amp = {run: (None if run[1] == "fp32" else Precision(run[1], dev)) for run in runs}
    times = {run: [] for run in runs}
    memory = {}
    peaks = {run: 0.0 for run in runs}
    for r in range(int(warmup) + max(1, int(iterations))):
        timed = r >= int(warmup)
        for run in runs:
            if run not in memory:
                memory[run] = _memory_iteration(states[run], int(batch), int(size), dev, amp[run])
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            for _ in range(int(settle) if timed else 0):
                _iteration(states[run], int(batch), int(size), dev, amp[run])
            _sync(dev)
            t0 = time.perf_counter()
            _iteration(states[run], int(batch), int(size), dev, amp[run])
            _sync(dev)
            if timed:
                times[run].append(time.perf_counter() - t0)
            if dev.type == "cuda":
                peaks[run] = max(peaks[run], torch.cuda.max_memory_allocated(dev) / 2**20)
        if timed:
            log(f"  round {r - int(warmup) + 1}/{iterations}: "
                + ", ".join(f"{m}{'' if p == 'fp32' else ' ' + p} {times[(m, p)][-1]:.2f}s" for m, p in runs))
    del states
    mb = 2.0**20
    first = precisions[0]
    base_run = ("cyclegan", resolved[("cyclegan", first)]) if "cyclegan" in methods else None
    base = _median(times[base_run]) if base_run else None
    base_memory = (memory[base_run]["activations"] + memory[base_run]["state"]) if base_run else None
    out = {}
    for name in methods:
        entry = {"precisions": {}}
        for p in precisions:
            run = (name, resolved[(name, p)])
            m = memory[run]
            entry["precisions"][p] = {
                "precision": run[1], "iteration_s": _median(times[run]), "iterations_s": times[run],
                "memory_mb": {"activations": m["activations"] / mb, "state": m["state"] / mb,
                              "total": (m["activations"] + m["state"]) / mb},
            }
            if dev.type == "cuda":
                entry["precisions"][p]["peak_gpu_mb"] = peaks[run]
        main = entry["precisions"][first]
        entry.update(iteration_s=main["iteration_s"], iterations_s=main["iterations_s"],
                     relative_to_cyclegan=(main["iteration_s"] / base) if base else None,
                     memory_mb=main["memory_mb"]["total"],
                     memory_relative_to_cyclegan=(main["memory_mb"]["total"] * mb / base_memory) if base_memory else None)
        if dev.type == "cuda":
            entry["peak_gpu_mb"] = main["peak_gpu_mb"]
        if "auto" in entry["precisions"] and "fp32" in entry["precisions"]:
            auto, fp32 = entry["precisions"]["auto"], entry["precisions"]["fp32"]
            entry["auto_precision"] = auto["precision"]
            entry["auto_speedup"] = fp32["iteration_s"] / auto["iteration_s"]
        out[name] = entry
    return out


# ===================================================================== loader
def measure_loader(size=64, batch=1, n_batches=50, workdir=None, seed=0):
    """Batches per second of the training data path (sampler over the cache + augmentation).

    Two small volumes (a CT-like and an MR-like one) are written with
    :func:`dicyc.volume.write_volume` and prepared with :meth:`dicyc.data.DomainData.prepare`
    into a cache under ``workdir`` (a temporary folder by default).
    """
    from dicyc.data import DomainData, UnpairedSampler, loader_throughput
    from dicyc.volume import Volume, write_volume

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        n_in = int(round(size * 1.5))
        ct = ct_like_volume((24, n_in, n_in), (1.2, 1.2, 2.0), seed)
        mr_array = np.where(ct.array > -500, ct.array.astype(np.float32) * 0.3 + 300.0, 0.0).astype(np.float32)
        mr = Volume(mr_array, ct.spacing)
        write_volume(ct, tmp / "ct.nii.gz")
        write_volume(mr, tmp / "mr.nii.gz")
        cache = tmp / "cache"
        data_a = DomainData.prepare([tmp / "mr.nii.gz"], "MR", (1.8, 1.8), size, cache)
        data_b = DomainData.prepare([tmp / "ct.nii.gz"], "CT", (1.8, 1.8), size, cache)
        sampler = UnpairedSampler(data_a, data_b, int(batch), seed=seed)
        rate = loader_throughput(sampler, n_batches=int(n_batches), seed=seed)
        del sampler, data_a, data_b
    return {"batches_per_s": rate, "batch": int(batch), "size": int(size), "n_batches": int(n_batches)}


# ===================================================================== the command
def _mode(args):
    if os.environ.get(TINY_ENV, "").strip() not in ("", "0"):
        return "tiny"
    return "quick" if getattr(args, "quick", False) else "full"


def training_methods(specs):
    """The methods ``--methods`` asks to time, as labels, with CycleGAN first (every ratio is to it).

    None (all registered methods at the quick size, the protocol's two at the papers' size)
    when no list is given. A name or option that does not exist is refused here, before the
    synthesis measurements spend minutes.
    """
    from dicyc.bench import parse_method
    from dicyc.methods import get_method
    from dicyc.train import resolve_config

    if not specs:
        return None
    labels = []
    for spec in specs:
        label, name, options = parse_method(spec)
        get_method(name)(resolve_config({}, {"method": name, **options}))  # unknown names and options
        if label not in labels:
            labels.append(label)
    if "cyclegan" in labels:
        labels.remove("cyclegan")
    return ["cyclegan"] + labels


def run(args, log):
    """``dicyc bench speed``: every measurement of the module docstring; returns the JSON-ready result."""
    import torch

    mode = _mode(args)
    if mode != "tiny":
        return _run(args, log or _quiet, mode)
    # test hook: one thread, since on a loaded machine two threads make tiny ops wait for a
    # descheduled thread at every op (10x slower); restored afterwards for in-process callers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args, log or _quiet, mode)
    finally:
        torch.set_num_threads(threads)


def _run(args, log, mode):
    import torch

    from dicyc.device import resolve_device

    s = SETTINGS[mode]
    dev = resolve_device(getattr(args, "device", "auto"))
    chosen = training_methods(getattr(args, "methods", None))  # a bad name fails now, not after minutes
    t_start = time.perf_counter()
    from dicyc.device import cpu_features

    result = {
        "benchmark": "speed",
        "machine": machine_info(),
        "cpu_features": cpu_features(),
        "isa_limits": {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
                       if os.environ.get(k)} or None,
        "quick": bool(getattr(args, "quick", False)),
        "mode": mode,
        "device": str(dev),
        "load_average_start": _load_average(),
        "config": {k: {kk: (list(vv) if isinstance(vv, tuple) else vv) for kk, vv in v.items()} for k, v in s.items()},
    }
    if mode == "tiny":
        result["note"] = f"{TINY_ENV} is set: tiny test settings, the numbers mean nothing"

    syn = s["synthesis"]
    log(f"synthesis: generator ngf {syn['ngf']}, {syn['n_blocks']} blocks, {syn['size']}x{syn['size']} slices on {dev}")
    result["synthesis"] = measure_synthesis(device=dev, log=log, **syn)

    mem = s["memory"]
    log(f"memory: synthesising a {'x'.join(map(str, mem['shape'][::-1]))} int16 volume in a subprocess")
    result["memory"] = measure_memory(device=dev, **mem)
    if tuple(mem["shape"]) != tuple(SETTINGS["full"]["memory"]["shape"]):
        result["memory"]["note"] = f"{mode} setting: a smaller volume than the 512x512x300 of the protocol"

    ctx = s["context"]
    log(f"2.5-D synthesis: a {ctx['context']}-slice model against a 2-D one, ngf {ctx['ngf']}, {ctx['n_blocks']} blocks, "
        f"{ctx['slices']} slices of {ctx['size']}x{ctx['size']}")
    result["context"] = measure_context_cost(device=dev, log=log, **ctx)

    if chosen:
        result["methods"] = chosen
    tr = dict(s["training"])
    log(f"training: one iteration of {', '.join(chosen) if chosen else 'every method'} at ngf {tr['ngf']}, "
        f"{tr['n_blocks']} blocks, {tr['size']}x{tr['size']}, batch {tr['batch']}, in {' and '.join(TRAINING_PRECISIONS)}")
    result["training"] = measure_training(methods=chosen, device=dev, log=log, precisions=TRAINING_PRECISIONS, **tr)
    if s.get("training_papers"):
        tp = dict(s["training_papers"])
        if chosen:
            tp["methods"] = chosen
        log(f"training at the papers' size: {', '.join(tp['methods'])} at ngf {tp['ngf']}, {tp['n_blocks']} blocks, "
            f"{tp['size']}x{tp['size']}, in {' and '.join(TRAINING_PRECISIONS)}")
        result["training_papers"] = measure_training(device=dev, log=log, precisions=TRAINING_PRECISIONS, **tp)

    ld = s["loader"]
    log(f"loader: {ld['n_batches']} batches of {ld['batch']} slice(s), {ld['size']}x{ld['size']}")
    loader = measure_loader(workdir=getattr(args, "out", None), **ld)
    if mode == "full":
        quick_cyclegan = measure_training(methods=["cyclegan"], device=dev, **LOADER_TRAINING)["cyclegan"]
        train_size = LOADER_TRAINING
    else:
        quick_cyclegan = result["training"]["cyclegan"]
        train_size = tr
    iteration_s = quick_cyclegan["iteration_s"]
    loader["training_iterations_per_s"] = 1.0 / iteration_s
    loader["ratio"] = loader["batches_per_s"] * iteration_s
    loader["loader_share"] = (1.0 / loader["batches_per_s"]) / (1.0 / loader["batches_per_s"] + iteration_s)
    loader["training"] = {"method": "cyclegan",
                          **{k: train_size[k] for k in ("ngf", "n_blocks", "ndf", "size", "batch")}}
    result["loader"] = loader

    result["load_average_end"] = _load_average()
    result["seconds"] = time.perf_counter() - t_start
    result["torch_threads"] = torch.get_num_threads()
    return result


def summary(result):
    """The key numbers as a few lines of text."""
    m = result.get("machine", {})
    flags = result.get("cpu_features") or {}
    lines = [
        f"dicyc bench speed ({result.get('mode')}) on {m.get('cpu') or m.get('processor')}"
        f"{', ' + m['gpu'] if m.get('gpu') else ''}, torch {m.get('torch')}, {m.get('torch_threads')} threads, "
        f"device {result.get('device')}; load average {result.get('load_average_start')} -> "
        f"{result.get('load_average_end')}; {result.get('seconds', 0):.0f} s",
    ]
    if flags:
        lines.append("cpu features: " + ", ".join(k for k in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
                                                   if flags.get(k)) + f"; torch capability {flags.get('torch_capability')}"
                     + (f"; ISA limited by {result['isa_limits']} (emulation)" if result.get("isa_limits") else ""))
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    s = result.get("synthesis")
    if s:
        lines.append(
            f"synthesis (ngf {s['ngf']}, {s['n_blocks']} blocks, {s['size']}x{s['size']}, "
            f"{s['flops_per_slice'] / 1e9:.1f} GFLOP/slice): default path ({s['precision']}, "
            f"{(s.get('path') or {}).get('layout', '?')}, batch {s['batch']}) "
            f"{s['slices_per_s']:.3f} slices/s vs fp32 eager batch-1 reference {s['reference_slices_per_s']:.3f} "
            f"slices/s -> speedup {s['speedup_vs_reference']:.2f}x"
        )
        lines.append(
            f"  {s['gflops']:.0f} GFLOP/s achieved (reference {s['reference_gflops']:.0f}); matmul ceiling "
            f"{s['matmul_ceiling_gflops']:.0f} GFLOP/s {s['precision']}, {s['matmul_ceiling_fp32_gflops']:.0f} fp32 "
            f"-> {100 * s['fraction_of_ceiling']:.0f}% of the ceiling"
        )
    mem = result.get("memory")
    if mem:
        shape = "x".join(map(str, mem["shape"][::-1]))
        lines.append(
            f"memory: synthesising a {shape} {mem['input_dtype']} volume ({mem['input_mb']:.0f} MB; "
            f"{mem['float32_copy_mb']:.0f} MB per float32 copy): peak RSS {mem['peak_rss_mb']:.0f} MB, "
            f"+{mem['peak_rss_increase_mb']:.0f} MB over the loaded input = "
            f"{mem['float32_copies_beyond_input']:.2f} float32 copies (numpy peak {mem['numpy_float32_copies']:.2f})"
            + (f" [{mem['note']}]" if mem.get("note") else "")
        )
    c = result.get("context")
    if c:
        lines.append(
            f"2.5-D synthesis ({c['context_slices']} slices, ngf {c['ngf']}, {c['n_blocks']} blocks, {c['slices']} x "
            f"{c['size']}x{c['size']}, fp32, end to end): {c['seconds_context']:.2f} s against 2-D {c['seconds_2d']:.2f} s "
            f"-> {c['ratio']:.2f}x (paired repeats {', '.join(f'{r:.2f}' for r in c['ratio_per_repeat'])})"
        )
    for key in ("training", "training_papers"):
        tr = result.get(key)
        if not tr:
            continue
        c = result.get("config", {}).get(key, {})
        lines.append(
            f"training iteration (ngf {c.get('ngf')}, {c.get('n_blocks')} blocks, ndf {c.get('ndf')}, "
            f"{c.get('size')}x{c.get('size')}, batch {c.get('batch')}): fp32 seconds and x CycleGAN "
            f"(paper: DiCyc {PAPER_DICYC_RELATIVE_TIME}x); auto precision, its seconds and speed-up over fp32; "
            f"training memory and x CycleGAN (paper: DiCyc {PAPER_DICYC_RELATIVE_MEMORY}x):"
        )
        width = max([14] + [len(name) for name in tr])
        for name, e in tr.items():
            rel = e.get("relative_to_cyclegan")
            line = f"  {name:<{width}} {e['iteration_s']:8.3f} s" + (f" {rel:5.2f}x" if rel is not None else "")
            if "auto_precision" in e:
                line += (f" | auto={e['auto_precision']} {e['precisions']['auto']['iteration_s']:8.3f} s "
                         f"{e['auto_speedup']:5.2f}x")
            if e.get("memory_mb") is not None:
                mrel = e.get("memory_relative_to_cyclegan")
                line += f" | {e['memory_mb']:7.1f} MB" + (f" {mrel:5.2f}x" if mrel is not None else "")
            lines.append(line)
    ld = result.get("loader")
    if ld:
        lines.append(
            f"loader: {ld['batches_per_s']:.1f} batches/s ({ld['batch']} x {ld['size']}x{ld['size']}, augmented) vs "
            f"{ld['training_iterations_per_s']:.2f} CycleGAN iterations/s -> ratio {ld['ratio']:.1f} "
            f"(data is {100 * ld['loader_share']:.1f}% of an iteration)"
        )
    return "\n".join(lines)
