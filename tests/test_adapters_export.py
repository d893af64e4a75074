"""Adapters on the tiny random BERT: LoRA-SB's gradient identity, which tensors train, seeded
init, unknown targets, and PEFT export that reloads with identical logits."""

import pytest
import torch
from peft import PeftModel

from fedlr.adapters.export import export_model
from fedlr.config import ConfigError, experiment_from_dict
from fedlr.models import load_base_model
from fedlr.models.adapted import adapter_paths, build_adapted_model
from fedlr.workbench import Workbench

TINY = {"model": {"name_or_path": "tiny-random-bert", "max_length": 32},
        "data": {"max_train_examples": 200, "max_test_examples": 16},
        "federation": {"num_clients": 2, "clients_per_round": 2}}


def exp_for(method, **extra):
    data = {**TINY, "method": {"name": method, "rank": 4, "alpha": 8.0, **extra}}
    return experiment_from_dict(data)


def test_only_the_methods_tensors_train():
    for method, suffixes in [("fedit", {"lora_A", "lora_B"}), ("ffa_lora", {"lora_B"}), ("fed_sb", {"lora_R"})]:
        adapted = build_adapted_model(exp_for(method), num_labels=2)
        trained = {k for k, p in adapted.model.named_parameters() if p.requires_grad}
        assert trained == set(adapted.trained_keys)
        assert {k.split(".")[-2] for k in trained if not k.startswith("classifier")} == suffixes
        assert {"classifier.weight", "classifier.bias"} <= trained
    full = build_adapted_model(exp_for("full_ft"), num_labels=2)
    assert all(p.requires_grad for p in full.model.parameters())
    no_head = build_adapted_model(exp_for("fed_sb", train_head=False), num_labels=2)
    assert not any(k.startswith("classifier") for k in no_head.trained_keys)


def test_ffa_lora_frozen_a_is_identical_in_every_process_build():
    a = build_adapted_model(exp_for("ffa_lora"), 2).model.state_dict()
    b = build_adapted_model(exp_for("ffa_lora"), 2).model.state_dict()
    keys = [k for k in a if k.endswith("lora_A.weight")]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)
    other = build_adapted_model(experiment_from_dict({**TINY, "seed": 1, "method": {"name": "ffa_lora", "rank": 4}}), 2)
    assert not torch.equal(other.model.state_dict()[keys[0]], a[keys[0]])


def test_lora_sb_gradient_of_r_is_the_projected_weight_gradient():
    """∂L/∂R = s·Bᵀ(∂L/∂W)Aᵀ, and the layer's weight is W0 + s·B·R·A (methods.md §3 inv. 7)."""
    adapted = build_adapted_model(exp_for("fed_sb", init="random"), 2)
    path = adapter_paths(adapted)[0]
    layer = adapted.model.get_submodule(path)
    with torch.no_grad():
        layer.lora_R.weight.copy_(torch.randn_like(layer.lora_R.weight))
    x = torch.randn(5, 7, layer.base.in_features)
    merged = (layer.base.weight + layer.delta_weight()).detach().requires_grad_(True)
    torch.nn.functional.linear(x, merged, layer.base.bias).pow(2).sum().backward()
    layer(x).pow(2).sum().backward()
    b, a, s = layer.lora_B.weight, layer.lora_A.weight, layer.scale
    assert torch.allclose(layer.lora_R.weight.grad, s * b.T @ merged.grad @ a.T, atol=1e-4)
    assert torch.allclose(b.T @ b, torch.eye(4), atol=1e-5) and torch.allclose(a @ a.T, torch.eye(4), atol=1e-5)


def test_unknown_target_and_oversized_rank_are_config_errors():
    with pytest.raises(ConfigError, match=r"model.targets: \['q_proj'\] match no linear layer"):
        build_adapted_model(experiment_from_dict({**TINY, "model": {"name_or_path": "tiny-random-bert",
                                                                    "targets": ["q_proj"]}}), 2, meta=True)
    with pytest.raises(ConfigError, match="method.rank: 100 exceeds"):
        build_adapted_model(experiment_from_dict({**TINY, "method": {"rank": 100}}), 2, meta=True)


@pytest.mark.parametrize("method", ["fed_sb", "fedit", "ffa_lora"])
def test_peft_export_reloads_with_identical_logits(tmp_path, method):
    exp = exp_for(method)
    bench = Workbench(exp)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move every trained tensor away from its init so the check is not trivial
        for p in bench.adapted.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    export_model(bench, tmp_path / "model")
    batch = bench.data.test().batch(list(range(8)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    ours = bench.adapted.model(**inputs).logits
    base = load_base_model(exp.model, 2, seed=123)  # another head seed: the checkpoint must carry the head
    loaded = PeftModel.from_pretrained(base, tmp_path / "model").eval()
    theirs = loaded(**inputs).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, load_base_model(exp.model, 2, seed=exp.seed)(**inputs).logits, atol=1e-3)


def test_export_is_loadable_outside_fedlr(tmp_path, monkeypatch):
    """From a relative model folder: the adapter names the folder absolutely, lists its head once,
    carries the label names and the tokenizer, and reloads in plain transformers + PEFT."""
    import json

    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from fedlr.adapters.export import base_reference
    from fedlr.config import BUNDLED_MODEL
    from fedlr.models import bundled_model_dir

    folder = tmp_path / "base"
    load_base_model(exp_for("fedit").model, 2, seed=0).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled_model_dir()).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    exp = experiment_from_dict({**TINY, "model": {"name_or_path": "base", "max_length": 32},
                                "method": {"name": "fedit", "rank": 4}})
    bench = Workbench(exp)
    out = export_model(bench, tmp_path / "model")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(folder.resolve())
    assert saved["modules_to_save"] == ["classifier"]
    config = AutoConfig.from_pretrained(out)
    assert config.id2label == {0: "rotten", 1: "fresh"} and config.label2id == {"rotten": 0, "fresh": 1}
    base = AutoModelForSequenceClassification.from_pretrained(saved["base_model_name_or_path"], config=config)
    loaded = PeftModel.from_pretrained(base, out).eval()
    texts = ["a fine film", "dull and long"]
    inputs = AutoTokenizer.from_pretrained(out)(texts, return_tensors="pt", padding=True)
    ours = bench.data.tokenizer(texts, return_tensors="pt", padding=True)
    assert torch.equal(inputs["input_ids"], ours["input_ids"])
    assert torch.allclose(loaded(**inputs).logits, bench.adapted.model(**ours).logits, atol=1e-5)
    assert "## How to load" in (out / "README.md").read_text()
    assert base_reference(BUNDLED_MODEL)[0] == str(bundled_model_dir())  # the bundled model: its folder
