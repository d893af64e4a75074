"""The seam between the compression layer and the runtime: what a client calls before it replies,
what the server calls when a reply arrives or before it broadcasts, and what ``fedlr plan`` calls.
Pure functions on tensors and numpy arrays (no Flower); every state is a flat ``dict[str, Tensor]``
that fits an ArrayRecord, so it can live in ``context.state`` and in checkpoints.

Client state (``encode_update``'s ``client_state`` in → new state out; persist it between rounds
and across resume):

====================  =======================================================================
``ef/<key>``          error-feedback memory of tensor <key> (shape and dtype of the update)
``ef.round``          int64[1], the last round this client sent (for ``error_decay``)
``warm/<key>``        PowerSGD warm-start Q (m×r, fp32) of tensor <key>
``down/<key>``        downlink only: the broadcast reference B_t this client last received
``down.round``        int64[1], the round of that reference
====================  =======================================================================

Server state (``encode_broadcast``; checkpoint it): ``ref/<key>`` (the broadcast reference B_t
every fresh client holds), ``warm/<key>`` (server-side PowerSGD warm start), ``ref.round``. The
L-GreCo assignment (``dict[str, int]``) is server state too; the runtime keeps it beside.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Mapping

import torch

from fedlr.compression.base import (FP32_BYTES, Codec, Payload, PayloadError, Shapes, State, canonical_keys,
                                    header_bytes, numel, payload_bytes, payload_nbytes, read_params, shapes_of)
from fedlr.compression.config import CompressionConfig
from fedlr.compression.dp import clip_payload
from fedlr.compression.error_feedback import ErrorFeedback
from fedlr.compression.fp16 import FP16Codec
from fedlr.compression.identity import IdentityCodec
from fedlr.compression.lgreco import choose_params
from fedlr.compression.powersgd import PowerSGDCodec
from fedlr.compression.qsgd import QSGDCodec
from fedlr.compression.topk import TopKCodec

MEMORY, WARM, LAST_ROUND = "ef/", "warm/", "ef.round"
DOWN, DOWN_ROUND = "down/", "down.round"
REFERENCE, REFERENCE_ROUND = "ref/", "ref.round"

__all__ = ["make_codec", "active_codec", "uses_compression", "uniform_assignment", "encode_update",
           "decode_update", "planned_bytes", "planned_payload_nbytes", "compression_stats",
           "compression_ratio", "CompressionStats", "should_reselect", "choose_assignment",
           "Broadcast", "encode_broadcast", "apply_broadcast", "remember_broadcast", "cached_reference",
           "planned_downlink_bytes", "payload_bytes", "payload_nbytes", "PayloadError"]


# ---------------------------------------------------------------- codecs from the config
def make_codec(cfg: CompressionConfig) -> Codec:
    if cfg.codec == "none":
        return IdentityCodec()
    if cfg.codec == "fp16":
        return FP16Codec()
    if cfg.codec == "qsgd":
        return QSGDCodec(bits=cfg.bits, bucket_size=cfg.bucket_size)
    if cfg.codec == "topk":
        return TopKCodec(density=cfg.density)
    if cfg.codec == "powersgd":
        return PowerSGDCodec(rank=cfg.rank, power_iterations=cfg.power_iterations,
                             min_compression_rate=cfg.min_compression_rate)
    raise ValueError(f"unknown codec {cfg.codec!r}")


def uses_compression(cfg: CompressionConfig, server_round: int | None = None) -> bool:
    """False for codec none and during the dense warm-up rounds 1..warmup_rounds."""
    return cfg.codec != "none" and (server_round is None or server_round > cfg.warmup_rounds)


def active_codec(cfg: CompressionConfig, server_round: int | None = None) -> Codec:
    return make_codec(cfg) if uses_compression(cfg, server_round) else IdentityCodec()


def uniform_assignment(shapes: Shapes, cfg: CompressionConfig) -> dict[str, int]:
    """The uniform configuration: each tensor's rank / k / bits (0 = dense)."""
    return make_codec(cfg).default_params(shapes)


