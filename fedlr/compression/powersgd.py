"""``powersgd``: rank-r approximation of each matrix by power iteration, client-local (mode A of
reference/compression.md §2) — Vogels, Karimireddy, Jaggi, "PowerSGD: Practical Low-Rank Gradient
Compression for Distributed Optimization", NeurIPS 2019 (arXiv 1905.13727), Algorithm 1, modelled
on ``torch/distributed/algorithms/ddp_comm_hooks/powerSGD_hook.py`` but applied to a client's round
update Δ (plus its error-feedback memory) instead of per-step gradient buckets.

Algorithm, per tensor with ≥ 2 dims viewed as ``M ∈ R^{n×m}`` (``n = shape[0]``,
``m = prod(shape[1:])``) and rank ``r``::

    compress only if (n + m)·r·min_compression_rate < n·m       (torch hook's rule; else dense)
    Q ← the client's warm-start Q from its previous round (kept in its state), its columns
        truncated or topped up with N(0,1) draws if the rank changed, or N(0,1) (m×r) the first time
    repeat power_iterations times:
        P̂ ← orth(M · orth(Q))                                   (n×r, orthonormal columns)
        Q ← Mᵀ P̂                                                 (m×r)
    send P̂ and Q                                                 (r·(n + m) fp32 values)
    keep Q as the next warm start
    decode M̂ = P̂ Qᵀ = P̂ P̂ᵀ M                                    (orthogonal projection onto span P̂)

``orth``: rank 1 divides the column by (its norm + ε) — per matrix, never per batch (the epfml
quirk of §1.3) — so an all-zero update (LoRA B early on) decodes to zeros without NaN; rank ≥ 2
uses Householder QR (``torch.linalg.qr``), which returns orthonormal columns even for degenerate
input (torch's hook uses Gram–Schmidt at rank ≤ 2; same subspace). Since M̂ is a rank-r projection
of M, ``‖M − M̂‖_F ≥ sqrt(Σ_{i>r} σ_i²)`` (Eckart–Young); with a spectral gap the power
iterations converge to that optimum, and warm start carries the subspace across rounds so one or
two iterations per round suffice on a slowly changing update. Local iterations are free in
federated learning (nothing travels between them), unlike in DDP.

Same-shaped matrices (all LoRA A's of one width) are stacked and iterated with one batched
matmul (torch's ``batch_tensors_with_same_shape``: same numbers, faster).

Not linear across clients (each client sends its own P̂): the server reconstructs each client's
``P̂Qᵀ`` and averages; no SecAgg. 1-D tensors (biases, norms) always travel dense.

Payload (canonical order): ``powersgd.params`` int32[N] (rank per tensor, 0 = dense),
``powersgd.P`` fp32[Σ n·r], ``powersgd.Q`` fp32[Σ m·r], ``dense`` fp32.
Bytes per compressed tensor: ``4·r·(n + m)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from fedlr.compression.base import (DENSE_KEY, FP32_BYTES, Params, Payload, PayloadError, Reader, Shapes,
                                    State, canonical_keys, check_keys, concat, dense_tensor,
                                    matrix_shape, numel, packed_nbytes, params_array, read_params,
                                    scale_arrays, to_numpy_f32)

PARAMS_KEY, P_KEY, Q_KEY = "powersgd.params", "powersgd.P", "powersgd.Q"


def worth_compressing(n: int, m: int, rank: int, min_compression_rate: float) -> bool:
    """torch hook: ``(n + m)·r·min_compression_rate < n·m``."""
    return (n + m) * rank * min_compression_rate < n * m


def orthogonalize(matrix: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
    """Orthonormal columns spanning those of ``matrix`` (..., n, r), per matrix."""
    if matrix.shape[-1] == 1:
        return matrix / (torch.linalg.vector_norm(matrix, dim=-2, keepdim=True) + epsilon)
    return torch.linalg.qr(matrix, mode="reduced").Q


def power_iteration(matrix: torch.Tensor, q: torch.Tensor, iterations: int, epsilon: float = 1e-8
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(P̂, Q) after ``iterations`` steps of subspace iteration from ``q``; ``P̂ Qᵀ = P̂P̂ᵀM``."""
    p_hat = None
    for _ in range(iterations):
        p_hat = orthogonalize(matrix @ orthogonalize(q, epsilon), epsilon)
        q = matrix.mT @ p_hat
    return p_hat, q


def svd_tail_error(matrix: torch.Tensor, rank: int) -> float:
    """The best rank-r error ``sqrt(Σ_{i>r} σ_i²)`` (Eckart–Young)."""
    s = torch.linalg.svdvals(matrix.to(torch.float64))
    return float(s[rank:].square().sum().sqrt())


