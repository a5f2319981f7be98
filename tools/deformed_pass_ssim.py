#!/usr/bin/env python3
"""How far a DiCyc run's deformed pass strays from its undeformed one on the undeformed control.

    python tools/deformed_pass_ssim.py RUN_FOLDER [--cohort COHORT_FOLDER] [--slices N]

RUN_FOLDER is a finished `dicyc bench quality` DiCyc run of the undeformed setting (its folder
under `runs/undeformed/`); COHORT_FOLDER the phantom cohort it was trained on (default: the
quick benchmark's, `cohort-seed0` next to `runs/`). Prints, per direction, the mean SSIM of
G(x) and of G_T(x) against the clean reference over the test subjects
(:func:`dicyc.bench.learned.deformed_pass_scores`). The README quotes it under *Benchmarks*.
"""

import argparse
import sys
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished DiCyc run folder of the undeformed setting")
    parser.add_argument("--cohort", help="its phantom cohort folder (default: cohort-seed0 beside runs/)")
    parser.add_argument("--slices", type=int, default=8, help="slices with the most brain per subject (default 8)")
    args = parser.parse_args(argv)
    import numpy as np

    from dicyc.bench.learned import deformed_pass_scores
    from dicyc.errors import DicycError

    run = Path(args.run)
    cohort = Path(args.cohort) if args.cohort else run.resolve().parents[2] / "cohort-seed0"
    try:
        if not (run / "checkpoint.safetensors").is_file():
            raise DicycError(f"{run} is not a finished training run (no checkpoint.safetensors).")
        if not (cohort / "cohort.json").is_file():
            raise DicycError(f"{cohort} is not a phantom cohort folder (no cohort.json); name it with --cohort.")
        scores = deformed_pass_scores(run, cohort, n_slices=args.slices)
    except DicycError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    names = {"AB": "A->B", "BA": "B->A"}
    for direction, s in scores.items():
        print(f"{names[direction]}: SSIM clean, G(x) {np.mean(s['undeformed']):.3f}, G_T(x) {np.mean(s['deformed']):.3f} "
              f"(n = {len(s['undeformed'])} test subjects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
