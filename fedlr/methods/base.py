"""What a method is: its adapter, which tensors a client trains, its aggregation, and every answer
the rest of fedlr asks of it (``MethodSpec``); and the registry the method modules add themselves to.

Every method in this module family keeps a *global state*: the tensors that travel each round
(``trained``, down and up), frozen tensors the server resets and sends down every round
(``broadcast``; FedSVD's A), and the tensors that are fixed for the run and reach each client
once (``broadcast_once``; Fed-SB's B and A). A client uploads its update Δ_k = θ_k − θ for every
trained tensor; the server's aggregation is a pure function of (state, updates, weights) where
``state`` holds the trained and the per-round broadcast tensors and each update the trained ones.

A method is one module of ``fedlr.methods`` that builds its ``MethodSpec`` and calls ``register``;
``fedlr.methods`` imports every module of the package, so nothing else names a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from fedlr.errors import ConfigError

State = dict[str, torch.Tensor]
Aggregate = Callable[[Mapping[str, torch.Tensor], list[Mapping[str, torch.Tensor]], list[float]], State]
ENTRYWISE_MEAN = "it averages its tensors entrywise, which needs one shape"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    adapter: str | None  # "lora", "lora_sb", "loha" (fedlr.adapters.ADAPTER_KINDS), or None (full fine-tuning)
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
    # whether aggregating one pre-combined update (the mean that client-level DP releases) keeps
    # ``exact``: true for aggregations linear in the updates; FedEx-LoRA's residual and FLoRA's
    # stacking need each client's own factors
    exact_on_combined_update: bool = True
    # why clients cannot train different ranks (``method.client_ranks``), or None where they can
    client_ranks_refused: str | None = ENTRYWISE_MEAN
    # why the broadcast cannot be sent as a compressed delta (``compression.downlink``), or None
    downlink_refused: str | None = None
    # the round-0 init the strategy runs under ``method.init = "federated"`` (its name, which the
    # strategy dispatches on), or None; such a round sends raw gradients, which DP refuses
    init_round: str | None = None
    # Opacus clips each trained tensor separately (C/√P each) instead of one joint bound
    per_tensor_clipping: bool = False
    # the mechanism text this method adds to a run's privacy record, by privacy mode name
    privacy_mechanisms: Mapping[str, str] = field(default_factory=dict)

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

    def exact_under(self, combines_updates: bool) -> bool:
        """Whether the run's aggregation is exact when the run's privacy mode does (or does not)
        combine the accepted updates into one before the method aggregates them
        (``fedlr.privacy.modes.PrivacyMode.combines_updates``)."""
        return self.exact and (self.exact_on_combined_update or not combines_updates)

    def runs_init_round(self, init: str) -> bool:
        """Whether a run with ``method.init = init`` starts with this method's federated init round."""
        return self.init_round is not None and init == "federated"


def _matches(param_name: str, parts: tuple[str, ...]) -> bool:
    """Whether a dotted name contains one of ``parts`` as whole components (``lora_A`` or
    ``base.weight`` in ``...query.base.weight``)."""
    return any(f".{t}." in f"{param_name}." for t in parts)


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` a method ``method.name`` may choose (a method module calls this on import)."""
    known = _REGISTRY.get(spec.name)
    if known is not None and known is not spec:
        raise ValueError(f"method {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def method_names() -> tuple[str, ...]:
    """Every registered method's name, sorted."""
    return tuple(sorted(_REGISTRY))


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"method.name: {name!r} is not a method; choose one of {list(method_names())}")
    return _REGISTRY[name]
