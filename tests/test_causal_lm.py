"""Causal language models (issue 19): instruction data, the response-only loss, every method and
DP-SGD on a tiny random Llama's decoder blocks, evaluation, samples and the PEFT export."""

import json
import math
import sys

import pytest
import torch
from torch.nn import functional as F

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from common import InProcessGrid  # noqa: E402

import fedlr.workbench as workbench  # noqa: E402
from fedlr.config import ConfigError, experiment_from_dict, load_experiment  # noqa: E402
from fedlr.data.instructions import chatterbot  # noqa: E402
from fedlr.methods import method_names  # noqa: E402
from fedlr.plan import communication_plan  # noqa: E402
from fedlr.results import RunDir  # noqa: E402
from fedlr.results.console import Console  # noqa: E402
from fedlr.tasks.causal_lm import IGNORE, SAMPLES_FILE, encode_example  # noqa: E402

TINY_TOML = ROOT / "experiments" / "instruct_tiny.toml"
DECODER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny(tmp_path, *overrides):
    return load_experiment(TINY_TOML, [f'output.dir="{tmp_path}"', *overrides])


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    exp = tiny(tmp_path_factory.mktemp("llm"), 'method.name="fedit"', "evaluation.batch_size=8")
    return workbench.get_workbench(exp)


def run_in_process(exp, name):
    from fedlr.clients.app import app
    from fedlr.run.server import run_server

    grid = InProcessGrid(app, exp.federation.num_clients)
    run_dir = RunDir.create(exp, name)
    summary = run_server(grid, exp, run_dir, Console(quiet=True))
    return run_dir.path, summary


def ledger(path):
    return [json.loads(line) for line in (path / "ledger.jsonl").read_text().splitlines()]


def test_chatterbot_pairs_and_category_split(bench):
    table = chatterbot()
    assert len(table) == 2393 and table["category"].nunique() == 21
    assert ("What is AI?", "Artificial Intelligence is the branch of engineering and science devoted to constructing "
            "machines that think.") in set(zip(table["instruction"], table["response"]))
    data = bench.data
    cats = [set(data.table["category"].iloc[rows]) for rows in data.partitions]
    assert all(cats) and all(not (a & b) for i, a in enumerate(cats) for b in cats[i + 1:])  # a topic has one client


def test_response_only_labels_in_the_chat_template(bench):
    tok = bench.data.tokenizer
    ids, labels = encode_example(tok, "What is AI?", "A field of science.", 64)
    n_prompt = sum(1 for x in labels if x == IGNORE)
    prompt = tok.decode(ids[:n_prompt])
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is AI?<|im_end|>" in prompt
    assert tok.decode(labels[n_prompt:]) == "A field of science.<|im_end|>"
    assert all(x != IGNORE for x in labels[n_prompt:])
    short_ids, short_labels = encode_example(tok, "What is AI? " * 40, "A field of science.", 32)
    assert len(short_ids) == 32 and short_labels[-1] == tok.eos_token_id  # the answer survives truncation
    assert tok.decode(short_ids).endswith("<|im_start|>assistant\nA field of science.<|im_end|>")


def test_padding_uses_the_tokenizers_pad_token(bench):
    tok, model = bench.data.tokenizer, bench.adapted.model
    assert model.config.pad_token_id == tok.pad_token_id is not None
    data = bench.data.client_train(0)
    lengths = [len(s) for s in data.input_ids[:6]]
    batch = data.batch(range(6))
    for row, n in enumerate(lengths):
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert (batch["attention_mask"][row, n:] == 0).all() and (batch["labels"][row, n:] == IGNORE).all()


def test_loss_is_the_mean_over_examples_of_each_examples_response_token_mean(bench):
    """model(**batch).loss = (1/B) Σ_i (1/|R_i|) Σ_{t∈R_i} ℓ_{i,t}: each example alone, unpadded,
    scored by transformers' standard token-mean loss, then averaged over the examples."""
    model, data = bench.adapted.model, bench.data.client_train(1)
    idx = list(range(5))
    with torch.no_grad():
        batched = model(**data.batch(idx)).loss
        alone = []
        for i in idx:
            one = data.batch([i])
            logits = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits
            alone.append(F.cross_entropy(logits[0, :-1], one["labels"][0, 1:], ignore_index=IGNORE))
    assert len({len(data.input_ids[i]) for i in idx}) > 1  # padding is exercised
    torch.testing.assert_close(batched, torch.stack(alone).mean(), rtol=1e-5, atol=1e-6)


