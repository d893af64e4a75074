"""Opacus DP-SGD inside a client (reference/privacy.md §3, §7.7) on the tiny random BERT: every
method's trained tensors really change under DP and the outputs with them (the silent no-op of
opacus #820), per-sample norms after clipping ≤ C, noise std σ·C, empty Poisson batches, no
hooks left on the shared model, a client without data refused, and ε carried across rounds —
and across a resume — by the client's persistent state."""

from types import SimpleNamespace

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from torch import nn

import fedlr.workbench as workbench_module
from fedlr.clients import app as client_app
from fedlr.config import TrainConfig, load_experiment
from fedlr.data import FederatedData
from fedlr.data.tokens import TokenizedSet
from fedlr.models import load_tokenizer
from fedlr.models.adapted import build_adapted_model
from fedlr.privacy.accountant import StepAccountant, epsilon_of_history
from fedlr.privacy.client_level import global_norm
from fedlr.privacy.dp_sgd import DPSGDSettings, PrivateTrainer, dp_local_train
from fedlr.run.records import EXPERIMENT_KEY, PARTITION_KEY, from_record, to_record
from fedlr.seeding import torch_generator
from fedlr.workbench import Workbench

from conftest import TINY

COMMON = ["evaluation.client_side=false", "train.local_steps=2", "train.lr=0.01"]


@pytest.fixture(scope="module")
def data():
    exp = load_experiment(TINY, COMMON)
    return FederatedData(exp, load_tokenizer(exp.model))


def bench_for(data, method, *overrides):
    """A Workbench for ``method`` sharing the module's tokenized data (the model is rebuilt)."""
    extra = ["method.init=random"] if method == "fed_sb" else []
    exp = load_experiment(TINY, [*COMMON, f"method.name={method}", *extra, *overrides])
    bench = Workbench.__new__(Workbench)
    bench.exp, bench.device, bench.data = exp, torch.device("cpu"), data
    bench.adapted = build_adapted_model(exp, data.num_labels)
    return bench


def probe(bench):
    batch = bench.data.client_train(0).batch(list(range(6)))
    bench.adapted.model.eval()
    with torch.no_grad():
        return bench.adapted.model(**batch).logits.clone()


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def opacus_leftovers(model):
    attrs = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample")
    return [n for n, p in model.named_parameters() for a in attrs if hasattr(p, a)] + \
        [n for n, m in model.named_modules() if hasattr(m, "activations") or hasattr(m, "autograd_grad_sample_hooks")]


@pytest.mark.parametrize("method", ["fedit", "ffa_lora", "fed_svd", "fed_sb", "dp_lora", "full_ft"])
def test_dp_round_changes_every_trained_tensor_and_the_output_and_nothing_else(data, method):
    overrides = ["train.local_steps=1"] if method == "full_ft" else []
    bench = bench_for(data, method, "privacy.mode=sample", "privacy.noise_multiplier=0.5", *overrides)
    model = bench.adapted.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out_before, hooks_before = probe(bench), hook_count(model)
    acc = StepAccountant("rdp")
    update, metrics = bench.client_round(2, 1, bench.adapted.round_state(), {}, acc)
    assert set(update) == set(bench.adapted.trained_keys)
    trained = set(bench.adapted.trained_keys)
    for name, p in model.named_parameters():
        if name in trained:
            assert not torch.equal(p, before[name]), f"{name} did not change under DP-SGD"
            assert torch.equal(update[name], p.detach() - before[name])
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    assert not torch.allclose(probe(bench), out_before)
    assert hook_count(model) == hooks_before and not opacus_leftovers(model)
    q = bench.privacy.sample_rates[2]
    assert acc.history == [(bench.privacy.noise_multiplier, q, metrics["steps"])]
    assert metrics["epsilon"] == epsilon_of_history(acc.history, 1e-5)


def trainer_for(bench, dp, lr=1.0):
    cfg = TrainConfig(optimizer="sgd", lr=lr, local_steps=1, batch_size=8, max_grad_norm=None)
    params = bench.adapted.trainable_parameters()
    named = bench.adapted.parameters_by_name()
    return PrivateTrainer(bench.adapted.model, params, [named[k] for k in bench.adapted.head_keys], cfg, dp, 100,
                          torch_generator(0, "test-noise"))


