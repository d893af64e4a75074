"""Replace targeted ``nn.Linear`` modules of a model by adapter layers (GPT-2's ``Conv1D`` too:
the same map with its weight stored transposed, PEFT's ``fan_in_fan_out``)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from fedlr.adapters.layers import LoHaLinear, LoRALinear, LoRASBLinear
from fedlr.errors import ConfigError
from fedlr.seeding import torch_generator

ADAPTER_KINDS = {"lora": LoRALinear, "lora_sb": LoRASBLinear, "loha": LoHaLinear}


def inject_adapters(model: nn.Module, targets: list[str], kind: str, rank: int, scale: float, seed: int,
                    selected: Callable[[str], bool] = lambda path: True) -> list[str]:
    """Wrap every ``nn.Linear`` (or ``Conv1D``, as its ``linear_of``) whose last name component is
    in ``targets`` and whose path is ``selected`` (``model.layers``); return their paths.

    Each layer's initialization is drawn from ``(seed, path)``, so every process builds the same
    adapters (FFA-LoRA's shared frozen A needs exactly this).
    """
    cls = ADAPTER_KINDS[kind]
    found: dict[str, list[str]] = {t: [] for t in targets}
    for path, module in list(model.named_modules()):
        last = path.rsplit(".", 1)[-1]
        if last in found and isinstance(module, (nn.Linear, Conv1D)) and selected(path):
            found[last].append(path)
    missing = [t for t, paths in found.items() if not paths]
    if missing:
        names = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})
        raise ConfigError(
            f"model.targets: {missing} match no linear layer of this model; linear layers are named {names}"
        )
    paths = sorted(p for ps in found.values() for p in ps)
    for path in paths:
        _replace(model, path, cls(linear_of(model.get_submodule(path)), rank, scale), seed)
    return paths


def linear_of(module: nn.Module) -> nn.Module:
    """GPT-2's ``Conv1D`` (y = x·W + b, W of shape (d_in, d_out)) as the ``nn.Linear`` with weight Wᵀ:
    the same map, so adapters, DP-SGD's per-sample gradients and fused clients treat it as any
    linear layer; other modules as they are."""
    if not isinstance(module, Conv1D):
        return module
    d_in, d_out = module.weight.shape
    linear = nn.Linear(d_in, d_out, device=module.weight.device, dtype=module.weight.dtype)
    with torch.no_grad():
        linear.weight = nn.Parameter(module.weight.detach().T.contiguous(), requires_grad=module.weight.requires_grad)
        linear.bias = module.bias
    return linear


def resize_adapters(model: nn.Module, rank: int, seed: int) -> None:
    """Give every adapter layer rank ``rank``: a new layer of the same kind and scale around the
    same frozen base module, initialized from the same (seed, path) stream as ``inject_adapters``."""
    for path, layer in adapter_layers(model).items():
        _replace(model, path, type(layer)(layer.base, rank, layer.scale), seed)


def _replace(model: nn.Module, path: str, layer: nn.Module, seed: int) -> None:
    layer.reset(torch_generator(seed, "adapter", path))
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, layer)


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    kinds = tuple(ADAPTER_KINDS.values())
    return {p: m for p, m in model.named_modules() if isinstance(m, kinds)}
