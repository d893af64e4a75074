"""`fedlr plan` counts parameters on the meta device from a bare config.json and must reproduce the
worked figures of reference/methods.md §4."""

import json
from collections import OrderedDict

import pytest
import torch
from flwr.app import ArrayRecord

from fedlr.config import experiment_from_dict
from fedlr.plan import communication_plan
from fedlr.wire import record_wire_bytes

ROBERTA_LARGE = {
    "model_type": "roberta", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
    "intermediate_size": 4096, "vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
    "pad_token_id": 1,
}
MISTRAL_7B = {
    "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
}
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def plan_for(tmp_path, config: dict, **sections):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    data = {"model": {"name_or_path": str(path), **sections.pop("model", {})}, **sections}
    return communication_plan(experiment_from_dict(data), num_labels=2)


@pytest.mark.parametrize("method, expected", [("fedit", 786_432), ("ffa_lora", 393_216), ("fed_sb", 3_072)])
def test_roberta_large_rank_8_query_value(tmp_path, method, expected):
    plan = plan_for(tmp_path, ROBERTA_LARGE, method={"name": method, "rank": 8})
    assert plan["uplink_params_per_client"] == expected
    assert plan["head_params"] == 1_051_650  # RoBERTa's classification head, counted separately


def test_mistral_7b_fed_sb_rank_200_all_linear(tmp_path):
    plan = plan_for(tmp_path, MISTRAL_7B, model={"targets": ALL_LINEAR},
                    method={"name": "fed_sb", "rank": 200, "init": "random"})
    assert plan["uplink_params_per_client"] == 8_960_000


def test_mistral_7b_fedit_rank_32_and_exact_ffa_count(tmp_path):
    fedit = plan_for(tmp_path, MISTRAL_7B, model={"targets": ALL_LINEAR}, method={"name": "fedit", "rank": 32})
    ffa = plan_for(tmp_path, MISTRAL_7B, model={"targets": ALL_LINEAR}, method={"name": "ffa_lora", "rank": 32})
    assert fedit["uplink_params_per_client"] == 83_886_080
    assert ffa["uplink_params_per_client"] == 44_040_192  # r·d_out exactly (non-square layers)


def test_bundled_minilm_rank_8(tmp_path):
    plan = communication_plan(experiment_from_dict({"method": {"name": "fedit", "rank": 8}}), num_labels=2)
    assert plan["uplink_params_per_client"] == 73_728
    assert plan["head_params"] == 770
    assert plan["downlink_params"] == 74_498


def test_fed_sb_bytes_do_not_depend_on_the_number_of_clients(tmp_path):
    small = plan_for(tmp_path, ROBERTA_LARGE, method={"name": "fed_sb", "rank": 8, "init": "random"},
                     federation={"num_clients": 3, "clients_per_round": 3})
    large = plan_for(tmp_path, ROBERTA_LARGE, method={"name": "fed_sb", "rank": 8, "init": "random"},
                     federation={"num_clients": 30, "clients_per_round": 25})
    assert small["uplink_bytes_per_client"] == large["uplink_bytes_per_client"]
    assert small["downlink_bytes"] == large["downlink_bytes"]


def test_totals_add_up(tmp_path):
    plan = plan_for(tmp_path, ROBERTA_LARGE, method={"name": "fedit", "rank": 8},
                    federation={"num_clients": 6, "clients_per_round": 3, "num_rounds": 4})
    per = plan["uplink_bytes_per_client"]
    assert plan["total_bytes"] == 2 * 4 * 3 * per
    assert per == 4 * (786_432 + 1_051_650) + sum(128 + len(k) for k in _roberta_trained_keys())


def _roberta_trained_keys():
    layers = [f"roberta.encoder.layer.{i}.attention.self.{t}" for i in range(24) for t in ("query", "value")]
    keys = [f"{p}.lora_{m}.weight" for p in layers for m in ("A", "B")]
    return keys + ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                   "classifier.out_proj.bias"]


def test_wire_formula_matches_flower_serialization():
    state = OrderedDict([("layer.0.lora_A.weight", torch.zeros(8, 768)), ("b", torch.zeros(3)),
                         ("classifier.bias", torch.zeros(2, dtype=torch.float32))])
    expected = record_wire_bytes([(k, v.numel()) for k, v in state.items()])
    assert ArrayRecord(state).count_bytes() == expected
    assert ArrayRecord(OrderedDict([("0", torch.zeros(8, 768))])).count_bytes() == 24_705  # compression.md §6
