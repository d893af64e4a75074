"""Benchmark 4 (issue 8): the bytes a run moves, three ways, for every method and codec.

Each (method, codec) pair runs fedlr's ServerApp body and ClientApp in this process
(``common.InProcessGrid``; tiny random BERT, 4 clients, 2 per round, 3 rounds, one local step,
evaluation off). For every ArrayRecord that crosses the grid, the grid itself adds up the
serialized ``.npy`` buffers, the keys, and the raw array bytes inside them. Compared:

- ``ledger``: the run's cumulative bytes as fedlr's strategy recorded them (``count_bytes``);
- ``wire``: serialized buffers + keys, measured by the grid on the records that crossed;
- ``plan``: ``fedlr plan``'s analytic formula (``fedlr.plan.communication_plan``).

ratio = ledger / plan (and wire / plan); under L-GreCo the plan counts every tensor at the
uniform parameter, an upper bound of what the per-tensor choice sends. ``headers`` = serialized − raw: the ``.npy`` header of
every array (128 bytes each) — the only bytes that are not tensor values — plus the key bytes.

    .venv/bin/python benchmarks/comm_ledger.py          # writes benchmarks/comm_ledger.txt
"""

from __future__ import annotations

import logging
import tempfile

from common import InProcessGrid, Report
from fedlr.config import ConfigError, load_experiment
from fedlr.methods import method_names
from fedlr.plan import communication_plan
from fedlr.results import RunDir
from fedlr.results.console import Console

CODECS = {
    "none": [],
    "fp16": ['compression.codec="fp16"'],
    "qsgd-4bit": ['compression.codec="qsgd"', "compression.bits=4"],
    "topk-1%": ['compression.codec="topk"', "compression.density=0.01"],
    "powersgd-r1": ['compression.codec="powersgd"', "compression.rank=1"],
    "topk+lgreco": ['compression.codec="topk"', "compression.density=0.1", 'compression.adaptive="lgreco"',
                    "compression.reselect_every=1"],
}


def main() -> None:
    from fedlr.clients.app import app
    from fedlr.run.server import run_server

    logging.getLogger("flwr").setLevel(logging.ERROR)
    report = Report("comm_ledger", "benchmarks/comm_ledger.py")
    report.line("tiny random BERT, rank 4 on query+value, 4 clients, 2 per round, 3 rounds (+ Fed-SB's init round)")
    report.line(f"{'method':11s} {'codec':12s} {'ledger B':>11s} {'wire B':>11s} {'plan B':>11s} {'ledger/plan':>11s} "
                f"{'wire/plan':>9s} {'raw values B':>12s} {'headers+keys B':>14s}")
    out = tempfile.mkdtemp(prefix="fedlr-bench-")
    worst = 0.0
    for method in method_names():
        for codec, overrides in CODECS.items():
            try:
                exp = load_experiment("experiments/tiny.toml", [
                    f'method.name="{method}"', "federation.num_rounds=3", "train.local_steps=1",
                    "evaluation.central=false", "evaluation.client_side=false", "output.export_peft=false",
                    f'output.dir="{out}"', *overrides])
            except ConfigError as e:
                report.line(f"{method:11s} {codec:12s} not a valid experiment: {e}")
                continue
            grid = InProcessGrid(app, exp.federation.num_clients)
            summary = run_server(grid, exp, RunDir.create(exp, f"{method}-{codec}"), Console(quiet=True))
            plan = communication_plan(exp, 2)
            serialized = sum(grid.wire[d][0] for d in ("down", "up"))
            keys = sum(grid.wire[d][1] for d in ("down", "up"))
            raw = sum(grid.wire[d][2] for d in ("down", "up"))
            ledger, wire, planned = summary["total_bytes"], serialized + keys, plan["total_bytes"]
            if "lgreco" not in codec:  # under L-GreCo the plan is an upper bound (fedlr.plan), not the count
                worst = max(worst, abs(ledger / planned - 1), abs(wire / planned - 1))
            report.line(f"{method:11s} {codec:12s} {ledger:11,d} {wire:11,d} {planned:11,d} {ledger / planned:11.4f} "
                        f"{wire / planned:9.4f} {raw:12,d} {wire - raw:14,d}")
    report.line(f"largest |ratio - 1| over all rows but L-GreCo's (whose plan is an upper bound): {worst:.2e}")
    report.save()


if __name__ == "__main__":
    main()
