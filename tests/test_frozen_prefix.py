"""model.layers (adapters on chosen transformer blocks, PEFT's layers_to_transform) and the
frozen-prefix cache: the hidden states entering the lowest adapted block, computed once per example."""

import pytest
import torch
from peft import PeftModel

from fedlr.adapters.export import export_model
from fedlr.config import ConfigError, experiment_from_dict
from fedlr.models import load_base_model
from fedlr.models.adapted import adapter_paths, build_adapted_model
from fedlr.plan import communication_plan
from fedlr.workbench import Workbench

TINY = {"model": {"name_or_path": "tiny-random-bert", "max_length": 32},
        "data": {"max_train_examples": 200, "max_test_examples": 16},
        "federation": {"num_clients": 2, "clients_per_round": 2}}
LLAMA = {"model": {"name_or_path": "tiny-random-llama", "task": "causal_lm", "targets": ["q_proj", "v_proj"],
                   "max_length": 32},
         "data": {"dataset": "chatterbot", "max_train_examples": 100, "max_test_examples": 8},
         "federation": {"num_clients": 2, "clients_per_round": 2}}


def exp_for(method="fedit", layers=None, base=TINY, **method_extra):
    model = {**base["model"], **({"layers": layers} if layers is not None else {})}
    return experiment_from_dict({**base, "model": model,
                                 "method": {"name": method, "rank": 4, "alpha": 8.0, **method_extra}})


def test_layers_put_adapters_only_on_the_chosen_blocks():
    assert adapter_paths(build_adapted_model(exp_for(layers=[1]), 2, meta=True)) == [
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"]
    assert len(adapter_paths(build_adapted_model(exp_for(), 2, meta=True))) == 4
    llama = build_adapted_model(exp_for(layers=[1], base=LLAMA), 0, meta=True)
    assert adapter_paths(llama) == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_layers_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.layers: \[2\] out of range; this model has 2 transformer blocks"):
        build_adapted_model(exp_for(layers=[0, 2]), 2, meta=True)
    with pytest.raises(ConfigError, match=r"model.layers: \[-1\] out of range"):
        build_adapted_model(exp_for(layers=[-1]), 2, meta=True)


def test_plan_counts_only_the_chosen_blocks_adapters():
    every, top = communication_plan(exp_for(), 2), communication_plan(exp_for(layers=[1]), 2)
    assert top["uplink_params_per_client"] * 2 == every["uplink_params_per_client"]
    assert top["head_params"] == every["head_params"]
    assert top["total_bytes"] < every["total_bytes"]


@pytest.mark.parametrize("method", ["fedit", "fedpara"])
def test_export_with_layers_reloads_with_identical_logits(tmp_path, method):
    exp = exp_for(method, layers=[1])
    bench = Workbench(exp)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in bench.adapted.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    export_model(bench, tmp_path / "model")
    batch = bench.data.test().batch(list(range(8)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    ours = bench.adapted.model(**inputs).logits
    loaded = PeftModel.from_pretrained(load_base_model(exp.model, 2, seed=123), tmp_path / "model").eval()
    assert loaded.peft_config["default"].layers_to_transform == [1]
    assert not any(".layer.0." in n for n, _ in loaded.named_parameters() if "lora" in n or "hada" in n)
    assert torch.allclose(ours, loaded(**inputs).logits, atol=1e-5)
