"""Adapter layers wrapping a frozen base ``nn.Linear``."""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """ΔW = s·B·A with A Kaiming-uniform(a=√5) and B = 0 at init (PEFT's default)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base = base
        self.scale = scale
        dev = base.weight.device
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=dev)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=dev)

    def reset(self, gen: torch.Generator) -> None:
        if self.lora_A.weight.is_meta:
            return
        with torch.no_grad():
            self.lora_A.weight.copy_(kaiming_uniform(self.lora_A.weight.shape, gen))
            self.lora_B.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return self.scale * self.lora_B.weight @ self.lora_A.weight


class LoRASBLinear(nn.Module):
    """ΔW = s·B·R·A (LoRA-SB, arXiv 2411.19557 §3): B, A frozen, R the only trainable matrix.

    ``reset`` gives the random-orthonormal ablation (B orthonormal columns, A orthonormal rows,
    R = 0); the federated update-approximation init sets B, A, R₀ via ``set_factors``.
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base = base
        self.scale = scale
        dev = base.weight.device
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=dev)
        self.lora_R = nn.Linear(rank, rank, bias=False, device=dev)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=dev)

    def reset(self, gen: torch.Generator) -> None:
        if self.lora_A.weight.is_meta:
            return
        r = self.lora_R.weight.shape[0]
        with torch.no_grad():
            self.lora_B.weight.copy_(random_orthonormal(self.base.out_features, r, gen))
            self.lora_A.weight.copy_(random_orthonormal(self.base.in_features, r, gen).T)
            self.lora_R.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_R(self.lora_A(x))) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return self.scale * self.lora_B.weight @ self.lora_R.weight @ self.lora_A.weight


def kaiming_uniform(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """``nn.init.kaiming_uniform_(w, a=√5)`` drawn from ``gen``: U(-1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / math.sqrt(shape[1])
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def random_orthonormal(n: int, r: int, gen: torch.Generator) -> torch.Tensor:
    """An n×r matrix with orthonormal columns (QR of a Gaussian, signs fixed by diag(R) > 0)."""
    q, rr = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(rr))).float()


class HadamardDelta(nn.Module):
    """x ↦ x·ΔWᵀ with ΔW = s·(W1a·W1b) ⊙ (W2a·W2b), the low-rank Hadamard product of FedPara
    (Hyeon-Woo et al., ICLR 2022, eq. 2) in PEFT's LoHa layout: w1_a, w2_a (d_out×r), w1_b, w2_b
    (r×d_in). rank(ΔW) ≤ r² with 2r(d_in+d_out) parameters.

    A leaf module holding only the four factors, so Opacus (hooks mode) computes their per-sample
    gradients through its functorch fallback without touching the frozen base layer.
    """

    def __init__(self, d_out: int, d_in: int, rank: int, scale: float, device=None):
        super().__init__()
        self.scale = scale
        self.w1_a = nn.Parameter(torch.empty(d_out, rank, device=device))
        self.w1_b = nn.Parameter(torch.empty(rank, d_in, device=device))
        self.w2_a = nn.Parameter(torch.empty(d_out, rank, device=device))
        self.w2_b = nn.Parameter(torch.empty(rank, d_in, device=device))

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.w1_a @ self.w1_b) * (self.w2_a @ self.w2_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.delta_weight())


class LoHaLinear(nn.Module):
    """y = W0 x + ΔW x with ΔW a ``HadamardDelta``; PEFT's init: w1_a, w1_b, w2_a Kaiming-uniform
    (a=√5), w2_b = 0, so ΔW = 0 at the start."""

    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base = base
        self.hada = HadamardDelta(base.out_features, base.in_features, rank, scale, device=base.weight.device)

    @property
    def scale(self) -> float:
        return self.hada.scale

    def reset(self, gen: torch.Generator) -> None:
        h = self.hada
        if h.w1_a.is_meta:
            return
        with torch.no_grad():
            # PEFT's kaiming_uniform_ on (d_out, r) factors uses fan_in = r
            h.w1_a.copy_(kaiming_uniform(h.w1_a.shape, gen))
            h.w1_b.copy_(kaiming_uniform(h.w1_b.shape, gen))
            h.w2_a.copy_(kaiming_uniform(h.w2_a.shape, gen))
            h.w2_b.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.hada(x)

    def delta_weight(self) -> torch.Tensor:
        return self.hada.delta_weight()
