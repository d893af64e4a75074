"""Frozen-prefix speed-up (issue 17.2): step time with the frozen-prefix cache over step time
without it, for plain SGD, DP-SGD (Opacus hooks) and evaluation.

The bundled all-MiniLM-L6-v2 (6 blocks) with FedIT's LoRA (rank 8, query and value) on the top 2
blocks only (``model.layers = [4, 5]``), head trained; one fixed batch of 64 sequences of 64
tokens. Two copies of the model: one as a run without the cache computes it (every block, every
step), one with ``fedlr.models.frozen_prefix.FrozenPrefixCache`` in its steady state (the batch's
hidden states entering block 4 already stored: one forward fills the store before timing). A
plain step is ``fedlr.train.local_train``'s (forward, backward, clip, optimizer), a DP step
``fedlr.privacy.dp_sgd.PrivateTrainer.step``; an evaluation step a no-grad forward in eval mode.
One torch thread, CPU time per step (``time.process_time``), cached and uncached interleaved
(uncached, cached, uncached, ...) per mode; medians over ``--reps`` measurements of ``--steps``
steps each. The last line, ``speed-up train X, eval Y``, gives as X the smaller of the plain and
DP-SGD speed-ups.

    .venv/bin/python benchmarks/frozen_prefix.py            # writes benchmarks/frozen_prefix.txt
    .venv/bin/python benchmarks/frozen_prefix.py --quick    # tiny BERT, a few ms: checks the script, writes nothing
"""

from __future__ import annotations

import argparse
import time

import torch

from common import Report, median
from fedlr.config import load_experiment
from fedlr.data.tokens import TokenizedSet
from fedlr.models.adapted import build_adapted_model
from fedlr.models.frozen_prefix import attach_prefix_cache
from fedlr.privacy.dp_sgd import DPSGDSettings, PrivateTrainer
from fedlr.train import make_optimizer

MODES = ("plain", "dp-sgd", "eval")


def random_batch(batch_size: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = TokenizedSet(torch.randint(1000, 5000, (batch_size, length), generator=g).tolist(),
                        torch.randint(0, 2, (batch_size,), generator=g), 0)
    return data.batch(list(range(batch_size)))


def per_step(step, steps: int) -> float:
    """CPU seconds per step, after one warm-up step."""
    step()
    started = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - started) / steps


def measure(adapted, exp, mode: str, batch, steps: int) -> float:
    model, params = adapted.model, adapted.trainable_parameters()
    named = adapted.parameters_by_name()
    head = [named[k] for k in adapted.head_keys]
    if mode == "eval":
        model.eval()
        with torch.no_grad():
            return per_step(lambda: model(**batch).logits, steps)
    if mode == "plain":
        opt = make_optimizer(params, head, exp.train)
        model.train()

        def step():
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, exp.train.max_grad_norm)
            opt.step()

        try:
            return per_step(step, steps)
        finally:
            model.eval()
    n = 1000  # a client's size only sets q = B/n and the expected batch size
    dp = DPSGDSettings(1.0, 1.0, len(batch["labels"]) / n, "hooks")
    with PrivateTrainer(model, params, head, exp.train, dp, n, torch.Generator().manual_seed(0)) as trainer:
        return per_step(lambda: trainer.step(batch), steps)


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
    uncached, cached = build_adapted_model(exp, 2), build_adapted_model(exp, 2)
    cache = attach_prefix_cache(exp, cached)
    batch = random_batch(args.batch_size, args.length)
    with torch.no_grad():
        cached.model(**batch)  # steady state: the batch's prefix is stored
    report.line(f"{model}, fedit rank 8 on query+value of blocks {layers} (cache from block {cache.boundary}), head "
                f"trained, batch {args.batch_size} x {args.length} tokens, 1 thread, CPU time; median of {args.reps} "
                f"interleaved measurements of {args.steps} steps each")
    report.line(f"{'mode':8s} {'uncached ms':>12s} {'cached ms':>10s} {'speed-up':>9s}")
    speedup = {}
    for mode in MODES:
        times = {"uncached": [], "cached": []}
        for _ in range(args.reps):
            times["uncached"].append(measure(uncached, exp, mode, batch, args.steps))
            times["cached"].append(measure(cached, exp, mode, batch, args.steps))
        off, on = 1000 * median(times["uncached"]), 1000 * median(times["cached"])
        speedup[mode] = off / on
        report.line(f"{mode:8s} {off:12.1f} {on:10.1f} {speedup[mode]:9.2f}")
    if cache.misses != 1:
        raise RuntimeError(f"the cached model recomputed its prefix {cache.misses} times; expected once")
    report.line(f"speed-up train {min(speedup['plain'], speedup['dp-sgd']):.2f}, eval {speedup['eval']:.2f}")
    if not args.quick:
        report.save()


if __name__ == "__main__":
    main()