def _params(codec: Codec, shapes: Shapes, assignment: Mapping[str, int] | None) -> dict[str, int]:
    params = codec.default_params(shapes)
    if assignment is None or not hasattr(codec, "param_for"):
        return params
    unknown = sorted(set(assignment) - set(shapes))
    if unknown:
        raise ValueError(f"assignment names tensors not in the update: {unknown[:3]}")
    for k, p in assignment.items():
        p = int(p)
        if p != 0 and codec.param_for(tuple(shapes[k]), p) != p:
            raise ValueError(f"{k}: parameter {p} is not valid for shape {tuple(shapes[k])} and codec {codec.name}")
        params[k] = p
    return params


# ---------------------------------------------------------------- uplink
def encode_update(update: Mapping[str, torch.Tensor], cfg: CompressionConfig, client_state: Mapping[str, torch.Tensor],
                  generator: torch.Generator, *, server_round: int | None = None,
                  assignment: Mapping[str, int] | None = None, clip_norm: float | None = None,
                  fold_clip_error: bool = True) -> tuple[Payload, State]:
    """The payload a client sends for its round update Δ, and its new compression state.

    ``update``: Δ per trained tensor. ``client_state``: what the previous call returned (empty the
    first time). ``generator``: seeded by the caller per (round, client) — QSGD's rounding and
    PowerSGD's first Q draw from it. ``assignment``: L-GreCo's per-tensor parameters sent by the
    server (None: uniform). ``clip_norm``: client-level DP with server-side noise — the decoded
    payload then has L2 norm ≤ clip_norm (fedlr.compression.dp). Tensors move to the CPU.
    """
    codec = active_codec(cfg, server_round)
    shapes = shapes_of(update)
    params = _params(codec, shapes, assignment)
    state = dict(client_state)
    release = partial(clip_payload, codec, shapes=shapes, clip_norm=clip_norm) if clip_norm is not None else None
    warm = {k[len(WARM):]: v for k, v in state.items() if k.startswith(WARM)}
    if cfg.error_feedback and cfg.codec != "none":
        memory = {k[len(MEMORY):]: v for k, v in state.items() if k.startswith(MEMORY)}
        idle = 0
        if server_round is not None and LAST_ROUND in state:
            idle = server_round - int(state[LAST_ROUND].reshape(-1)[0]) - 1
        enc = ErrorFeedback(codec, cfg.error_decay).encode(
            {k: v.detach().cpu() for k, v in update.items()}, params, generator, memory, warm,
            idle_rounds=idle, release=release, fold_release_error=fold_clip_error)
        payload, new_warm = enc.payload, enc.codec_state
        state.update({MEMORY + k: v for k, v in enc.memory.items()})
    else:
        payload, new_warm = codec.encode({k: v.detach().cpu() for k, v in update.items()}, params, generator, warm)
        if release is not None:
            payload = release(payload)
    state.update({WARM + k: v for k, v in new_warm.items()})
    if server_round is not None:
        state[LAST_ROUND] = torch.tensor([server_round], dtype=torch.int64)
    return payload, state


def decode_update(payload: Payload, cfg: CompressionConfig, reference_shapes: Shapes, *,
                  server_round: int | None = None, assignment: Mapping[str, int] | None = None
                  ) -> dict[str, torch.Tensor]:
    """The update (fp32 tensors of ``reference_shapes``) a payload stands for. Raises PayloadError
    (a ValueError) on anything malformed, including per-tensor parameters that differ from the
    ``assignment`` the server sent; NaN/Inf pass through for ``fedlr.validation`` to reject."""
    codec = active_codec(cfg, server_round)
    shapes = {k: tuple(s) for k, s in reference_shapes.items()}
    if assignment is not None and hasattr(codec, "param_for"):
        expected = _params(codec, shapes, assignment)
        key = f"{codec.name}.params"
        got = read_params(payload, key, canonical_keys(shapes)) if key in payload else None
        if got is not None and got != expected:
            raise PayloadError("per-tensor parameters differ from the assignment sent this round")
    return codec.decode(payload, shapes)


