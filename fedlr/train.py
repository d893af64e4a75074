"""Local training on tokenized examples (any task: the loss is the model's own, ``fedlr.tasks``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedlr.config import TrainConfig
from fedlr.data.tokens import TokenizedSet
from fedlr.metrics import ClassificationMetrics


@dataclass
class TrainResult:
    loss: float  # mean training loss over the local steps
    steps: int
    num_examples: int  # size of the local train set (the FedAvg weight n_k)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int
    metrics: ClassificationMetrics | None = None  # from the same logits (fedlr.metrics); None without examples


def make_optimizer(params: list[nn.Parameter], head_params: list[nn.Parameter], cfg: TrainConfig):
    head_ids = {id(p) for p in head_params}
    groups = [{"params": [p for p in params if id(p) not in head_ids], "lr": cfg.lr}]
    if head_params:
        groups.append({"params": list(head_params), "lr": cfg.head_lr or cfg.lr})
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def batch_indices(n: int, batch_size: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``steps`` batches drawn by passing over seeded permutations (epochs) of the n examples."""
    order: list[torch.Tensor] = []
    need = steps * min(batch_size, n)
    while sum(len(o) for o in order) < need:
        order.append(torch.randperm(n, generator=gen))
    flat = torch.cat(order)
    b = min(batch_size, n)
    return [flat[i * b:(i + 1) * b] for i in range(steps)]


def local_train(model: nn.Module, params: list[nn.Parameter], head_params: list[nn.Parameter],
                data: TokenizedSet, cfg: TrainConfig, gen: torch.Generator, device: torch.device) -> TrainResult:
    """``cfg.local_steps`` optimizer steps on ``params`` (a fresh optimizer each round)."""
    if len(data) == 0:
        raise ValueError("this client has no training examples")
    model.train()
    optimizer = make_optimizer(params, head_params, cfg)
    losses = []
    for idx in batch_indices(len(data), cfg.batch_size, cfg.local_steps, gen):
        batch = {k: v.to(device) for k, v in data.batch(idx).items()}
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return TrainResult(sum(losses) / len(losses), len(losses), len(data))


def summed_weight_gradients(model: nn.Module, weights: dict[str, nn.Parameter], data: TokenizedSet,
                            batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """G = Σ_batches ∇_W L_batch for each named weight, each batch's loss a mean over the batch
    (LoRA-SB's update approximation, arXiv 2411.19557 §3.2). Other parameters get no gradient."""
    previous = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    sums = {k: torch.zeros_like(w, device="cpu") for k, w in weights.items()}
    model.eval()  # no dropout: the gradient of the model as it stands
    try:
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            batch = {k: v.to(device) for k, v in data.batch(idx).items()}
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for k, w in weights.items():
                sums[k] += w.grad.detach().cpu()
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(previous[n])
    return sums
