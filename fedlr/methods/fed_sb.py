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

from fedlr.adapters.naming import A_KEY, B_KEY, BASE_KEY, LORA_A, LORA_B, LORA_R, R_KEY, key, layer_of
from fedlr.methods.averaging import weighted_mean_update
from fedlr.methods.base import MethodSpec, register

INIT_ROUND = "lora_sb_update_approximation"  # the strategy's round-0 hook (strategies/fed_sb.py)


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


def init_state(grad_sums: dict[str, torch.Tensor], rank: int, scale: float, step_size: float):
    """(once, trained): every layer's B and A (sent once) and R₀ (trained) from the summed
    gradients of its base weight (``init_factors``), keyed by the layer's tensor names."""
    once, trained = {}, {}
    for weight_key, g in grad_sums.items():
        layer = layer_of(weight_key, BASE_KEY)
        b, a, r0 = init_factors(g, rank, scale, step_size)
        once[key(layer, B_KEY)], once[key(layer, A_KEY)] = b, a
        trained[key(layer, R_KEY)] = r0
    return once, trained


SPEC = register(MethodSpec(
    name="fed_sb", adapter="lora_sb", trains=(LORA_R,), broadcast_once=(LORA_A, LORA_B), exact=True,
    aggregate=aggregate, citation="Singhal et al., arXiv 2502.15436; Ponkshe et al., arXiv 2411.19557",
    client_ranks_refused="it averages the r x r matrix R between the one B and A every client shares",
    init_round=INIT_ROUND,
))
