#!/usr/bin/env python3
"""What a DiCyc MR→CT run's two passes make of a real head: is the realism in the pass D judges?

    python tools/head_passes.py RUN_FOLDER [--source MR] [--target CT] [--figure PNG] [--json F]

RUN_FOLDER is a finished DiCyc training run with CT as domain B (a `dicyc bench head` run under
`runs/`, or a `dicyc train --out` folder; its checkpoint holds the offset fields and TPS).
SOURCE and TARGET default to the sample head MR and CT. Prints the air / soft-tissue / bone
fractions inside the head of the synthesis G(x), of the deformed pass G_T(x) and of the real CT
(:func:`dicyc.bench.learned.passes_on_head`); ``--figure`` draws three slices of each. The
README quotes it under *Benchmarks*.
"""

import argparse
import json
import sys
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished DiCyc MR→CT run folder")
    parser.add_argument("--source", help="the source MR (default: the sample head MR)")
    parser.add_argument("--target", help="a real CT of the target domain (default: the sample head CT)")
    parser.add_argument("--figure", help="write source, G(x), G_T(x) and a real CT slice for three slices to this PNG")
    parser.add_argument("--json", help="write the fractions as JSON to this file")
    args = parser.parse_args(argv)
    from dicyc.atomic import write_text
    from dicyc.bench.learned import passes_on_head, write_passes_figure
    from dicyc.errors import DicycError

    run = Path(args.run)
    try:
        if not (run / "checkpoint.safetensors").is_file():
            raise DicycError(f"{run} is not a finished training run: it has no checkpoint.safetensors.")
        if not (args.source and args.target):
            from dicyc.samples import prepare

            paths = prepare(["head-mr", "head-ct"], log=lambda *a: None)
        source = args.source or paths["head-mr"]
        target = args.target or paths["head-ct"]
        passes = passes_on_head(run, source, target)
    except DicycError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for key, label in (("undeformed", "G(x), the synthesis"), ("deformed", "G_T(x), judged by D"), ("real", "real CT")):
        f = passes[key]
        print(f"{label}: air {f['air']:.2f}, soft tissue {f['soft_tissue']:.2f}, bone {f['bone']:.2f}")
    print(f"mean |G(x) - G_T(x)| {passes['mean_abs_difference_hu']:.0f} HU over {passes['slices']} slices")
    if args.figure:
        write_passes_figure(args.figure, passes, f"{run.name}: the synthesis and the deformed pass")
    if args.json:
        keep = {k: v for k, v in passes.items() if k != "examples"}
        record = {"run": str(run), "source": str(source), "target": str(target), **keep}
        write_text(args.json, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
