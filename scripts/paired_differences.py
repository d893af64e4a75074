"""Paired (same-seed) differences of a study's groups against one reference group, from the
``runs.csv`` that ``fedlr report`` writes: the mean difference of a metric over the seeds both
groups ran and its paired 95 % t interval (``fedlr.results.stats.paired_difference``). A seed
fixes the data split, the test set and every draw, so comparing within a seed removes the spread
the seeds share; the groups' own intervals (``table.csv``) overlap far more than their
differences do.

    .venv/bin/python scripts/paired_differences.py docs/studies/compression/runs.csv final_accuracy \\
        codec,compression.rank,compression.adaptive "none 1 none"

Prints a Markdown table: one row per other group (the values of KEY_COLUMNS joined by spaces).
"""

from __future__ import annotations

import argparse
import csv
import sys

from fedlr.results.stats import paired_difference


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_csv")
    ap.add_argument("metric", help="a runs.csv column, e.g. final_accuracy, final_balanced_accuracy")
    ap.add_argument("key_columns", help="comma-separated runs.csv columns that name a group")
    ap.add_argument("reference", help="the reference group: its key columns' values joined by spaces")
    args = ap.parse_args(argv)
    rows = list(csv.DictReader(open(args.runs_csv)))
    keys = args.key_columns.split(",")
    missing = [c for c in [args.metric, *keys, "seed"] if rows and c not in rows[0]]
    if missing:
        print(f"error: {args.runs_csv} has no column {missing[0]!r}", file=sys.stderr)
        return 2
    groups: dict[str, dict[str, float]] = {}
    for r in rows:
        if r[args.metric] != "":
            groups.setdefault(" ".join(r[c] for c in keys), {})[r["seed"]] = float(r[args.metric])
    if args.reference not in groups:
        print(f"error: no group {args.reference!r}; groups: {sorted(groups)}", file=sys.stderr)
        return 2
    ref = groups[args.reference]
    print(f"| {' '.join(keys)} | seeds | mean {args.metric} − reference's | 95 % CI (paired t) |")
    print("|---|---:|---:|---:|")
    for name, values in groups.items():
        if name == args.reference:
            continue
        d = paired_difference(values, ref)
        ci = "—" if d.kind is None else f"[{d.low:+.3f}, {d.high:+.3f}]"
        mean = "—" if d.mean is None else f"{d.mean:+.3f}"
        print(f"| {name} | {d.n} | {mean} | {ci} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
