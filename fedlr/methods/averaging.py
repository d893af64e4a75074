"""Sample-weighted averaging of client updates, the building block of FedAvg-style aggregation."""

from __future__ import annotations

from typing import Mapping

import torch


def normalized_weights(weights: list[float]) -> list[float]:
    """p_k = n_k / Σ_j n_j. Raises on an empty or non-positive total."""
    total = float(sum(weights))
    if not weights or total <= 0:
        raise ValueError("aggregation needs at least one update with a positive weight")
    return [w / total for w in weights]


def weighted_mean_update(
    state: Mapping[str, torch.Tensor], updates: list[Mapping[str, torch.Tensor]], weights: list[float]
) -> dict[str, torch.Tensor]:
    """θ' = θ + Σ_k p_k Δ_k for every tensor in ``state`` (= Σ_k p_k θ_k when Δ_k = θ_k − θ).

    Accumulates in float64 in the given client order; callers pass updates in a stable order
    (partition id) so two runs sum identically.
    """
    p = normalized_weights(weights)
    new_state = {}
    for key, value in state.items():
        acc = torch.zeros_like(value, dtype=torch.float64)
        for pk, upd in zip(p, updates):
            acc += pk * upd[key].to(torch.float64)
        new_state[key] = (value.to(torch.float64) + acc).to(value.dtype)
    return new_state
