"""Fed-SB: the base strategy plus LoRA-SB's federated init round (round 0).

Init clients — sampled from the seed like any round — send summed gradients of every target base
weight on a few of their own examples (dense d_out×d_in per layer, counted in the ledger); the
server sums them and forms B, A, R₀ with ``fedlr.methods.fed_sb.init_factors``. B and A then reach
each client once, on its first training round. No pooled raw data is used (unlike the public
reference code, reference/methods.md §6.2).
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fedlr.methods.fed_sb import init_factors
from fedlr.sampling import sample_clients
from fedlr.results.ledger import LedgerRow
from fedlr.strategies.base import FedLRStrategy

INIT_ACTION = "train.sb_init"


class FedSBStrategy(FedLRStrategy):
    def initialize(self, grid, report: LedgerRow) -> None:
        if self.exp.method.init != "federated":
            return  # random-orthonormal ablation: B, A drawn from the shared seed by every party
        fed = self.exp.federation
        pids = sample_clients(self.exp.seed, 0, fed.num_clients, fed.clients_per_round)
        report.clients_sampled = pids
        content = RecordDict({"config": ConfigRecord({"server-round": 0})})
        msgs = [Message(content, dst_node_id=self.node_of[p], message_type=INIT_ACTION) for p in pids]
        accepted = self.collect(self.exchange(grid, msgs), "grads", self.target_weights)
        if not accepted:
            raise RuntimeError("Fed-SB init: no client returned gradients")
        grad_sum = {k: sum(g[k] for _, g, _ in accepted) for k in accepted[0][1]}
        self.once_state, self.state = self.factors_from_gradients(grad_sum)

    def factors_from_gradients(self, grad_sum: dict[str, torch.Tensor]):
        m = self.exp.method
        once, state = dict(self.once_state), dict(self.state)
        for weight_key, g in grad_sum.items():
            layer = weight_key.removesuffix(".base.weight")
            b, a, r0 = init_factors(g, m.rank, m.scale, m.init_step_size)
            once[f"{layer}.lora_B.weight"], once[f"{layer}.lora_A.weight"] = b, a
            state[f"{layer}.lora_R.weight"] = r0
        return once, state
