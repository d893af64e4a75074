"""FLoRA (Wang et al., NeurIPS 2024, arXiv 2409.05976): stacking, merged every round.

Every round each sampled client trains a fresh LoRA (A random, B = 0); the server stacks
B_stack = [B_1 … B_K], A_stack = [p_1A_1; …; p_KA_K] so that B_stack·A_stack = Σp_kB_kA_k, merges
W0 ← W0 + s·B_stack·A_stack (exact, reference/methods.md §2.8) and starts the next round from new
fresh adapters, drawn from (seed, round, layer). The merged base weights travel down every round,
dense (d_out·d_in per layer).
"""

from __future__ import annotations

import torch

from fedlr.adapters.layers import kaiming_uniform
from fedlr.methods.averaging import weighted_mean_update
from fedlr.methods.base import MethodSpec
from fedlr.methods.lowrank_math import flora_stack
from fedlr.seeding import torch_generator

A, B, BASE = ".lora_A.weight", ".lora_B.weight", ".base.weight"


def aggregate(state, updates, weights, *, scale: float, server_round: int, seed: int, **_):
    """W0 += s·B_stack·A_stack per layer; the head averaged; fresh A (Kaiming, seeded), B = 0."""
    trained = list(updates[0])
    new_state = dict(state)
    new_state.update(weighted_mean_update({k: state[k] for k in trained if not k.endswith((A, B))}, updates, weights))
    for a_key in (k for k in trained if k.endswith(A)):
        layer = a_key[: -len(A)]
        a_k = [(state[a_key] + u[a_key]).double() for u in updates]
        b_k = [(state[layer + B] + u[layer + B]).double() for u in updates]
        b_stack, a_stack = flora_stack(b_k, a_k, weights)
        base = state[layer + BASE]
        new_state[layer + BASE] = (base.double() + scale * b_stack @ a_stack).to(base.dtype)
        fresh = kaiming_uniform(tuple(state[a_key].shape), torch_generator(seed, "flora", server_round, layer))
        new_state[a_key] = fresh.to(state[a_key].dtype)
        new_state[layer + B] = torch.zeros_like(state[layer + B])
    return new_state


SPEC = MethodSpec(
    name="flora", adapter="lora", trains=("lora_A", "lora_B"), broadcast_once=(), broadcast=("base.weight",),
    exact=True, aggregate=aggregate, citation="Wang et al., arXiv 2409.05976", needs_round_context=True,
)