def test_dp_sgd_per_example_gradient_is_that_examples_own(bench):
    """Opacus's per-sample gradient (hooks on the decoder blocks' LoRA factors) of example i equals
    the gradient of L_i alone: DP-SGD clips exactly one example's contribution."""
    from opacus.grad_sample import GradSampleHooks

    model, data = bench.adapted.model, bench.data.client_train(0)
    params = bench.adapted.trainable_parameters()
    names = bench.adapted.trained_keys
    assert {n.split(".")[-3] for n in names} == set(DECODER)
    idx = [0, 1, 2]
    model.train()  # Opacus records activations in training mode; the tiny Llama has no dropout
    hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean", strict=False)
    try:
        model(**data.batch(idx)).loss.backward()
        per_sample = [p.grad_sample.detach().clone() for p in params]
    finally:
        hooks.cleanup()
        for p in params:
            p.grad, p.grad_sample = None, None
    for row, i in enumerate(idx):
        model.zero_grad(set_to_none=True)
        model(**data.batch([i])).loss.backward()
        for p, gs in zip(params, per_sample):
            torch.testing.assert_close(gs[row], p.grad, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)
    model.eval()


def test_evaluation_is_response_token_loss_and_accuracy(bench):
    data, model = bench.data.test(), bench.adapted.model
    ev = bench.adapted.task.evaluate(model, data, 8, bench.device)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(data)):
            one = data.batch([i])
            logits = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits
            total += F.cross_entropy(logits[0, :-1], one["labels"][0, 1:], ignore_index=IGNORE, reduction="sum").item()
            count += int((one["labels"][0, 1:] != IGNORE).sum())
    assert ev.num_examples == len(data) and ev.loss == pytest.approx(total / count, rel=1e-5)
    assert 0 <= ev.accuracy <= 1


@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_decoder_blocks_and_its_ledger_equals_the_plan(method, tmp_path, monkeypatch):
    overrides = [f'method.name="{method}"', "federation.num_rounds=1", "train.local_steps=1",
                 "data.max_train_examples=160", "data.max_test_examples=8", "evaluation.client_side=false",
                 "output.export_peft=false", "output.checkpoint=false", 'method.init="random"']
    if method == "dp_lora":
        overrides += ['privacy.mode="sample"', "privacy.noise_multiplier=0.5"]
    monkeypatch.setattr(workbench, "_WORKBENCHES", {})
    exp = tiny(tmp_path, *overrides)
    path, summary = run_in_process(exp, method)
    plan = communication_plan(exp, 0)
    rows = ledger(path)
    assert rows[-1]["clients_replied"] == exp.federation.clients_per_round and rows[-1]["aggregated"]
    assert rows[-1]["cumulative_uplink_bytes"] == plan["total_uplink_bytes"]
    assert rows[-1]["cumulative_downlink_bytes"] == plan["total_downlink_bytes"]
    assert summary["total_bytes"] == plan["total_bytes"] > 0
    assert math.isfinite(rows[-1]["eval_loss"]) and math.isfinite(rows[-1]["train_loss"])


@pytest.mark.parametrize("extra", [
    ["federation.fused_clients=2"],
    ['compression.codec="topk"', "compression.density=0.1"],
    ['privacy.mode="sample"', "privacy.target_epsilon=8.0", "privacy.delta=1e-5"],
], ids=["fused", "topk", "dp-sgd-eps8"])
def test_fused_compression_and_dp_sgd_run_on_a_causal_lm(extra, tmp_path, monkeypatch):
    monkeypatch.setattr(workbench, "_WORKBENCHES", {})
    exp = tiny(tmp_path, "federation.num_rounds=1", "data.max_train_examples=160", "data.max_test_examples=8",
               "output.export_peft=false", "output.checkpoint=false", *extra)
    path, summary = run_in_process(exp, "extra")
    rows = ledger(path)
    assert rows[-1]["aggregated"] and rows[-1]["eval_loss"] < rows[0]["eval_loss"] + 1.0
    assert rows[-1]["cumulative_bytes"] == communication_plan(exp, 0)["total_bytes"]
    if "privacy.target_epsilon=8.0" in extra:
        assert 0 < summary["epsilon"] <= 8.0


