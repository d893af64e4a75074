"""Full fine-tuning FedAvg (McMahan et al. 2017): θ ← Σp_kθ_k over every parameter.
The exact reference the low-rank methods are measured against."""

from fedlr.methods.averaging import weighted_mean_update
from fedlr.methods.base import MethodSpec, register


def aggregate(state, updates, weights):
    """θ' = θ + Σp_kΔ_k for every parameter."""
    return weighted_mean_update(state, updates, weights)


SPEC = register(MethodSpec(
    name="full_ft", adapter=None, trains=("*",), broadcast_once=(), exact=True,
    aggregate=aggregate, citation="McMahan et al., arXiv 1602.05629",
    client_ranks_refused="it trains every weight and has no adapter rank",
))
