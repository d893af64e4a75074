"""Fed-SB's federated init round (round 0; LoRA-SB's update approximation).

Init clients — sampled from the seed like any round — send summed gradients of every target base
weight on a few of their own examples (dense d_out×d_in per layer, counted in the ledger); the
server sums them and forms B, A, R₀ with ``fedlr.methods.fed_sb.init_state``. B and A then reach
each client once, on its first training round. No pooled raw data is used (unlike the public
reference code, reference/methods.md §6.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedlr.adapters.naming import BASE_KEY, key
from fedlr.methods.fed_sb import init_state
from fedlr.results.ledger import LedgerRow
from fedlr.sampling import sample_clients
from fedlr.strategies.collector import ReplyPolicy

if TYPE_CHECKING:
    from fedlr.strategies.base import FedLRStrategy

INIT_ACTION = "train.sb_init"


def federated_init(strategy: "FedLRStrategy", grid: Grid, row: LedgerRow) -> None:
    """Round 0: B, A (sent once) and R₀ (trained) from the sampled clients' summed gradients."""
    exp, server = strategy.exp, strategy.server
    fed = exp.federation
    pids = sample_clients(exp.seed, 0, fed.num_clients, fed.clients_per_round)
    row.clients_sampled = pids
    content = RecordDict({"config": ConfigRecord({"server-round": 0})})
    msgs = [Message(content, dst_node_id=strategy.node_of[p], message_type=INIT_ACTION) for p in pids]
    targets = target_weights(exp)
    policy = ReplyPolicy(lambda pid: targets, fed.round_timeout_s)
    collected = strategy.collector(policy).collect(0, strategy.exchange(grid, msgs), pids, array_key="grads")
    collected.record(row)
    if not collected.accepted:
        raise RuntimeError("Fed-SB init: no client returned gradients")
    grad_sum = {k: sum(a.update[k] for a in collected.accepted) for k in collected.accepted[0].update}
    m = exp.method
    once, trained = init_state(grad_sum, m.rank, m.scale, m.init_step_size)
    server.once_state, server.state = {**server.once_state, **once}, {**server.state, **trained}


def target_weights(exp) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``<layer>.base.weight`` -> (shape, dtype) of every adapted layer: what init clients send."""
    from fedlr.models.adapted import adapter_paths
    from fedlr.workbench import get_workbench

    adapted = get_workbench(exp).adapted
    params = adapted.parameters_by_name()
    return {k: (tuple(params[k].shape), params[k].dtype) for k in (key(p, BASE_KEY) for p in adapter_paths(adapted))}
