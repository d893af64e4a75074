"""Fused clients (issue 8): K clients' local rounds in one pass over the shared frozen base
(``fedlr.fused.fused_local_train``) against the same K rounds run one after another
(``fedlr.train.local_train``), for small per-client batches.

FedIT r=8 on query+value with the head trained; each client holds 64 random sequences of
``--length`` tokens; ``--steps`` local steps of batch ``--batch-size``. Separate and fused runs
interleaved, ``--reps`` times; medians of the wall time per round of K clients. On CUDA the
device is synchronized before each clock read.

    .venv/bin/python benchmarks/fused_speedup.py                       # CPU, writes fused_speedup.txt
    python3 benchmarks/fused_speedup.py --device cuda --out gpu_fused  # on a GPU machine
"""

from __future__ import annotations

import argparse
import time

import torch

from common import Report, median
from fedlr.config import load_experiment
from fedlr.data.tokens import TokenizedSet
from fedlr.fused import fused_local_train
from fedlr.models.adapted import build_adapted_model
from fedlr.train import local_train


def client_sets(k: int, n: int, length: int) -> list[TokenizedSet]:
    g = torch.Generator().manual_seed(0)
    return [TokenizedSet(torch.randint(1000, 5000, (n, length), generator=g).tolist(),
                         torch.randint(0, 2, (n,), generator=g), 0) for _ in range(k)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clients", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="fused_speedup")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = Report(args.out, "benchmarks/fused_speedup.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()))
    exp = load_experiment(None, [f'model.name_or_path="{args.model}"', 'method.name="fedit"', "method.rank=8",
                                 f"train.local_steps={args.steps}", f"train.batch_size={args.batch_size}"])
    adapted = build_adapted_model(exp, 2)
    adapted.model.to(device)
    named = adapted.parameters_by_name()
    head = [named[k] for k in adapted.head_keys]
    start = adapted.trained_state()
    report.line(f"{args.model} on {device.type}, fedit r=8 q,v + head, batch {args.batch_size} x {args.length} tokens, "
                f"{args.steps} steps per client, {args.threads} thread(s); median of {args.reps} interleaved reps")
    report.line(f"{'K clients':>9s} {'separate s':>11s} {'fused s':>9s} {'speedup':>8s}")
    for k in args.clients:
        sets = client_sets(k, 64, args.length)
        gens = lambda: [torch.Generator().manual_seed(i) for i in range(k)]  # noqa: E731

        def separate():
            for data, gen in zip(sets, gens()):
                adapted.load({key: v.to(device) for key, v in start.items()})
                local_train(adapted.model, adapted.trainable_parameters(), head, data, exp.train, gen, device)

        def fused():
            fused_local_train(adapted, [start] * k, sets, exp.train, gens(), device)

        times = {"separate": [], "fused": []}
        for rep in range(args.reps + 1):  # the first rep warms up
            for name, fn in (("separate", separate), ("fused", fused)):
                sync(device)
                started = time.perf_counter()
                fn()
                sync(device)
                if rep:
                    times[name].append(time.perf_counter() - started)
        s, f = median(times["separate"]), median(times["fused"])
        report.line(f"{k:9d} {s:11.3f} {f:9.3f} {s / f:7.2f}x")
    report.save()


if __name__ == "__main__":
    main()
