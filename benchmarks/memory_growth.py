"""Issue 9: a 100-round run on the tiny model shows no growth in memory after warm-up.

Flower's simulation engine on Ray (``fedlr.run.simulation.simulate``): tiny random BERT, FedIT
r=4 under DP-SGD (sample level: Opacus hooks attached and removed every client round, the
accountant kept per client) with top-k compression and error feedback (a residual per client),
10 clients, 3 per round, central and client-side evaluation on, ``--rounds`` rounds. After each
ledger row the resident memory (RSS) of the server process and of every Ray client worker is read.
Growth = least-squares slope of RSS over rounds ``--warmup``..R (MB per 100 rounds) and the
max − min over the same rounds. Writes benchmarks/memory_growth.txt and
docs/figures/memory_growth.png.

    .venv/bin/python benchmarks/memory_growth.py
"""

from __future__ import annotations

import argparse
import tempfile

import psutil

from common import ROOT, Report


def worker_rss(me: psutil.Process) -> dict[int, float]:
    """MB resident per Ray client worker (descendants whose command line names the actor)."""
    out = {}
    for child in me.children(recursive=True):
        try:
            if "ClientAppActor" in " ".join(child.cmdline()):
                out[child.pid] = child.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


def slope_per_100(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs, times 100 (MB per 100 rounds)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()
    from fedlr.config import load_experiment
    from fedlr.results import LedgerRow, RunDir
    from fedlr.results.console import Console
    from fedlr.run.simulation import simulate

    report = Report("memory_growth", f"benchmarks/memory_growth.py --rounds {args.rounds} --warmup {args.warmup}")
    exp = load_experiment("experiments/tiny.toml", [
        'method.name="fedit"', "federation.num_clients=10", "federation.clients_per_round=3",
        f"federation.num_rounds={args.rounds}", "train.local_steps=2", 'privacy.mode="sample"',
        "privacy.noise_multiplier=1.0", 'compression.codec="topk"', "compression.density=0.1",
        "output.export_peft=false", f'output.dir="{tempfile.mkdtemp(prefix="fedlr-mem-")}"'])
    me = psutil.Process()
    rows: list[tuple[int, float, dict[int, float]]] = []

    def observe(row: LedgerRow) -> None:
        rows.append((row.round, me.memory_info().rss / 2**20, worker_rss(me)))

    simulate(exp, RunDir.create(exp, "memory-growth"), Console(quiet=True, observers=[observe]))
    pids = sorted({pid for _, _, w in rows for pid in w})
    series = {"server": [(r, s) for r, s, _ in rows]}
    for i, pid in enumerate(pids):
        series[f"worker {i + 1}"] = [(r, w[pid]) for r, _, w in rows if pid in w]
    report.line(f"tiny random BERT, fedit r=4, DP-SGD (hooks) + top-k 10% with error feedback, 10 clients, 3 per round, "
                f"{args.rounds} rounds, evaluation on; RSS after each round, growth over rounds {args.warmup}..{args.rounds}")
    report.line(f"{'process':10s} {'RSS at warm-up MB':>18s} {'RSS at end MB':>14s} {'max-min MB':>11s} {'slope MB/100 rounds':>20s}")
    for name, points in series.items():
        tail = [(r, m) for r, m in points if r >= args.warmup]
        xs, ys = [r for r, _ in tail], [m for _, m in tail]
        report.line(f"{name:10s} {ys[0]:18.1f} {ys[-1]:14.1f} {max(ys) - min(ys):11.1f} {slope_per_100(xs, ys):20.2f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, points in series.items():
        ax.plot([r for r, _ in points], [m for _, m in points], label=name)
    ax.axvline(args.warmup, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("round")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title(f"{args.rounds}-round simulation, tiny model (benchmarks/memory_growth.py)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figure = ROOT / "docs" / "figures" / "memory_growth.png"
    fig.savefig(figure, dpi=120)
    report.line(f"figure: {figure.relative_to(ROOT)}")
    report.save()


if __name__ == "__main__":
    main()
