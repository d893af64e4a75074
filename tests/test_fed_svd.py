"""FedSVD (reference/methods.md §2.4, invariants §3.6 and §3.9) on float64 tensors, and what it
sends: B up, B and A down every round."""

import torch

from fedlr.adapters.layers import LoRALinear
from fedlr.config import experiment_from_dict
from fedlr.methods import get_method
from fedlr.methods.fed_svd import refactorize
from fedlr.models.adapted import build_adapted_model
from fedlr.plan import communication_plan
from fedlr.wire import record_wire_bytes

torch.manual_seed(0)
D_OUT, D_IN, R, K = 12, 9, 3, 4
TOL = 1e-10
EYE = torch.eye(R, dtype=torch.float64)


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def test_refactorization_preserves_the_product_with_orthonormal_a():
    b, a = rand(D_OUT, R), rand(R, D_IN)
    b_hat, a_hat = refactorize(b, a)
    assert torch.allclose(b_hat @ a_hat, b @ a, atol=TOL)
    assert torch.allclose(a_hat @ a_hat.T, EYE, atol=TOL)
    gram = b_hat.T @ b_hat
    sigma2 = torch.diagonal(gram)
    assert torch.allclose(gram, torch.diag(sigma2), atol=TOL)  # B̂ᵀB̂ = Σ²
    assert (sigma2 >= 0).all() and (sigma2[:-1] >= sigma2[1:]).all()
    assert torch.allclose(sigma2.sqrt(), torch.linalg.svdvals(b @ a)[:R], atol=1e-9)


def test_repeated_refactorization_leaves_the_product_unchanged():
    b, a = rand(D_OUT, R), rand(R, D_IN)
    product = b @ a
    for _ in range(5):
        b, a = refactorize(b, a)
    assert torch.allclose(b @ a, product, atol=1e-9)


def test_zero_b_gives_zero_b_and_still_orthonormal_a():
    b_hat, a_hat = refactorize(torch.zeros(D_OUT, R, dtype=torch.float64), rand(R, D_IN))
    assert torch.count_nonzero(b_hat) == 0
    assert torch.allclose(a_hat @ a_hat.T, EYE, atol=TOL)


def test_model_output_is_identical_after_refactorization():
    layer = LoRALinear(torch.nn.Linear(D_IN, D_OUT).double(), R, 2.0).double()
    with torch.no_grad():
        layer.lora_A.weight.copy_(rand(R, D_IN))
        layer.lora_B.weight.copy_(rand(D_OUT, R))
    x = rand(5, D_IN)
    before = layer(x)
    with torch.no_grad():
        b, a = refactorize(layer.lora_B.weight, layer.lora_A.weight)
        layer.lora_B.weight.copy_(b)
        layer.lora_A.weight.copy_(a)
    assert torch.allclose(layer(x), before, atol=TOL)


def state_and_clients():
    state = {"l.lora_B.weight": rand(D_OUT, R), "l.lora_A.weight": rand(R, D_IN), "head.weight": rand(2, 4)}
    clients = [{"l.lora_B.weight": rand(D_OUT, R), "head.weight": rand(2, 4)} for _ in range(K)]
    n = torch.randint(1, 50, (K,)).double().tolist()
    return state, clients, n


def aggregate(state, clients, n):
    updates = [{k: c[k] - state[k] for k in c} for c in clients]
    return get_method("fed_svd").aggregate(state, updates, n)


def test_aggregation_averages_b_then_refactorizes_with_the_previous_a():
    state, clients, n = state_and_clients()
    p = [x / sum(n) for x in n]
    new = aggregate(state, clients, n)
    b_bar = sum(pk * c["l.lora_B.weight"] for pk, c in zip(p, clients))
    assert torch.allclose(new["l.lora_B.weight"] @ new["l.lora_A.weight"], b_bar @ state["l.lora_A.weight"], atol=TOL)
    # exact: the product equals the average of the clients' products with the shared A
    exact = sum(pk * c["l.lora_B.weight"] @ state["l.lora_A.weight"] for pk, c in zip(p, clients))
    assert torch.allclose(new["l.lora_B.weight"] @ new["l.lora_A.weight"], exact, atol=TOL)
    assert torch.allclose(new["l.lora_A.weight"] @ new["l.lora_A.weight"].T, EYE, atol=TOL)
    assert torch.allclose(new["head.weight"], sum(pk * c["head.weight"] for pk, c in zip(p, clients)), atol=TOL)


def test_generic_invariants_hold_on_the_product():
    state, clients, n = state_and_clients()
    product = lambda s: s["l.lora_B.weight"] @ s["l.lora_A.weight"]  # noqa: E731
    unchanged = [{k: state[k].clone() for k in c} for c in clients]
    assert torch.allclose(product(aggregate(state, unchanged, n)), product(state), atol=TOL)  # no-op
    same = [dict(clients[0]) for _ in range(K)]
    assert torch.allclose(product(aggregate(state, same, n)),
                          clients[0]["l.lora_B.weight"] @ state["l.lora_A.weight"], atol=TOL)
    fwd, rev = aggregate(state, clients, n), aggregate(state, clients[::-1], n[::-1])
    assert torch.allclose(product(fwd), product(rev), atol=TOL)


def test_clients_train_and_upload_only_b_and_a_travels_down_every_round():
    exp = experiment_from_dict({"model": {"name_or_path": "tiny-random-bert", "targets": ["query", "value"]},
                                "method": {"name": "fed_svd", "rank": 4, "train_head": False}})
    adapted = build_adapted_model(exp, 2, meta=True)
    assert adapted.trained_keys and all(".lora_B." in k for k in adapted.trained_keys)
    assert adapted.broadcast_keys and all(".lora_A." in k for k in adapted.broadcast_keys)
    assert not any(p.requires_grad for n, p in adapted.model.named_parameters() if ".lora_A." in n)
    plan = communication_plan(exp, 2)
    params = adapted.parameters_by_name()
    up = record_wire_bytes([(k, params[k].numel()) for k in adapted.trained_keys])
    down = record_wire_bytes([(k, params[k].numel()) for k in adapted.trained_keys + adapted.broadcast_keys])
    assert plan["uplink_bytes_per_client"] == up
    assert plan["downlink_bytes"] == down > up
    assert plan["uplink_params_per_client"] == 4 * 64 * 4  # 4 layers × r·d_out, d = 64
    assert plan["downlink_params"] == 4 * 4 * (64 + 64)  # 4 layers × r(d_in + d_out)
    rounds = exp.federation.num_rounds * exp.federation.clients_per_round
    assert plan["total_downlink_bytes"] == rounds * down and plan["total_uplink_bytes"] == rounds * up