# ---------------------------------------------------------------- bytes
def planned_payload_nbytes(shapes: Shapes, cfg: CompressionConfig, *, server_round: int | None = None,
                           assignment: Mapping[str, int] | None = None) -> int:
    """Σ nbytes of the payload ``encode_update`` produces for these shapes (data-independent)."""
    codec = active_codec(cfg, server_round)
    shapes = {k: tuple(s) for k, s in shapes.items()}
    return codec.nbytes(shapes, _params(codec, shapes, assignment))


def planned_bytes(shapes: Shapes, cfg: CompressionConfig, *, server_round: int | None = None,
                  assignment: Mapping[str, int] | None = None) -> int:
    """Wire bytes (``ArrayRecord.count_bytes()``) of the uplink payload: what the ledger counts."""
    codec = active_codec(cfg, server_round)
    keys = codec.payload_keys or tuple(shapes)
    return planned_payload_nbytes(shapes, cfg, server_round=server_round, assignment=assignment) + header_bytes(keys)


@dataclass(frozen=True)
class CompressionStats:
    codec: str
    tensors: int
    compressed_tensors: int
    dense_payload_bytes: int   # 4·Σ numel: fp32, every tensor
    payload_bytes: int         # Σ nbytes of the compressed payload, metadata included
    dense_wire_bytes: int      # the uncompressed record (codec none), headers and keys included
    wire_bytes: int            # the compressed record as counted by ArrayRecord.count_bytes()
    compression_ratio: float   # dense_payload_bytes / payload_bytes (torch's compression_stats, in bytes)
    wire_compression_ratio: float

    def as_dict(self) -> dict:
        return asdict(self)


def compression_stats(shapes: Shapes, cfg: CompressionConfig, *, server_round: int | None = None,
                      assignment: Mapping[str, int] | None = None) -> CompressionStats:
    """Ratios from the actual per-tensor parameters (L-GreCo's when given), uncompressed tensors
    counted on both sides."""
    shapes = {k: tuple(s) for k, s in shapes.items()}
    codec = active_codec(cfg, server_round)
    params = _params(codec, shapes, assignment)
    dense = FP32_BYTES * sum(numel(s) for s in shapes.values())
    dense_wire = dense + header_bytes(shapes)
    nbytes = planned_payload_nbytes(shapes, cfg, server_round=server_round, assignment=assignment)
    wire = planned_bytes(shapes, cfg, server_round=server_round, assignment=assignment)
    compressed = sum(1 for p in params.values() if p != 0) if codec.lossy else 0
    return CompressionStats(codec.name, len(shapes), compressed, dense, nbytes, dense_wire, wire,
                            dense / nbytes if nbytes else 1.0, dense_wire / wire)


def compression_ratio(shapes: Shapes, cfg: CompressionConfig, *, server_round: int | None = None,
                      assignment: Mapping[str, int] | None = None) -> float:
    """Dense fp32 bytes ÷ compressed payload bytes (1.0 for codec none)."""
    return compression_stats(shapes, cfg, server_round=server_round, assignment=assignment).compression_ratio


# ---------------------------------------------------------------- L-GreCo
def should_reselect(cfg: CompressionConfig, server_round: int) -> bool:
    """Choose at the start of round t when t is a compressed round, an aggregate of a previous
    round exists (t ≥ 2), and t is first + j·reselect_every (first = max(2, warmup_rounds + 1))."""
    if cfg.adaptive != "lgreco" or not uses_compression(cfg, server_round):
        return False
    first = max(2, cfg.warmup_rounds + 1)
    return server_round >= first and (server_round - first) % cfg.reselect_every == 0


def choose_assignment(aggregate_update: Mapping[str, torch.Tensor], cfg: CompressionConfig) -> dict[str, int]:
    """L-GreCo on the server: per-tensor parameters from the last aggregate update (new global −
    old global; under central DP the noised one), error ≤ error_budget × the uniform one's."""
    return choose_params(aggregate_update, make_codec(cfg), cfg.error_budget)


# ---------------------------------------------------------------- downlink
@dataclass
class Broadcast:
    reference: dict[str, torch.Tensor]  # B_t: the model every client trains from in this round
    payload: Payload | None             # compressed B_t − B_{t−1} for clients holding B_{t−1}; None: all get B_t dense
    server_state: State


