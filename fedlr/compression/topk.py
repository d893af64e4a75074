"""``topk``: keep the ``k`` entries of largest magnitude of each tensor, send their values and
positions (Stich, Cordonnier, Jaggi, NeurIPS 2018, "Sparsified SGD with Memory"; Aji & Heafield
2017). Biased but contractive, ``‖x − top_k(x)‖² ≤ (1 − k/n)‖x‖²``, so it needs error feedback.

Algorithm, per tensor ``x`` with ``n`` entries (layer-wise k)::

    k        = max(1, round(density · n))            (or the per-tensor k L-GreCo chose)
    S        = indices of the k largest |x_i|          (torch.topk; ties broken by torch)
    values   = x[S] in ascending index order (fp32)
    position = whichever is cheaper, fixed by (k, n) alone:
               int32 indices  → 8k bytes in all, or
               a bitmap of n bits → 4k + ⌈n/8⌉ bytes       (cheaper when k > n/32)
    decode   = zeros, x̂[S] = values

A tensor whose top-k encoding would not be smaller than fp32 (``density`` near 1) travels dense.
Top-k is not linear (client supports differ): no SecAgg.

Payload (canonical order): ``topk.params`` int32[N] (k per tensor, 0 = dense), ``topk.values``
fp32[Σk], ``topk.indices`` int32, ``topk.bitmap`` uint8, ``dense`` fp32.
Bytes per tensor: ``min(8k, 4k + ⌈n/8⌉)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from fedlr.compression.base import (DENSE_KEY, FP32_BYTES, Params, Payload, PayloadError, Reader, Shapes,
                                    State, canonical_keys, check_keys, concat, dense_tensor, numel,
                                    packed_nbytes, params_array, read_params, scale_arrays, to_numpy_f32)

PARAMS_KEY, VALUES_KEY, INDICES_KEY, BITMAP_KEY = "topk.params", "topk.values", "topk.indices", "topk.bitmap"


def k_for(n: int, density: float) -> int:
    return max(1, min(n, round(density * n)))


def uses_bitmap(n: int, k: int) -> bool:
    """The bitmap is used when strictly cheaper than int32 indices (crossover at k = n/32)."""
    return math.ceil(n / 8) < 4 * k


def topk_tensor_nbytes(n: int, k: int) -> int:
    return min(8 * k, 4 * k + math.ceil(n / 8))


def top_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the k largest-magnitude entries of a flat tensor."""
    return torch.topk(x.abs(), k, sorted=False).indices.sort().values


@dataclass(frozen=True)
class TopKCodec:
    density: float = 0.01
    name: str = "topk"
    lossy: bool = True
    payload_keys: tuple[str, ...] = (PARAMS_KEY, VALUES_KEY, INDICES_KEY, BITMAP_KEY, DENSE_KEY)

    def param_for(self, shape: tuple[int, ...], k: int) -> int:
        """``k``, or 0 when sending k values would not be smaller than the dense tensor."""
        n = numel(shape)
        k = min(k, n)
        return k if k > 0 and topk_tensor_nbytes(n, k) < FP32_BYTES * n else 0

    def default_params(self, shapes: Shapes) -> dict[str, int]:
        return {k: self.param_for(tuple(s), k_for(numel(tuple(s)), self.density)) for k, s in shapes.items()}

    def tensor_nbytes(self, shape: tuple[int, ...], param: int) -> int:
        n = numel(shape)
        return FP32_BYTES * n if param == 0 else topk_tensor_nbytes(n, param)

    def nbytes(self, shapes: Shapes, params: Params) -> int:
        return packed_nbytes(self, shapes, params)

    def encode(self, tensors: Mapping[str, torch.Tensor], params: Params, generator: torch.Generator | None = None,
               state: Mapping[str, torch.Tensor] | None = None) -> tuple[Payload, State]:
        keys = canonical_keys(tensors)
        values, indices, bitmaps, dense = [], [], [], []
        for key in keys:
            x, k = tensors[key].detach().cpu().reshape(-1), int(params[key])
            n = x.numel()
            if k == 0:
                dense.append(to_numpy_f32(x))
                continue
            if not 0 < k <= n or n >= 2**31:
                raise ValueError(f"{key}: k = {k} does not fit {n} entries")
            if uses_bitmap(n, k):
                mask = torch.zeros(n, dtype=torch.bool)
                mask[torch.topk(x.abs(), k, sorted=False).indices] = True
                values.append(to_numpy_f32(x[mask]))  # ascending index order, as the bitmap reads
                bitmaps.append(np.packbits(mask.numpy(), bitorder="little"))
            else:
                idx = top_k(x, k)
                values.append(to_numpy_f32(x[idx]))
                indices.append(idx.numpy().astype(np.int32))
        payload = {PARAMS_KEY: params_array(keys, params), VALUES_KEY: concat(values, np.float32),
                   INDICES_KEY: concat(indices, np.int32), BITMAP_KEY: concat(bitmaps, np.uint8),
                   DENSE_KEY: concat(dense, np.float32)}
        return payload, {}

    def decode(self, payload: Payload, shapes: Shapes) -> dict[str, torch.Tensor]:
        check_keys(payload, self.payload_keys)
        keys = canonical_keys(shapes)
        params = read_params(payload, PARAMS_KEY, keys)
        values, indices = Reader(payload, VALUES_KEY, np.float32), Reader(payload, INDICES_KEY, np.int32)
        bitmaps, dense = Reader(payload, BITMAP_KEY, np.uint8), Reader(payload, DENSE_KEY, np.float32)
        out = {}
        for key in keys:
            shape, k = tuple(shapes[key]), params[key]
            n = numel(shape)
            if k == 0:
                out[key] = dense_tensor(dense, shape)
                continue
            if k > n:
                raise PayloadError(f"{key}: k = {k} > {n} entries")
            if uses_bitmap(n, k):
                idx = np.unpackbits(bitmaps.take(math.ceil(n / 8)), count=n, bitorder="little").view(bool)
                if int(np.count_nonzero(idx)) != k:
                    raise PayloadError(f"{key}: bitmap marks {np.count_nonzero(idx)} entries, k = {k}")
            else:
                idx = indices.take(k).astype(np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= n or (np.diff(idx) <= 0).any()):
                    raise PayloadError(f"{key}: indices out of range or not strictly increasing")
            flat = np.zeros(n, dtype=np.float32)
            flat[idx] = values.take(k)
            out[key] = torch.from_numpy(flat).reshape(shape)
        for r in (values, indices, bitmaps, dense):
            r.finish()
        return {k: out[k] for k in shapes}

    def scale(self, payload: Payload, factor: float) -> Payload:
        return scale_arrays(payload, (VALUES_KEY, DENSE_KEY), factor)
