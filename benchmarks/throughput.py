"""Benchmark 5 (issue 8): throughput of a whole simulation against the machine's matmul peak.

The MiniLM experiment of ``sim_overhead.py`` (Fed-SB r=16, 8 clients, 4 per round, 5 steps of
batch 16, evaluation off) through Flower's simulation engine on Ray. Over the steady rounds:

- client-steps per second = Σ local steps / steady wall time;
- tokens per second = Σ tokens in those steps' batches (padded width × rows — what the model
  computes on; the batches are re-drawn here from the same seeds) / steady wall time;
- achieved FLOP/s from a FLOP model of a LoRA step with a frozen base: per token 4·P (forward
  2·P, backward to the activations 2·P; P = the encoder's and head's matrix parameters, frozen
  weights need no weight gradient) + 8·T·d·L for attention scores and mixing (forward and
  backward), adapters neglected;
- the matmul peak: the best of 5 fp32 ``torch.mm`` of 1024×1024 matrices with all cores' threads.

    .venv/bin/python benchmarks/throughput.py          # writes benchmarks/throughput.txt
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from common import Report, median
from sim_overhead import STEADY_FROM, experiment, steady, timed_run
from fedlr.results import RunDir
from fedlr.sampling import sample_clients
from fedlr.seeding import torch_generator
from fedlr.train import batch_indices
from fedlr.workbench import Workbench


def matmul_peak_flops(n: int = 1024, reps: int = 5) -> float:
    """Best fp32 matmul rate (FLOP/s) of ``torch.mm`` on n×n matrices with the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        started = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - started))
    return best


def flops_per_token(model, width: int) -> float:
    """4·P + 8·T·d·L (module docstring) for a BERT-style encoder at sequence width T."""
    cfg = model.config
    matrix_params = sum(p.numel() for n, p in model.named_parameters()
                        if p.dim() == 2 and "embeddings" not in n and "lora_" not in n)
    return 4 * matrix_params + 8 * width * cfg.hidden_size * cfg.num_hidden_layers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ledger", help="a run directory of this experiment already simulated (e.g. the minilm-ray "
                    "run of sim_overhead.py): its ledger's wall times instead of a new simulation")
    args = ap.parse_args()
    report = Report("throughput", f"benchmarks/throughput.py --rounds {args.rounds}"
                    + (f" --ledger {args.ledger}" if args.ledger else ""))
    torch.set_num_threads(os.cpu_count() or 1)
    peak_before = matmul_peak_flops()
    exp = experiment("minilm", args.rounds, tempfile.mkdtemp(prefix="fedlr-bench-"))
    if args.ledger:
        from fedlr.results import read_ledger

        stamps = [row.wall_time_s for row in read_ledger(Path(args.ledger))]
    else:
        from fedlr.run.simulation import simulate

        stamps, _, _ = timed_run(lambda c: simulate(exp, RunDir.create(exp, "throughput"), c))
    torch.set_num_threads(os.cpu_count() or 1)
    peak_after = matmul_peak_flops()
    bench = Workbench(exp)
    fed, train = exp.federation, exp.train
    steps = tokens = flops = 0
    for rnd in range(STEADY_FROM, fed.num_rounds + 1):
        for pid in sample_clients(exp.seed, rnd, fed.num_clients, fed.clients_per_round):
            data = bench.data.client_train(pid)
            for idx in batch_indices(len(data), train.batch_size, train.local_steps, torch_generator(exp.seed, "batches", rnd, pid)):
                width = data.batch(idx)["input_ids"].shape[1]
                steps += 1
                tokens += width * len(idx)
                flops += width * len(idx) * flops_per_token(bench.adapted.model, width)
    seconds = sum(steady(stamps))
    peak = max(peak_before, peak_after)
    report.line(f"MiniLM (bundled), fed_sb r={exp.method.rank}, {fed.num_clients} clients, {fed.clients_per_round} per round, "
                f"{train.local_steps} steps x batch {train.batch_size}; Ray, {os.cpu_count()} workers x 1 thread; "
                f"steady rounds {STEADY_FROM}..{fed.num_rounds} ({seconds:.1f} s, median round {median(steady(stamps)):.2f} s)")
    report.line(f"client-steps per second: {steps / seconds:.2f}  ({steps} steps)")
    report.line(f"tokens per second: {tokens / seconds:,.0f}  ({tokens:,} tokens, padded)")
    report.line(f"achieved (FLOP model): {flops / seconds / 1e9:.2f} GFLOP/s")
    report.line(f"matmul peak, fp32 1024^3 torch.mm, {os.cpu_count()} threads: {peak_before / 1e9:.1f} GFLOP/s before, "
                f"{peak_after / 1e9:.1f} after -> fraction of peak {flops / seconds / peak:.2f}")
    report.save()


if __name__ == "__main__":
    main()
