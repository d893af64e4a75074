"""FedIT — FedAvg over LoRA factors (Zhang et al., ICASSP 2024, arXiv 2305.05644).

Clients train A and B; the server averages each factor: Ā = Σp_kA_k, B̄ = Σp_kB_k.
Inexact: s·B̄Ā ≠ Σp_k s·B_kA_k unless the clients' A (or B) agree (reference/methods.md §2.1).
"""

from fedlr.methods.averaging import weighted_mean_update
from fedlr.adapters.naming import LORA_A, LORA_B
from fedlr.methods.base import MethodSpec, register


def aggregate(state, updates, weights):
    """Ā = Σp_kA_k, B̄ = Σp_kB_k, head averaged alike (FedIT eq. for FedAvg)."""
    return weighted_mean_update(state, updates, weights)


SPEC = register(MethodSpec(
    name="fedit", adapter="lora", trains=(LORA_A, LORA_B), broadcast_once=(), exact=False,
    aggregate=aggregate, citation="Zhang et al., arXiv 2305.05644",
    client_ranks_refused="it averages A and B entrywise, which needs one shape (zero-padding them as HetLoRA "
                         "does is inexact)",
))
