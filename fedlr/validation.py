"""Checks a client's uploaded tensors must pass before aggregation."""

from __future__ import annotations

from typing import Mapping

import torch

from fedlr.adapters.naming import A_KEY, B_KEY


def update_problem(update: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> str | None:
    """Why ``update`` cannot be aggregated (wrong keys, shapes or dtypes, NaN/Inf), or None."""
    missing = sorted(set(expected) - set(update))
    extra = sorted(set(update) - set(expected))
    if missing or extra:
        return f"keys differ from the expected ones (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, (shape, dtype) in expected.items():
        value = update[key]
        if tuple(value.shape) != tuple(shape):
            return f"{key}: shape {tuple(value.shape)} != {tuple(shape)}"
        if value.dtype != dtype:
            return f"{key}: dtype {value.dtype} != {dtype}"
        if not torch.isfinite(value).all():
            return f"{key}: contains NaN or Inf"
    return None


def expected_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def at_rank(expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]], rank: int
            ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``expected`` for a client whose LoRA factors have rank ``rank`` (``method.client_ranks``):
    every A (r×d_in) becomes (rank×d_in), every B (d_out×r) becomes (d_out×rank); other tensors as given."""
    def shape(key: str, s: tuple[int, ...]) -> tuple[int, ...]:
        if key.endswith(A_KEY):
            return (rank, s[1])
        if key.endswith(B_KEY):
            return (s[0], rank)
        return s

    return {k: (shape(k, s), dtype) for k, (s, dtype) in expected.items()}
