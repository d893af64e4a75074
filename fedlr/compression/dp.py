"""Where compression sits relative to differential privacy's clip and noise (privacy.md §9), and
the payload-domain clip that makes what a client sends respect the bound S the mechanism uses.

Three regimes; fedlr uses, in each, the order below.

1. **Sample-level DP (DP-SGD on the client).** The update Δ is already a DP release; error
   feedback, compression and any choice computed from Δ are post-processing. Order:
   ``DP-SGD → Δ → x = Δ + e → encode → send``. Nothing to clip here.

2. **Client-level DP with the noise added by the client** (local Gaussian mechanism):
   **clip, then noise, then compress**: ``Δ_c = clip_to_norm(Δ, S)`` (privacy's function),
   ``Δ̃ = Δ_c + N(0, σ²S²)``, then ``x = Δ̃ + e → encode → send``. The release is Δ̃; the payload
   and the memory are functions of Δ̃ and of earlier releases only, hence post-processing: any
   codec, biased or not, keeps the guarantee. (Compressing before the noise would change the
   sensitivity; compressing after does not.)

3. **Client-level DP with the noise added by the server** (DP-FedAvg: the server sums the clients'
   contributions and adds N(0, σ²S²) to the sum). The mechanism relies on each client's
   *contribution* — what the server decodes — having L2 norm ≤ S. Clipping Δ before encoding is
   not enough: the error-feedback memory adds to it, and QSGD's stochastic rounding (or fp16
   rounding) can increase the norm. So fedlr **clips the released vector itself**:
   ``x = Δ + e → y = encode(x) → y_c = clip_payload(y, S) → send y_c → e ← x − decode(y_c)``.
   ``clip_payload`` rescales the payload's linear part (fp32 values, QSGD norms, top-k values,
   PowerSGD's Q, the dense buffer; never the orthonormal P̂) and verifies on the decoded tensors,
   in float64, that ``‖decode(y_c)‖₂ ≤ S``. Folding the clipping loss into e is allowed (e is
   never released) and is the default; ``fold_release_error=False`` keeps it out.

Adaptive choices (L-GreCo) leak if computed from raw client updates; fedlr computes them on the
server from the aggregate it already releases (the new global model), identically for all clients
(fedlr.compression.lgreco). Payload sizes depend on the shapes and the chosen parameters only.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from fedlr.compression.base import Codec, Payload, Shapes


def global_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of all tensors concatenated, accumulated in float64."""
    return math.sqrt(sum(float(t.to(torch.float64).square().sum()) for t in tensors.values()))


def clip_payload(codec: Codec, payload: Payload, shapes: Shapes, clip_norm: float) -> Payload:
    """The payload scaled so that its decoding has L2 norm ≤ ``clip_norm`` (unchanged if it
    already has). The scale is re-checked on the decoded tensors, so rounding of the payload's
    own dtype (fp16, fp32) cannot push the norm back over the bound."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    norm = global_norm(codec.decode(payload, shapes))
    if norm <= clip_norm:
        return payload
    factor = clip_norm / norm
    for _ in range(16):
        scaled = codec.scale(payload, factor)
        got = global_norm(codec.decode(scaled, shapes))
        if got <= clip_norm:
            return scaled
        factor *= clip_norm / got * (1 - 2.0**-9)
    raise RuntimeError(f"could not scale the {codec.name} payload under norm {clip_norm}")
