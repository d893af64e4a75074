"""Encode+decode throughput of each codec on MiniLM-sized updates, as a ratio to a plain tensor
copy of the same update (issue 4; method of reference/environment.md §6).

Two updates of all-MiniLM-L6-v2 with query+value targets (reference/methods.md §4): the LoRA r=8
factors plus the classifier head (74,498 values), and dense query/value deltas plus the head
(1,770,242 values, full fine-tuning of those matrices). One thread (``torch.set_num_threads(1)``),
CPU time (``time.process_time``), modes interleaved (copy, codec A, codec B, ..., copy, ...),
3 warm-up rounds, medians of the timed rounds; each measurement repeats the operation until it
has run ≥ 20 ms of CPU time. Error feedback is off here (it adds one decode and one subtraction).

    python benchmarks/codec_throughput.py [--reps 9] > benchmarks/codec_throughput.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from fedlr.compression import compression_config, compression_stats, make_codec

LAYERS = [f"bert.encoder.layer.{i}.attention.self.{t}" for i in range(6) for t in ("query", "value")]
HEAD = {"classifier.weight": (2, 384), "classifier.bias": (2,)}
UPDATES = {
    "lora-r8": {**{f"{p}.lora_A.weight": (8, 384) for p in LAYERS},
                **{f"{p}.lora_B.weight": (384, 8) for p in LAYERS}, **HEAD},
    "dense-qv": {**{f"{p}.weight": (384, 384) for p in LAYERS}, **HEAD},
}
CODECS = {
    "none": {"codec": "none"},
    "fp16": {"codec": "fp16"},
    "qsgd-8bit": {"codec": "qsgd", "bits": 8},
    "qsgd-4bit": {"codec": "qsgd", "bits": 4},
    "qsgd-2bit": {"codec": "qsgd", "bits": 2},
    "topk-1%": {"codec": "topk", "density": 0.01},
    "topk-10%": {"codec": "topk", "density": 0.1},
    "powersgd-r1": {"codec": "powersgd", "rank": 1, "power_iterations": 2},
    "powersgd-r4": {"codec": "powersgd", "rank": 4, "power_iterations": 2},
}
MIN_MEASURE_S = 0.02


def make_update(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: 0.01 * torch.randn(s, generator=g) for k, s in shapes.items()}


def operations(update):
    shapes = {k: tuple(v.shape) for k, v in update.items()}
    ops = {"copy": lambda: {k: v.clone() for k, v in update.items()}}
    for name, data in CODECS.items():
        codec = make_codec(compression_config(data))
        params = codec.default_params(shapes)

        def op(codec=codec, params=params):
            payload, _ = codec.encode(update, params, torch.Generator().manual_seed(1), {})
            return codec.decode(payload, shapes)
        ops[name] = op
    return shapes, ops


def measure(fn, inner):
    start = time.process_time()
    for _ in range(inner):
        fn()
    return (time.process_time() - start) / inner


def calibrate(fn):
    fn()
    inner = 1
    while measure(fn, inner) * inner < MIN_MEASURE_S:
        inner *= 2
    return inner


def run(reps: int, warmup: int = 3):
    torch.set_num_threads(1)
    print(__doc__.strip().splitlines()[0])
    print(f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs shared with other engineers' jobs "
          f"(load average at start {os.getloadavg()[0]:.1f}); torch {torch.__version__}, 1 thread; "
          f"CPU time (process_time), interleaved, median of {reps} after {warmup} warm-ups")
    for label, shape_set in UPDATES.items():
        update = make_update(shape_set)
        shapes, ops = operations(update)
        inner = {name: calibrate(fn) for name, fn in ops.items()}
        times = {name: [] for name in ops}
        for rep in range(warmup + reps):
            for name, fn in ops.items():
                t = measure(fn, inner[name])
                if rep >= warmup:
                    times[name].append(t)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        values = sum(v.numel() for v in update.values())
        print(f"\n{label}: {len(shapes)} tensors, {values:,} values ({4 * values / 2**20:.2f} MiB fp32)")
        print(f"{'mode':<13} {'median ms':>10} {'spread %':>9} {'MB/s':>8} {'x copy':>8} {'bytes ratio':>12}")
        for name, t in med.items():
            spread = 100 * (max(times[name]) - min(times[name])) / t
            ratio = "" if name == "copy" else f"{compression_stats(shapes, compression_config(CODECS[name])).compression_ratio:.2f}"
            print(f"{name:<13} {1e3 * t:>10.3f} {spread:>9.0f} {4 * values / t / 1e6:>8.0f} {t / med['copy']:>8.1f} {ratio:>12}")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; 'x copy' = encode+decode CPU time / a clone of "
          "every tensor; 'bytes ratio' = fp32 bytes / payload bytes.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    run(parser.parse_args().reps)
