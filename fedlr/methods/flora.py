"""FLoRA (Wang et al., NeurIPS 2024, arXiv 2409.05976): stacking, merged every round.

Every round each sampled client trains a fresh LoRA (A random, B = 0) of its own rank r_k
(``method.client_ranks``; ``method.rank`` for all when unset); the server stacks
B_stack = [B_1 … B_K] (d_out×Σr_k), A_stack = [p_1A_1; …; p_KA_K] (Σr_k×d_in) so that
B_stack·A_stack = Σp_kB_kA_k whatever the ranks, merges W0 ← W0 + s·B_stack·A_stack (exact,
reference/methods.md §2.8) and starts the next round from new fresh adapters.

The fresh adapters are drawn from (seed, round, layer) at each client's rank by every party
(``fresh_factors``), so they never travel: the server sends the merged base weights (dense,
d_out·d_in per layer) and the head, the same record to every client whatever its rank, and a
client uploads ΔA_k, ΔB_k at its own rank.
"""

from __future__ import annotations

from typing import Mapping

import torch

from fedlr.adapters.layers import kaiming_uniform
from fedlr.adapters.naming import A_KEY, B_KEY, BASE_KEY, BASE_WEIGHT, LORA_A, LORA_B, key, keys_ending, layer_of
from fedlr.methods.averaging import weighted_mean_update
from fedlr.methods.base import MethodSpec, register
from fedlr.methods.lowrank_math import flora_stack
from fedlr.seeding import torch_generator


def fresh_factors(seed: int, server_round: int, layer: str, rank: int, d_in: int, d_out: int):
    """(A, B) a client of rank r starts round t from: A (r×d_in) Kaiming-uniform(a=√5), B = 0 (d_out×r).

    Round 1 draws A from the adapter injection's own stream (seed, "adapter", layer), so the initial
    model is round 1's start; round t > 1 from (seed, "flora", t − 1, layer). Clients of one rank
    share A; ranks differ only in how many rows are drawn."""
    gen = (torch_generator(seed, "adapter", layer) if server_round == 1
           else torch_generator(seed, "flora", server_round - 1, layer))
    return kaiming_uniform((rank, d_in), gen), torch.zeros(d_out, rank)


def draw_fresh(seed: int, server_round: int, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """``fresh_factors`` for every layer among ``shapes`` (its LoRA factors' keys and shapes)."""
    fresh = {}
    for a_key in keys_ending(shapes, A_KEY):
        layer = layer_of(a_key, A_KEY)
        b_key = key(layer, B_KEY)
        (rank, d_in), d_out = shapes[a_key], shapes[b_key][0]
        fresh[a_key], fresh[b_key] = fresh_factors(seed, server_round, layer, rank, d_in, d_out)
    return fresh


def aggregate(state, updates, weights, *, scale: float, server_round: int, seed: int, **_):
    """W0 += s·B_stack·A_stack per layer with A_k = A_fresh(r_k) + ΔA_k, B_k = ΔB_k, each client at
    the rank its update has; the head averaged; the state's A, B become round t+1's fresh adapters
    at the server's rank."""
    trained = list(updates[0])
    new_state = dict(state)
    new_state.update(weighted_mean_update({k: state[k] for k in trained if not k.endswith((A_KEY, B_KEY))},
                                          updates, weights))
    for a_key in keys_ending(trained, A_KEY):
        layer = layer_of(a_key, A_KEY)
        b_key, base_key = key(layer, B_KEY), key(layer, BASE_KEY)
        a_k, b_k = [], []
        for u in updates:
            (rank, d_in), d_out = u[a_key].shape, u[b_key].shape[0]
            a0, b0 = fresh_factors(seed, server_round, layer, rank, d_in, d_out)
            a_k.append(a0.double() + u[a_key].double())
            b_k.append(b0.double() + u[b_key].double())
        b_stack, a_stack = flora_stack(b_k, a_k, weights)
        base = state[base_key]
        new_state[base_key] = (base.double() + scale * b_stack @ a_stack).to(base.dtype)
        (rank, d_in), d_out = state[a_key].shape, state[b_key].shape[0]
        a_next, b_next = fresh_factors(seed, server_round + 1, layer, rank, d_in, d_out)
        new_state[a_key], new_state[b_key] = a_next.to(state[a_key].dtype), b_next.to(state[b_key].dtype)
    return new_state


SPEC = register(MethodSpec(
    name="flora", adapter="lora", trains=(LORA_A, LORA_B), broadcast_once=(), broadcast=(BASE_WEIGHT,),
    exact=True, aggregate=aggregate, citation="Wang et al., arXiv 2409.05976", needs_round_context=True,
    fresh=(LORA_A, LORA_B), draw_fresh=draw_fresh,
    # one pre-averaged update merges (mean B)(mean A), not the mean of the products
    exact_on_combined_update=False,
    client_ranks_refused=None,  # stacking is exact for any ranks
    downlink_refused="merges the stacked adapters into dense base weights every round",
))
