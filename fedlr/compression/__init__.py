"""Compression of every update that travels: codecs, error feedback, L-GreCo, byte accounting.

What is compressed is a client's round update ``Δ = θ_local − θ_received`` per trained tensor
(LoRA A/B, R, heads, dense deltas), once per round — not per-step gradients
(reference/compression.md). Optionally the server's broadcast too (``downlink``).

Modules (one idea each; each codec a frozen dataclass + functions, the algorithm in its docstring,
after torch's ``powerSGD_hook.py``):

- ``base``            the ``Codec`` protocol, payload type, canonical order, exact byte counts
- ``identity``        ``none``: fp32, one array per tensor — the uncompressed record (ratio 1)
- ``fp16``            half precision (2×)
- ``qsgd``            stochastic unbiased quantization, 2–8 bits, fp32 norm per bucket (8 = int8)
- ``topk``            the k largest-magnitude entries; indices or bitmap, whichever is cheaper
- ``powersgd``        rank-r power iteration with the client's warm start (mode A, client-local)
- ``error_feedback``  residual memory as a wrapper over any lossy codec; stale-memory policy
- ``lgreco``          per-tensor parameter by exact DP over a discretized error budget
- ``dp``              the order of clip, noise and compress; the payload-domain clip
- ``config``          ``CompressionConfig``, the ``[compression]`` section
- ``pipeline``        the seam the runtime calls: encode/decode, broadcast, planned bytes, ratios

**Order with differential privacy** (``dp`` has the argument): under sample-level DP the update is
already private and compression is post-processing; with client-level DP and noise added by the
client, fedlr **clips, then noises, then compresses** (compression and error feedback act on the
released vector: post-processing); with the noise added by the server, the client clips the
*compressed* vector it releases (``encode_update(..., clip_norm=S)``), because error-feedback
memory and stochastic rounding can push a pre-clipped update over S.

Encoding randomness comes only from the ``torch.Generator`` the caller passes (seeded per round
and client with ``fedlr.seeding.torch_generator(seed, "compress", round, client)``), so a run's
payloads are reproducible.
"""

from fedlr.compression.base import Codec, Payload, PayloadError, payload_bytes, payload_nbytes
from fedlr.compression.config import CODECS, CompressionConfig, compression_config
from fedlr.compression.error_feedback import ErrorFeedback
from fedlr.compression.fp16 import FP16Codec
from fedlr.compression.identity import IdentityCodec
from fedlr.compression.lgreco import Candidate, InfeasibleBudget, choose_params, knapsack, solve
from fedlr.compression.pipeline import (Broadcast, CompressionStats, active_codec, apply_broadcast,
                                        cached_reference, choose_assignment, compression_ratio,
                                        compression_stats, decode_update, encode_broadcast, encode_update,
                                        make_codec, planned_bytes, planned_downlink_bytes,
                                        planned_payload_nbytes, remember_broadcast, should_reselect,
                                        uniform_assignment, uses_compression)
from fedlr.compression.powersgd import PowerSGDCodec
from fedlr.compression.qsgd import QSGDCodec
from fedlr.compression.topk import TopKCodec

__all__ = [
    "Codec", "Payload", "PayloadError", "payload_bytes", "payload_nbytes", "CODECS", "CompressionConfig",
    "compression_config", "ErrorFeedback", "FP16Codec", "IdentityCodec", "QSGDCodec", "TopKCodec",
    "PowerSGDCodec", "Candidate", "InfeasibleBudget", "choose_params", "knapsack", "solve", "Broadcast",
    "CompressionStats", "active_codec", "apply_broadcast", "cached_reference", "choose_assignment",
    "compression_ratio", "compression_stats", "decode_update", "encode_broadcast", "encode_update",
    "make_codec", "planned_bytes", "planned_downlink_bytes", "planned_payload_nbytes", "remember_broadcast",
    "should_reselect", "uniform_assignment", "uses_compression",
]
