"""DP-LoRA (reference/methods.md §2.6): FedIT's factors, uniform server weights 1/K, and which of
the paper's noise stages ran is logged with the run."""

import torch

from fedlr.config import experiment_from_dict
from fedlr.methods import get_method
from fedlr.privacy.planning import plan_privacy

torch.manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def test_server_weights_are_uniform_whatever_the_client_sizes():
    state = {"A": rand(3, 9), "B": rand(12, 3)}
    clients = [{k: rand(*v.shape) for k, v in state.items()} for _ in range(4)]
    updates = [{k: c[k] - state[k] for k in c} for c in clients]
    new = get_method("dp_lora").aggregate(state, updates, [1.0, 10.0, 100.0, 1000.0])
    for k in state:
        assert torch.allclose(new[k], sum(c[k] for c in clients) / 4, atol=1e-12)


def test_trains_both_factors_and_is_inexact():
    spec = get_method("dp_lora")
    assert spec.adapter == "lora" and spec.trains == ("lora_A", "lora_B") and not spec.exact
    state = {"A": rand(3, 9), "B": rand(12, 3)}
    clients = [{k: rand(*v.shape) for k, v in state.items()} for _ in range(3)]
    new = spec.aggregate(state, [{k: c[k] - state[k] for k in c} for c in clients], [1.0] * 3)
    exact = sum(c["B"] @ c["A"] for c in clients) / 3
    assert (new["B"] @ new["A"] - exact).norm() > 1e-3


def exp_with(mode, **privacy):
    return experiment_from_dict({
        "model": {"name_or_path": "tiny-random-bert"}, "method": {"name": "dp_lora", "rank": 4},
        "federation": {"num_clients": 4, "clients_per_round": 2, "num_rounds": 2},
        "train": {"local_steps": 2, "batch_size": 8}, "privacy": {"mode": mode, **privacy},
    })


def test_the_noise_stage_that_ran_is_named():
    sizes = [100, 80, 60, 90]
    sample = plan_privacy(exp_with("sample", noise_multiplier=1.0), sizes)
    assert any("stage (2)" in m and "clipped separately" in m for m in sample.mechanisms)
    local = plan_privacy(exp_with("client_local", noise_multiplier=1.0), sizes)
    assert any("stage (3)" in m for m in local.mechanisms)
    central = plan_privacy(exp_with("client_central", noise_multiplier=1.0), sizes)
    assert any("at the server" in m for m in central.mechanisms)
    assert plan_privacy(exp_with("sample", target_epsilon=float("inf")), sizes) is None  # ε = ∞: no DP
