"""L-GreCo: a per-tensor choice of the codec's parameter (PowerSGD rank, top-k k, QSGD bits) that
minimizes the total payload bytes subject to a total error of at most α × that of the uniform
parameter — Alimohammadi, Markov, Frantar, Alistarh, "L-GreCo: Layerwise-Adaptive Gradient
Compression for Efficient and Accurate Deep Learning", MLSys 2024 (arXiv 2210.17357), §3.

**Problem** (multiple-choice knapsack). The layers ℓ = 1..L are the tensors the uniform
configuration compresses (parameter ≠ 0); each has candidates v with payload bytes ``s_ℓ(v)``
and error ``ε_ℓ(v)`` (always including "dense": 4·n bytes, error 0)::

    minimize Σ_ℓ s_ℓ(v_ℓ)   subject to   Σ_ℓ ε_ℓ(v_ℓ) ≤ E = α · Σ_ℓ ε_ℓ(v_default)

Errors are Frobenius **norms** of the compression error, summed as norms (the paper's choice, not
squared norms): PowerSGD the exact best rank-r error ``sqrt(Σ_{i>r} σ_i²)`` (the paper's 'SVD'
mode; warm-started power iteration approaches it), top-k the exact norm of the dropped entries,
QSGD the exact ``sqrt(E‖Q(x) − x‖²)``.

**Solver** (exact dynamic programming over a discretized budget). ``D`` buckets (10 000) of
width ``b = E/D``; integer cost ``c_ℓ(v) = ⌈ε_ℓ(v)/b⌉`` (0 for zero error). ``T_ℓ[e]`` = least
bytes of layers 1..ℓ with total cost exactly e; ``T_ℓ[e] = min_v T_{ℓ−1}[e − c_ℓ(v)] + s_ℓ(v)``,
vectorized over e, with back-pointers; the answer is the least ``T_L[e]`` over e ≤ D (ties: the
smallest e), then backtrack. O(L·|V|·D). Ceil rounding makes every rounded-feasible choice
feasible for the real errors, so **the choice never exceeds E**. The reference code's flaw — ceil
rounding can push the uniform default itself over the rounded capacity, so at α = 1 the default
may be infeasible — is fixed by keeping the default as an explicit candidate: when α ≥ 1 and the
DP finds nothing smaller, the default is returned. So the result is never larger than the uniform
configuration at α ≥ 1, never over budget, and an infeasible budget raises InfeasibleBudget
instead of returning garbage indices (the reference backtracks through −1).

**Where the choice is made, and what it reveals.** On the server, every ``reselect_every``
rounds, from the aggregate update it has just computed (new global − old global: the decoded
mean of the clients' payloads, the thing it releases anyway as the next global model), one
configuration for all clients, sent with the round's configuration. Nothing is computed from a
single client's update, so the choice reveals nothing beyond the global model (under central DP
it is post-processing of the noised aggregate); every client's payload in a round has the same
size, fixed by (shapes, parameters). A per-client choice would leak its update's spectrum through
its message size. The error measured on the aggregate stands in for the clients' EF-corrected
errors, which the server never sees. Warm-start factors are truncated or topped up when a rank
changes; EF memories are kept.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from fedlr.compression.base import FP32_BYTES, Codec, canonical_keys, matrix_shape, numel, shapes_of
from fedlr.compression.powersgd import PowerSGDCodec
from fedlr.compression.qsgd import SUPPORTED_BITS, QSGDCodec, expected_squared_error
from fedlr.compression.topk import TopKCodec

DEFAULT_BUCKETS = 10_000
RANK_RANGE = (0.5, 2.0)                      # PowerSGD ranks in [⌊γ·r0⌋, ⌈β·r0⌉] (paper, ResNet)
DENSITY_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # top-k: k0 × these
QSGD_BITS = SUPPORTED_BITS


@dataclass(frozen=True)
class Candidate:
    param: int      # rank / k / bits; 0 = the tensor travels dense
    nbytes: int
    error: float


class InfeasibleBudget(ValueError):
    """No choice of candidates fits the error budget."""


# ---------------------------------------------------------------- the exact solver
def knapsack(sizes: Sequence[Sequence[int]], costs: Sequence[Sequence[int]], capacity: int
             ) -> tuple[list[int], int, int] | None:
    """One candidate per layer, least Σ size subject to Σ cost ≤ capacity (integer costs ≥ 0);
    among the least-size choices the one of least Σ cost. Returns (indices, size, cost), or None
    if nothing fits. Exact: equals brute force on the same integers."""
    inf = np.iinfo(np.int64).max // 4
    table = np.full(capacity + 1, inf, dtype=np.int64)
    table[0] = 0
    pointers = []
    for layer_sizes, layer_costs in zip(sizes, costs):
        new = np.full(capacity + 1, inf, dtype=np.int64)
        arg = np.full(capacity + 1, -1, dtype=np.int64)
        for v, (s, c) in enumerate(zip(layer_sizes, layer_costs)):
            if c < 0:
                raise ValueError("costs must be non-negative")
            if c > capacity:
                continue
            cand = table[:capacity + 1 - c] + int(s)
            better = cand < new[c:]
            new[c:][better] = cand[better]
            arg[c:][better] = v
        table = np.minimum(new, inf)
        pointers.append(arg)
    if not (table < inf).any():
        return None
    e = int(np.argmin(table))  # first minimum: the least cost among the least sizes
    size, cost = int(table[e]), e
    choice = []
    for layer in range(len(pointers) - 1, -1, -1):
        v = int(pointers[layer][e])
        if v < 0:  # cannot happen on a finite entry; never backtrack through a missing pointer
            raise AssertionError("broken back-pointer")
        choice.append(v)
        e -= int(costs[layer][v])
    return choice[::-1], size, cost


def discretize(errors: Sequence[Sequence[float]], budget: float, buckets: int) -> list[list[int]]:
    """⌈ε/b⌉ with b = budget/buckets (conservative: never below the real error's share)."""
    width = budget / buckets
    return [[0 if err <= 0 else min(buckets + 1, math.ceil(err / width * (1 + 1e-12))) for err in layer]
            for layer in errors]


def solve(tables: Sequence[Sequence[Candidate]], default: Sequence[int], alpha: float = 1.0,
          buckets: int = DEFAULT_BUCKETS) -> list[int]:
    """Per layer, the index of the chosen candidate (see the module docstring)."""
    if len(tables) != len(default):
        raise ValueError("one default index per layer")
    if not tables:
        return []
    sizes = [[c.nbytes for c in layer] for layer in tables]
    errors = [[float(c.error) for c in layer] for layer in tables]
    default_error = sum(errors[layer][v] for layer, v in enumerate(default))
    budget = alpha * default_error

    def total(choice, what):
        return sum(what[layer][v] for layer, v in enumerate(choice))

    if not budget > 0:  # only exact candidates fit
        choice = []
        for layer in range(len(tables)):
            exact = [v for v in range(len(tables[layer])) if errors[layer][v] <= 0]
            if not exact:
                raise InfeasibleBudget(f"budget 0 and layer {layer} has no exact candidate")
            choice.append(min(exact, key=lambda v: (sizes[layer][v], v)))
        return choice
    costs = discretize(errors, budget, buckets)
    found = knapsack(sizes, costs, buckets)
    choice = found[0] if found else None
    default = list(default)
    if default_error <= budget:  # α ≥ 1: the uniform configuration is always admissible
        if choice is None or (total(choice, sizes), total(choice, errors)) > (total(default, sizes), default_error):
            choice = default
    if choice is None:
        raise InfeasibleBudget(f"no choice has total error <= {budget:.6g} (alpha {alpha})")
    if total(choice, errors) > budget:  # ceil rounding makes this impossible; keep the promise anyway
        raise AssertionError("L-GreCo choice over budget")
    return choice


def brute_force(sizes: Sequence[Sequence[int]], costs: Sequence[Sequence[int]], capacity: int
                ) -> tuple[int, int] | None:
    """(least size, its least cost) by enumeration — the tests' oracle for ``knapsack``."""
    best = None
    for choice in itertools.product(*(range(len(layer)) for layer in sizes)):
        cost = sum(costs[layer][v] for layer, v in enumerate(choice))
        if cost <= capacity:
            key = (sum(sizes[layer][v] for layer, v in enumerate(choice)), cost)
            best = key if best is None or key < best else best
    return best


# ---------------------------------------------------------------- candidate tables
def dense_candidate(shape: tuple[int, ...]) -> Candidate:
    return Candidate(0, FP32_BYTES * numel(shape), 0.0)


def _dedupe(cands: list[Candidate]) -> list[Candidate]:
    seen, out = set(), []
    for c in cands:
        if c.param not in seen:
            seen.add(c.param)
            out.append(c)
    return out


def powersgd_candidates(x: torch.Tensor, codec: PowerSGDCodec, default_rank: int,
                        rank_range: tuple[float, float] = RANK_RANGE) -> list[Candidate]:
    shape = tuple(x.shape)
    n, m = matrix_shape(shape)
    s2 = torch.linalg.svdvals(x.reshape(n, m).to(torch.float64)).square()
    tails = torch.cat([s2.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)]).sqrt()
    low, high = max(1, math.floor(rank_range[0] * default_rank)), math.ceil(rank_range[1] * default_rank)
    cands = [Candidate(r, codec.tensor_nbytes(shape, r), float(tails[min(r, s2.numel())]))
             for r in range(low, high + 1) if codec.param_for(shape, r) == r]
    return _dedupe(cands + [dense_candidate(shape)])


