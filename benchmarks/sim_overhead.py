"""Benchmark 1 (issue 8): what a simulated round costs beyond its clients' training arithmetic.

For each model (the bundled all-MiniLM-L6-v2 and the tiny random BERT) one experiment —
Fed-SB (random orthonormal init, so no dense init round), 8 clients, 4 sampled per round,
``local_steps`` steps of batch 16, evaluation off (the denominator is training only) — runs:

1. ``plain`` — the same clients' ``local_train`` calls back to back in this process, one torch
   thread (the fastest setting on this shared 2-core machine; the torch default of one thread per
   core is measured too), with the seeds the simulation uses; once before and once after the
   simulations, per round the sum over the round's sampled clients;
2. ``inproc`` — fedlr's real ServerApp body and ClientApp in this process (``common.InProcessGrid``,
   one thread as the ClientApp sets): everything a simulation does except Ray and Flower's SuperLink;
3. ``ray`` — ``fedlr.run.simulation.simulate``: Flower's simulation engine on Ray, one actor per
   core, one torch thread per actor (``federation.num_cpus = 1``); ``ray-1`` the same with one
   actor (``federation.ray_num_cpus = 1``: like for like with ``plain``); ``ray-fused`` with the
   round's clients trained in one worker call (``federation.fused_clients = 4``, ``fedlr.fused``).

Steady state = rounds 3..R (the first rounds build the model in every worker). Overhead ratio =
median steady round wall time / median plain round time. Fixed cost per client-round =
(median round − median plain round) / clients per round. Startup = wall time from the call to the
end of round 1, minus one steady round. The ledger's bytes are checked against ``fedlr plan``.

    .venv/bin/python benchmarks/sim_overhead.py          # writes benchmarks/sim_overhead.txt
    .venv/bin/python benchmarks/sim_overhead.py --models tiny   # writes benchmarks/sim_overhead_tiny.txt
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from common import InProcessGrid, Report, median
from fedlr.config import load_experiment
from fedlr.plan import communication_plan
from fedlr.results import RunDir
from fedlr.results.console import Console
from fedlr.sampling import sample_clients
from fedlr.seeding import derive_seed, torch_generator
from fedlr.train import local_train
from fedlr.workbench import Workbench

MODELS = {"minilm": ("bundled:all-MiniLM-L6-v2", 64, 5), "tiny": ("tiny-random-bert", 32, 5)}
STEADY_FROM = 3


RAY_VARIANTS = {  # label -> overrides of the Ray runs
    "ray": [],  # one actor per core (2 here)
    "ray-1": ["federation.ray_num_cpus=1"],  # one actor: the engine's cost against plain, like for like
    "ray-fused": ["federation.fused_clients=4"],  # the round's 4 clients in one worker call (fedlr.fused)
}


def experiment(model: str, rounds: int, out: str, extra: list[str] = ()):
    name, max_length, steps = MODELS[model]
    return load_experiment("experiments/tiny.toml", [
        f'model.name_or_path="{name}"', f"model.max_length={max_length}", "data.max_train_examples=2000",
        'method.init="random"', "method.rank=16", "federation.num_clients=8", "federation.clients_per_round=4",
        f"federation.num_rounds={rounds}", f"train.local_steps={steps}", "train.batch_size=16",
        "evaluation.central=false", "evaluation.client_side=false", "output.export_peft=false",
        f'output.dir="{out}"', *extra,
    ])


def plain_rounds(exp, bench: Workbench, threads: int) -> list[float]:
    """Per steady round: seconds of the sampled clients' ``local_train`` run back to back."""
    fed = exp.federation
    torch.set_num_threads(threads)
    params, named = bench.adapted.trainable_parameters(), bench.adapted.parameters_by_name()
    head = [named[k] for k in bench.adapted.head_keys]
    times = []
    for rnd in range(STEADY_FROM, fed.num_rounds + 1):
        started = time.perf_counter()
        for pid in sample_clients(exp.seed, rnd, fed.num_clients, fed.clients_per_round):
            torch.manual_seed(derive_seed(exp.seed, "dropout", rnd, pid))
            local_train(bench.adapted.model, params, head, bench.data.client_train(pid), exp.train,
                        torch_generator(exp.seed, "batches", rnd, pid), bench.device)
        times.append(time.perf_counter() - started)
    return times


