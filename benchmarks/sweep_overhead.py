"""Benchmark (issue 17): what a run of ``fedlr sweep`` costs beyond its rounds.

``fedlr sweep experiments/sweep_tiny.toml`` (8 runs of 2 rounds on the tiny random BERT) runs in a
fresh process, its runs written to a temp dir. Each run's duration is the time from the end of the
run before it (the sweep's start for the first) to its ``summary.json`` being written. Its
arithmetic is its steady-state rounds: ``num_rounds`` × the ledger's last round (the wall time
between the last two rows; the first training round builds the workers' models and is not steady).
Fixed cost of a run = duration − arithmetic: Ray start-up, worker start, model build,
tokenization, enrollment, the initial evaluation, checkpoints, export.

    .venv/bin/python benchmarks/sweep_overhead.py              # writes benchmarks/sweep_overhead.txt
    .venv/bin/python benchmarks/sweep_overhead.py --label after --keep before   # keeps the 'before' section
    .venv/bin/python benchmarks/sweep_overhead.py --label after --keep before --keep-from OLD/benchmarks/sweep_overhead.txt

The result's last line is ``fixed cost per run after the first: X s`` (the mean over runs 2..8).
With ``--keep LABEL`` the sections of the existing .txt with that label are kept above the new one,
so one file holds the before and after figures, each with its machine, load and date.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import BENCH_DIR, ROOT, Report, in_fresh_process, print_result

CONFIG = "experiments/sweep_tiny.toml"
LAST_LINE = "fixed cost per run after the first:"


def run_costs(root: Path, started: float) -> list[dict]:
    """Per run of the sweep under ``root`` (in the order they finished): duration, arithmetic and
    fixed cost in seconds."""
    manifest = json.loads((root / "sweep.json").read_text())
    runs = []
    for run in manifest["runs"]:
        path = root / run["slug"]
        ledger = [json.loads(line) for line in (path / "ledger.jsonl").read_text().splitlines()]
        walls = [row["wall_time_s"] for row in ledger]
        runs.append({"slug": run["slug"], "end": (path / "summary.json").stat().st_mtime,
                     "steady_round_s": walls[-1] - walls[-2], "rounds": ledger[-1]["round"]})
    runs.sort(key=lambda r: r["end"])
    previous = started
    for run in runs:
        run["duration_s"] = run["end"] - previous
        run["arithmetic_s"] = run["rounds"] * run["steady_round_s"]
        run["fixed_s"] = run["duration_s"] - run["arithmetic_s"]
        previous = run.pop("end")
    return runs


def measure(out: str, overrides: list[str]) -> None:
    """In a fresh process: the sweep through the command line, then its costs."""
    from fedlr.cli import main

    load_before = os.getloadavg()
    started = time.time()
    sets = [x for o in [f'output.dir="{out}"', *overrides] for x in ("--set", o)]
    code = main(["sweep", CONFIG, "--quiet", *sets])
    total = time.time() - started
    print_result({"exit": code, "total_s": total, "load_before": load_before, "load_after": os.getloadavg(),
                  "runs": run_costs(Path(out) / Path(CONFIG).stem, started)})


def kept_sections(label: str, path: Path) -> list[str]:
    """The lines of ``path``'s section ``label`` (from its '== label' line to the next)."""
    if not path.exists():
        return []
    kept, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("== "):
            inside = line.split()[1] == label
        if inside and not line.startswith(LAST_LINE):
            kept.append(line)
    return kept


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--measure", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--label", default="before", help="names this measurement's section")
    ap.add_argument("--keep", default=None, help="keep the existing .txt's section of this label")
    ap.add_argument("--keep-from", type=Path, default=BENCH_DIR / "sweep_overhead.txt",
                    help="the file holding that section (waited for; e.g. written by a run of an older checkout)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="passed to fedlr sweep (e.g. federation.enroll_timeout_s=3000 on a loaded machine)")
    ap.add_argument("--from-runs", type=Path, default=None, metavar="ROOT",
                    help="no new sweep: the costs of a finished one (ROOT = <output.dir>/sweep_tiny), timed from "
                         "its sweep.json; give the load it ran under with --load")
    ap.add_argument("--load", default="not recorded", help="with --from-runs: the load the sweep ran under")
    args = ap.parse_args()
    if args.measure:
        return measure(args.measure, args.overrides)
    started = time.time()
    if args.from_runs:
        root = args.from_runs
        result = {"exit": "n/a", "load": args.load, "runs": run_costs(root, (root / "sweep.json").stat().st_mtime)}
        result["total_s"] = sum(r["duration_s"] for r in result["runs"])
    else:
        out = tempfile.mkdtemp(prefix="fedlr-sweep-overhead-")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", out,
               *(x for o in args.overrides for x in ("--set", o))]
        os.chdir(ROOT)
        result = in_fresh_process(cmd, args.timeout)
        if isinstance(result, str):
            raise SystemExit(f"the sweep {result}")
        result["load"] = " ".join(f"{when} {'/'.join(f'{x:.2f}' for x in result[key])}"
                                  for when, key in (("before", "load_before"), ("after", "load_after")))
    runs = result["runs"]
    kept = kept_sections(args.keep, args.keep_from) if args.keep else []
    while args.keep and not kept and time.time() - started < args.timeout:
        time.sleep(10)  # the section is still being measured
        kept = kept_sections(args.keep, args.keep_from)
    report = Report("sweep_overhead", "benchmarks/sweep_overhead.py " + " ".join(sys.argv[1:]))
    for line in kept:
        report.line(line)
    date = time.strftime('%Y-%m-%d %H:%M', time.localtime(started if not args.from_runs else
                                                          (args.from_runs / "sweep.json").stat().st_mtime))
    report.line(f"== {args.label}  (date {date}; load average 1/5/15 min: {result['load']})")
    shown = "".join(f" --set {o}" for o in args.overrides)
    report.line(f"fedlr sweep {CONFIG}{shown}: {len(runs)} runs in {result['total_s']:.1f} s (exit {result['exit']})")
    report.line(f"{'run':<34}{'duration_s':>11}{'rounds':>7}{'steady_round_s':>15}{'arithmetic_s':>13}{'fixed_s':>9}")
    for run in runs:
        report.line(f"{run['slug']:<34}{run['duration_s']:>11.2f}{run['rounds']:>7}{run['steady_round_s']:>15.3f}"
                    f"{run['arithmetic_s']:>13.3f}{run['fixed_s']:>9.2f}")
    arithmetic = sum(r["arithmetic_s"] for r in runs)
    later = [r["fixed_s"] for r in runs[1:]]
    report.line(f"sum of steady-state rounds: {arithmetic:.2f} s; sum of fixed costs: "
                f"{sum(r['fixed_s'] for r in runs):.1f} s; first run's fixed cost: {runs[0]['fixed_s']:.2f} s")
    fixed = sum(later) / len(later)
    report.line(f"{args.label}: fixed cost per run after the first {fixed:.2f} s")
    report.line(f"{LAST_LINE} {fixed:.2f} s")
    report.save()


if __name__ == "__main__":
    main()
