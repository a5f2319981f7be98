#!/usr/bin/env python3
"""Kill-and-resume fault campaign: SIGKILL a tiny `dicyc train` at random moments, resume, count damage.

Why: "after kill -9 at any moment, --resume continues" is a promise about every instant of a
run: start-up, data preparation, iterations, and the middle of a checkpoint, model, preview or
event write. A test can hit a few instants; this script hits many and counts what a user would
meet afterwards. It trains a tiny CycleGAN on a synthetic MR/CT pair in a scratch folder, kills
it N times (half of the kills at a random moment, half the moment a temporary file of an atomic
write appears, i.e. during a write), inspects the run folder after every kill, resumes, and
finally lets the run finish and compares its weights with an uninterrupted run of the same
configuration. Counted:

* corrupt checkpoints: ``checkpoint.safetensors`` present but not loadable in full;
* corrupt models: ``model.safetensors`` / ``model_best.safetensors`` not loadable as a model with
  finite weights, or a published ``config.json``, preview or loss-curve PNG that is incomplete;
* leftovers: temporary files still in the run folder after the run finished;
* invalid event lines: lines of ``events.jsonl`` that are not whole JSON objects;
* failed resumes: a resumed (or restarted) training that ended with an error instead of our kill,
  or a final resume that did not finish.

Usage (from the repository root, with the project's environment)::

    python tools/fault-campaign.py                 # 12 kills, about two minutes on 2 CPU cores
    python tools/fault-campaign.py --kills 60 --iterations 2000 --json fault-campaign.json

The result (figures, command, machine, date) is printed and, with ``--json``, written as JSON.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.(tmp|part)(\.[^/\\]+)?$")
TRAIN = ["--method", "cyclegan", "--ngf", "8", "--n-blocks", "2", "--ndf", "8", "--slice-size", "32",
         "--spacing", "2", "--checkpoint-every", "5", "--epoch-length", "40", "--seed", "0"]


def _toy_pair(folder):
    """A small MR-like and CT-like volume pair (12 slices of 40x40 at 2x2x3 mm), as in the tests."""
    import numpy as np

    from dicyc.volume import Volume, write_volume

    z, y, x = np.indices((12, 40, 40))
    body = ((y - 20) / 14.0) ** 2 + ((x - 20) / 11.0) ** 2 < 1
    ring = body & ~(((y - 20) / 11.0) ** 2 + ((x - 20) / 8.0) ** 2 < 1)
    mr = np.where(body, 300.0, 0.0) + np.where(ring, -200.0, 0.0) + np.random.default_rng(0).normal(0, 5, body.shape)
    ct = np.where(body, 40.0, -1000.0) + np.where(ring, 960.0, 0.0)
    write_volume(Volume(mr.astype(np.float32), (2, 2, 3)), folder / "mr.nii.gz")
    write_volume(Volume(ct.astype(np.int16), (2, 2, 3)), folder / "ct.nii.gz")
    return folder / "mr.nii.gz", folder / "ct.nii.gz"


def _environment(cache):
    env = dict(os.environ)
    env["DICYC_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _command(run, mr, ct, iterations, resume):
    base = [sys.executable, "-m", "dicyc", "train", "--out", str(run)]
    if resume:
        return base + ["--resume"]
    return base + ["--a", str(mr), "--b", str(ct), *TRAIN, "--iterations", str(iterations)]


def _temporaries(run):
    return [p for p in run.rglob(".*") if p.is_file() and TEMPORARY.match(p.name)]


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# ===================================================================== inspection
def _checkpoint_ok(path):
    from safetensors.torch import load_file

    from dicyc.modelfile import check_safetensors_header

    try:
        header = check_safetensors_header(path, what="training checkpoint")
        json.loads(header["__metadata__"]["dicyc_checkpoint"])
        load_file(str(path))
        return True
    except Exception:  # any failure to load in full is damage
        return False


def _model_ok(path):
    from dicyc.modelfile import load_model

    try:
        model = load_model(path)
        for direction in model.directions:
            model.generator(direction)
        return True
    except Exception:
        return False


def _published_ok(path):
    """config.json parses; a PNG ends with its IEND chunk."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".png":
            data = path.read_bytes()
            return data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")
        return True
    except (OSError, ValueError):
        return False


def _invalid_event_lines(path):
    if not path.is_file():
        return 0
    bad = 0
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":  # a last line without its newline is checked like the others
        lines = lines[:-1]
    for raw in lines:
        try:
            if not isinstance(json.loads(raw), dict):
                bad += 1
        except ValueError:
            bad += 1
    return bad


def _inspect(run, totals):
    """Check everything published in the run folder; add the damage found to ``totals``."""
    ckpt = run / "checkpoint.safetensors"
    if ckpt.exists() and not _checkpoint_ok(ckpt):
        totals["corrupt_checkpoints"] += 1
    for name in ("model.safetensors", "model_best.safetensors"):
        if (run / name).exists() and not _model_ok(run / name):
            totals["corrupt_models"] += 1
    for path in [run / "config.json", run / "loss_curve.png", *sorted((run / "previews").glob("*.png"))]:
        if path.exists() and not _published_ok(path):
            totals["corrupt_other_files"] += 1
    totals["invalid_event_lines"] = _invalid_event_lines(run / "events.jsonl")


