"""DP-LoRA (Liu et al., arXiv 2312.17493, ACM TMIS; reference/methods.md §2.6).

Clients train both LoRA factors A and B under DP; the server takes the *uniform* mean of the
noisy factors, A = Σ_k ρ_k Ã_k, B = Σ_k ρ_k B̃_k with ρ_k = 1/K (the paper's eq. for the server
step). The paper's two noise stages are separate options, chosen by ``privacy.mode`` and logged
in the run's summary (``privacy_mechanisms``):

- stage (2), ``sample``: per-iteration clipping and Gaussian noise on the gradients, g_A and g_B
  each clipped separately (Opacus per-layer clipping, bound C/√P per tensor so the joint norm is
  ≤ C), accounted with RDP/PRV over every local step — not the paper's per-iteration
  √(2 ln(1.25/δ))/ε calibration, valid only for ε < 1;
- stage (3), ``client_local``: noise on the uploaded update (ΔA, ΔB), clipped to ‖·‖₂ ≤ S, plus
  N(0, z²S²) (DP-FedAvg's Gaussian mechanism);
- ``client_central`` puts that Gaussian on the sum at the server instead.

Inexact like FedIT, and the noise on both factors is amplified:
(B+ξ_B)(A+ξ_A) − BA = ξ_B A + B ξ_A + ξ_B ξ_A.
"""

from fedlr.methods.averaging import weighted_mean_update
from fedlr.adapters.naming import LORA_A, LORA_B
from fedlr.methods.base import MethodSpec, register


def aggregate(state, updates, weights):
    """A, B (and head) ← θ + (1/K) Σ_k Δ_k: uniform ρ_k = 1/K whatever the clients' sizes."""
    return weighted_mean_update(state, updates, [1.0] * len(updates))


# which of the paper's two noise stages (§4) a run implements, by privacy mode ("none": DP off)
PRIVACY_MECHANISMS = {
    "sample": "dp_lora: stage (2) per-iteration gradient clipping and noise, each trained tensor clipped "
              "separately (Opacus per-layer clipping, C/sqrt(P) each); uniform aggregation weights 1/K",
    "client_local": "dp_lora: stage (3) noise on the uploaded factors (clipped update (dA, dB), noise z*S, before "
                    "upload); uniform aggregation weights 1/K",
    "client_central": "dp_lora: client-level Gaussian on the aggregated (dA, dB) at the server; uniform aggregation "
                      "weights 1/K",
    "none": "dp_lora without DP: FedIT factors with uniform weights 1/K",
}

SPEC = register(MethodSpec(
    name="dp_lora", adapter="lora", trains=(LORA_A, LORA_B), broadcast_once=(), exact=False,
    aggregate=aggregate, citation="Liu et al., arXiv 2312.17493",
    client_ranks_refused="it averages A and B entrywise, which needs one shape (zero-padding them as HetLoRA "
                         "does is inexact)",
    per_tensor_clipping=True, privacy_mechanisms=PRIVACY_MECHANISMS,
))
