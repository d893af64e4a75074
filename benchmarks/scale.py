"""Benchmark 3 (issue 8): 100, 1,000 and 10,000 virtual clients, 10 sampled per round, tiny model.

A synthetic corpus (``--rows`` short labelled texts written to a CSV, IID partitions) so that
10,000 clients each hold a few examples. For each N, in a fresh process (so peaks are per N):

- ``inproc``: fedlr's ServerApp body and ClientApp in one process (``common.InProcessGrid``):
  what fedlr itself costs as N grows — the strategy's per-node bookkeeping, enrollment, the
  workbench's per-client data, each client's persistent state;
- ``ray``: Flower's simulation engine on Ray (``fedlr.run.simulation.simulate``), bounded by
  ``--ray-timeout`` seconds per N.

Reported per N: median steady round time (rounds 3..R), setup = time to the round-0 row (data, model, enrollment
of every node), peak RSS of the server process and of the largest worker (Ray actors; sampled
every 0.2 s), and the bytes each client keeps between rounds (its ``Context.state``).

    .venv/bin/python benchmarks/scale.py                # writes benchmarks/scale.txt
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time

from common import BENCH_DIR, InProcessGrid, Report, in_fresh_process, median, print_result

STEADY_FROM = 3


def write_corpus(path: str, rows: int) -> None:
    """``rows`` short two-class texts (a word list drawn per row; the label from the first word)."""
    import random

    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "actor", "scene", "great", "dull", "story", "music", "fun", "slow"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(rows):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
            w.writerow([text, int(text.split()[0] in ("good", "great", "fun"))])


class PeakRSS:
    """Peak resident memory of this process and of its descendants whose command line names
    ``worker_tag``, sampled in a background thread."""

    def __init__(self, worker_tag: str = "ClientAppActor", interval: float = 0.2):
        import psutil

        self.me = psutil.Process()
        self.tag, self.interval = worker_tag, interval
        self.server = self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            self.server = max(self.server, self.me.memory_info().rss)
            for child in self.me.children(recursive=True):
                try:
                    if self.tag in " ".join(child.cmdline()):
                        self.worker = max(self.worker, child.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def one_point(n: int, engine: str, corpus: str, rounds: int) -> dict:
    """Run one (N, engine) point in this process; returns its figures."""
    from fedlr.config import load_experiment
    from fedlr.results import RunDir
    from fedlr.results.console import Console

    out = tempfile.mkdtemp(prefix="fedlr-scale-")
    exp = load_experiment("experiments/tiny.toml", [
        f'data.dataset="{corpus}"', 'data.partitioner="iid"', "data.max_train_examples=1000000",
        "data.test_fraction=0.05", "data.max_test_examples=64", 'method.name="fedit"', "method.rank=4",
        f"federation.num_clients={n}", "federation.clients_per_round=10", f"federation.num_rounds={rounds}",
        "train.local_steps=2", "train.batch_size=4", "evaluation.central=false", "evaluation.client_side=false",
        "output.export_peft=false", f'output.dir="{out}"'])
    stamps: list[float] = []
    started = time.perf_counter()
    console = Console(quiet=True, observers=[lambda row: stamps.append(time.perf_counter() - started)])
    state_bytes = None
    with PeakRSS() as peak:
        if engine == "inproc":
            from fedlr.clients.app import app
            from fedlr.run.server import run_server

            grid = InProcessGrid(app, n)
            run_server(grid, exp, RunDir.create(exp, f"scale-{n}"), console)
            sizes = [sum(r.count_bytes() for r in c.state.values()) for c in grid.contexts.values()]
            state_bytes = {"max": max(sizes), "min": min(sizes), "total": sum(sizes)}
        else:
            from fedlr.run.simulation import simulate

            simulate(exp, RunDir.create(exp, f"scale-{n}"), console)
    rounds_s = [b - a for a, b in zip(stamps[STEADY_FROM - 1:], stamps[STEADY_FROM:])]
    return {"n": n, "engine": engine, "round_s": median(rounds_s), "rounds_s": rounds_s, "setup_s": stamps[0],
            "total_s": time.perf_counter() - started, "server_peak_mb": peak.server / 2**20,
            "worker_peak_mb": peak.worker / 2**20, "state_bytes": state_bytes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", nargs="+", type=int, default=[100, 1000, 10000])
    ap.add_argument("--engines", nargs="+", default=["inproc", "ray"])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--rows", type=int, default=60000)
    ap.add_argument("--ray-timeout", type=int, default=900)
    ap.add_argument("--point", nargs=3, help=argparse.SUPPRESS)  # internal: N ENGINE CORPUS
    args = ap.parse_args()
    if args.point:
        n, engine, corpus = args.point
        print_result(one_point(int(n), engine, corpus, args.rounds))
        return
    report = Report("scale", f"benchmarks/scale.py --clients {' '.join(map(str, args.clients))} --rounds {args.rounds} "
                    f"--rows {args.rows} --ray-timeout {args.ray_timeout}")
    corpus = os.path.join(tempfile.mkdtemp(prefix="fedlr-scale-"), "corpus.csv")
    write_corpus(corpus, args.rows)
    report.line(f"tiny random BERT, fedit r=4, synthetic corpus of {args.rows:,} rows (IID), 10 clients per round, "
                f"2 steps x batch 4, rounds {STEADY_FROM}..{args.rounds} steady, evaluation off")
    report.line(f"{'engine':7s} {'N':>6s} {'round s':>8s} {'setup s':>9s} {'total s':>8s} {'server MB':>10s} "
                f"{'worker MB':>10s} {'state B/client':>15s}")
    for engine in args.engines:
        for n in args.clients:
            cmd = [sys.executable, str(BENCH_DIR / "scale.py"), "--rounds", str(args.rounds), "--point", str(n), engine, corpus]
            r = in_fresh_process(cmd, args.ray_timeout if engine == "ray" else None)
            if isinstance(r, str):
                report.line(f"{engine:7s} {n:6d}  {r}")
                continue
            sb = r["state_bytes"]
            state = f"{sb['max']:,}" if sb else "-"
            report.line(f"{engine:7s} {n:6d} {r['round_s']:8.3f} {r['setup_s']:9.1f} {r['total_s']:8.1f} "
                        f"{r['server_peak_mb']:10.0f} {r['worker_peak_mb']:10.0f} {state:>15s}")
    report.save()


if __name__ == "__main__":
    main()
