"""Sample-level DP-SGD inside one client's round, with Opacus's real per-sample gradients.

One step (Abadi et al. 2016, arXiv 1607.00133, Alg. 1), on exactly the tensors the method
trains (Fed-SB's R, FFA-LoRA's and FedSVD's B, FedIT's and DP-LoRA's A and B, the head where
trained):

1. a Poisson batch: every local example joins independently with probability q = B / n_k
   (Opacus ``UniformWithReplacementSampler``; the size varies and can be 0);
2. per-example gradients g_i (Opacus ``GradSampleHooks``: per-layer samplers, or functorch);
3. clip: ḡ_i = g_i · min(1, C / ‖g_i‖₂), the norm taken jointly over every trained tensor
   (flat), or per tensor with bound C/√P each (DP-LoRA clips each factor separately; the joint
   norm is still ≤ C, so the accountant is unchanged);
4. noise: g̃ = (Σ_i ḡ_i + N(0, σ²C²I)) / (q·n_k) — the denominator is the *expected* batch size;
5. the optimizer step with g̃ (Opacus ``DPOptimizer`` does 3–4).

An empty batch still takes a step (noise only, ``Σ_i ḡ_i = 0``): the accountant counts every
one of the τ steps, so skipping would only make the record conservative, never optimistic.

Pitfalls handled (reference/privacy.md §3): the model is on its device before the hooks are
attached (#820, the silent no-op); parameters are frozen before (never after) the hooks; the
hooks go on the *process-wide* model that serves many virtual clients, so they are attached for
one round and removed in ``finally`` — they never accumulate; BERT full fine-tuning gets explicit
batched ``position_ids`` / ``token_type_ids`` (§3.11).
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass

import torch
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer, DPPerLayerOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from fedlr.config import TrainConfig
from fedlr.data.tokens import TokenizedSet
from fedlr.train import TrainResult, make_optimizer

# Attributes Opacus leaves on parameters and modules that ``GradSampleHooks.cleanup`` does not remove.
_LEFTOVER_PARAM_ATTRS = ("summed_grad", "grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample")
_LEFTOVER_MODULE_ATTRS = ("activations", "max_batch_len")


@dataclass(frozen=True)
class DPSGDSettings:
    noise_multiplier: float  # σ
    max_grad_norm: float  # C
    sample_rate: float  # q = B / n_k
    grad_sample_mode: str = "hooks"  # "hooks" | "functorch"
    per_tensor_clipping: bool = False  # DP-LoRA: C/√P per trained tensor
    secure_mode: bool = False  # Opacus's floating-point-attack-robust sampling (privacy.noise_source 'secure')


@dataclass
class DPTrainResult(TrainResult):
    empty_batches: int = 0
    mean_batch_size: float = 0.0


class PrivateTrainer:
    """Opacus attached to ``model`` for one client round; use as a context manager.

    ``step(batch)`` does one DP-SGD step on a batch dict (``None``: an empty Poisson batch).
    On exit every hook and Opacus attribute is removed, the model is as it was (weights aside).
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter], head_params: list[nn.Parameter],
                 train_cfg: TrainConfig, dp: DPSGDSettings, num_examples: int, noise_generator: torch.Generator):
        self.model = model
        self.params = params
        self.head_params = head_params
        self.train_cfg = train_cfg
        self.dp = dp
        self.expected_batch_size = dp.sample_rate * num_examples
        self.noise_generator = noise_generator
        self.hooks: GradSampleHooks | None = None
        self.optimizer: DPOptimizer | None = None
        self._explicit_ids = _needs_explicit_ids(model)

    def __enter__(self) -> "PrivateTrainer":
        trainable = {id(p) for p in self.model.parameters() if p.requires_grad}
        if {id(p) for p in self.params} != trainable:
            raise ValueError("DP-SGD must train exactly the model's trainable tensors (freeze the rest first)")
        self.hooks = GradSampleHooks(self.model, batch_first=True, loss_reduction="mean", strict=False,
                                     force_functorch=self.dp.grad_sample_mode == "functorch")
        inner = make_optimizer(self.params, self.head_params, self.train_cfg)
        common = dict(noise_multiplier=self.dp.noise_multiplier, expected_batch_size=self.expected_batch_size,
                      loss_reduction="mean", generator=self.noise_generator, secure_mode=self.dp.secure_mode)
        if self.dp.per_tensor_clipping:
            n = sum(len(g["params"]) for g in inner.param_groups)
            self.optimizer = DPPerLayerOptimizer(inner, max_grad_norm=[self.dp.max_grad_norm / math.sqrt(n)] * n, **common)
        else:
            self.optimizer = DPOptimizer(inner, max_grad_norm=self.dp.max_grad_norm, **common)
        self.model.train()
        return self

    def step(self, batch: dict[str, torch.Tensor] | None) -> float | None:
        """One DP-SGD step; returns the batch's (non-private, diagnostic) loss, None when empty."""
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        if batch is None:  # empty Poisson batch: a noise-only step
            for p in opt.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            opt.step()
            return None
        if self._explicit_ids:
            batch = _with_explicit_ids(batch)
        loss = self.model(**batch).loss
        with warnings.catch_warnings():
            # the first adapted layer's input needs no grad (frozen embeddings): expected, the hook still fires
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        opt.step()
        return loss.item()

    def __exit__(self, *exc) -> None:
        try:
            if self.optimizer is not None:
                self.optimizer.zero_grad(set_to_none=True)
        finally:
            if self.hooks is not None:
                self.hooks.cleanup()
            for p in self.model.parameters():
                for attr in _LEFTOVER_PARAM_ATTRS:
                    if hasattr(p, attr):
                        delattr(p, attr)
                p.grad = None
            for m in self.model.modules():
                for attr in _LEFTOVER_MODULE_ATTRS:
                    if hasattr(m, attr):
                        delattr(m, attr)
            self.model.eval()


