"""``none``: every tensor travels as its own fp32 array under its own key — exactly the record the
runtime sends without compression, so its bytes are the baseline of every ratio (ratio 1.0).

Payload: ``{key: float32 array of the tensor's shape}``; bytes ``4·numel`` per tensor, wire bytes
``4·numel + 128 + len(key)`` per tensor (fedlr.wire.record_wire_bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from fedlr.compression.base import FP32_BYTES, Params, Payload, PayloadError, Shapes, State, numel


@dataclass(frozen=True)
class IdentityCodec:
    name: str = "none"
    lossy: bool = False
    payload_keys: tuple[str, ...] = ()  # the tensor keys themselves

    def default_params(self, shapes: Shapes) -> dict[str, int]:
        return {k: 0 for k in shapes}

    def tensor_nbytes(self, shape: tuple[int, ...], param: int = 0) -> int:
        return FP32_BYTES * numel(shape)

    def nbytes(self, shapes: Shapes, params: Params | None = None) -> int:
        return sum(self.tensor_nbytes(tuple(s)) for s in shapes.values())

    def encode(self, tensors: Mapping[str, torch.Tensor], params: Params | None = None,
               generator: torch.Generator | None = None, state: Mapping[str, torch.Tensor] | None = None
               ) -> tuple[Payload, State]:
        payload = {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in tensors.items()}
        return payload, {}

    def decode(self, payload: Payload, shapes: Shapes) -> dict[str, torch.Tensor]:
        if set(payload) != set(shapes):
            missing, extra = sorted(set(shapes) - set(payload)), sorted(set(payload) - set(shapes))
            raise PayloadError(f"keys differ (missing {missing[:3]}, unexpected {extra[:3]})")
        out = {}
        for k, shape in shapes.items():
            a = np.asarray(payload[k])
            if a.dtype != np.float32:
                raise PayloadError(f"{k}: dtype {a.dtype} != float32")
            if tuple(a.shape) != tuple(shape):
                raise PayloadError(f"{k}: shape {tuple(a.shape)} != {tuple(shape)}")
            out[k] = torch.from_numpy(a.copy())
        return out

    def scale(self, payload: Payload, factor: float) -> Payload:
        return {k: (a.astype(np.float64) * factor).astype(np.float32) for k, a in payload.items()}
