"""Fed-SB (Singhal et al., arXiv 2502.15436) over LoRA-SB adapters (Ponkshe et al., arXiv 2411.19557).

W = W0 + s·B·R·A with B, A frozen and R (r×r) trained. The server averages R̄ = Σp_kR_k, which is
exact because B and A are shared: s·B(Σp_kR_k)A = Σp_k s·B R_k A (reference/methods.md §2.3).

Initialization ("update approximation", LoRA-SB §3.2), run federatedly: each init client sends the
summed gradient G_k = Σ_batches ∇_W L of every target weight on a few of its own examples; the
server forms G = Σ_k G_k, the approximate first full-fine-tuning step ΔW₁ = −η·sign(G), and its
rank-r truncated SVD U_rΣ_rV_rᵀ, giving B = U_r, A = V_rᵀ, R₀ = Σ_r / s.
"""

from __future__ import annotations

import torch

from fedlr.methods.averaging import weighted_mean_update
from fedlr.methods.base import MethodSpec


def aggregate(state, updates, weights):
    """R̄ = Σp_kR_k (and the head)."""
    return weighted_mean_update(state, updates, weights)


def init_factors(grad_sum: torch.Tensor, rank: int, scale: float, step_size: float):
    """(B, A, R₀) from a summed gradient G (d_out×d_in): the best rank-r approximation of
    ΔW₁ = −η·sign(G) written as s·B·R₀·A, with BᵀB = I, AAᵀ = I and R₀ = diag(σ_1..σ_r)/s.

    Uses an exact SVD in float64 (these layers are small enough; the reference code's randomized
    SVD is an approximation of this).
    """
    delta = -step_size * torch.sign(grad_sum.to(torch.float64))
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    b = u[:, :rank]
    a = vh[:rank, :]
    r0 = torch.diag(s[:rank]) / scale
    return b.float(), a.float(), r0.float()


SPEC = MethodSpec(
    name="fed_sb", adapter="lora_sb", trains=("lora_R",), broadcast_once=("lora_A", "lora_B"), exact=True,
    aggregate=aggregate, citation="Singhal et al., arXiv 2502.15436; Ponkshe et al., arXiv 2411.19557",
)
