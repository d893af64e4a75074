"""``train.momentum``: heavy-ball SGD (v ← m·v + g, θ ← θ − lr·v), checked against the update
computed by hand on a tiny model, 0 is plain SGD, and DP-SGD carries it through Opacus's
optimizer (σ = 0, C = ∞: DP-SGD is SGD with the mean over the expected batch)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedlr.config import ConfigError, TrainConfig, experiment_from_dict
from fedlr.privacy.dp_sgd import DPSGDSettings, PrivateTrainer
from fedlr.train import make_optimizer

LR = 0.3


class Tiny(nn.Module):
    """A linear classifier with the ``model(**batch).loss`` interface of the adapted models."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 2)

    def forward(self, x, labels):
        logits = self.lin(x)
        return SimpleNamespace(loss=F.cross_entropy(logits, labels), logits=logits)


BATCHES = [{"x": torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0], [2.0, 0.0, 1.0], [-1.0, 1.0, 1.0]]),
            "labels": torch.tensor([0, 1, 1, 0])},
           {"x": torch.tensor([[0.5, 0.5, 0.5], [-0.3, 2.0, 1.0], [1.0, 1.0, -2.0], [0.0, -1.0, 0.0]]),
            "labels": torch.tensor([1, 1, 0, 0])}]


def gradients(model, batch):
    model.zero_grad()
    model(**batch).loss.backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def by_hand(momentum):
    """Two heavy-ball steps computed without the optimizer: v₁ = g₁, θ₁ = θ₀ − lr·v₁;
    v₂ = m·v₁ + g₂(θ₁), θ₂ = θ₁ − lr·v₂."""
    model = Tiny()
    velocity = None
    for batch in BATCHES:
        grads = gradients(model, batch)
        velocity = grads if velocity is None else [momentum * v + g for v, g in zip(velocity, grads)]
        with torch.no_grad():
            for p, v in zip(model.parameters(), velocity):
                p -= LR * v
    return [p.detach().clone() for p in model.parameters()]


def with_optimizer(momentum):
    model = Tiny()
    cfg = TrainConfig(optimizer="sgd", lr=LR, momentum=momentum, max_grad_norm=None)
    opt = make_optimizer(list(model.parameters()), [], cfg)
    for batch in BATCHES:
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def with_dp_sgd(momentum):
    """Two DP-SGD steps with σ = 0 and a bound no gradient reaches, q·n = the batch size."""
    model = Tiny()
    cfg = TrainConfig(optimizer="sgd", lr=LR, momentum=momentum, max_grad_norm=None)
    dp = DPSGDSettings(noise_multiplier=0.0, max_grad_norm=1e6, sample_rate=1.0)
    with PrivateTrainer(model, list(model.parameters()), [], cfg, dp, 4, torch.Generator().manual_seed(0)) as trainer:
        for batch in BATCHES:
            trainer.step(batch)
    return [p.detach().clone() for p in model.parameters()]


def close(a, b):
    return all(torch.allclose(x, y, atol=1e-6, rtol=1e-5) for x, y in zip(a, b))


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_sgd_momentum_is_the_heavy_ball_update(momentum):
    assert close(with_optimizer(momentum), by_hand(momentum))


def test_momentum_changes_the_second_step_and_zero_is_plain_sgd():
    plain = by_hand(0.0)
    assert not close(with_optimizer(0.9), plain)
    model = Tiny()  # momentum 0: θ₂ = θ₁ − lr·g₂(θ₁), as before train.momentum existed
    for batch in BATCHES:
        for p, g in zip(model.parameters(), gradients(model, batch)):
            with torch.no_grad():
                p -= LR * g
    assert close([p.detach() for p in model.parameters()], plain)
    assert TrainConfig().momentum == 0.0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_dp_sgd_carries_momentum_through_opacus(momentum):
    assert close(with_dp_sgd(momentum), by_hand(momentum))


def test_dp_sgd_momentum_changes_the_trajectory():
    assert not close(with_dp_sgd(0.9), with_dp_sgd(0.0))


@pytest.mark.parametrize("train, needle", [
    ({"optimizer": "sgd", "momentum": 1.0}, "train.momentum"),
    ({"optimizer": "sgd", "momentum": -0.1}, "train.momentum"),
    ({"optimizer": "adamw", "momentum": 0.9}, "applies to train.optimizer 'sgd' only"),
])
def test_bad_momentum_is_refused_naming_the_field(train, needle):
    with pytest.raises(ConfigError, match=needle):
        experiment_from_dict({"train": train})
