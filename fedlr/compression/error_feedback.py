"""Error feedback (EF) as a wrapper over any lossy codec: what a client did not send this round is
added to what it sends next (Seide et al. 2014; Stich et al. NeurIPS 2018; Karimireddy et al.
ICML 2019 "Error Feedback Fixes SignSGD"; PowerSGD paper Algorithm 2).

Algorithm, per client and per tensor, each round the client takes part in::

    x  = Δ + β^s · e          (s = rounds the memory sat idle, β = error_decay; β = 1 by default)
    y  = release(encode(x))    (release: identity, or the payload-domain clip of fedlr.compression.dp)
    e' = x − decode(y)         (the client's own residual, in the update's dtype)

Because ``decode(y) + e' = x`` holds by construction, after T participations with β = 1
``Σ_t decode(y_t) + e_T = Σ_t Δ_t`` exactly (up to float rounding of the subtractions): nothing the
client computed is ever lost, it is only delayed. For a contractive codec (top-k, PowerSGD,
QSGD/fp16 with their bounded variance) the memory stays bounded on a stationary stream, so the
running mean of what was sent converges to the running mean of the updates.

The memory is plain tensors (``{key: e}``, same shapes and dtypes as the update), so the runtime
keeps it in Flower's per-client ``context.state`` (an ArrayRecord) and in checkpoints, and a resumed
run continues with the same memory. It stores each client's **own** residual (epfml 2022 rewrite),
not torch's ``input − global average``.

**Stale memory under partial participation.** With m of n clients per round a residual waits
≈ n/m rounds before it is sent, computed against a model that has since moved (Fed-EF, ICML 2023:
a "stale error compensation" slowdown ≈ n/m). fedlr's default keeps the memory as is (β = 1):
the telescoping identity above holds, nothing is silently dropped, and the delay is bounded by
the sampling. ``error_decay = β < 1`` shrinks a memory by β per round it sat idle (β^s with s =
rounds since the client last sent, minus one), trading the identity for less stale mass; the
decayed part is discarded, deliberately. Rank changes (L-GreCo) leave the memory intact (it lives
in the full space); only PowerSGD's warm-start factors are truncated or topped up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from fedlr.compression.base import Codec, Params, Payload, State, shapes_of


@dataclass
class Encoded:
    payload: Payload
    memory: State          # e' per tensor (zeros where the codec was exact)
    codec_state: State     # e.g. PowerSGD warm start
    sent: dict[str, torch.Tensor]  # decode(payload): what the server will reconstruct


def compensate(update: Mapping[str, torch.Tensor], memory: Mapping[str, torch.Tensor],
               factor: float = 1.0) -> dict[str, torch.Tensor]:
    """x = Δ + factor·e (a missing memory counts as zero)."""
    out = {}
    for k, d in update.items():
        e = memory.get(k)
        out[k] = d.detach().clone() if e is None else d.detach() + factor * e.to(d.dtype)
    return out


def idle_factor(decay: float, idle_rounds: int) -> float:
    return decay ** max(0, idle_rounds) if decay != 1.0 else 1.0


@dataclass(frozen=True)
class ErrorFeedback:
    """``encode`` = compensate → codec.encode → release → decode → new residual."""

    codec: Codec
    decay: float = 1.0

    def encode(self, update: Mapping[str, torch.Tensor], params: Params, generator: torch.Generator,
               memory: Mapping[str, torch.Tensor], codec_state: Mapping[str, torch.Tensor] | None = None, *,
               idle_rounds: int = 0, release: Callable[[Payload], Payload] | None = None,
               fold_release_error: bool = True) -> Encoded:
        """``idle_rounds``: rounds since this client last sent, minus one (0 when it took part in
        the previous round). ``release`` post-processes the payload before it is sent (the DP clip);
        with ``fold_release_error`` (default) what the release removed goes into the memory too,
        otherwise the memory is the codec's residual only (e is never released either way)."""
        x = compensate(update, memory, idle_factor(self.decay, idle_rounds))
        shapes = shapes_of(x)
        payload, new_codec_state = self.codec.encode(x, params, generator, codec_state or {})
        pre_release = None
        if release is not None:
            if not fold_release_error:
                pre_release = self.codec.decode(payload, shapes)
            payload = release(payload)
        sent = self.codec.decode(payload, shapes)
        kept = sent if pre_release is None else pre_release
        new_memory = {k: x[k] - kept[k].to(x[k].dtype) for k in x}
        return Encoded(payload, new_memory, new_codec_state, sent)
