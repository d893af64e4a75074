"""How often the simulation looks for messages, at 10,000 clients (issue 8).

``fedlr.run.engine_poll`` makes one look at the message store O(pending messages), so it may look
more often than Flower's every 0.1 s. Three schedules, each for benchmark 3's 10,000-client Ray
point (``scale.one_point``) in a fresh process: Flower's 0.1 s, a flat 0.01 s, and fedlr's
``poll_interval`` (0.01 s up to 25 pending messages, growing to 0.1 s at 256 — enrollment's
batches). ``--reps`` interleaved passes over the three. Reported per run: median steady round and
setup (to the round-0 row: enrollment of every node).

    .venv/bin/python benchmarks/poll_interval.py     # writes benchmarks/poll_interval.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from common import BENCH_DIR, Report, in_fresh_process, print_result
from scale import write_corpus

SCHEDULES = {"flower-0.1": 0.1, "flat-0.01": 0.01, "fedlr": None}


def point(schedule: str, corpus: str, clients: int, rounds: int) -> dict:
    """One 10,000-client Ray run with the given schedule (in this process)."""
    from fedlr.run import engine_poll
    from scale import one_point

    fixed = SCHEDULES[schedule]
    if fixed is not None:
        engine_poll.poll_interval = lambda pending: fixed
    return one_point(clients, "ray", corpus, rounds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--point", nargs=2, help=argparse.SUPPRESS)  # internal: SCHEDULE CORPUS
    args = ap.parse_args()
    if args.point:
        print_result(point(args.point[0], args.point[1], args.clients, args.rounds))
        return
    report = Report("poll_interval", f"benchmarks/poll_interval.py --clients {args.clients} --rounds {args.rounds} "
                    f"--reps {args.reps}")
    corpus = os.path.join(tempfile.mkdtemp(prefix="fedlr-poll-"), "corpus.csv")
    write_corpus(corpus, 60000)
    report.line(f"benchmark 3's Ray point: tiny random BERT, fedit r=4, {args.clients} clients, 10 per round, "
                f"rounds 3..{args.rounds} steady")
    report.line(f"{'pass':4s} {'schedule':11s} {'round s':>8s} {'setup s':>8s} {'total s':>8s}")
    for rep, schedule in ((r, s) for r in range(args.reps) for s in SCHEDULES):
        cmd = [sys.executable, str(BENCH_DIR / "poll_interval.py"), "--clients", str(args.clients), "--rounds",
               str(args.rounds), "--point", schedule, corpus]
        r = in_fresh_process(cmd, timeout=900)
        if isinstance(r, str):
            report.line(f"{rep:4d} {schedule:11s} {r}")
            continue
        report.line(f"{rep:4d} {schedule:11s} {r['round_s']:8.3f} {r['setup_s']:8.1f} {r['total_s']:8.1f}")
    report.save()


if __name__ == "__main__":
    main()
