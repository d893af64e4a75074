"""What every codec shares: the ``Codec`` protocol, the payload type, the canonical tensor order,
the packed-buffer reader, and the exact byte counts.

A **payload** is a ``dict[str, numpy.ndarray]`` that travels as one Flower ``ArrayRecord``
(``ArrayRecord(OrderedDict((k, Array(v)) for k, v in payload.items()))``). Its sizes:

- ``payload_nbytes`` = Σ ``arr.nbytes`` — what the formulas of reference/compression.md §6 count;
- ``payload_bytes`` = Σ (``arr.nbytes`` + 128-byte ``.npy`` header + ``len(key)``) — what
  ``ArrayRecord.count_bytes()`` returns and the ledger counts (``fedlr.wire``).

Lossy codecs **pack**: all tensors of an update go, in the canonical order (sorted keys), into a
few flat buffers per codec (values, indices, factors, ...) plus one ``int32`` array with the
per-tensor parameter (rank / k / bits, 0 = "this tensor travels dense"). The key set of a codec's
payload is fixed (empty buffers included), so the header cost is a constant and the size of a
payload depends only on (shapes, per-tensor parameters), never on the data: message sizes reveal
nothing about a client's update. Tensors a codec leaves uncompressed are concatenated, fp32, into
the ``"dense"`` buffer.
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from fedlr.wire import NPY_HEADER_BYTES

Payload = dict[str, np.ndarray]
Shapes = Mapping[str, tuple[int, ...]]
Params = Mapping[str, int]
State = dict[str, torch.Tensor]

DENSE_KEY = "dense"
FP32_BYTES = 4
PARAM_DTYPE = np.int32  # the per-tensor parameter array of packed codecs


class PayloadError(ValueError):
    """A payload that cannot be decoded against the expected shapes (missing/extra buffers,
    wrong lengths, wrong dtypes, parameters that do not fit). The server rejects the update."""


@runtime_checkable
class Codec(Protocol):
    """One compressor. ``encode`` and ``decode`` are pure given (tensors, params, generator,
    state); ``nbytes`` is the analytic payload size and equals ``payload_nbytes(encode(...))``."""

    name: str
    lossy: bool
    payload_keys: tuple[str, ...]

    def default_params(self, shapes: Shapes) -> dict[str, int]:
        """The uniform configuration: each tensor's parameter (0 = travels dense)."""

    def tensor_nbytes(self, shape: tuple[int, ...], param: int) -> int:
        """Payload bytes of one tensor encoded with ``param`` (0 → dense fp32)."""

    def nbytes(self, shapes: Shapes, params: Params) -> int:
        """Σ nbytes of the payload for these shapes and parameters (metadata included)."""

    def encode(self, tensors: Mapping[str, torch.Tensor], params: Params, generator: torch.Generator,
               state: Mapping[str, torch.Tensor]) -> tuple[Payload, State]:
        """Payload for ``tensors`` and the codec's new per-tensor state (PowerSGD warm start)."""

    def decode(self, payload: Payload, shapes: Shapes) -> dict[str, torch.Tensor]:
        """Tensors (fp32, the given shapes) from a payload; raises PayloadError."""

    def scale(self, payload: Payload, factor: float) -> Payload:
        """A payload whose decoding is ``factor ×`` this one's (up to its own rounding)."""


# ---------------------------------------------------------------- shapes and order
def canonical_keys(keys) -> list[str]:
    """The one order both sides use to pack and unpack: sorted keys."""
    return sorted(keys)


def numel(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(n, m) = (shape[0], prod(shape[1:]))`` for tensors with ≥ 2 dims (conv kernels fold
    into columns); None for 1-D and 0-D tensors, which low-rank codecs never compress."""
    if len(shape) < 2:
        return None
    return int(shape[0]), numel(shape[1:])


def shapes_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


# ---------------------------------------------------------------- bytes
def payload_nbytes(payload: Payload) -> int:
    """Σ nbytes of the arrays: the payload bytes of the reference formulas."""
    return int(sum(np.asarray(a).nbytes for a in payload.values()))


def payload_bytes(payload: Payload) -> int:
    """Serialized size of the payload as one Flower ArrayRecord (``count_bytes()``): raw bytes
    plus a 128-byte ``.npy`` header and the key per array (fedlr.wire)."""
    return int(sum(np.asarray(a).nbytes + NPY_HEADER_BYTES + len(k) for k, a in payload.items()))


def header_bytes(keys) -> int:
    """The fixed per-array overhead of a record with these keys."""
    return sum(NPY_HEADER_BYTES + len(k) for k in keys)


# ---------------------------------------------------------------- tensors ↔ buffers
def to_numpy_f32(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).contiguous().reshape(-1).numpy()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (tests), everything else computes in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def params_array(keys: list[str], params: Params) -> np.ndarray:
    return np.array([int(params[k]) for k in keys], dtype=PARAM_DTYPE)


def concat(chunks: list[np.ndarray], dtype) -> np.ndarray:
    if not chunks:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.ascontiguousarray(c, dtype=dtype).reshape(-1) for c in chunks])


class Reader:
    """Consumes consecutive slices of one packed buffer; ``finish`` checks nothing is left."""

    def __init__(self, payload: Payload, key: str, dtype):
        if key not in payload:
            raise PayloadError(f"payload has no '{key}' buffer")
        arr = np.asarray(payload[key])
        if arr.dtype != np.dtype(dtype):
            raise PayloadError(f"'{key}': dtype {arr.dtype} != {np.dtype(dtype)}")
        self.key, self.buf, self.pos = key, arr.reshape(-1), 0

    def take(self, count: int) -> np.ndarray:
        end = self.pos + count
        if end > self.buf.size:
            raise PayloadError(f"'{self.key}': {self.buf.size} values, the shapes need more")
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def finish(self) -> None:
        if self.pos != self.buf.size:
            raise PayloadError(f"'{self.key}': {self.buf.size} values, the shapes need {self.pos}")


def check_keys(payload: Payload, expected: tuple[str, ...]) -> None:
    if set(payload) != set(expected):
        raise PayloadError(f"payload keys {sorted(payload)} != {sorted(expected)}")


def read_params(payload: Payload, key: str, keys: list[str]) -> dict[str, int]:
    reader = Reader(payload, key, PARAM_DTYPE)
    values = reader.take(len(keys))
    reader.finish()
    if (values < 0).any():
        raise PayloadError(f"'{key}': negative parameter")
    return {k: int(v) for k, v in zip(keys, values)}


def dense_tensor(reader: Reader, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(reader.take(numel(shape)).copy()).reshape(shape)


def packed_nbytes(codec, shapes: Shapes, params: Params) -> int:
    """Σ per-tensor bytes + one int32 parameter per tensor (the metadata is counted)."""
    return len(shapes) * np.dtype(PARAM_DTYPE).itemsize + sum(
        codec.tensor_nbytes(tuple(s), int(params[k])) for k, s in shapes.items())


def scale_arrays(payload: Payload, keys: tuple[str, ...], factor: float) -> Payload:
    out = dict(payload)
    for k in keys:
        a = payload[k]
        out[k] = (a.astype(np.float64) * factor).astype(a.dtype) if a.dtype != np.float16 else fp16_clamped(
            a.astype(np.float64) * factor)
    return out


FP16_MAX = float(np.finfo(np.float16).max)


def fp16_clamped(values) -> np.ndarray:
    """fp16 with out-of-range values saturated at ±65504 instead of ±inf (EF absorbs the rest)."""
    return np.clip(np.asarray(values), -FP16_MAX, FP16_MAX).astype(np.float16)