def timed_run(run_fn) -> tuple[list[float], float, dict]:
    """(wall-clock end time of each ledger row since the call, total seconds, summary)."""
    stamps: list[float] = []
    started = time.perf_counter()
    console = Console(quiet=True, observers=[lambda row: stamps.append(time.perf_counter() - started)])
    summary = run_fn(console)
    return stamps, time.perf_counter() - started, summary


def steady(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps[STEADY_FROM - 1:], stamps[STEADY_FROM:])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args()
    name = "sim_overhead" if args.models == list(MODELS) else "sim_overhead_" + "_".join(args.models)
    report = Report(name, "benchmarks/sim_overhead.py " + " ".join(
        f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()))
    out = tempfile.mkdtemp(prefix="fedlr-bench-")
    for model in args.models:
        exp = experiment(model, args.rounds, out)
        fed = exp.federation
        bench = Workbench(exp)
        plain = plain_rounds(exp, bench, 1)

        from fedlr.clients.app import app
        from fedlr.run.server import run_server

        grid = InProcessGrid(app, fed.num_clients)
        in_stamps, _, _ = timed_run(lambda c: run_server(grid, exp, RunDir.create(exp, f"{model}-inproc"), c))
        from fedlr.run.simulation import simulate

        ray_runs = {}
        for label, extra in RAY_VARIANTS.items():
            variant = experiment(model, args.rounds, out, extra)
            ray_runs[label] = timed_run(lambda c: simulate(variant, RunDir.create(variant, f"{model}-{label}"), c))
        plain += plain_rounds(exp, bench, 1)
        plain_all_cores = plain_rounds(exp, bench, os.cpu_count() or 1)
        plan = communication_plan(exp, bench.data.num_labels)

        p, ip = median(plain), median(steady(in_stamps))
        k = fed.clients_per_round
        report.line(f"== {model}: {exp.model.name_or_path}, fed_sb r={exp.method.rank}, {fed.num_clients} clients, "
                    f"{k} per round, {exp.train.local_steps} steps x batch {exp.train.batch_size}, "
                    f"max_length {exp.model.max_length}, rounds {STEADY_FROM}..{fed.num_rounds} steady")
        report.line(f"plain local_train, 1 thread, sum per round (s): median {p:.3f}  "
                    f"[{', '.join(f'{t:.2f}' for t in plain)}]")
        report.line(f"plain local_train, {os.cpu_count()} threads (torch default), sum per round (s): median "
                    f"{median(plain_all_cores):.3f}  [{', '.join(f'{t:.2f}' for t in plain_all_cores)}]")
        rows = [("inproc", in_stamps)] + [(label, stamps) for label, (stamps, _, _) in ray_runs.items()]
        for label, stamps in rows:
            med = median(steady(stamps))
            report.line(f"{label:9s} steady round (s): median {med:.3f}  [{', '.join(f'{t:.2f}' for t in steady(stamps))}]"
                        f"  overhead ratio {med / p:.3f}  fixed cost per client-round {1000 * (med - p) / k:.0f} ms")
        for label, (stamps, total, summary) in ray_runs.items():
            rr = median(steady(stamps))
            ok = summary["total_bytes"] == plan["total_bytes"]
            report.line(f"{label} startup (s): to round 0 row {stamps[0]:.1f}, to round 1 row {stamps[1]:.1f}, "
                        f"startup = round-1 end - one steady round = {stamps[1] - rr:.1f}; whole simulate() "
                        f"{total:.1f}; ledger bytes {summary['total_bytes']:,} vs plan {plan['total_bytes']:,}: "
                        f"{'equal' if ok else 'DIFFERENT'}")
        report.line()
    report.save()


if __name__ == "__main__":
    main()
