"""L-GreCo's solver against brute force on small rounded instances, its budget guarantee, and
the candidate tables it is fed (reference/compression.md §5, §7.4)."""

import itertools
import math
import random

import pytest
import torch

from fedlr.compression import (PowerSGDCodec, QSGDCodec, TopKCodec, compression_config, compression_stats,
                               make_codec)
from fedlr.compression.lgreco import (Candidate, InfeasibleBudget, brute_force, choose_params, discretize, knapsack,
                                      powersgd_candidates, qsgd_candidates, solve, topk_candidates)
from fedlr.compression.pipeline import choose_assignment, should_reselect


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_tables(rng, layers, options):
    """Per layer a dense candidate (largest, error 0) and cheaper, lossier ones."""
    tables = []
    for _ in range(layers):
        dense = rng.randint(200, 400)
        cands = [Candidate(0, dense, 0.0)]
        for v in range(1, rng.randint(2, options) + 1):
            cands.append(Candidate(v, rng.randint(1, dense - 1), rng.uniform(0.01, 5.0)))
        tables.append(cands)
    return tables


def test_knapsack_equals_brute_force_on_integer_instances():
    rng = random.Random(0)
    for _ in range(300):
        layers = rng.randint(1, 5)
        sizes = [[rng.randint(1, 50) for _ in range(rng.randint(1, 4))] for _ in range(layers)]
        costs = [[rng.randint(0, 12) for _ in layer] for layer in sizes]
        capacity = rng.randint(0, 40)
        got, want = knapsack(sizes, costs, capacity), brute_force(sizes, costs, capacity)
        if want is None:
            assert got is None
            continue
        choice, size, cost = got
        assert (size, cost) == want
        assert size == sum(sizes[l][v] for l, v in enumerate(choice))
        assert cost == sum(costs[l][v] for l, v in enumerate(choice)) <= capacity


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5])
def test_solve_equals_brute_force_on_the_rounded_problem_and_stays_in_budget(alpha):
    rng = random.Random(int(alpha * 10))
    for _ in range(150):
        tables = random_tables(rng, rng.randint(1, 5), 4)
        default = [rng.randrange(1, len(t)) for t in tables]
        buckets = rng.choice([20, 100, 10_000])
        sizes = [[c.nbytes for c in t] for t in tables]
        errors = [[c.error for c in t] for t in tables]
        budget = alpha * sum(errors[l][v] for l, v in enumerate(default))
        choice = solve(tables, default, alpha, buckets)
        size = sum(sizes[l][v] for l, v in enumerate(choice))
        assert sum(errors[l][v] for l, v in enumerate(choice)) <= budget  # never over budget
        rounded = brute_force(sizes, discretize(errors, budget, buckets), buckets)  # dense makes it feasible
        best = rounded[0]
        if alpha >= 1:  # the uniform default stays admissible
            best = min(best, sum(sizes[l][v] for l, v in enumerate(default)))
            assert size <= sum(sizes[l][v] for l, v in enumerate(default))
        assert size == best
        # continuous brute force: the DP loses at most what rounding costs, never gains
        continuous = min(sum(sizes[l][v] for l, v in enumerate(c)) for c in itertools.product(*map(range, map(len, tables)))
                         if sum(errors[l][v] for l, v in enumerate(c)) <= budget)
        assert size >= continuous


def test_default_is_feasible_at_alpha_one_even_when_rounding_pushes_it_over():
    # three layers whose default errors each round up: Σ⌈ε/b⌉ = D + 3 > D
    tables = [[Candidate(0, 100, 0.0), Candidate(1, 10, 1.0 / 3)] for _ in range(3)]
    assert sum(discretize([[0, 1 / 3]] * 3, 1.0, 10)[l][1] for l in range(3)) > 10
    assert solve(tables, [1, 1, 1], alpha=1.0, buckets=10) == [1, 1, 1]