# ===================================================================== the campaign
def run_campaign(kills, seed, work, iterations, log=print, max_delay=10.0):
    import torch

    rng = random.Random(seed)
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    mr, ct = _toy_pair(inputs)
    env = _environment(work / "cache")

    log("uninterrupted reference run ...")
    t0 = time.monotonic()
    ref = subprocess.run(_command(work / "reference", mr, ct, iterations, False), env=env, capture_output=True,
                         text=True)
    reference_s = time.monotonic() - t0
    if ref.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{ref.stderr}")
    log(f"  {reference_s:.1f} s")

    run = work / "run"
    totals = {"kills": 0, "kills_during_a_write": 0, "kills_before_the_first_checkpoint": 0, "temporaries_after_kills": 0,
              "corrupt_checkpoints": 0, "corrupt_models": 0, "corrupt_other_files": 0, "leftovers": 0,
              "invalid_event_lines": 0, "failed_resumes": 0, "resumes": 0, "restarts": 0, "finished_early": False,
              "interrupted_writes": {}}
    failures = []
    horizon = max(reference_s, 4.0)
    for k in range(kills):
        resume = (run / "checkpoint.safetensors").exists()
        if k:
            totals["resumes" if resume else "restarts"] += 1
        proc = subprocess.Popen(_command(run, mr, ct, iterations, resume), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        targeted = k % 2 == 1
        deadline = time.monotonic() + rng.uniform(0.2, min(horizon * 0.3, max_delay))
        if targeted:  # kill the moment the m-th atomic write of this start shows its temporary file
            wanted, seen = rng.randint(1, 12), set()
            deadline += horizon
            while proc.poll() is None and time.monotonic() < deadline:
                if run.is_dir():
                    seen.update(e.name for e in os.scandir(run) if TEMPORARY.match(e.name))
                    if len(seen) >= wanted:
                        break
                time.sleep(0.0005)
        else:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        if proc.poll() is not None:  # it ended before the kill
            err = proc.stderr.read()
            if proc.returncode != 0:
                totals["failed_resumes"] += 1
                failures.append(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
            else:
                totals["finished_early"] = True
                log(f"kill {k + 1}: the run finished before it; stopping the kills")
                break
            continue
        _kill(proc)
        totals["kills"] += 1
        left = _temporaries(run)
        if left:
            totals["kills_during_a_write"] += 1
            totals["temporaries_after_kills"] += len(left)
            for path in left:  # ".checkpoint.0123abcd.tmp.safetensors" -> checkpoint.safetensors
                stem, _, ext = re.sub(r"^\.", "", path.name).partition(".tmp")
                name = stem.rsplit(".", 1)[0] + ext
                totals["interrupted_writes"][name] = totals["interrupted_writes"].get(name, 0) + 1
        if not (run / "checkpoint.safetensors").exists():
            totals["kills_before_the_first_checkpoint"] += 1
        _inspect(run, totals)
        log(f"kill {k + 1}/{kills}: {'during a write' if left else ('targeted' if targeted else 'random')}, "
            f"{len(left)} temporary file(s) left, checkpoint {'present' if (run / 'checkpoint.safetensors').exists() else 'absent'}")

    log("final resume to the end ...")
    resume = (run / "checkpoint.safetensors").exists()
    final = subprocess.run(_command(run, mr, ct, iterations, resume), env=env, capture_output=True, text=True)
    if final.returncode != 0:
        totals["failed_resumes"] += 1
        failures.append(final.stderr.strip().splitlines()[-1] if final.stderr.strip() else f"exit {final.returncode}")
    _inspect(run, totals)
    totals["leftovers"] = len(_temporaries(run))

    from safetensors.torch import load_file

    identical = None
    if final.returncode == 0:
        a, b = load_file(str(work / "reference" / "model.safetensors")), load_file(str(run / "model.safetensors"))
        identical = a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    totals["final_weights_identical_to_uninterrupted_run"] = identical
    totals["failures"] = failures
    totals["reference_run_s"] = round(reference_s, 1)
    return totals


def _machine():
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu or platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}, torch {torch.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12, help="SIGKILLs to deliver (default 12)")
    parser.add_argument("--iterations", type=int, default=150, help="training length (default 150)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--max-delay", type=float, default=10.0,
                        help="a random kill comes at most this many seconds after a start (default 10; at most "
                             "0.3 of the uninterrupted run), so long campaigns keep killing instead of finishing")
    parser.add_argument("--work", help="scratch folder (default: a temporary folder, removed afterwards)")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dicyc-faults-"))
    try:
        result = run_campaign(args.kills, args.seed, work, args.iterations,
                              log=lambda m: print(m, file=sys.stderr, flush=True), max_delay=args.max_delay)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    record = {
        "command": " ".join(["python", "tools/fault-campaign.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": _machine(),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.monotonic() - t0, 1),
        "training": " ".join(TRAIN) + f" --iterations {args.iterations}",
        **result,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    bad = (record["corrupt_checkpoints"] + record["corrupt_models"] + record["corrupt_other_files"] + record["leftovers"]
           + record["invalid_event_lines"] + record["failed_resumes"])
    return 0 if bad == 0 and record["final_weights_identical_to_uninterrupted_run"] else 1


if __name__ == "__main__":
    sys.exit(main())