def test_a_run_writes_generations_and_a_peft_causal_lm_adapter_with_fedlrs_logits(tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedlr.models import load_base_model

    monkeypatch.setattr(workbench, "_WORKBENCHES", {})
    exp = tiny(tmp_path, "data.max_test_examples=8", "output.checkpoint=false")
    path, summary = run_in_process(exp, "export")
    samples = [json.loads(line) for line in (path / SAMPLES_FILE).read_text().splitlines()]
    assert len(samples) == 4 and all(s["instruction"] and isinstance(s["generated"], str) for s in samples)
    assert summary["final_perplexity"] == pytest.approx(math.exp(ledger(path)[-1]["eval_loss"]))
    config = json.loads((path / "model" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == "tiny-random-llama"
    # the tiny base is built in code; saved, it loads with AutoModelForCausalLM as a real base would
    load_base_model(exp.model, 0, exp.seed).save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    peft_model = PeftModel.from_pretrained(base, path / "model").eval()
    bench = workbench.get_workbench(exp)
    batch = bench.data.test().batch(range(4))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ours = bench.adapted.model(**inputs).logits
        theirs = peft_model(**inputs).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    assert (ours - load_base_model(exp.model, 0, exp.seed)(**inputs).logits).abs().max() > 1e-4  # it trained
    out = peft_model.generate(**bench.data.tokenizer("Hi", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 1


def test_classifier_on_a_decoder_uses_the_tokenizers_pad_token(tmp_path):
    """LlamaForSequenceClassification pools the last non-pad token: with the tokenizer's pad id in
    the config a review's logits are the same alone and batched with a longer one."""
    from fedlr.data.federated import FederatedData
    from fedlr.models import load_base_model, load_tokenizer

    exp = experiment_from_dict({"model": {"name_or_path": "tiny-random-llama", "targets": ["q_proj", "v_proj"]},
                                "data": {"max_train_examples": 50, "max_test_examples": 8}})
    tok = load_tokenizer(exp.model)
    model = load_base_model(exp.model, 2, exp.seed)
    assert model.config.pad_token_id == tok.pad_token_id
    data = FederatedData(exp, tok).test()
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    short, long = order[0], order[-1]
    assert len(data.input_ids[short]) < len(data.input_ids[long])
    with torch.no_grad():
        alone = model(**{k: v for k, v in data.batch([short]).items() if k != "labels"}).logits[0]
        both = model(**{k: v for k, v in data.batch([short, long]).items() if k != "labels"}).logits[0]
    torch.testing.assert_close(both, alone, rtol=1e-5, atol=1e-6)


def test_instruction_data_is_refused_where_it_does_not_fit(tmp_path):
    with pytest.raises(ConfigError, match="causal_lm"):
        experiment_from_dict({"data": {"dataset": "chatterbot"}})
    with pytest.raises(ConfigError, match="dirichlet"):
        experiment_from_dict({"model": {"task": "causal_lm"}, "data": {"dataset": "chatterbot",
                                                                       "partitioner": "dirichlet"}})
    with pytest.raises(ConfigError, match="client-files"):
        experiment_from_dict({"model": {"task": "causal_lm"}, "data": {"dataset": "client-files",
                                                                       "labels": ["a", "b"]}})
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text(json.dumps({"q": "Hi?", "a": "Hello."}) + "\n")
    from fedlr.data.instructions import load_instructions

    exp = experiment_from_dict({"model": {"task": "causal_lm"}, "data": {"dataset": str(jsonl)}})
    with pytest.raises(ConfigError, match="instruction_column"):
        load_instructions(exp.data)
    exp = experiment_from_dict({"model": {"task": "causal_lm"}, "data": {
        "dataset": str(jsonl), "instruction_column": "q", "response_column": "a"}})
    table = load_instructions(exp.data)
    assert table[["instruction", "response"]].values.tolist() == [["Hi?", "Hello."]]


def test_a_causal_lm_run_resumes_from_its_checkpoint_to_the_same_ledger(tmp_path, monkeypatch):
    """Round 2's checkpoint lost (a kill after round 1): resuming replays round 2 exactly."""
    from fedlr import checkpoint
    from fedlr.clients.app import app
    from fedlr.run.server import run_server

    monkeypatch.setattr(workbench, "_WORKBENCHES", {})
    exp = tiny(tmp_path, "data.max_test_examples=8", "output.export_peft=false", "evaluation.client_side=false")
    path, _ = run_in_process(exp, "resumed")
    full = ledger(path)
    assert checkpoint.rounds(path / "checkpoints") == [1, 2]
    checkpoint.path_for(path / "checkpoints", 2).unlink()
    run_server(InProcessGrid(app, exp.federation.num_clients), exp, RunDir.existing(path), Console(quiet=True),
               resume=True)
    timing = ("wall_time_s",)
    assert [{k: v for k, v in r.items() if k not in timing} for r in ledger(path)] == \
        [{k: v for k, v in r.items() if k not in timing} for r in full]
