"""Benchmark (issue 17): what a run of ``fedlr sweep`` costs beyond its rounds, before and after
the sweep started its engine once, measured in one invocation on one machine.

``experiments/sweep_tiny.toml`` (8 runs of 2 rounds on the tiny random BERT) is swept in a fresh
process per measurement, its runs written to a temp dir, by one of two engines:

- ``before``: every run starts and stops its own Ray cluster and worker pool (``execute_sweep``
  with the plain simulation, as ``fedlr sweep`` did before ``fedlr.run.shared_engine``);
- ``after``: ``fedlr sweep`` itself: one Ray cluster and one worker pool for all the runs.

The measurements follow each other (``--order``, default before, after; alternate them, e.g.
``--order before,after,before,after``, so that a load that
drifts falls on both; ``uptime`` is printed beside each. Each run's duration is the time from the end of the
run before it (the sweep's start for the first) to its ``summary.json`` being written. Its
arithmetic is its steady-state rounds: ``num_rounds`` × the ledger's last round (the wall time
between the last two rows; the first training round builds the workers' models and is not steady).
Fixed cost of a run = duration − arithmetic: Ray start-up, worker start, model build,
tokenization, enrollment, the initial evaluation, checkpoints, export.

    nice -n 10 .venv/bin/python benchmarks/sweep_overhead.py    # writes benchmarks/sweep_overhead.txt

The result's last line is ``fixed cost per run after the first: X s``: the ``after`` engine's mean
over runs 2..8 (over its measurements where it has several), above it each engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Report, in_fresh_process, print_result

CONFIG = "experiments/sweep_tiny.toml"  # --config picks another sweep (e.g. fewer runs on a loaded machine)
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


ENGINES = {"before": "one Ray cluster and worker pool per run", "after": "one Ray cluster and worker pool per sweep"}


def sweep_in_this_process(engine: str, config: str, sets: list[str]) -> int:
    """``fedlr sweep CONFIG --quiet`` (``after``), or the same sweep with a simulation that starts
    its own Ray for every run (``before``); the exit code."""
    if engine == "after":
        from fedlr.cli import main

        return main(["sweep", config, "--quiet", *(x for o in sets for x in ("--set", o))])
    from fedlr.results.console import Console
    from fedlr.sweep import execute_sweep, load_sweep, simulate_runner

    result = execute_sweep(load_sweep(config, sets), simulate_runner(Console(quiet=True)), console=Console())
    return 1 if result.failed else 0


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(engine: str, config: str, out: str, overrides: list[str]) -> None:
    """In a fresh process: the sweep on ``engine``, then its costs."""
    uptime_before = uptime()
    started = time.time()
    code = sweep_in_this_process(engine, config, [f'output.dir="{out}"', *overrides])
    total = time.time() - started
    print_result({"exit": code, "total_s": total, "uptime_before": uptime_before, "uptime_after": uptime(),
                  "runs": run_costs(Path(out) / Path(config).stem, started)})


def section(report: Report, engine: str, result: dict) -> float:
    """One measurement's lines; returns its fixed cost per run after the first."""
    runs = result["runs"]
    report.line(f"== {engine}: {ENGINES[engine]}  (started {result['date']})")
    report.line(f"uptime before: {result['uptime_before']}")
    report.line(f"uptime after:  {result['uptime_after']}")
    report.line(f"{len(runs)} runs in {result['total_s']:.1f} s (exit {result['exit']})")
    report.line(f"{'run':<34}{'duration_s':>11}{'rounds':>7}{'steady_round_s':>15}{'arithmetic_s':>13}{'fixed_s':>9}")
    for run in runs:
        report.line(f"{run['slug']:<34}{run['duration_s']:>11.2f}{run['rounds']:>7}{run['steady_round_s']:>15.3f}"
                    f"{run['arithmetic_s']:>13.3f}{run['fixed_s']:>9.2f}")
    later = [r["fixed_s"] for r in runs[1:]]
    fixed = sum(later) / len(later)
    report.line(f"sum of steady-state rounds: {sum(r['arithmetic_s'] for r in runs):.2f} s; sum of fixed costs: "
                f"{sum(r['fixed_s'] for r in runs):.1f} s; first run's fixed cost: {runs[0]['fixed_s']:.2f} s; "
                f"fixed cost per run after the first: {fixed:.2f} s")
    return fixed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--measure", nargs=3, metavar=("ENGINE", "CONFIG", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--config", default=CONFIG, help="the sweep TOML (default %(default)s)")
    ap.add_argument("--order", default="before,after",
                    help="the measurements, in order, each 'before' or 'after' (comma-separated)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one measurement may take")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="passed to fedlr sweep (e.g. federation.enroll_timeout_s=3000 on a loaded machine)")
    args = ap.parse_args()
    if args.measure:
        return measure(*args.measure, args.overrides)
    order = args.order.split(",")
    if set(order) - set(ENGINES) or "after" not in order:
        raise SystemExit(f"--order: a comma-separated list of {sorted(ENGINES)} with 'after', not {args.order!r}")
    os.chdir(ROOT)
    report = Report("sweep_overhead", "benchmarks/sweep_overhead.py " + " ".join(sys.argv[1:]))
    shown = "".join(f" --set {o}" for o in args.overrides)
    config = str(Path(args.config).resolve())
    report.line(f"sweep: {args.config}{shown}; each measurement in a fresh process")
    fixed: dict[str, list[float]] = {engine: [] for engine in ENGINES}
    for engine in order:
        out = tempfile.mkdtemp(prefix=f"fedlr-sweep-overhead-{engine}-")
        date = time.strftime("%Y-%m-%d %H:%M:%S")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", engine, config, out,
               *(x for o in args.overrides for x in ("--set", o))]
        result = in_fresh_process(cmd, args.timeout)
        shutil.rmtree(out, ignore_errors=True)
        if isinstance(result, str):
            raise SystemExit(f"the {engine} sweep {result}")
        fixed[engine].append(section(report, engine, {**result, "date": date}))
        report.save()  # what is measured so far, should a later measurement not finish
    for engine, values in fixed.items():
        if values:
            report.line(f"{engine}: fixed cost per run after the first {sum(values) / len(values):.2f} s "
                        f"(mean of {len(values)}: {', '.join(f'{v:.2f}' for v in values)})")
    report.line(f"{LAST_LINE} {sum(fixed['after']) / len(fixed['after']):.2f} s")
    report.save()


if __name__ == "__main__":
    main()
