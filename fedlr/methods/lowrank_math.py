"""Pure matrix identities shared by the exact LoRA aggregations (FedEx-LoRA, FLoRA).

Shapes follow ``nn.Linear``: B (d_out×r_k), A (r_k×d_in), products (d_out×d_in) — the base weight's
own orientation (reference/methods.md §0; the public FedEx-LoRA code transposes the residual, a
bug for ``nn.Linear`` that square q/v layers hide, §6.4).
"""

from __future__ import annotations

import torch

from fedlr.methods.averaging import normalized_weights


def mean_of_products(bs: list[torch.Tensor], as_: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ_k p_k B_k A_k: the exact average of the clients' low-rank updates."""
    p = normalized_weights(weights)
    return sum(pk * b.double() @ a.double() for pk, b, a in zip(p, bs, as_))


def fedex_residual(bs: list[torch.Tensor], as_: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """ΔW_res = Σp_kB_kA_k − B̄Ā (FedEx-LoRA, arXiv 2410.09432 eq. 5); rank ≤ K·r.

    Folding s·ΔW_res into W0 makes W0' + s·B̄Ā = W0 + s·Σp_kB_kA_k: exact aggregation."""
    p = normalized_weights(weights)
    b_bar = sum(pk * b.double() for pk, b in zip(p, bs))
    a_bar = sum(pk * a.double() for pk, a in zip(p, as_))
    return mean_of_products(bs, as_, weights) - b_bar @ a_bar


def flora_stack(bs: list[torch.Tensor], as_: list[torch.Tensor], weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """FLoRA stacking (arXiv 2409.05976 §3): B_stack = [B_1 … B_K] (d_out×Σr_k),
    A_stack = [p_1A_1; …; p_KA_K] (Σr_k×d_in), so B_stack·A_stack = Σp_kB_kA_k. Clients may use
    different ranks r_k."""
    p = normalized_weights(weights)
    return torch.cat(list(bs), dim=1), torch.cat([pk * a for pk, a in zip(p, as_)], dim=0)
