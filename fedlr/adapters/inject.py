"""Replace targeted ``nn.Linear`` modules of a model by adapter layers."""

from __future__ import annotations

from torch import nn

from fedlr.adapters.layers import LoHaLinear, LoRALinear, LoRASBLinear
from fedlr.errors import ConfigError
from fedlr.seeding import torch_generator

ADAPTER_KINDS = {"lora": LoRALinear, "lora_sb": LoRASBLinear, "loha": LoHaLinear}


def inject_adapters(model: nn.Module, targets: list[str], kind: str, rank: int, scale: float, seed: int) -> list[str]:
    """Wrap every ``nn.Linear`` whose last name component is in ``targets``; return their paths.

    Each layer's initialization is drawn from ``(seed, path)``, so every process builds the same
    adapters (FFA-LoRA's shared frozen A needs exactly this).
    """
    cls = ADAPTER_KINDS[kind]
    found: dict[str, list[str]] = {t: [] for t in targets}
    for path, module in list(model.named_modules()):
        last = path.rsplit(".", 1)[-1]
        if last in found and isinstance(module, nn.Linear):
            found[last].append(path)
    missing = [t for t, paths in found.items() if not paths]
    if missing:
        names = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"model.targets: {missing} match no linear layer of this model; linear layers are named {names}"
        )
    paths = sorted(p for ps in found.values() for p in ps)
    for path in paths:
        _replace(model, path, cls(model.get_submodule(path), rank, scale), seed)
    return paths


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