@pytest.mark.parametrize("method, per_tensor", [("fedit", False), ("dp_lora", True)])
def test_sigma_zero_step_clips_every_example_to_c_and_moves_the_adapters(data, method, per_tensor):
    """σ = 0, tiny C: per-sample norms after clipping ≤ C (per tensor ≤ C/√P for DP-LoRA); the
    step applies exactly the clipped sum over the expected batch size; LoRA B and the output move."""
    bench = bench_for(data, method)
    c = 1e-3
    dp = DPSGDSettings(noise_multiplier=0.0, max_grad_norm=c, sample_rate=0.08, per_tensor_clipping=per_tensor)
    batch = data.client_train(0).batch(list(range(8)))
    params = bench.adapted.trainable_parameters()
    before = [p.detach().clone() for p in params]
    out_before = probe(bench)
    with trainer_for(bench, dp) as trainer:
        bench.adapted.model.train()
        trainer.step(batch)
        grads = [p.grad_sample for p in params]
        norms = torch.stack([g.reshape(8, -1).norm(dim=1) for g in grads], dim=1)  # (examples, tensors)
        if per_tensor:
            bound = c / len(params) ** 0.5
            factors = (bound / (norms + 1e-6)).clamp(max=1.0)
            clipped = norms * factors
            assert (clipped <= bound * (1 + 1e-5)).all()
        else:
            factors = (c / (norms.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0).expand_as(norms)
            clipped_total = (norms * factors).norm(dim=1)
            assert (clipped_total <= c * (1 + 1e-5)).all() and (norms.norm(dim=1) > c).all()
        for i, (p, g) in enumerate(zip(params, grads)):
            expected_sum = torch.einsum("i,i...", factors[:, i], g)
            assert torch.allclose(p.summed_grad, expected_sum, atol=1e-9)
            assert torch.allclose(p.grad, expected_sum / 8.0, atol=1e-9)  # expected batch = q·n = 8
            assert torch.allclose(p.detach(), before[i] - p.grad, atol=1e-9)  # SGD, lr = 1
    assert any(".lora_B." in k and not torch.equal(p, b) for k, p, b in
               zip(bench.adapted.trained_keys, params, before))
    assert not torch.allclose(probe(bench), out_before)
    assert not opacus_leftovers(bench.adapted.model)


def test_hooks_and_functorch_agree(data):
    deltas = []
    for mode in ("hooks", "functorch"):
        bench = bench_for(data, "ffa_lora")
        dp = DPSGDSettings(noise_multiplier=0.0, max_grad_norm=1e-2, sample_rate=0.08, grad_sample_mode=mode)
        params = bench.adapted.trainable_parameters()
        before = [p.detach().clone() for p in params]
        torch.manual_seed(0)  # dropout
        with trainer_for(bench, dp) as trainer:
            trainer.step(data.client_train(0).batch(list(range(8))))
        deltas.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)]))
    assert torch.allclose(deltas[0], deltas[1], atol=1e-6)


