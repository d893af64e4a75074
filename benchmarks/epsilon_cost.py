"""What a client's ε costs the first time it meets a new (σ, q) (issue 8, DP rounds).

Each DP client reports its cumulative ε every round; the RDP curve of its (σ, q) is computed
once per process and cached, so the cost lands on the first round a worker serves that client.
For a grid of (σ, q, steps): the time of ``epsilon_of_history`` over every order of ``ORDERS``
against the default, which skips the fractional orders that cannot beat the best integer order
(``fedlr.privacy.accountant.orders_near_optimum``) — caches emptied before each timing, the two
interleaved, medians of ``--reps``; the two ε are checked equal.

    .venv/bin/python benchmarks/epsilon_cost.py      # writes benchmarks/epsilon_cost.txt
"""

from __future__ import annotations

import argparse
import time

from common import Report, median
from fedlr.privacy import accountant
from fedlr.privacy.accountant import ORDERS, epsilon_of_history, orders_near_optimum

GRID = [(0.6, 0.3, 20), (1.0, 0.3, 10), (0.7, 0.15, 100), (1.1, 0.05, 400), (1.0, 0.02, 50), (2.0, 0.005, 1000)]
DELTA = 1e-5


def timed(history, orders) -> tuple[float, float]:
    accountant._order_rdp.cache_clear()
    started = time.perf_counter()
    eps = epsilon_of_history(history, DELTA, "rdp", orders)
    return time.perf_counter() - started, eps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    report = Report("epsilon_cost", f"benchmarks/epsilon_cost.py --reps {args.reps}")
    report.line(f"RDP accountant, delta={DELTA}, one history entry; seconds per epsilon with empty caches, "
                f"median of {args.reps} interleaved reps")
    report.line(f"{'sigma':>5s} {'q':>6s} {'steps':>6s} {'all orders':>11s} {'skipping':>9s} {'orders':>7s} "
                f"{'speedup':>8s}  epsilon (equal?)")
    timed([(1.0, 0.5, 1)], None)  # imports
    for sigma, q, steps in GRID:
        history = [(sigma, q, steps)]
        full, fast = [], []
        for _ in range(args.reps):
            t_full, eps_full = timed(history, ORDERS)
            t_fast, eps_fast = timed(history, None)
            full.append(t_full)
            fast.append(t_fast)
        n = len(orders_near_optimum(history, DELTA))
        report.line(f"{sigma:5.2f} {q:6.3f} {steps:6d} {median(full):11.3f} {median(fast):9.3f} {n:3d}/{len(ORDERS)} "
                    f"{median(full) / median(fast):7.1f}x  {eps_fast:.6f} ({'equal' if eps_fast == eps_full else 'DIFFERENT'})")
    report.save()


if __name__ == "__main__":
    main()
