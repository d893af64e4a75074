"""FedPara (Hyeon-Woo, Ye-Bin, Oh, ICLR 2022, arXiv 2108.06098) as an adapter: LoHa,
ΔW = s·(W1a W1b) ⊙ (W2a W2b), every factor trained, each averaged (sample-weighted).

Inexact: ΔW is of degree 4 in the factors, so mean_k((W1a_k W1b_k) ⊙ (W2a_k W2b_k)) ≠
(W̄1a W̄1b) ⊙ (W̄2a W̄2b) in general (reference/methods.md §2.5); averaging the factors is what the
paper does, and tests/test_fedpara.py shows the gap on random factors.
"""

from fedlr.methods.averaging import weighted_mean_update
from fedlr.adapters.naming import HADAMARD
from fedlr.methods.base import MethodSpec, register


def aggregate(state, updates, weights):
    """W̄ = Σp_kW_k for each of the four factors (and the head)."""
    return weighted_mean_update(state, updates, weights)


SPEC = register(MethodSpec(
    name="fedpara", adapter="loha", trains=(HADAMARD,), broadcast_once=(), exact=False,
    aggregate=aggregate, citation="Hyeon-Woo et al., arXiv 2108.06098",
    client_ranks_refused="it averages the LoHa factors entrywise, which needs one shape",
))