def topk_candidates(x: torch.Tensor, codec: TopKCodec, default_k: int,
                    factors: Sequence[float] = DENSITY_FACTORS) -> list[Candidate]:
    shape = tuple(x.shape)
    n = numel(shape)
    sq = x.reshape(-1).to(torch.float64).square().sort(descending=True).values
    kept = torch.cat([torch.zeros(1, dtype=torch.float64), sq.cumsum(0)])
    total = float(kept[-1])
    cands = []
    for f in factors:
        k = codec.param_for(shape, max(1, min(n, round(f * default_k))))
        if k:
            cands.append(Candidate(k, codec.tensor_nbytes(shape, k), math.sqrt(max(0.0, total - float(kept[k])))))
    return _dedupe(cands + [dense_candidate(shape)])


def qsgd_candidates(x: torch.Tensor, codec: QSGDCodec, default_bits: int,
                    bits_grid: Sequence[int] = QSGD_BITS) -> list[Candidate]:
    shape = tuple(x.shape)
    cands = [Candidate(b, codec.tensor_nbytes(shape, b), math.sqrt(expected_squared_error(x, b, codec.bucket_size)))
             for b in bits_grid if codec.param_for(shape, b) == b]
    return _dedupe(cands + [dense_candidate(shape)])


def candidate_table(x: torch.Tensor, codec: Codec, default_param: int) -> list[Candidate]:
    if isinstance(codec, PowerSGDCodec):
        return powersgd_candidates(x, codec, default_param)
    if isinstance(codec, TopKCodec):
        return topk_candidates(x, codec, default_param)
    if isinstance(codec, QSGDCodec):
        return qsgd_candidates(x, codec, default_param)
    raise ValueError(f"L-GreCo has no parameter to choose for codec {codec.name!r}")


def choose_params(update: Mapping[str, torch.Tensor], codec: Codec, alpha: float = 1.0,
                  buckets: int = DEFAULT_BUCKETS) -> dict[str, int]:
    """Per-tensor parameters for ``codec`` from one (aggregate) update: tensors the uniform
    configuration sends dense stay dense; the others get the DP's choice."""
    shapes = shapes_of(update)
    defaults = codec.default_params(shapes)
    layers = [k for k in canonical_keys(shapes) if defaults[k] != 0]
    tables = [candidate_table(update[k].detach().cpu(), codec, defaults[k]) for k in layers]
    default_index = [[c.param for c in table].index(defaults[k]) for k, table in zip(layers, tables)]
    choice = solve(tables, default_index, alpha, buckets)
    params = dict(defaults)
    for k, table, v in zip(layers, tables, choice):
        params[k] = table[v].param
    return params
