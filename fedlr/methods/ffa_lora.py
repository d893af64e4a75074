"""FFA-LoRA (Sun et al., ICLR 2024, arXiv 2403.12313).

A is drawn from the shared experiment seed and frozen (no bytes: every party draws the same A);
clients train B; the server averages B̄ = Σp_kB_k. Exact: (Σp_kB_k)A = Σp_kB_kA.
"""

from fedlr.methods.averaging import weighted_mean_update
from fedlr.adapters.naming import LORA_B
from fedlr.methods.base import MethodSpec, register


def aggregate(state, updates, weights):
    """B̄ = Σp_kB_k (and the head); A never changes."""
    return weighted_mean_update(state, updates, weights)


SPEC = register(MethodSpec(
    name="ffa_lora", adapter="lora", trains=(LORA_B,), broadcast_once=(), exact=True,
    aggregate=aggregate, citation="Sun et al., arXiv 2403.12313",
    client_ranks_refused="it averages B against the one frozen A every client shares",
))
