"""FedSVD (Lee et al., NeurIPS 2025, arXiv 2505.12805; reference/methods.md §2.4).

Clients train only B (A frozen during local training); the server averages
B_{i+1} = Σ_k p_k B_k and re-factorizes the product with the previous A by a thin SVD,

    P = B_{i+1} Â_i = U Σ Vᵀ,   Â_{i+1} = V_rᵀ (orthonormal rows),   B̂_{i+1} = U_r Σ_r,

so B̂_{i+1} Â_{i+1} = B_{i+1} Â_i exactly (rank P ≤ r). Both factors travel down every round
(r(d_in + d_out) values), only B travels up (r·d_out). The SVD is post-processing: it costs no
privacy. ‖Â‖₂ = 1 bounds ‖∂ℓ/∂B‖ by ‖∂ℓ/∂z‖·‖x‖, so DP clipping bites less than with FFA's A.
"""

from __future__ import annotations

import torch

from fedlr.adapters.naming import A_KEY, B_KEY, LORA_A, LORA_B, key, keys_ending, layer_of
from fedlr.methods.averaging import weighted_mean_update
from fedlr.methods.base import MethodSpec, register


def refactorize(b_agg: torch.Tensor, a_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B̂, Â) with B̂Â = B_agg·A_prev, ÂÂᵀ = I_r, B̂ᵀB̂ = diag(σ₁² ≥ … ≥ σ_r²).

    Never forms the d_out×d_in product: QR of B_agg (d_out×r) and of A_prevᵀ (d_in×r), then the
    SVD of the r×r core R_B R_Aᵀ = U_c Σ V_cᵀ gives U = Q_B U_c, V = Q_A V_c (methods.md §2.4).
    Computed in float64, returned in the inputs' dtypes. Needs r ≤ min(d_out, d_in).
    """
    r = b_agg.shape[1]
    if a_prev.shape[0] != r:
        raise ValueError(f"B is {tuple(b_agg.shape)} but A is {tuple(a_prev.shape)}: ranks differ")
    if r > min(b_agg.shape[0], a_prev.shape[1]):
        raise ValueError(f"rank {r} exceeds min(d_out, d_in) = {min(b_agg.shape[0], a_prev.shape[1])}")
    q_b, r_b = torch.linalg.qr(b_agg.to(torch.float64))
    q_a, r_a = torch.linalg.qr(a_prev.to(torch.float64).T)
    u_c, sigma, vh_c = torch.linalg.svd(r_b @ r_a.T)
    b_hat = (q_b @ u_c) * sigma
    a_hat = (q_a @ vh_c.T).T
    return b_hat.to(b_agg.dtype), a_hat.to(a_prev.dtype)


def aggregate(state, updates, weights):
    """B̄ = Σp_kB_k (and the head), then (B̂, Â) = refactorize(B̄, A_prev) for every adapted layer.

    ``state`` holds B, A (and the head); each update holds ΔB (and the head's delta)."""
    trained = list(updates[0]) if updates else []
    new_state = dict(state)
    new_state.update(weighted_mean_update({k: state[k] for k in trained}, updates, weights))
    for b_key in keys_ending(trained, B_KEY):
        a_key = key(layer_of(b_key, B_KEY), A_KEY)
        new_state[b_key], new_state[a_key] = refactorize(new_state[b_key], state[a_key])
    return new_state


SPEC = register(MethodSpec(
    name="fed_svd", adapter="lora", trains=(LORA_B,), broadcast_once=(), broadcast=(LORA_A,), exact=True,
    aggregate=aggregate, citation="Lee et al., arXiv 2505.12805",
    client_ranks_refused="it averages B against the one A the server re-factorizes for every client",
    downlink_refused="re-factorizes B·A by SVD every round (a new orthonormal A)",
))
