"""What a method is: its adapter, which tensors a client trains, and its aggregation.

Every method in this module family keeps a *global state*: the tensors that travel each round
(``trained``, down and up), frozen tensors the server resets and sends down every round
(``broadcast``; FedSVD's A), and the tensors that are fixed for the run and reach each client
once (``broadcast_once``; Fed-SB's B and A). A client uploads its update Δ_k = θ_k − θ for every
trained tensor; the server's aggregation is a pure function of (state, updates, weights) where
``state`` holds the trained and the per-round broadcast tensors and each update the trained ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from fedlr.config import ConfigError

State = dict[str, torch.Tensor]
Aggregate = Callable[[Mapping[str, torch.Tensor], list[Mapping[str, torch.Tensor]], list[float]], State]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    adapter: str | None  # "lora", "lora_sb", or None (full fine-tuning)
    trains: tuple[str, ...]  # adapter tensors trained by clients, by module name; ("*",) = every parameter
    broadcast_once: tuple[str, ...]  # frozen adapter tensors a client receives once
    exact: bool  # whether the aggregate equals the average of the clients' full-weight updates
    aggregate: Aggregate
    citation: str
    broadcast: tuple[str, ...] = ()  # frozen tensors the server resets and sends every round
    # aggregate also takes keyword arguments scale (s = α/r), server_round and seed
    needs_round_context: bool = False
    # trained tensors every party draws from the seed at the start of each round, at its own rank
    # (FLoRA's fresh A and B = 0): never sent down. draw_fresh(seed, server_round, {key: shape})
    fresh: tuple[str, ...] = ()
    draw_fresh: Callable[[int, int, Mapping[str, tuple[int, ...]]], State] | None = None

    def is_trained(self, param_name: str, train_head: bool, head_prefixes: tuple[str, ...]) -> bool:
        if self.trains == ("*",):
            return True
        if param_name.startswith(head_prefixes):
            return train_head
        return _matches(param_name, self.trains)

    def is_broadcast_once(self, param_name: str) -> bool:
        return _matches(param_name, self.broadcast_once)

    def is_fresh(self, param_name: str) -> bool:
        return _matches(param_name, self.fresh)

    def is_broadcast(self, param_name: str) -> bool:
        """Sent down every round with the trained tensors, never trained nor uploaded (FedSVD's A,
        FedEx-LoRA's and FLoRA's corrected base weights)."""
        return _matches(param_name, self.broadcast)


def _matches(param_name: str, parts: tuple[str, ...]) -> bool:
    """Whether a dotted name contains one of ``parts`` as whole components (``lora_A`` or
    ``base.weight`` in ``...query.base.weight``)."""
    return any(f".{t}." in f"{param_name}." for t in parts)


def get_method(name: str) -> MethodSpec:
    from fedlr.methods import dp_lora, fed_sb, fed_svd, fedex_lora, fedit, fedpara, ffa_lora, flora, full_ft

    registry = {m.SPEC.name: m.SPEC for m in (fedit, ffa_lora, fed_sb, fed_svd, dp_lora, fedpara, fedex_lora, flora, full_ft)}
    if name not in registry:
        raise ConfigError(f"method.name: {name!r} is not a method; choose one of {sorted(registry)}")
    return registry[name]
