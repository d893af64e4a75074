"""Fused clients: K clients' local rounds trained in one pass over the shared frozen base.

Each client k has its own copy θ_k of the tensors the method trains (adapter factors, head);
the base is frozen and common to all. The K clients' batches are concatenated into one batch
(client k's rows form block k) and every module that owns a trained tensor computes, for block k,
its output with θ_k:

    y_k = x_k W_kᵀ + b_k                     (an ``nn.Linear`` whose weight/bias is trained:
                                              lora_A, lora_B, lora_R, the classifier)
    y_k = x_k (s·(W1a_k W1b_k) ⊙ (W2a_k W2b_k))ᵀ   (FedPara's ``HadamardDelta``)

The loss is Σ_k L_k(θ_k), each L_k the mean over client k's own rows. Rows never interact in a
BERT forward (attention is within a sequence, normalization per token), so ∂/∂θ_k of the sum is
exactly ∂L_k/∂θ_k: the gradients of separate runs. AdamW and SGD act elementwise, so one optimizer
over the stacked (K, …) tensors is K independent optimizers; gradient clipping is done per client
(the norm over client k's slices only), as ``fedlr.train.local_train`` does it. What differs from K
separate runs: dropout masks are drawn from one stream (the dropout seed of the first client),
and floating-point summation order (batched vs single matrix products).

Used where each client's batch is small: the frozen base's forward and backward — most of the
arithmetic — run once over K·B rows instead of K times over B rows.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from fedlr.adapters.layers import HadamardDelta
from fedlr.config import TrainConfig
from fedlr.data.tokens import TokenizedSet
from fedlr.models.adapted import AdaptedModel
from fedlr.train import TrainResult, batch_indices, make_optimizer

State = dict[str, torch.Tensor]


def batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Block k of ``x`` (K equal blocks along dim 0) times ``weight[k]ᵀ`` (+ ``bias[k]``).

    ``x``: (K·B, …, d_in), ``weight``: (K, d_out, d_in), ``bias``: (K, d_out) or None."""
    k = weight.shape[0]
    blocks = x.reshape(k, -1, x.shape[-1])
    out = torch.bmm(blocks, weight.transpose(1, 2))
    if bias is not None:
        out = out + bias.unsqueeze(1)
    return out.reshape(*x.shape[:-1], weight.shape[1])


def hadamard_weights(w1_a, w1_b, w2_a, w2_b, scale: float) -> torch.Tensor:
    """FedPara's ΔW_k = s·(W1a_k W1b_k) ⊙ (W2a_k W2b_k) for stacked (K, …) factors: (K, d_out, d_in)."""
    return scale * torch.bmm(w1_a, w1_b) * torch.bmm(w2_a, w2_b)


class FusedClients:
    """The model serving K clients at once; a context manager.

    On entry every trained tensor of ``adapted`` gets a stacked (K, …) copy initialised from the
    clients' states, and each module owning one computes per block (module docstring); on exit
    the modules are as they were. ``stacks`` are the trainable tensors; ``client_state(k)`` reads
    client k's trained tensors back.
    """

    def __init__(self, adapted: AdaptedModel, states: list[State]):
        if not states:
            raise ValueError("fused training needs at least one client")
        self.adapted = adapted
        self.num_clients = len(states)
        named_modules = dict(adapted.model.named_modules())
        self.owners: dict[str, nn.Module] = {}
        for key in adapted.trained_keys:
            path = key.rsplit(".", 1)[0]
            owner = named_modules[path]
            if not isinstance(owner, (nn.Linear, HadamardDelta)):
                raise ValueError(f"fused clients need every trained tensor in a Linear or HadamardDelta module; "
                                 f"{key} is in a {type(owner).__name__} (full fine-tuning shares no frozen base)")
            self.owners[path] = owner
        device = next(adapted.model.parameters()).device
        self.stacks: dict[str, nn.Parameter] = {
            key: nn.Parameter(torch.stack([s[key] for s in states]).to(device)) for key in adapted.trained_keys
        }

    def __enter__(self) -> "FusedClients":
        for path, owner in self.owners.items():
            owner.forward = self._forward_of(path, owner)  # an instance attribute shadows the class's forward
        return self

    def __exit__(self, *exc) -> None:
        for owner in self.owners.values():
            del owner.forward

    def _forward_of(self, path: str, owner: nn.Module):
        stacks = self.stacks
        if isinstance(owner, HadamardDelta):
            names = [f"{path}.{n}" for n in ("w1_a", "w1_b", "w2_a", "w2_b")]

            def forward(x: torch.Tensor) -> torch.Tensor:
                factors = [stacks[n] if n in stacks else getattr(owner, n.rsplit(".", 1)[1]).expand(
                    self.num_clients, -1, -1) for n in names]
                return batched_linear(x, hadamard_weights(*factors, owner.scale), None)

            return forward

        def weight_of(name: str) -> torch.Tensor | None:
            key = f"{path}.{name}"
            if key in stacks:
                return stacks[key]
            own = getattr(owner, name)
            return None if own is None else own.unsqueeze(0).expand(self.num_clients, *own.shape)

        return lambda x: batched_linear(x, weight_of("weight"), weight_of("bias"))

    def parameters(self, keys: list[str]) -> list[nn.Parameter]:
        return [self.stacks[k] for k in keys]

    def client_state(self, k: int) -> State:
        return {key: stack[k].detach().to("cpu", copy=True) for key, stack in self.stacks.items()}

    def clip_per_client(self, max_norm: float) -> None:
        """``clip_grad_norm_`` for each client separately: client k's gradient slices scaled by
        min(1, C / (‖g_k‖ + 1e-6)), the norm over client k's slices of every stacked tensor."""
        grads = [p.grad for p in self.stacks.values() if p.grad is not None]
        norms = torch.stack([g.reshape(self.num_clients, -1).norm(dim=1) for g in grads]).norm(dim=0)
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.reshape(-1, *([1] * (g.dim() - 1))))