def encode_broadcast(global_state: Mapping[str, torch.Tensor], cfg: CompressionConfig,
                     server_state: Mapping[str, torch.Tensor], generator: torch.Generator, *,
                     server_round: int | None = None, assignment: Mapping[str, int] | None = None) -> Broadcast:
    """Compressed broadcast with the server's error feedback built in.

    The server keeps the reference B_{t−1} that clients last received. If ``cfg.downlink`` and a
    reference exists, it sends ``payload = encode(θ − B_{t−1})`` and sets ``B_t = B_{t−1} +
    decode(payload)``; what was not sent (θ − B_t) is automatically part of the next round's
    difference. A client that holds B_{t−1} (it received round t−1's broadcast) rebuilds B_t with
    ``apply_broadcast``; any other client must get B_t dense (``reference``, codec none). Clients
    train from B_t and send Δ = trained − B_t; the server keeps aggregating into its exact θ.
    """
    shapes = shapes_of(global_state)
    state = dict(server_state)
    if not cfg.downlink:
        return Broadcast({k: v.detach().cpu() for k, v in global_state.items()}, None, state)
    previous = {k: state.get(REFERENCE + k) for k in shapes}
    fresh = all(v is not None and tuple(v.shape) == shapes[k] for k, v in previous.items())
    if not (uses_compression(cfg, server_round) and fresh):
        reference = {k: v.detach().cpu().clone() for k, v in global_state.items()}
        payload = None
    else:
        codec = active_codec(cfg, server_round)
        delta = {k: global_state[k].detach().cpu() - previous[k].to(global_state[k].dtype) for k in shapes}
        warm = {k[len(WARM):]: v for k, v in state.items() if k.startswith(WARM)}
        payload, new_warm = codec.encode(delta, _params(codec, shapes, assignment), generator, warm)
        state.update({WARM + k: v for k, v in new_warm.items()})
        reference = _add(previous, codec.decode(payload, shapes))
    state.update({REFERENCE + k: v for k, v in reference.items()})
    if server_round is not None:
        state[REFERENCE_ROUND] = torch.tensor([server_round], dtype=torch.int64)
    return Broadcast(reference, payload, state)


def _add(base: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: base[k] + delta[k].to(base[k].dtype) for k in base}


def apply_broadcast(payload: Payload, cfg: CompressionConfig, reference: Mapping[str, torch.Tensor], *,
                    server_round: int | None = None) -> dict[str, torch.Tensor]:
    """A fresh client's B_t from its B_{t−1} and the broadcast payload (same arithmetic as the server)."""
    codec = active_codec(cfg, server_round)
    return _add(reference, codec.decode(payload, shapes_of(reference)))


def remember_broadcast(client_state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                       server_round: int) -> State:
    """The client state with B_t (dense or rebuilt) cached for the next round's delta."""
    state = {k: v for k, v in client_state.items() if not k.startswith(DOWN)}
    state.update({DOWN + k: v.detach().cpu().clone() for k, v in reference.items()})
    state[DOWN_ROUND] = torch.tensor([server_round], dtype=torch.int64)
    return state


def cached_reference(client_state: Mapping[str, torch.Tensor], base_round: int) -> dict[str, torch.Tensor] | None:
    """The cached broadcast of ``base_round`` (the round the server's delta is relative to), or None."""
    if DOWN_ROUND not in client_state or int(client_state[DOWN_ROUND].reshape(-1)[0]) != base_round:
        return None
    return {k[len(DOWN):]: v for k, v in client_state.items() if k.startswith(DOWN) and k != DOWN_ROUND}


def planned_downlink_bytes(shapes: Shapes, cfg: CompressionConfig, *, fresh: bool, server_round: int | None = None,
                           assignment: Mapping[str, int] | None = None) -> int:
    """Wire bytes of one client's broadcast: the compressed delta if the client holds the previous
    round's reference (``fresh``) and the downlink is compressed this round, else the dense state."""
    if fresh and cfg.downlink and uses_compression(cfg, server_round) and (server_round is None or server_round >= 2):
        return planned_bytes(shapes, cfg, server_round=server_round, assignment=assignment)
    return FP32_BYTES * sum(numel(tuple(s)) for s in shapes.values()) + header_bytes(shapes)
