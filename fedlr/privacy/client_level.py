"""Client-level DP (DP-FedAvg, McMahan et al. 2018, arXiv 1710.06963, Alg. 1) as pure functions.

- clip:  Δ_k ← Δ_k · min(1, S / ‖Δ_k‖₂), one flat L2 norm over every tensor the method releases
  (FedIT/DP-LoRA (ΔA, ΔB) jointly, FFA/FedSVD ΔB, Fed-SB ΔR, plus the head where trained);
  a zero or tiny update is left as is (no division by its norm);
- central: Δ̄ = (Σ_k clip(Δ_k) + N(0, z²S²I)) / m — uniform weights, the fixed denominator m
  (the cohort size, even when fewer replies arrive), noise once on the sum;
- local: each client releases clip(Δ_k) + N(0, z²S²I) itself.

Noise comes from a ``torch.Generator`` the caller seeds per round (and per client for local),
drawn tensor by tensor in sorted key order, so a run is reproducible.
"""

from __future__ import annotations

from typing import Mapping

import torch

State = dict[str, torch.Tensor]


def global_norm(update: Mapping[str, torch.Tensor]) -> float:
    """‖Δ‖₂ over all tensors together (accumulated in float64)."""
    total = torch.zeros((), dtype=torch.float64)
    for value in update.values():
        total += value.detach().to(torch.float64).pow(2).sum()
    return float(total.sqrt())


def clip_update(update: Mapping[str, torch.Tensor], max_norm: float) -> tuple[State, float]:
    """(Δ·min(1, S/‖Δ‖₂), ‖Δ‖₂). ‖result‖₂ ≤ S; Δ is returned unchanged when ‖Δ‖₂ ≤ S (incl. 0)."""
    if not max_norm > 0:
        raise ValueError(f"clipping bound must be positive, got {max_norm}")
    norm = global_norm(update)
    if norm <= max_norm:
        return {k: v.clone() for k, v in update.items()}, norm
    factor = max_norm / norm
    clipped = {k: (v.to(torch.float64) * factor).to(v.dtype) for k, v in update.items()}
    # float32 rounding can leave the result a hair above S; shrink by that hair
    excess = global_norm(clipped) / max_norm
    if excess > 1:
        clipped = {k: (v.to(torch.float64) / excess * (1 - 1e-7)).to(v.dtype) for k, v in clipped.items()}
    return clipped, norm


def clip_to_norm(update: Mapping[str, torch.Tensor], max_norm: float) -> State:
    """``clip_update`` without the norm (the name fedlr.compression.dp refers to)."""
    return clip_update(update, max_norm)[0]


def gaussian_noise(like: Mapping[str, torch.Tensor], std: float, generator: torch.Generator) -> State:
    """N(0, std²) per coordinate for every tensor of ``like``, drawn in sorted key order."""
    out = {}
    for key in sorted(like):
        ref = like[key]
        out[key] = torch.normal(0.0, std, size=tuple(ref.shape), generator=generator, dtype=torch.float32).to(ref.dtype)
    return {k: out[k] for k in like}


def add_local_noise(update: Mapping[str, torch.Tensor], max_norm: float, noise_multiplier: float,
                    generator: torch.Generator) -> State:
    """``client_local``: clip(Δ, S) + N(0, (zS)²) — what the client uploads."""
    clipped, _ = clip_update(update, max_norm)
    noise = gaussian_noise(clipped, noise_multiplier * max_norm, generator)
    return {k: clipped[k] + noise[k] for k in clipped}


def central_noised_mean(updates: list[Mapping[str, torch.Tensor]], max_norm: float, noise_multiplier: float,
                        cohort_size: int, generator: torch.Generator) -> State:
    """``client_central``: (Σ_k clip(Δ_k, S) + N(0, (zS)²)) / m with m = ``cohort_size``.

    Each update is clipped here again (idempotent for clients that already clipped), so the
    sensitivity the accountant assumes holds whatever a client sent.
    """
    if not updates:
        raise ValueError("central noise needs at least one update")
    if cohort_size < len(updates):
        raise ValueError(f"cohort size {cohort_size} < {len(updates)} updates")
    keys = list(updates[0])
    total = {k: torch.zeros_like(updates[0][k], dtype=torch.float64) for k in keys}
    for upd in updates:
        clipped, _ = clip_update(upd, max_norm)
        for k in keys:
            total[k] += clipped[k].to(torch.float64)
    noise = gaussian_noise(updates[0], noise_multiplier * max_norm, generator)
    return {k: ((total[k] + noise[k].to(torch.float64)) / cohort_size).to(updates[0][k].dtype) for k in keys}


def uniform_mean(updates: list[Mapping[str, torch.Tensor]]) -> State:
    """(1/K) Σ_k Δ_k (accumulated in float64, in the given order)."""
    if not updates:
        raise ValueError("the mean needs at least one update")
    keys = list(updates[0])
    return {k: (sum(u[k].to(torch.float64) for u in updates) / len(updates)).to(updates[0][k].dtype) for k in keys}
