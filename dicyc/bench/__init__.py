"""Benchmarks (``dicyc bench``): commands that produce the numbers quoted in the README.

Benchmarks are not tests: tests check behaviour, benchmarks measure. Every result records the
command, the machine and the date, and compares against a reference measured in the same run
(a ratio), since shared machines are noisy. See BENCHMARKS.md of the team's design.

* :mod:`dicyc.bench.quality` — the seed papers' protocol on the multi-sequence phantom: PD↔T2
  with domain-specific deformations of every T2, each method trained unpaired on one budget.
* :mod:`dicyc.bench.head` — real head MR→CT (no ground truth): alignment with the source and
  CT realism.
* :mod:`dicyc.bench.abdomen` — the 2021 paper's abdominal T2*↔CT protocol on the abdominal
  phantom: aorta-ROI metrics, aorta and spine Dice against the source, table hallucination.
* :mod:`dicyc.bench.speed` — synthesis throughput against an fp32 eager reference, memory,
  training cost per method, data-loader throughput.
"""

import datetime
import os
import platform
import sys


def mean_sd(values, single_sd=0.0):
    """``(mean, sample sd)`` of the values that are not None; ``(None, None)`` when none are.

    One value has no sample sd: ``single_sd`` is what is reported then (0.0 in the quality and
    abdomen tables, None where the head benchmark says "no spread measured").
    """
    import numpy as np

    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if values.size == 0:
        return None, None
    return float(values.mean()), (float(values.std(ddof=1)) if values.size > 1 else single_sd)


def machine_info():
    """What ran the benchmark: enough to know whether two results are comparable."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "command": " ".join(["dicyc"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith(("dicyc", "__main__.py")) else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def parse_method(spec):
    """``NAME`` or ``NAME[key=value,...]`` → (label, method name, options).

    Every benchmark that compares methods takes variants this way, so an ablation of the quality
    benchmark can be rerun on the real head data with the same spelling.

    Values are read as JSON where they parse (numbers, true/false, null), else as text.
    """
    import json
    import re

    from dicyc.errors import DicycError

    match = re.fullmatch(r"([a-z0-9-]+)(?:\[(.*)\])?", spec.strip())
    if not match:
        raise DicycError(f"method {spec!r} is not NAME or NAME[key=value,...].")
    name, body = match.group(1), match.group(2)
    options = {}
    for item in filter(None, (part.strip() for part in re.split(r"[,;]", body or ""))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DicycError(f"method option {item!r} in {spec!r} is not key=value.")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value.strip()
    label = name if not options else name + "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in options.items()) + "]"
    return label, name, options


def training_config(method, settings, **fields):
    """The resolved training configuration of one benchmark run from its protocol ``settings``.

    Network sizes, slice grid, budget and seed come from ``settings`` (a benchmark's SETTINGS
    entry); ``fields`` adds what differs per benchmark (modalities, names, method options).
    Four checkpoints per run, and an "epoch" of a quarter of the budget for the loss curve.
    """
    from dicyc.train import resolve_config

    s = settings
    quarter = max(s["iterations"] // 4, 1)
    return resolve_config(None, {
        "method": method, "spacing": [s["spacing"]] * 2, "slice_size": s["slice_size"], "ngf": s["ngf"],
        "n_blocks": s["n_blocks"], "ndf": s["ndf"], "iterations": s["iterations"], "batch_size": s["batch_size"],
        "checkpoint_every": quarter, "epoch_length": quarter, "seed": 0, **fields,
    })


#: options of every method whose default trains exactly as before the option existed (a 2-D model)
INERT_DEFAULTS = {"context_slices": 1}


def digest_config(config):
    """The part of a resolved training configuration that names a benchmark run.

    Options a recipe lists in ``inert_defaults`` are left out while at that value: such an
    option was added after earlier runs, and its default trains exactly as before it existed,
    so adding it does not throw away every finished run. :data:`INERT_DEFAULTS` are such
    defaults for every method (``context_slices`` 1: 2-D, as every run before the option).
    """
    from dicyc.methods import get_method

    inert = {**INERT_DEFAULTS, **getattr(get_method(config["method"]), "inert_defaults", {})}
    return {k: v for k, v in config.items() if not (k in inert and v == inert[k])}


def train_or_reuse(runs_dir, config, a, b, device, log):
    """Train ``config`` on domains ``a``/``b`` under ``runs_dir``, or reuse an identical finished run.

    The run folder is named after the method and a digest of the resolved training configuration
    and the input lists, so a benchmark rerun after a change of defaults (or of data) trains
    afresh instead of scoring a stale model, while an unchanged rerun costs nothing. An
    interrupted run in that folder is resumed from its last checkpoint. Returns
    ``(model_path, training_seconds)``; the seconds are None for a reused model.
    """
    import hashlib
    import json
    import time
    from pathlib import Path

    from dicyc import __version__
    from dicyc.train import train

    def describe(spec):
        path = Path(spec)
        return path.read_text() if path.suffix == ".txt" and path.is_file() else str(path)

    key = json.dumps({"config": digest_config(config), "a": describe(a), "b": describe(b), "version": __version__},
                     sort_keys=True)
    run_dir = Path(runs_dir) / f"{config['method']}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if _finished(run_dir):
        log(f"{run_dir}: a finished run with this configuration found, reused")
        return run_dir / "model.safetensors", None
    t0 = time.monotonic()
    log(f"training {config['method']} ({config['iterations']} iterations) → {run_dir}")
    path = train(a, b, run_dir, config, resume=True, device=device, log=log)
    return path, time.monotonic() - t0


def _finished(run_dir):
    """True when the run's event log ends with its "done" event."""
    import json

    events = run_dir / "events.jsonl"
    if not (run_dir / "model.safetensors").exists() or not events.exists():
        return False
    lines = events.read_text().strip().splitlines()
    try:
        return bool(lines) and json.loads(lines[-1]).get("event") == "done"
    except ValueError:
        return False
