"""Fed-SB: the base strategy plus LoRA-SB's federated init round (round 0).

Init clients — sampled from the seed like any round — send summed gradients of every target base
weight on a few of their own examples (dense d_out×d_in per layer, counted in the ledger); the
server sums them and forms B, A, R₀ with ``fedlr.methods.fed_sb.init_factors``. B and A then reach
each client once, on its first training round. No pooled raw data is used (unlike the public
reference code, reference/methods.md §6.2).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from fedlr.methods.fed_sb import INIT_ROUND, init_state
from fedlr.sampling import sample_clients
from fedlr.results.ledger import LedgerRow
from fedlr.strategies.base import FedLRStrategy

INIT_ACTION = "train.sb_init"


class FedSBStrategy(FedLRStrategy):
    init_round = INIT_ROUND  # the MethodSpec.init_round this strategy runs

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
        m = self.exp.method
        once, trained = init_state(grad_sum, m.rank, m.scale, m.init_step_size)
        self.once_state, self.state = {**self.once_state, **once}, {**self.state, **trained}
