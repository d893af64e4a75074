"""FedEx-LoRA and FLoRA on a real (tiny) model: after the server's aggregation the model's
effective weights equal the average of the clients' adapted weights, on square and non-square
layers; FLoRA restarts from fresh adapters (drawn from the seed, never sent); the plan counts the
dense base weights going down; the merged export reloads as a plain model with the same logits."""

import pytest
import torch

from conftest import assert_merged_export_reloads
from fedlr.config import experiment_from_dict
from fedlr.methods import get_method
from fedlr.models.adapted import adapter_paths
from fedlr.plan import communication_plan
from fedlr.workbench import Workbench

TINY = {"model": {"name_or_path": "tiny-random-bert", "max_length": 32, "targets": ["query", "dense"]},
        "data": {"max_train_examples": 200, "max_test_examples": 16},
        "federation": {"num_clients": 3, "clients_per_round": 3}}


@pytest.fixture(scope="module", params=["fedex_lora", "flora"])
def setup(request):
    exp = experiment_from_dict({**TINY, "method": {"name": request.param, "rank": 4, "alpha": 8.0}})
    bench = Workbench(exp)
    state = bench.adapted.round_state()
    gen = torch.Generator().manual_seed(0)
    trained = bench.adapted.trained_keys
    updates = [{k: torch.randn(state[k].shape, generator=gen) * 0.1 for k in trained} for _ in range(3)]
    weights = [1.0, 2.0, 3.0]
    spec = get_method(exp.method.name)
    new = spec.aggregate(state, updates, weights, scale=exp.method.scale, server_round=1, seed=exp.seed)
    return exp, bench, state, updates, weights, new


def effective(bench, state, path):
    bench.load(state)
    layer = bench.adapted.model.get_submodule(path)
    return (layer.base.weight + layer.delta_weight()).detach().double()


def test_aggregate_equals_the_average_of_client_models(setup):
    exp, bench, state, updates, weights, new = setup
    p = [w / sum(weights) for w in weights]
    paths = adapter_paths(bench.adapted)
    shapes = {tuple(bench.adapted.model.get_submodule(x).base.weight.shape) for x in paths}
    assert any(a != b for a, b in shapes) and any(a == b for a, b in shapes)  # square and non-square layers
    for path in paths:
        clients = [effective(bench, {k: state[k] + u.get(k, 0) for k, v in state.items()}, path) for u in updates]
        exact = sum(pk * w for pk, w in zip(p, clients))
        assert torch.allclose(effective(bench, new, path), exact, atol=1e-5), path


def test_flora_restarts_from_fresh_adapters_and_fedex_keeps_the_averages(setup):
    exp, bench, state, updates, weights, new = setup
    b_keys = [k for k in new if k.endswith("lora_B.weight")]
    a_keys = [k for k in new if k.endswith("lora_A.weight")]
    if exp.method.name == "flora":
        assert all(torch.count_nonzero(new[k]) == 0 for k in b_keys)
        assert all(not torch.allclose(new[k], state[k]) for k in a_keys)
    else:
        p = [w / sum(weights) for w in weights]
        k = a_keys[0]
        assert torch.allclose(new[k], state[k] + sum(pk * u[k] for pk, u in zip(p, updates)), atol=1e-6)


def test_plan_counts_the_dense_base_weights_down_and_only_adapters_up(setup):
    exp, bench, *_ = setup
    plan = communication_plan(exp, 2)
    params = bench.adapted.parameters_by_name()
    dense = sum(params[f"{x}.base.weight"].numel() for x in adapter_paths(bench.adapted))
    # FedEx-LoRA sends its averaged adapters down; FLoRA's fresh ones are drawn from the seed by every party
    adapters_down = plan["uplink_params_per_client"] if exp.method.name == "fedex_lora" else 0
    assert plan["downlink_params"] == adapters_down + plan["head_params"] + dense
    lora = sum(params[k].numel() for k in bench.adapted.trained_keys if ".lora_" in k)
    assert plan["uplink_params_per_client"] == lora


def test_merged_export_reloads_with_the_same_logits(setup, tmp_path):
    exp, bench, state, updates, weights, new = setup
    bench.load(new)
    assert_merged_export_reloads(bench, tmp_path / "model")