class ZeroGradient(nn.Module):
    """Per-sample gradients exactly zero: whatever moves the weight is the noise alone."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 256)

    def forward(self, input_ids, attention_mask=None, labels=None):
        out = self.lin(input_ids[:, :4].float())
        return SimpleNamespace(loss=(out * 0.0).mean(), logits=out)


def test_noise_std_is_sigma_times_c():
    model = ZeroGradient()
    params = list(model.parameters())
    cfg = TrainConfig(optimizer="sgd", lr=1.0, local_steps=1, batch_size=8, max_grad_norm=None)
    sigma, c, n, q = 1.7, 0.3, 200, 0.04  # expected batch size q·n = 8
    dp = DPSGDSettings(noise_multiplier=sigma, max_grad_norm=c, sample_rate=q)
    batch = {"input_ids": torch.randint(0, 50, (8, 6)), "attention_mask": torch.ones(8, 6, dtype=torch.long),
             "labels": torch.zeros(8, dtype=torch.long)}
    moves = []
    with PrivateTrainer(model, params, [], cfg, dp, n, torch_generator(0, "noise-test")) as trainer:
        for step in range(4):
            before = [p.detach().clone() for p in params]
            trainer.step(batch if step % 2 else None)  # a real batch and an empty one: same noise
            moves.append(torch.cat([(b - p.detach()).flatten() for p, b in zip(params, before)]))
    noise_on_sum = torch.cat(moves) * (q * n)  # Δθ = −lr·(Σ clipped + noise)/(q·n)
    assert noise_on_sum.numel() > 4000
    assert noise_on_sum.std().item() == pytest.approx(sigma * c, rel=0.03)
    assert abs(noise_on_sum.mean().item()) < 0.05 * sigma * c


def test_empty_poisson_batches_are_noise_steps_that_the_accountant_counts(data):
    bench = bench_for(data, "fedit")
    train = data.client_train(1)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, local_steps=6, batch_size=1, max_grad_norm=None)
    q = 0.3 / len(train)  # P(empty) ≈ 0.74 per step
    dp = DPSGDSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=q)
    params = bench.adapted.trainable_parameters()
    before = [p.detach().clone() for p in params]
    res = dp_local_train(bench.adapted.model, params, [], train, cfg, dp, torch_generator(0, "poisson"),
                         torch_generator(0, "noise"), torch.device("cpu"))
    assert res.steps == 6 and res.empty_batches >= 1
    assert all(not torch.equal(p, b) for p, b in zip(params, before))  # noise moved every trained tensor
    assert not opacus_leftovers(bench.adapted.model)


def test_a_client_without_data_is_refused_clearly(data, monkeypatch):
    bench = bench_for(data, "fedit", "privacy.mode=sample", "privacy.noise_multiplier=1.0")
    empty = TokenizedSet([], torch.zeros(0, dtype=torch.long), 0)
    monkeypatch.setattr(bench.data, "client_train", lambda pid: empty)
    with pytest.raises(ValueError, match="client 3 has no training examples and cannot take part"):
        bench.client_round(3, 1, bench.adapted.round_state(), {}, StepAccountant())
    cfg = TrainConfig(local_steps=1)
    with pytest.raises(ValueError, match="no training examples"):
        dp_local_train(bench.adapted.model, bench.adapted.trainable_parameters(), [], empty, cfg,
                       DPSGDSettings(1.0, 1.0, 0.1), torch.Generator(), torch.Generator(), torch.device("cpu"))


def test_rounds_are_reproducible_and_leave_no_hooks_on_the_shared_model(data):
    bench = bench_for(data, "fed_svd", "privacy.mode=sample", "privacy.noise_multiplier=1.0")
    state = bench.adapted.round_state()
    baseline = hook_count(bench.adapted.model)
    runs = []
    for _ in range(3):  # one process serves many virtual clients: hooks must not pile up
        runs.append(bench.client_round(0, 1, state, {}, StepAccountant())[0])
        assert hook_count(bench.adapted.model) == baseline and not opacus_leftovers(bench.adapted.model)
    assert all(torch.equal(runs[0][k], r[k]) for r in runs[1:] for k in runs[0])
    other = bench.client_round(0, 2, state, {}, StepAccountant())[0]  # another round: other noise and batches
    assert not all(torch.equal(runs[0][k], other[k]) for k in other)


def test_client_level_modes_clip_and_noise_the_update(data):
    central = bench_for(data, "fedit", "privacy.mode=client_central", "privacy.noise_multiplier=1.0",
                        "privacy.max_grad_norm=1e-3")
    update, metrics = central.client_round(0, 1, central.adapted.round_state(), {})
    assert global_norm(update) <= 1e-3 and "epsilon" not in metrics  # ε is the server's (federation) figure
    local = bench_for(data, "fedit", "privacy.mode=client_local", "privacy.noise_multiplier=2.0",
                      "privacy.max_grad_norm=1e-3")
    acc = StepAccountant()
    update, metrics = local.client_round(0, 1, local.adapted.round_state(), {}, acc)
    assert global_norm(update) > 10 * 1e-3  # noise 2·S per coordinate on top of a ≤ S update
    assert acc.history == [(1.0, 1.0, 1)]  # z/2 (replace-one sensitivity 2S), q = 1, one release
    assert metrics["epsilon"] == epsilon_of_history([(1.0, 1.0, 1)], 1e-5)


def _message(server_round, state):
    meta = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=0, dst_node_id=9, reply_to_message_id="",
                    group_id="", created_at=0.0, ttl=600.0, message_type="train")
    content = RecordDict({"arrays": to_record(state), "config": ConfigRecord({"server-round": server_round})})
    return Message(content, metadata=meta)


def _context(bench, state=None):
    ctx = Context(run_id=1, node_id=9, node_config={PARTITION_KEY: 1}, state=state or RecordDict(), run_config={})
    ctx.state[client_app.STATE_CONFIG] = ConfigRecord({EXPERIMENT_KEY: bench.exp.to_json()})
    return ctx


def test_cumulative_epsilon_survives_a_resume_of_the_client(data, monkeypatch):
    """Three rounds through the ClientApp's train handler: uninterrupted, and with the client
    process 'restarted' after round 1 (a new Context rebuilt from the saved records)."""
    bench = bench_for(data, "ffa_lora", "privacy.mode=sample", "privacy.noise_multiplier=1.1")
    monkeypatch.setitem(workbench_module._WORKBENCHES, bench.exp.fingerprint(), bench)
    state = bench.adapted.round_state()

    def epsilons(resume_after):
        ctx, out = _context(bench), []
        for rnd in (1, 2, 3):
            reply = client_app.train(_message(rnd, state), ctx)
            out.append(float(reply.content["metrics"]["epsilon"]))
            if rnd == resume_after:
                saved = {k: ConfigRecord(dict(v)) for k, v in ctx.state.config_records.items()}
                ctx = _context(bench, RecordDict(saved))
        return out, from_record(reply.content["arrays"])

    straight, update_a = epsilons(resume_after=None)
    resumed, update_b = epsilons(resume_after=1)
    assert resumed == straight and straight[0] < straight[1] < straight[2]
    q = bench.privacy.sample_rates[1]
    assert straight[2] == epsilon_of_history([(1.1, q, 3 * 2)], 1e-5)  # 3 rounds × 2 steps = one entry
    assert all(torch.equal(update_a[k], update_b[k]) for k in update_a)
