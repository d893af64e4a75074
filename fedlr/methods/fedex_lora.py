"""FedEx-LoRA (Singhal, Ponkshe, Vepakomma, ACL 2025, arXiv 2410.09432): FedIT plus the residual.

Clients train A and B; the server averages them (Ā, B̄) and folds the residual
ΔW_res = Σp_kB_kA_k − B̄Ā into the frozen base weight, W0 ← W0 + s·ΔW_res, so that
W0' + s·B̄Ā = W0 + s·Σp_kB_kA_k: exact (reference/methods.md §2.7). The corrected base weight of
every adapted layer travels down every round, dense (d_out·d_in) — a client that missed rounds
needs the current W0, not only the last residual; that is how fedlr counts its bytes.
"""

from __future__ import annotations

from fedlr.adapters.naming import A_KEY, B_KEY, BASE_KEY, BASE_WEIGHT, LORA_A, LORA_B, key, keys_ending, layer_of
from fedlr.methods.averaging import weighted_mean_update
from fedlr.methods.base import MethodSpec, register
from fedlr.methods.lowrank_math import fedex_residual


def aggregate(state, updates, weights, *, scale: float, **_):
    """Ā, B̄ (and the head) averaged; W0 += s·(Σp_kB_kA_k − B̄Ā) per layer, in W0's orientation."""
    trained = list(updates[0])
    new_state = dict(state)
    new_state.update(weighted_mean_update({k: state[k] for k in trained}, updates, weights))
    for a_key in keys_ending(trained, A_KEY):
        layer = layer_of(a_key, A_KEY)
        b_key, base_key = key(layer, B_KEY), key(layer, BASE_KEY)
        a_k = [state[a_key] + u[a_key] for u in updates]
        b_k = [state[b_key] + u[b_key] for u in updates]
        base = state[base_key]
        new_state[base_key] = (base.double() + scale * fedex_residual(b_k, a_k, weights)).to(base.dtype)
    return new_state


SPEC = register(MethodSpec(
    name="fedex_lora", adapter="lora", trains=(LORA_A, LORA_B), broadcast_once=(), broadcast=(BASE_WEIGHT,),
    exact=True, aggregate=aggregate, citation="Singhal et al., arXiv 2410.09432", needs_round_context=True,
    # one pre-averaged update has B_kA_k = B̄Ā: the residual is zero and the run is FedIT's
    exact_on_combined_update=False,
    client_ranks_refused="it sends every client the one averaged adapter (A, B) to continue from; its residual is "
                         "exact for any ranks, but restarting clients of other ranks would need a per-client "
                         "truncation and base weight, which is not the published method",
    downlink_refused="folds the residual into dense base weights every round",
))
