"""Invariants of reference/methods.md §3 on random float64 tensors, without Flower."""

import pytest
import torch

from fedlr.methods import get_method
from fedlr.methods.averaging import weighted_mean_update
from fedlr.methods.fed_sb import init_factors
from fedlr.config import ConfigError

torch.manual_seed(0)
D_OUT, D_IN, R, K = 12, 9, 3, 4
TOL = 1e-10


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def weights_and_p(k=K):
    n = torch.randint(1, 50, (k,)).double().tolist()
    return n, [x / sum(n) for x in n]


def aggregate(name, state, client_states, n):
    spec = get_method(name)
    updates = [{k: cs[k] - state[k] for k in state} for cs in client_states]
    return spec.aggregate(state, updates, n)


def test_fed_sb_is_exact():
    b, a, s = rand(D_OUT, R), rand(R, D_IN), 0.7
    state = {"R": rand(R, R)}
    clients = [{"R": rand(R, R)} for _ in range(K)]
    n, p = weights_and_p()
    new = aggregate("fed_sb", state, clients, n)
    lhs = s * b @ new["R"] @ a
    rhs = sum(pk * s * b @ c["R"] @ a for pk, c in zip(p, clients))
    assert torch.allclose(lhs, rhs, atol=TOL)


def test_fedit_is_inexact_unless_factors_agree():
    state = {"A": rand(R, D_IN), "B": rand(D_OUT, R)}
    clients = [{"A": rand(R, D_IN), "B": rand(D_OUT, R)} for _ in range(K)]
    n, p = weights_and_p()
    new = aggregate("fedit", state, clients, n)
    exact = sum(pk * c["B"] @ c["A"] for pk, c in zip(p, clients))
    assert (new["B"] @ new["A"] - exact).norm() > 1e-3
    shared_a = rand(R, D_IN)
    same_a = [{"A": shared_a.clone(), "B": c["B"]} for c in clients]
    new = aggregate("fedit", state, same_a, n)
    exact = sum(pk * c["B"] @ c["A"] for pk, c in zip(p, same_a))
    assert torch.allclose(new["B"] @ new["A"], exact, atol=TOL)
    one = aggregate("fedit", state, clients[:1], n[:1])
    assert torch.allclose(one["B"] @ one["A"], clients[0]["B"] @ clients[0]["A"], atol=TOL)


def test_ffa_lora_is_exact_with_the_shared_frozen_a():
    a = rand(R, D_IN)
    state = {"B": rand(D_OUT, R)}
    clients = [{"B": rand(D_OUT, R)} for _ in range(K)]
    n, p = weights_and_p()
    new = aggregate("ffa_lora", state, clients, n)
    assert torch.allclose(new["B"] @ a, sum(pk * c["B"] @ a for pk, c in zip(p, clients)), atol=TOL)


def test_full_ft_averages_client_models():
    state = {"W": rand(D_OUT, D_IN), "b": rand(D_OUT)}
    clients = [{k: rand(*v.shape) for k, v in state.items()} for _ in range(K)]
    n, p = weights_and_p()
    new = aggregate("full_ft", state, clients, n)
    for key in state:
        assert torch.allclose(new[key], sum(pk * c[key] for pk, c in zip(p, clients)), atol=TOL)


@pytest.mark.parametrize("name", ["fedit", "ffa_lora", "fed_sb", "full_ft"])
def test_generic_invariants(name):
    state = {"X": rand(D_OUT, R), "Y": rand(R)}
    n, _ = weights_and_p()
    # no-op when clients return the broadcast unchanged
    assert all(torch.equal(v, state[k]) for k, v in aggregate(name, state, [state] * K, n).items())
    # identical client models aggregate to that model
    same = {k: rand(*v.shape) for k, v in state.items()}
    assert all(torch.allclose(v, same[k], atol=TOL) for k, v in aggregate(name, state, [same] * K, n).items())
    # independent of client order; weighted == uniform for equal sizes
    clients = [{k: rand(*v.shape) for k, v in state.items()} for _ in range(K)]
    fwd = aggregate(name, state, clients, n)
    rev = aggregate(name, state, clients[::-1], n[::-1])
    assert all(torch.allclose(fwd[k], rev[k], atol=TOL) for k in state)
    uniform = aggregate(name, state, clients, [5.0] * K)
    assert all(torch.allclose(uniform[k], sum(c[k] for c in clients) / K, atol=TOL) for k in state)


def test_weighted_mean_rejects_empty_or_zero_weights():
    with pytest.raises(ValueError):
        weighted_mean_update({"X": rand(2)}, [], [])
    with pytest.raises(ValueError):
        weighted_mean_update({"X": rand(2)}, [{"X": rand(2)}], [0.0])


def test_lora_sb_init_is_the_best_rank_r_approximation_of_the_sign_step():
    g = rand(D_OUT, D_IN)
    scale, eta = 2.0, 1e-3
    b, a, r0 = (t.double() for t in init_factors(g, R, scale, eta))
    assert torch.allclose(b.T @ b, torch.eye(R, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(a @ a.T, torch.eye(R, dtype=torch.float64), atol=1e-6)
    assert torch.count_nonzero(r0 - torch.diag(torch.diagonal(r0))) == 0
    assert (torch.diagonal(r0) >= 0).all()
    delta = -eta * torch.sign(g)
    sigma = torch.linalg.svdvals(delta)
    err = (delta - scale * b @ r0 @ a).norm() ** 2
    assert torch.isclose(err, (sigma[R:] ** 2).sum(), rtol=1e-5)


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="method.name: 'fedavg' is not a method"):
        get_method("fedavg")
