"""Benchmark (issue 17): what the shipped privacy study costs before and after the speed work, on
its first runs, measured in one invocation on one machine.

``experiments/privacy.toml`` cut to the first ``--runs`` points of its sweep (default 2: seed 0,
ε = 8, FedIT and FFA-LoRA), swept in a fresh process per measurement, its runs in a temp dir:

- ``before``: every run starts its own Ray (``sweep_overhead``'s before engine) and the frozen
  prefix is recomputed for every batch (``model.prefix_cache_bytes = 0``, no folder), as fedlr ran
  before issue 17;
- ``after``: ``fedlr sweep`` itself (one Ray and worker pool for the sweep) with the frozen-prefix
  cache on disk in a fresh, empty folder, so the first run computes each example's blocks 0–4 once
  (a whole study pays that once; a cut of two runs pays it in full, which favours ``before``).

Both give the same numbers (the cache is exact: ``tests/test_frozen_prefix.py``; the engine too:
``tests/test_sweep_engine.py``); only the time differs. ``uptime`` is printed beside each.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_cost.py    # writes benchmarks/study_cost.txt

The last line reads ``privacy study per run: before X s, after Y s (Z×)``: the mean wall time of a
run (from the end of the run before it, the sweep's start for the first, to its ``summary.json``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from common import ROOT, Report, in_fresh_process
from sweep_overhead import ENGINES, measure

from fedlr.config import toml_value

STUDY = "experiments/privacy.toml"
LAST_LINE = "privacy study per run:"
CACHE_OFF = ["model.prefix_cache_bytes=0"]


def cut_study(study: Path, runs: int, out: Path) -> Path:
    """``study`` with its zip sweep cut to its first ``runs`` points and without its cache folder
    (each measurement says where its cache is, if anywhere), written to ``out``."""
    text = "".join(line for line in study.read_text().splitlines(keepends=True)
                   if not line.startswith("prefix_cache_dir"))
    table = tomllib.loads(text)["sweep"]
    if table.get("mode") != "zip":
        raise SystemExit(f"{study}: expected a zip sweep")
    lines = ["[sweep]", f'name = "{study.stem}"', 'mode = "zip"']
    lines += [f"{toml_value(key)} = {toml_value(values[:runs])}" for key, values in table.items()
              if key not in ("mode", "name")]
    out.write_text(text[:text.index("\n[sweep]") + 1] + "\n".join(lines) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--measure", nargs=3, metavar=("ENGINE", "CONFIG", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=2, help="the study's first N runs (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one measurement may take")
    args = ap.parse_args()
    if args.measure:
        return measure(*args.measure, args.overrides)
    os.chdir(ROOT)
    report = Report("study_cost", "benchmarks/study_cost.py " + " ".join(sys.argv[1:]))
    scratch = Path(tempfile.mkdtemp(prefix="fedlr-study-cost-"))
    config = str(cut_study(ROOT / STUDY, args.runs, scratch / "privacy.toml"))
    report.line(f"study: the first {args.runs} runs of {STUDY}; each measurement in a fresh process")
    per_run = {}
    for engine, overrides in (("before", CACHE_OFF), ("after", [f'model.prefix_cache_dir="{scratch / "cache"}"'])):
        out = str(scratch / engine)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", engine, config, out,
               *(x for o in overrides for x in ("--set", o))]
        date = time.strftime("%Y-%m-%d %H:%M:%S")
        result = in_fresh_process(cmd, args.timeout)
        if isinstance(result, str):
            raise SystemExit(f"the {engine} sweep {result}")
        report.line(f"== {engine}: {ENGINES[engine]}, " + ("no frozen-prefix cache" if engine == "before" else
                    "frozen-prefix cache on disk, empty at the start") + f"  (started {date})")
        report.line(f"uptime before: {result['uptime_before']}")
        report.line(f"uptime after:  {result['uptime_after']}")
        report.line(f"{len(result['runs'])} runs in {result['total_s']:.1f} s (exit {result['exit']})")
        for run in result["runs"]:
            report.line(f"  {run['slug']:<60}{run['duration_s']:>9.1f} s")
        per_run[engine] = result["total_s"] / len(result["runs"])
        report.save()
    shutil.rmtree(scratch, ignore_errors=True)
    before, after = per_run["before"], per_run["after"]
    report.line(f"{LAST_LINE} before {before:.1f} s, after {after:.1f} s ({before / after:.2f}×)")
    report.save()


if __name__ == "__main__":
    main()
