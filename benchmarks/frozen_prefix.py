"""Frozen-prefix speed-up (issue 17.2): step time with the frozen-prefix cache over step time
without it, for plain SGD, DP-SGD (Opacus hooks) and evaluation.

The bundled all-MiniLM-L6-v2 (6 blocks) with FedIT's LoRA (rank 8, query and value) on the top 2
blocks only (``model.layers = [4, 5]``), head trained; one fixed batch of 64 sequences of 64
tokens. Two copies of the model as fedlr builds it (the last block at the read-out position only,
``fedlr.models.readout``): one as a run without the cache computes it (every block, every step),
one with ``fedlr.models.frozen_prefix.FrozenPrefixCache`` in its steady state (the batch's hidden
states entering block 4 already stored: one forward fills the store before timing). A third copy
with its last block whole (``untrim_readout``: every block at every position, as fedlr ran before
the read-out trim) is timed beside them, for the trim's own share (the ``whole ms`` column). A
plain step and a DP step (``PrivateTrainer.step``) are timed as in ``benchmarks/dp_overhead.py``;
an evaluation step is a no-grad forward in eval mode.
One torch thread, CPU time per step (``time.process_time``), the three interleaved (whole,
uncached, cached, whole, ...) per mode; medians over ``--reps`` measurements of ``--steps`` steps
each. The speed-up is uncached / cached; the last line, ``speed-up train X, eval Y``, gives as X
the smaller of the plain and DP-SGD speed-ups.

    .venv/bin/python benchmarks/frozen_prefix.py            # writes benchmarks/frozen_prefix.txt
    .venv/bin/python benchmarks/frozen_prefix.py --quick    # tiny BERT, a few ms: checks the script, writes nothing
"""

from __future__ import annotations

import argparse

import torch

import dp_overhead
from common import Report, median
from fedlr.config import load_experiment
from fedlr.models.adapted import build_adapted_model
from fedlr.models.frozen_prefix import attach_prefix_cache
from fedlr.models.readout import untrim_readout

MODES = {"plain": "plain", "dp-sgd": "hooks", "eval": "eval"}  # ours -> dp_overhead.measure's


def measure(adapted, exp, mode: str, batch, steps: int) -> float:
    """CPU seconds per step: a no-grad forward in eval mode, or dp_overhead's plain / DP step."""
    if mode != "eval":
        return dp_overhead.measure(adapted, exp, mode, batch, steps)
    adapted.model.eval()
    with torch.no_grad():
        return dp_overhead.time_steps(lambda: adapted.model(**batch).logits, steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="tiny random BERT (2 blocks, adapters on block 1), "
                    "batch 8 x 16, 1 rep of 1 step: checks the script; writes no .txt")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.steps, args.batch_size, args.length = 1, 1, 8, 16
    model, layers = ("tiny-random-bert", [1]) if args.quick else ("bundled:all-MiniLM-L6-v2", [4, 5])
    torch.set_num_threads(1)
    report = Report("frozen_prefix", "benchmarks/frozen_prefix.py" + (" --quick" if args.quick else "")
                    + f" --reps {args.reps} --steps {args.steps} --batch-size {args.batch_size} --length {args.length}")
    exp = load_experiment(None, [f'model.name_or_path="{model}"', f"model.layers={layers}", 'method.name="fedit"',
                                 "method.rank=8"])
    whole, uncached, cached = build_adapted_model(exp, 2), build_adapted_model(exp, 2), build_adapted_model(exp, 2)
    untrim_readout(whole.model)
    cache = attach_prefix_cache(exp, cached)
    batch = dp_overhead.random_batch(args.batch_size, args.length)
    with torch.no_grad():
        cached.model(**batch)  # steady state: the batch's prefix is stored
    report.line(f"{model}, fedit rank 8 on query+value of blocks {layers} (cache from block {cache.boundary}), head "
                f"trained, batch {args.batch_size} x {args.length} tokens, 1 thread, CPU time; median of {args.reps} "
                f"interleaved measurements of {args.steps} steps each; 'whole': last block at every position, "
                f"'uncached' and 'cached': at the read-out position only, as fedlr runs")
    report.line(f"{'mode':8s} {'whole ms':>9s} {'uncached ms':>12s} {'cached ms':>10s} {'speed-up':>9s} {'vs whole':>9s}")
    speedup = {}
    models = {"whole": whole, "uncached": uncached, "cached": cached}
    for mode, how in MODES.items():
        times = {name: [] for name in models}
        for _ in range(args.reps):
            for name, adapted in models.items():
                times[name].append(measure(adapted, exp, how, batch, args.steps))
        ms = {name: 1000 * median(t) for name, t in times.items()}
        speedup[mode] = ms["uncached"] / ms["cached"]
        report.line(f"{mode:8s} {ms['whole']:9.1f} {ms['uncached']:12.1f} {ms['cached']:10.1f} {speedup[mode]:9.2f} "
                    f"{ms['whole'] / ms['cached']:9.2f}")
    if cache.misses != args.batch_size:
        raise RuntimeError(f"the cached model computed {cache.misses} prefixes; expected one per example")
    report.line(f"speed-up train {min(speedup['plain'], speedup['dp-sgd']):.2f}, eval {speedup['eval']:.2f}")
    if not args.quick:
        report.save()


if __name__ == "__main__":
    main()
