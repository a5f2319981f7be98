"""The prepared GPU run (called by tools/gpu-bench.sh): speed, end-to-end CT synthesis, a quality budget.

Writes into one folder (``--out``):

* ``machine.json``    the machine (GPU name, torch, CPU), the command and the date;
* ``speed.json``      ``dicyc bench speed`` at the papers' sizes (full mode): synthesis against
                      the fp32 batch-1 reference, the 512x512x300 memory run, every method's
                      training iteration in fp32 and auto precision with its memory;
* ``end_to_end.json`` one 512x512x300 int16 CT synthesised end to end (read, synthesise,
                      write; :func:`dicyc.bench.speed.measure_end_to_end`) with the papers' generator;
* ``quality.json``    ``dicyc bench quality`` at the papers' network sizes and 128x128 slices,
                      with as many iterations as fit in ``--quality-seconds`` (estimated from
                      the CycleGAN and DiCyc iteration times just measured);
* ``summary.txt``     the benchmarks' own summaries; ``errors.json`` if a part failed.

``--tiny --device cpu`` shrinks every part (tiny networks, a 6x48x48 volume, a 4-subject
cohort at 8 mm) so the whole script runs in seconds on a CPU: the test suite runs it that way.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
import types
from pathlib import Path

#: the quality budget's tiny stand-in (as the quality tests use)
TINY_QUALITY = {"n_subjects": 4, "n_test": 2, "spacing": 8.0, "slice_size": 28, "ngf": 4, "n_blocks": 1, "ndf": 4,
                "iterations": 2, "batch_size": 1, "deformation_px": 1.0, "families": ["bspline"],
                "settings": ["deformed"]}
#: the share of the quality budget left for the cohort, data preparation and scoring
QUALITY_OVERHEAD = 0.3
QUALITY_METHODS = ("cyclegan", "dicyc")


def _write(out, name, data):
    path = out / name
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def _log(message):
    print(message, file=sys.stderr, flush=True)


def _machine(device):
    import torch

    from dicyc.bench import machine_info
    from dicyc.device import cpu_features

    info = {"machine": machine_info(), "cpu_features": cpu_features(), "device": device,
            "command": " ".join(sys.argv)}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        try:
            info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                                timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = None
    return info


def quality_iterations(speed_result, seconds, n_runs, overhead=QUALITY_OVERHEAD, minimum=100, step=100):
    """Training iterations per run that fit ``seconds`` for ``n_runs`` runs of CycleGAN and DiCyc.

    Uses the auto-precision iteration times of the speed benchmark at the papers' size (its
    ``training`` entry in full mode); ``overhead`` of the budget is left for everything else.
    Rounded down to a multiple of ``step``, at least ``minimum``.
    """
    training = speed_result.get("training") or {}
    per_iteration = 0.0
    for method in QUALITY_METHODS:
        entry = training[method]
        per_iteration += entry.get("precisions", {}).get("auto", entry)["iteration_s"]
    runs_per_method = n_runs / len(QUALITY_METHODS)
    fit = seconds * (1.0 - overhead) / (per_iteration * runs_per_method)
    return max(minimum, int(fit // step) * step)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-bench-results", help="folder for the JSON results")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny settings: checks the script, the numbers mean nothing")
    parser.add_argument("--quality-seconds", type=float, default=360.0,
                        help="the quality budget's wall-clock target in seconds (default 360)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "end_to_end", "quality"],
                        help="parts to leave out")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from dicyc.bench.speed import TINY_ENV

        os.environ[TINY_ENV] = "1"
    from dicyc.device import resolve_device
    from dicyc.errors import DicycError

    try:
        device = str(resolve_device(args.device))  # a missing GPU fails here, in one sentence
    except DicycError as exc:
        print(f"gpu-bench: error: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    _write(out, "machine.json", _machine(device))
    errors, summaries, timings = {}, [], {}
    speed_result = None

    def part(name, run):
        if name in args.skip:
            return None
        _log(f"== {name}")
        t0 = time.monotonic()
        try:
            return run()
        except Exception as exc:  # one failed part must not cost the others
            errors[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            _log(f"{name} failed: {exc}")
            return None
        finally:
            timings[name] = time.monotonic() - t0

    def speed():
        from dicyc.bench import speed as bench

        result = bench.run(types.SimpleNamespace(quick=False, json=None, device=device, out=str(out)), _log)
        _write(out, "speed.json", result)
        summaries.append(bench.summary(result))
        return result

    speed_result = part("speed", speed)

    def end_to_end():
        from dicyc.bench.speed import measure_end_to_end

        kw = dict(shape=(6, 48, 48), ngf=4, n_blocks=1) if args.tiny else {}
        result = measure_end_to_end(device=device, workdir=str(out), **kw)
        _write(out, "end_to_end.json", result)
        summaries.append(f"end to end: {'x'.join(map(str, result['shape'][::-1]))} CT read, synthesised "
                         f"({result['precision']}, batch {result['batch']}) and written in {result['seconds']:.2f} s "
                         f"(synthesis {result['synthesis_seconds']:.2f} s) on {result.get('gpu') or device}")
        return result

    part("end_to_end", end_to_end)

    def quality():
        from dicyc.bench import quality as bench

        if args.tiny:
            settings, iterations = dict(TINY_QUALITY), TINY_QUALITY["iterations"]
        else:
            if speed_result is None:
                raise RuntimeError("the quality budget needs the speed results (iteration times) first")
            n_runs = 2 * len(QUALITY_METHODS)  # deformed and undeformed settings
            iterations = quality_iterations(speed_result, args.quality_seconds, n_runs)
            settings = {"iterations": iterations}
        _log(f"quality: {iterations} iterations per run")
        qargs = types.SimpleNamespace(quick=False, json=None, device=device, out=str(out / "quality"),
                                      methods=list(QUALITY_METHODS), iterations=iterations, seeds=None,
                                      families=["bspline"],  # one deformed setting: two runs per method
                                      settings=settings.get("settings"), batch_size=None, deformation_px=None,
                                      n_test=settings.get("n_test"), cohort_seed=None, scanner_seed=None, jobs=1)
        result = bench.run(qargs, _log, settings=settings)
        result["budget"] = {"seconds_target": args.quality_seconds, "iterations": iterations,
                            "overhead_share": QUALITY_OVERHEAD}
        _write(out, "quality.json", result)
        summaries.append(bench.summary(result))
        return result

    part("quality", quality)
    timings["total"] = time.monotonic() - started
    summaries.append("seconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    (out / "summary.txt").write_text("\n".join(summaries) + "\n")
    print("\n".join(summaries))
    if errors:
        _write(out, "errors.json", errors)
        _log(f"failed parts: {', '.join(errors)} (see {out / 'errors.json'})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
