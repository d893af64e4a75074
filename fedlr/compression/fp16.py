"""``fp16``: every value rounded to IEEE half precision — exactly 2× on payload bytes.

Algorithm: concatenate all tensors (canonical order, flattened) and round each value to the
nearest fp16; values beyond ±65504 saturate (not ±inf) so a large update degrades instead of being
rejected, and error feedback carries what rounding lost. Relative error per value ≤ 2⁻¹¹ in the
normal range. bf16 cannot travel (numpy has no bf16; reference/compression.md §4).

Payload: ``{"fp16": float16[Σ numel]}`` — ``2·Σ numel`` bytes, one header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from fedlr.compression.base import (FP16_MAX, Params, Payload, Reader, Shapes, State, canonical_keys, check_keys,
                                    concat, numel, scale_arrays)

FP16_KEY = "fp16"


@dataclass(frozen=True)
class FP16Codec:
    name: str = "fp16"
    lossy: bool = True
    payload_keys: tuple[str, ...] = (FP16_KEY,)

    def default_params(self, shapes: Shapes) -> dict[str, int]:
        return {k: 16 for k in shapes}

    def tensor_nbytes(self, shape: tuple[int, ...], param: int = 16) -> int:
        return 2 * numel(shape)

    def nbytes(self, shapes: Shapes, params: Params | None = None) -> int:
        return sum(self.tensor_nbytes(tuple(s)) for s in shapes.values())

    def encode(self, tensors: Mapping[str, torch.Tensor], params: Params | None = None,
               generator: torch.Generator | None = None, state: Mapping[str, torch.Tensor] | None = None
               ) -> tuple[Payload, State]:
        chunks = [tensors[k].detach().to("cpu", torch.float32).reshape(-1).clamp(-FP16_MAX, FP16_MAX)
                  .to(torch.float16).numpy() for k in canonical_keys(tensors)]
        return {FP16_KEY: concat(chunks, np.float16)}, {}

    def decode(self, payload: Payload, shapes: Shapes) -> dict[str, torch.Tensor]:
        check_keys(payload, self.payload_keys)
        reader = Reader(payload, FP16_KEY, np.float16)
        out = {k: torch.from_numpy(reader.take(numel(shapes[k])).copy()).to(torch.float32).reshape(shapes[k])
               for k in canonical_keys(shapes)}
        reader.finish()
        return {k: out[k] for k in shapes}

    def scale(self, payload: Payload, factor: float) -> Payload:
        return scale_arrays(payload, (FP16_KEY,), factor)
