#!/usr/bin/env python3
"""Markdown tables of `dicyc bench quality --json` results, as the README quotes them.

Usage: python tools/quality_tables.py RESULT.json [RESULT.json ...] [--metric ssim_clean]

Every number the README's quality tables show comes out of this script and the JSON files in
docs/results/, so a reader can regenerate them (and check them) without retraining anything.
Rows: setting, family, method, direction; columns: SSIM against the clean and the noisy
reference, PSNR (clean), displacement, reproduced fraction of the scanner deformation, outline
Dice with the source / other geometry; mean over subject x seed cases, ± the sd of the seeds'
means when there are several seeds. Then the paired t-tests of the chosen metric: those the
benchmark ran, and with ``--versus A B`` also A against B over their common subject x seed
cases (for a comparison the benchmark does not make, such as a variant against a baseline).
"""

import argparse
import json
import sys


def _cell(row, key, digits):
    value = row.get(key)
    if value is None:
        return "—"
    spread = row.get(f"{key}_seed_sd")
    text = f"{value:.{digits}f}"
    if spread is not None and len(row.get("seeds", [])) > 1:
        text += f" ± {spread:.{digits}f}"
    return text


def results_table(result):
    cols = [("SSIM clean", "ssim_clean", 3), ("SSIM noisy", "ssim", 3), ("PSNR clean", "psnr_clean", 2),
            ("displ. mm", "displacement_mm", 2), ("reproduced", "reproduced", 2), ("outline src", "outline_source", 3),
            ("outline other", "outline_other", 3)]
    lines = ["| setting | method | direction | n | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---|---|---|" + "---|" * len(cols)]
    for r in result["results"]:
        setting = f"{r['setting']} ({r['family']})" if r.get("family") else r["setting"]
        lines.append(f"| {setting} | `{r['method']}` | {r['direction'].replace('->', '→')} | {r['n']} | "
                     + " | ".join(_cell(r, key, d) for _, key, d in cols) + " |")
    return "\n".join(lines)


def tests_table(result, metric):
    lines = [f"| setting | direction | method | versus | Δ {metric} | p | n |", "|---|---|---|---|---|---|---|"]
    for t in result.get("tests", []):
        if t["metric"] != metric:
            continue
        setting = f"{t['setting']} ({t['family']})" if t.get("family") else t["setting"]
        lines.append(f"| {setting} | {t['direction'].replace('->', '→')} | `{t['method']}` | `{t['versus']}` ({t['kind']}) "
                     f"| {t['mean_difference']:+.3f} | {t['p']:.2g} | {t['n']} |")
    return "\n".join(lines)


def versus_table(result, a, b, metric):
    """Paired t-tests of method ``a`` against ``b`` over their common subject x seed cases, per setting."""
    from dicyc.bench.quality import DIRECTIONS  # the cases' direction codes ("pd2t2") as the tables name them
    from dicyc.metrics import paired_ttest

    by_key = {}
    for c in result.get("cases", []):
        key = (c["setting"], c.get("family"), c["direction"], c["method"])
        by_key.setdefault(key, {})[(c["subject"], c["seed"])] = c.get(metric)
    lines = [f"| setting | direction | method | versus | Δ {metric} | p | n |", "|---|---|---|---|---|---|---|"]
    for setting, family, direction in sorted({k[:3] for k in by_key}, key=str):
        xa, xb = by_key.get((setting, family, direction, a), {}), by_key.get((setting, family, direction, b), {})
        common = sorted(set(xa) & set(xb))
        if len(common) < 2:
            continue
        test = paired_ttest([xa[k] for k in common], [xb[k] for k in common])
        name = f"{setting} ({family})" if family else setting
        label = DIRECTIONS.get(direction, direction).replace("->", "→")
        lines.append(f"| {name} | {label} | `{a}` | `{b}` | {test['mean_difference']:+.3f} "
                     f"| {test['p']:.2g} | {test['n']} |")
    return "\n".join(lines)


def learned_table(result):
    groups = {}
    for item in result.get("learned", []):
        groups.setdefault((item["setting"], item["method"], item["direction"]), []).append(item["reproduced"])
    if not groups:
        return ""
    lines = ["| setting | method | direction | deformed pass: share of the scanner deformation learned | n |",
             "|---|---|---|---|---|"]
    for (setting, method, direction), values in groups.items():
        mean = sum(values) / len(values)
        lines.append(f"| {setting} | `{method}` | {direction.replace('->', '→')} | {mean:.2f} | {len(values)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="JSON files written by dicyc bench quality --json")
    parser.add_argument("--metric", default="ssim_clean", help="metric of the t-test table (default ssim_clean)")
    parser.add_argument("--versus", nargs=2, action="append", metavar=("A", "B"), default=[],
                        help="also test method A against method B (labels as in the result, e.g. "
                             "'dicyc[lambda_adv_local=1]' cyclegan); may be repeated")
    args = parser.parse_args(argv)
    for path in args.results:
        with open(path, encoding="utf-8") as fh:
            result = json.load(fh)
        machine = result.get("machine", {})
        config = result.get("config", {})
        print(f"### {path}\n")
        print(f"`{machine.get('command') or 'dicyc bench quality'}`, {machine.get('date', '?')}, "
              f"{machine.get('cpu', machine.get('processor', '?'))}, {machine.get('cpu_count', '?')} cores, "
              f"torch {machine.get('torch', '?')}; {config.get('iterations')} iterations of batch {config.get('batch_size')}, "
              f"seeds {config.get('seeds')}, wall {result.get('wall_s', 0) / 60:.1f} min\n")
        print(results_table(result) + "\n")
        print(tests_table(result, args.metric) + "\n")
        for a, b in args.versus:
            print(versus_table(result, a, b, args.metric) + "\n")
        learned = learned_table(result)
        if learned:
            print(learned + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