def test_larger_budget_never_costs_more_and_infeasible_raises():
    rng = random.Random(5)
    for _ in range(60):
        tables = random_tables(rng, 4, 4)
        default = [1] * 4
        sizes = []
        for alpha in (0.25, 0.5, 1.0, 2.0, 4.0):
            choice = solve(tables, default, alpha, 1000)
            sizes.append(sum(tables[l][v].nbytes for l, v in enumerate(choice)))
        assert sizes == sorted(sizes, reverse=True)
    lossy_only = [[Candidate(1, 10, 1.0), Candidate(2, 5, 2.0)] for _ in range(2)]
    with pytest.raises(InfeasibleBudget):
        solve(lossy_only, [0, 0], alpha=0.5)
    assert solve([[Candidate(0, 100, 0.0), Candidate(1, 1, 0.0), Candidate(2, 0, 1.0)]], [1], alpha=1.0) == [1]


def test_powersgd_candidates_cap_the_rank_and_always_offer_dense():
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cands = powersgd_candidates(x, PowerSGDCodec(rank=2), 2)
    ranks = [c.param for c in cands]
    assert ranks == [1, 2, 3, 0]  # rank 4 fails the 2× rule ((8+40)·4·2 ≥ 320); dense always there
    s = torch.linalg.svdvals(x)
    assert cands[0].error == pytest.approx(float(s[1:].square().sum().sqrt()))
    assert cands[-1] == Candidate(0, 4 * 320, 0.0)
    square = torch.randn(6, 6, dtype=torch.float64)
    assert [c.param for c in powersgd_candidates(square, PowerSGDCodec(rank=1, min_compression_rate=1.0), 1)] == [1, 2, 0]


def test_topk_and_qsgd_candidates_have_exact_errors():
    x = torch.arange(1, 101, dtype=torch.float64).reshape(10, 10)
    cands = {c.param: c for c in topk_candidates(x, TopKCodec(0.08), 8)}
    assert sorted(cands) == [0, 2, 4, 8, 16, 32]
    assert cands[8].error == pytest.approx(math.sqrt(sum(i * i for i in range(1, 93))))
    q = qsgd_candidates(x, QSGDCodec(bits=4), 4)
    errors = [c.error for c in q if c.param]
    assert errors == sorted(errors, reverse=True)  # more bits, less error
    assert q[-1].param == 0 and q[-1].error == 0


@pytest.mark.parametrize("codec", ["powersgd", "topk", "qsgd"])
def test_choose_params_on_a_minilm_update_beats_or_matches_uniform(codec):
    g = torch.Generator().manual_seed(1)
    update = {}
    for i in range(6):  # layers with different spectra: L-GreCo should spend bytes unevenly
        u = torch.randn(384, 6, generator=g) @ torch.diag(torch.logspace(0, -i / 2, 6)) @ torch.randn(6, 384, generator=g)
        update[f"layer.{i}.weight"] = u + 0.01 * torch.randn(384, 384, generator=g)
    update["head.bias"] = torch.randn(2, generator=g)
    cfg = compression_config({"codec": codec, "rank": 2, "density": 0.02, "bits": 4, "adaptive": "lgreco"})
    params = choose_assignment(update, cfg)
    shapes = {k: tuple(v.shape) for k, v in update.items()}
    uniform = compression_stats(shapes, cfg)
    adaptive = compression_stats(shapes, cfg, assignment=params)
    assert adaptive.payload_bytes <= uniform.payload_bytes
    assert params == choose_params(update, make_codec(cfg), 1.0)
    if codec == "powersgd":
        assert params["head.bias"] == 0  # 1-D: never compressed, not a layer of the problem
        assert len({params[k] for k in update if k.startswith("layer")}) > 1  # really per layer


def test_reselection_schedule():
    cfg = compression_config({"codec": "powersgd", "adaptive": "lgreco", "reselect_every": 3})
    assert [t for t in range(1, 12) if should_reselect(cfg, t)] == [2, 5, 8, 11]
    warm = compression_config({"codec": "topk", "adaptive": "lgreco", "reselect_every": 2, "warmup_rounds": 2})
    assert [t for t in range(1, 9) if should_reselect(warm, t)] == [3, 5, 7]
    assert not any(should_reselect(compression_config({"codec": "topk"}), t) for t in range(1, 9))
