"""Benchmark 2 (issue 8): time per DP-SGD step over time per plain step, for each method's
trainable set and each Opacus mode fedlr offers (``privacy.grad_sample_mode``: hooks, functorch).

The bundled all-MiniLM-L6-v2 with each method's adapters (rank 8 on query and value, head
trained; Fed-SB with its random orthonormal init), one fixed batch of 16 sequences of 64 tokens.
A plain step is what ``fedlr.train.local_train`` does per batch (forward, backward, clip, AdamW);
a DP step is ``fedlr.privacy.dp_sgd.PrivateTrainer.step`` (per-sample gradients, per-sample clip,
noise, AdamW). One torch thread, CPU time per step (``time.process_time``: on a shared machine
the wall clock measures the other jobs as much as this one). Modes interleaved (plain, hooks, functorch, plain, ...): each
measurement attaches the mode, takes one warm-up step, then times ``--steps`` steps; the figure is
the median over ``--reps`` measurements of the per-step time. The machine is shared with other
work: medians, and the ratio of medians taken in the same interleaved run.

    .venv/bin/python benchmarks/dp_overhead.py          # writes benchmarks/dp_overhead.txt
"""

from __future__ import annotations

import argparse
import time

import torch

from common import Report, median
from fedlr.config import load_experiment
from fedlr.data.tokens import TokenizedSet
from fedlr.methods import method_names
from fedlr.models.adapted import build_adapted_model
from fedlr.privacy.dp_sgd import DPSGDSettings, PrivateTrainer
from fedlr.train import make_optimizer

MODES = ("plain", "hooks", "functorch")
LORA_FAMILY = ("fed_sb", "fedit", "ffa_lora", "fed_svd", "dp_lora", "fedex_lora", "flora")


def random_batch(batch_size: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = TokenizedSet(torch.randint(1000, 5000, (batch_size, length), generator=g).tolist(),
                        torch.randint(0, 2, (batch_size,), generator=g), 0)
    return data.batch(list(range(batch_size)))


def time_steps(step, steps: int) -> float:
    """CPU seconds per step (``time.process_time``: with one torch thread, the work done, not the
    time spent waiting for a core the machine's other jobs hold)."""
    step()  # warm-up
    started = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - started) / steps


def measure(adapted, exp, mode: str, batch, steps: int) -> float:
    """Seconds per step of ``mode`` on ``batch``."""
    model, params = adapted.model, adapted.trainable_parameters()
    named = adapted.parameters_by_name()
    head = [named[k] for k in adapted.head_keys]
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
            return time_steps(step, steps)
        finally:
            model.eval()
    n = 1000  # a client's size only sets q = B/n and the expected batch size
    dp = DPSGDSettings(1.0, 1.0, len(batch["labels"]) / n, mode, per_tensor_clipping=exp.method.name == "dp_lora")
    with PrivateTrainer(model, params, head, exp.train, dp, n, torch.Generator().manual_seed(0)) as trainer:
        return time_steps(lambda: trainer.step(batch), steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--methods", nargs="+", default=list(method_names()))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--length", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    report = Report("dp_overhead", "benchmarks/dp_overhead.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                                           if k != "methods"))
    report.line(f"{args.model}, batch {args.batch_size} x {args.length} tokens, rank 8 on query+value, head trained, "
                f"1 thread, CPU time; median of {args.reps} interleaved measurements of {args.steps} steps each")
    report.line(f"{'method':11s} {'trained':>10s} {'plain ms':>9s} {'hooks ms':>9s} {'ratio':>6s} "
                f"{'functorch ms':>12s} {'ratio':>6s}  target (LoRA family, hooks) <= 1.2")
    batch = random_batch(args.batch_size, args.length)
    for method in args.methods:
        overrides = [f'model.name_or_path="{args.model}"', f'method.name="{method}"', "method.rank=8"]
        if method == "fed_sb":
            overrides.append('method.init="random"')
        exp = load_experiment(None, overrides)
        torch.manual_seed(0)
        adapted = build_adapted_model(exp, 2)
        trained = sum(p.numel() for p in adapted.trainable_parameters())
        times: dict[str, list[float]] = {m: [] for m in MODES}
        try:
            for _ in range(args.reps):
                for mode in MODES:
                    times[mode].append(measure(adapted, exp, mode, batch, args.steps))
        except Exception as e:  # a mode Opacus cannot run on this trainable set: say so, go on
            report.line(f"{method:11s} {trained:10,d}  error: {type(e).__name__}: {str(e)[:120]}")
            continue
        med = {m: 1000 * median(v) for m, v in times.items()}
        flag = ("meets" if med["hooks"] / med["plain"] <= 1.2 else "MISSES") if method in LORA_FAMILY else ""
        report.line(f"{method:11s} {trained:10,d} {med['plain']:9.1f} {med['hooks']:9.1f} "
                    f"{med['hooks'] / med['plain']:6.2f} {med['functorch']:12.1f} {med['functorch'] / med['plain']:6.2f}  {flag}")
    report.save()


if __name__ == "__main__":
    main()