def dp_local_train(model: nn.Module, params: list[nn.Parameter], head_params: list[nn.Parameter],
                   data: TokenizedSet, train_cfg: TrainConfig, dp: DPSGDSettings,
                   sampling_generator: torch.Generator, noise_generator: torch.Generator,
                   device: torch.device) -> DPTrainResult:
    """``train_cfg.local_steps`` DP-SGD steps over Poisson batches of ``data`` (a fresh optimizer
    per round, as ``fedlr.train.local_train``). Every step is one accountant step (σ, q)."""
    n = len(data)
    if n == 0:
        raise ValueError("this client has no training examples: DP-SGD's sampling rate batch_size/n is undefined")
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=dp.sample_rate, generator=sampling_generator,
                                            steps=train_cfg.local_steps)
    losses, sizes, empty = [], [], 0
    with PrivateTrainer(model, params, head_params, train_cfg, dp, n, noise_generator) as trainer:
        for idx in sampler:
            sizes.append(len(idx))
            if not idx:
                empty += 1
                trainer.step(None)
                continue
            batch = {k: v.to(device) for k, v in data.batch(idx).items()}
            losses.append(trainer.step(batch))
    mean_loss = sum(losses) / len(losses) if losses else float("nan")
    return DPTrainResult(mean_loss, len(sizes), n, empty_batches=empty, mean_batch_size=sum(sizes) / len(sizes))


def _needs_explicit_ids(model: nn.Module) -> bool:
    """True when a trainable embedding would see BERT's broadcast (batch-1) id buffers."""
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    if emb is None or not any(p.requires_grad for p in emb.parameters()):
        return False
    params = inspect.signature(model.forward).parameters
    return "position_ids" in params and "token_type_ids" in params


def _with_explicit_ids(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = batch["input_ids"]
    pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids).contiguous()
    return {**batch, "token_type_ids": torch.zeros_like(ids), "position_ids": pos}