def warm_start(previous: torch.Tensor | None, m: int, rank: int, generator: torch.Generator,
               dtype: torch.dtype) -> torch.Tensor:
    """The stored Q if it fits; truncated or topped up with fresh N(0,1) columns when the rank
    changed (L-GreCo); fresh N(0,1) the first time."""
    if previous is not None and previous.ndim == 2 and previous.shape[0] == m:
        previous = previous.to(dtype)
        if previous.shape[1] >= rank:
            return previous[:, :rank].clone()
        extra = torch.randn(m, rank - previous.shape[1], generator=generator, dtype=dtype)
        return torch.cat([previous, extra], dim=1)
    return torch.randn(m, rank, generator=generator, dtype=dtype)


@dataclass(frozen=True)
class PowerSGDCodec:
    rank: int = 1
    power_iterations: int = 2
    min_compression_rate: float = 2.0
    epsilon: float = 1e-8
    warm_start: bool = True
    name: str = "powersgd"
    lossy: bool = True
    payload_keys: tuple[str, ...] = (PARAMS_KEY, P_KEY, Q_KEY, DENSE_KEY)

    def param_for(self, shape: tuple[int, ...], rank: int) -> int:
        """``rank``, or 0 (dense) for 1-D tensors and matrices failing the min-compression rule."""
        nm = matrix_shape(tuple(shape))
        if nm is None or rank <= 0:
            return 0
        return rank if worth_compressing(*nm, rank, self.min_compression_rate) else 0

    def default_params(self, shapes: Shapes) -> dict[str, int]:
        return {k: self.param_for(tuple(s), self.rank) for k, s in shapes.items()}

    def tensor_nbytes(self, shape: tuple[int, ...], param: int) -> int:
        if param == 0:
            return FP32_BYTES * numel(shape)
        n, m = matrix_shape(tuple(shape))
        return FP32_BYTES * param * (n + m)

    def nbytes(self, shapes: Shapes, params: Params) -> int:
        return packed_nbytes(self, shapes, params)

    def encode(self, tensors: Mapping[str, torch.Tensor], params: Params, generator: torch.Generator,
               state: Mapping[str, torch.Tensor] | None = None) -> tuple[Payload, State]:
        """Payload and the new warm-start state ``{key: Q}`` (compressed tensors only)."""
        state = state or {}
        keys = canonical_keys(tensors)
        groups: dict[tuple[int, int, int], list[str]] = {}  # same-shaped matrices share one bmm
        for key in keys:
            rank = int(params[key])
            if rank == 0:
                continue
            nm = matrix_shape(tuple(tensors[key].shape))
            if nm is None:
                raise ValueError(f"{key}: a {tensors[key].ndim}-D tensor cannot be compressed to rank {rank}")
            groups.setdefault((*nm, rank), []).append(key)
        factors, new_state = {}, {}
        for (n, m, rank), group in groups.items():
            xs = [tensors[k].detach().cpu() for k in group]
            dtype = torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32
            batch = torch.stack([x.reshape(n, m).to(dtype) for x in xs])
            q = torch.stack([warm_start(state.get(k) if self.warm_start else None, m, rank, generator, dtype)
                             for k in group])
            p_hat, q = power_iteration(batch, q, self.power_iterations, self.epsilon)
            for i, k in enumerate(group):
                factors[k] = (to_numpy_f32(p_hat[i]), to_numpy_f32(q[i]))
                if self.warm_start:
                    new_state[k] = q[i].to(torch.float32).clone()
        dense = [to_numpy_f32(tensors[k]) for k in keys if k not in factors]
        payload = {PARAMS_KEY: params_array(keys, params),
                   P_KEY: concat([factors[k][0] for k in keys if k in factors], np.float32),
                   Q_KEY: concat([factors[k][1] for k in keys if k in factors], np.float32),
                   DENSE_KEY: concat(dense, np.float32)}
        return payload, new_state

    def decode(self, payload: Payload, shapes: Shapes) -> dict[str, torch.Tensor]:
        check_keys(payload, self.payload_keys)
        keys = canonical_keys(shapes)
        params = read_params(payload, PARAMS_KEY, keys)
        p_reader, q_reader = Reader(payload, P_KEY, np.float32), Reader(payload, Q_KEY, np.float32)
        dense = Reader(payload, DENSE_KEY, np.float32)
        out = {}
        for key in keys:
            shape, rank = tuple(shapes[key]), params[key]
            if rank == 0:
                out[key] = dense_tensor(dense, shape)
                continue
            nm = matrix_shape(shape)
            if nm is None:
                raise PayloadError(f"{key}: rank {rank} for a {len(shape)}-D tensor")
            n, m = nm
            p = torch.from_numpy(p_reader.take(n * rank).copy()).reshape(n, rank)
            q = torch.from_numpy(q_reader.take(m * rank).copy()).reshape(m, rank)
            out[key] = (p @ q.T).reshape(shape)
        for r in (p_reader, q_reader, dense):
            r.finish()
        return {k: out[k] for k in shapes}

    def scale(self, payload: Payload, factor: float) -> Payload:
        return scale_arrays(payload, (Q_KEY, DENSE_KEY), factor)
