"""Checks a client's uploaded tensors must pass before aggregation."""

from __future__ import annotations

from typing import Mapping

import torch


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
