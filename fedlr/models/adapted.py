"""A base model with a method's adapters injected, and the bookkeeping of which tensors travel."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from fedlr.adapters import adapter_layers, inject_adapters, resize_adapters
from fedlr.config import ConfigError, Experiment
from fedlr.methods import MethodSpec, get_method
from fedlr.models import head_modules, load_base_model, model_skeleton
from fedlr.models.blocks import block_of, block_stack, check_layers
from fedlr.models.readout import trim_readout
from fedlr.tasks import get_task


@dataclass
class AdaptedModel:
    model: nn.Module
    spec: MethodSpec
    trained_keys: list[str]  # travel every round, up, and down unless drawn fresh (``downlink_keys``)
    once_keys: list[str]  # frozen, reach each client once (Fed-SB's B and A)
    head_keys: list[str]  # the trained non-adapter tensors (a subset of trained_keys)
    broadcast_keys: list[str] = field(default_factory=list)  # frozen, sent down every round (FedSVD's A)
    rank: int | None = None  # the adapters' current rank (None: full fine-tuning)
    task: Any = None  # model.task's object (fedlr.tasks): the loss per example, evaluation, export type

    @property
    def round_keys(self) -> list[str]:
        """The global state the server keeps: the trained tensors, then the per-round broadcast ones."""
        return self.trained_keys + self.broadcast_keys

    @property
    def downlink_keys(self) -> list[str]:
        """What the server sends each round: ``round_keys`` but the ones every party draws fresh
        from the seed (FLoRA's A and B)."""
        return [k for k in self.round_keys if not self.spec.is_fresh(k)]

    def use_rank(self, rank: int, seed: int) -> None:
        """Rebuild the adapters at ``rank`` (a client's own, ``method.client_ranks``) around the same
        frozen base weights; a no-op at the current rank. Every process serves clients of any rank
        with one model this way."""
        if self.spec.adapter is None or rank == self.rank:
            return
        resize_adapters(self.model, rank, seed)
        trained = set(self.trained_keys)
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in trained)
        self.rank = rank

    def fresh_state(self, seed: int, server_round: int) -> dict[str, torch.Tensor]:
        """The tensors this model starts ``server_round`` from that no message carries (FLoRA's fresh
        adapters at this model's rank), on the CPU like a received record; empty for other methods."""
        if self.spec.draw_fresh is None:
            return {}
        params = self.parameters_by_name()
        shapes = {k: tuple(params[k].shape) for k in self.trained_keys if self.spec.is_fresh(k)}
        return self.spec.draw_fresh(seed, server_round, shapes)

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def state(self, keys: list[str]) -> dict[str, torch.Tensor]:
        params = self.parameters_by_name()
        return {k: params[k].detach().to("cpu", copy=True) for k in keys}

    def trained_state(self) -> dict[str, torch.Tensor]:
        return self.state(self.trained_keys)

    def round_state(self) -> dict[str, torch.Tensor]:
        """The global state the server keeps (``round_keys``); it sends the ``downlink_keys`` of it."""
        return self.state(self.round_keys)

    def once_state(self) -> dict[str, torch.Tensor]:
        return self.state(self.once_keys)

    @torch.no_grad()
    def load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        params = self.parameters_by_name()
        for key, value in tensors.items():
            params[key].copy_(value)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = self.parameters_by_name()
        return [params[k] for k in self.trained_keys]


def build_adapted_model(exp: Experiment, num_labels: int, *, meta: bool = False,
                        base: nn.Module | None = None) -> AdaptedModel:
    """The base model (pretrained, or a meta-device skeleton) with ``exp.method``'s adapters.
    ``base``: ``load_base_model``'s model for this experiment, adapted in place (a caller that
    keeps one passes a copy)."""
    spec = get_method(exp.method.name)
    if meta:
        model = model_skeleton(exp.model, num_labels)
    else:
        model = base if base is not None else load_base_model(exp.model, num_labels, exp.seed)
    if spec.adapter is not None:
        _check_rank(model, exp)
        inject_adapters(model, exp.model.targets, spec.adapter, exp.method.rank, exp.method.scale, exp.seed,
                        _in_layers(model, exp.model.layers))
    head_prefixes = tuple(f"{name}." for name, _ in head_modules(model))
    trained, once, head, broadcast = [], [], [], []
    for name, param in model.named_parameters():
        is_trained = spec.is_trained(name, exp.method.train_head, head_prefixes)
        param.requires_grad_(is_trained)
        if is_trained:
            trained.append(name)
            if name.startswith(head_prefixes):
                head.append(name)
        elif spec.is_broadcast_once(name):
            once.append(name)
        elif spec.is_broadcast(name):
            broadcast.append(name)
    if not meta:
        trim_readout(model)  # a BERT classifier's last block at the pooled position only (fedlr.models.readout)
    return AdaptedModel(model, spec, trained, once, head, broadcast, exp.method.rank if spec.adapter else None,
                        get_task(exp.model.task))


def _check_rank(model: nn.Module, exp: Experiment) -> None:
    targets = set(exp.model.targets)
    ranks = [("method.rank", exp.method.rank)] + [("method.client_ranks", r) for r in exp.method.client_ranks or []]
    for path, module in model.named_modules():
        if path.rsplit(".", 1)[-1] in targets and isinstance(module, (nn.Linear, Conv1D)):
            limit = min(module.weight.shape)
            for field_name, rank in ranks:
                if rank > limit:
                    raise ConfigError(f"{field_name}: {rank} exceeds min(d_in, d_out) = {limit} of layer {path}")


def _in_layers(model: nn.Module, layers: list[int] | None):
    """Whether a module path is in a block of ``model.layers`` (every path when it is None)."""
    if layers is None:
        return lambda path: True
    stack_path, stack = block_stack(model)
    check_layers(layers, len(stack))
    chosen = set(layers)
    return lambda path: block_of(path, stack_path) in chosen


def adapter_paths(adapted: AdaptedModel) -> list[str]:
    return sorted(adapter_layers(adapted.model))
