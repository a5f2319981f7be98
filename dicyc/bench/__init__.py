"""Benchmarks (``dicyc bench``): commands that produce the numbers quoted in the README.

Benchmarks are not tests: tests check behaviour, benchmarks measure. Every result records the
command, the machine and the date, and compares against a reference measured in the same run
(a ratio), since shared machines are noisy. See BENCHMARKS.md of the team's design.

* :mod:`dicyc.bench.quality` — the seed papers' protocol on the multi-sequence phantom: PD↔T2
  with domain-specific deformations of every T2, each method trained unpaired on one budget.
* :mod:`dicyc.bench.head` — real head MR→CT (no ground truth): alignment with the source and
  CT realism.
* :mod:`dicyc.bench.speed` — synthesis throughput against an fp32 eager reference, memory,
  training cost per method, data-loader throughput.
"""

import datetime
import os
import platform
import sys


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
