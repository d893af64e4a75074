"""Fused clients (``fedlr.fused``): K clients trained in one pass over the shared frozen base get
the gradients — and, through AdamW with per-client clipping, the trained tensors — of K separate
runs. Dropout is switched off here: it is the one thing fused runs draw differently."""

import pytest
import torch
from torch import nn

from fedlr.config import load_experiment
from fedlr.data.tokens import TokenizedSet
from fedlr.fused import FusedClients, client_losses, fused_batch, fused_local_train
from fedlr.models.adapted import build_adapted_model
from fedlr.train import local_train

K = 3


def client_sets(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(K):  # sequences of different lengths: fused batches pad to the widest client's row
        lengths = torch.randint(4, 20, (n,), generator=g).tolist()
        sets.append(TokenizedSet([torch.randint(1000, 5000, (m,), generator=g).tolist() for m in lengths],
                                 torch.randint(0, 2, (n,), generator=g), 0))
    return sets


def adapted_without_dropout(method):
    extra = ['method.init="random"'] if method == "fed_sb" else []
    exp = load_experiment(None, ['model.name_or_path="tiny-random-bert"', f'method.name="{method}"', "method.rank=4",
                                 "train.local_steps=3", "train.batch_size=4", "train.max_grad_norm=0.05", *extra])
    adapted = build_adapted_model(exp, 2)
    for m in adapted.model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return exp, adapted


def client_states(adapted, seed=1):
    """K different starting points (as if each client held its own adapter)."""
    g = torch.Generator().manual_seed(seed)
    base = adapted.trained_state()
    return [{k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(K)]


@pytest.mark.parametrize("method", ["fedit", "fed_sb", "ffa_lora", "fedpara"])
def test_fused_gradients_equal_separate_gradients(method, one_torch_thread):
    _, adapted = adapted_without_dropout(method)
    states, sets = client_states(adapted), client_sets()
    idx = [torch.arange(4) + 4 * k for k in range(K)]
    separate = []
    adapted.model.train()
    for state, data, i in zip(states, sets, idx):
        adapted.load(state)
        adapted.model.zero_grad(set_to_none=True)
        adapted.model(**data.batch(i)).loss.backward()
        separate.append({k: p.grad.clone() for k, p in adapted.parameters_by_name().items() if k in state})
    adapted.model.zero_grad(set_to_none=True)
    with FusedClients(adapted, states) as fused:
        batch = fused_batch(sets, idx)
        logits = adapted.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        client_losses(logits, batch["labels"], K).sum().backward()
        for k in range(K):
            for key, grad in separate[k].items():
                torch.testing.assert_close(fused.stacks[key].grad[k], grad, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in adapted.model.parameters())  # the frozen base got none, the model's own tensors neither


@pytest.mark.parametrize("method", ["fedit", "fed_sb"])
def test_fused_training_equals_separate_training(method, one_torch_thread):
    exp, adapted = adapted_without_dropout(method)
    states, sets = client_states(adapted), client_sets()
    named = adapted.parameters_by_name()
    head = [named[k] for k in adapted.head_keys]
    separate = []
    own_forwards = {path for path, m in adapted.model.named_modules() if "forward" in vars(m)}  # the trimmed read-out block
    for k, (state, data) in enumerate(zip(states, sets)):
        adapted.load(state)
        local_train(adapted.model, adapted.trainable_parameters(), head, data, exp.train,
                    torch.Generator().manual_seed(k), torch.device("cpu"))
        separate.append(adapted.trained_state())
    fused, results = fused_local_train(adapted, states, sets, exp.train,
                                       [torch.Generator().manual_seed(k) for k in range(K)], torch.device("cpu"))
    for k in range(K):
        assert results[k].steps == exp.train.local_steps
        assert any(not torch.equal(fused[k][key], states[k][key]) for key in states[k])
        for key in states[k]:
            torch.testing.assert_close(fused[k][key], separate[k][key], rtol=1e-4, atol=1e-6)
    assert {path for path, m in adapted.model.named_modules() if "forward" in vars(m)} == own_forwards  # as it was


def test_full_fine_tuning_cannot_be_fused():
    _, adapted = adapted_without_dropout("full_ft")
    with pytest.raises(ValueError, match="shares no frozen base"):
        FusedClients(adapted, [adapted.trained_state()])
