"""FedEx-LoRA (Singhal, Ponkshe, Vepakomma, ACL 2025, arXiv 2410.09432): FedIT plus the residual.

Clients train A and B; the server averages them (Ā, B̄) and folds the residual
ΔW_res = Σp_kB_kA_k − B̄Ā into the frozen base weight, W0 ← W0 + s·ΔW_res, so that
W0' + s·B̄Ā = W0 + s·Σp_kB_kA_k: exact (reference/methods.md §2.7). The corrected base weight of
every adapted layer travels down every round, dense (d_out·d_in) — a client that missed rounds
needs the current W0, not only the last residual; that is how fedlr counts its bytes.
"""

from __future__ import annotations

from fedlr.methods.averaging import weighted_mean_update
from fedlr.methods.base import MethodSpec
from fedlr.methods.lowrank_math import fedex_residual

A, B, BASE = ".lora_A.weight", ".lora_B.weight", ".base.weight"


def aggregate(state, updates, weights, *, scale: float, **_):
    """Ā, B̄ (and the head) averaged; W0 += s·(Σp_kB_kA_k − B̄Ā) per layer, in W0's orientation."""
    trained = list(updates[0])
    new_state = dict(state)
    new_state.update(weighted_mean_update({k: state[k] for k in trained}, updates, weights))
    for a_key in (k for k in trained if k.endswith(A)):
        layer = a_key[: -len(A)]
        a_k = [state[a_key] + u[a_key] for u in updates]
        b_k = [state[layer + B] + u[layer + B] for u in updates]
        base = state[layer + BASE]
        new_state[layer + BASE] = (base.double() + scale * fedex_residual(b_k, a_k, weights)).to(base.dtype)
    return new_state


SPEC = MethodSpec(
    name="fedex_lora", adapter="lora", trains=("lora_A", "lora_B"), broadcast_once=(), broadcast=("base.weight",),
    exact=True, aggregate=aggregate, citation="Singhal et al., arXiv 2410.09432", needs_round_context=True,
)
