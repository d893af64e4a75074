"""GPT-2's ``Conv1D`` layers (weight stored transposed) take adapters like any linear layer, and
the export sets PEFT's ``fan_in_fan_out`` (issue 19.4): a random 2-layer GPT-2 saved as a local
folder with SmolLM2's tokenizer."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import fedlr.workbench as workbench
from fedlr.adapters.export import export_model
from fedlr.config import experiment_from_dict
from fedlr.models import smollm2


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                               bos_token_id=1, eos_token_id=2)).save_pretrained(folder)
    for f in smollm2.tokenizer_dir().glob("*"):
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return folder


def bench_for(folder, method, monkeypatch):
    monkeypatch.setattr(workbench, "_WORKBENCHES", {})
    exp = experiment_from_dict({
        "model": {"name_or_path": str(folder), "task": "causal_lm", "targets": ["c_attn", "c_proj"], "max_length": 48},
        "data": {"dataset": "chatterbot", "max_train_examples": 80, "max_test_examples": 4},
        "federation": {"num_clients": 2, "clients_per_round": 2}, "method": {"name": method, "rank": 4},
        "train": {"local_steps": 2, "batch_size": 4, "lr": 0.01}, "evaluation": {"client_side": False},
    })
    return workbench.get_workbench(exp)


@pytest.mark.parametrize("method", ["fedit", "fedex_lora"])
def test_gpt2_conv1d_adapters_train_and_export_with_the_same_logits(gpt2_dir, method, tmp_path, monkeypatch):
    from peft import PeftModel

    bench = bench_for(gpt2_dir, method, monkeypatch)
    batch = bench.data.test().batch(range(4))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    original = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():  # B = 0: the adapted model is the base, Conv1D's transposed weight read right
        torch.testing.assert_close(bench.adapted.model(**inputs).logits, original(**inputs).logits)
    assert sum(1 for k in bench.adapted.trained_keys if ".c_attn." in k or ".c_proj." in k) > 0
    bench.client_round(0, 1, bench.adapted.round_state(), {})  # the model now holds the client's trained state
    out = export_model(bench, tmp_path / "model")
    if method == "fedit":
        exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(gpt2_dir), out).eval()
        assert exported.peft_config["default"].fan_in_fan_out
    else:  # FedEx-LoRA changed the base weights: a merged plain GPT-2
        exported = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ours = bench.adapted.model(**inputs).logits
        theirs = exported(**inputs).logits
    assert (ours - original(**inputs).logits).abs().max() > 1e-4  # it trained
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