def fused_batch(datasets: list[TokenizedSet], indices: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The K clients' batches as one: block k is client k's rows, all padded to the widest row."""
    width = max(d.width(i) for d, i in zip(datasets, indices))
    parts = [d.batch(i, width) for d, i in zip(datasets, indices)]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def client_losses(logits: torch.Tensor, labels: torch.Tensor, num_clients: int,
                  example_losses=partial(F.cross_entropy, reduction="none")) -> torch.Tensor:
    """(K,) the mean loss over each client's block (``example_losses``: the task's (N,) losses of
    the rows, ``fedlr.tasks``); the gradient of their sum in θ_k is client k's own."""
    return example_losses(logits, labels).reshape(num_clients, -1).mean(dim=1)


def fused_local_train(adapted: AdaptedModel, states: list[State], datasets: list[TokenizedSet], cfg: TrainConfig,
                      generators: list[torch.Generator], device: torch.device) -> tuple[list[State], list[TrainResult]]:
    """``fedlr.train.local_train`` for K clients at once: client k starts from ``states[k]``, draws
    its batches from ``generators[k]`` over ``datasets[k]``; returns each client's trained tensors
    and result. Every client's batch must have the same size (min(batch_size, n_k) equal for all)."""
    sizes = {min(cfg.batch_size, len(d)) for d in datasets}
    if 0 in sizes or len(sizes) != 1:
        raise ValueError(f"fused clients need equal, non-empty batches; per-client batch sizes {sorted(sizes)}")
    k = len(states)
    plans = [batch_indices(len(d), cfg.batch_size, cfg.local_steps, g) for d, g in zip(datasets, generators)]
    head = set(adapted.head_keys)
    model = adapted.model
    losses = torch.zeros(cfg.local_steps, k)
    with FusedClients(adapted, states) as fused:
        adapter_keys = [key for key in adapted.trained_keys if key not in head]
        optimizer = make_optimizer(fused.parameters(adapter_keys), fused.parameters(adapted.head_keys), cfg)
        model.train()
        try:
            for step in range(cfg.local_steps):
                batch = {n: v.to(device) for n, v in fused_batch(datasets, [p[step] for p in plans]).items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                per_client = client_losses(logits, batch["labels"], k, adapted.task.example_losses)
                optimizer.zero_grad(set_to_none=True)
                per_client.sum().backward()
                if cfg.max_grad_norm is not None:
                    fused.clip_per_client(cfg.max_grad_norm)
                optimizer.step()
                losses[step] = per_client.detach().cpu()
        finally:
            model.eval()
        trained = [fused.client_state(i) for i in range(k)]
    results = [TrainResult(float(losses[:, i].mean()), cfg.local_steps, len(d)) for i, d in enumerate(datasets)]
    return trained, results
