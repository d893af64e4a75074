"""What the server sends each round: the training messages and the bytes they cost.

Each sampled client gets the global trained tensors (the dense model, or under
``compression.downlink`` the compressed B_t − B_{t−1} when it holds B_{t−1}), on its first
participation the tensors the method sends once (Fed-SB's B and A), and under L-GreCo the
round's per-tensor codec parameters. Bytes are counted from the records that travel
(``ArrayRecord.count_bytes``).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
import torch

from fedlr.compression.base import canonical_keys
from fedlr.compression.pipeline import choose_assignment, encode_broadcast, should_reselect
from fedlr.config import Experiment
from fedlr.methods import MethodSpec
from fedlr.run.records import (BASE_ROUND_KEY, BROADCAST_KEY, FUSED_ACTION, FUSED_KEY, KEEP_FROM_KEY, from_record,
                               payload_record, to_record)
from fedlr.seeding import torch_generator
from fedlr.strategies.state import ServerState

ASSIGNMENT_KEY = "assignment"


class Downlink:
    def __init__(self, exp: Experiment, spec: MethodSpec):
        self.exp = exp
        self.spec = spec

    def messages(self, server_round: int, pids: list[int], node_of: dict[int, int], server: ServerState,
                 arrays: ArrayRecord) -> tuple[list[Message], int]:
        """The round's training messages to the sampled ``pids`` and the downlink bytes they
        cost; ``arrays``: the global state as a record."""
        assignment = self.assignment_record(server_round, server)
        if self.spec.fresh:  # FLoRA: each client draws its fresh adapters from the seed at its own rank
            arrays = ArrayRecord(array_dict={k: a for k, a in arrays.items() if not self.spec.is_fresh(k)})
        arrays, delta = self.broadcast(server_round, arrays, server)
        if self.exp.federation.fused_clients > 1:
            return self.fused_messages(server_round, pids, node_of, server, arrays)
        messages, sent = [], 0
        for pid in pids:
            config = ConfigRecord({"server-round": server_round, KEEP_FROM_KEY: self.keep_from(server_round)})
            if delta is not None and server.holds_broadcast.get(pid) == server_round - 1:
                config[BASE_ROUND_KEY] = server_round - 1  # the client rebuilds B_t from its B_{t-1}
                content = RecordDict({BROADCAST_KEY: delta, "config": config})
                sent += delta.count_bytes()
            else:
                content = RecordDict({"arrays": arrays, "config": config})
                sent += arrays.count_bytes()
            if assignment is not None:
                content[ASSIGNMENT_KEY] = assignment
                sent += assignment.count_bytes()
            if server.once_state and pid not in server.has_once:
                once = to_record(server.once_state)
                content["once"] = once
                sent += once.count_bytes()
            messages.append(Message(content, dst_node_id=node_of[pid], message_type=MessageType.TRAIN))
        return messages, sent

    def fused_messages(self, server_round: int, pids: list[int], node_of: dict[int, int], server: ServerState,
                       arrays: ArrayRecord) -> tuple[list[Message], int]:
        """``federation.fused_clients`` = K (simulation): the sampled clients in groups of up to K,
        one message per group to its first client's worker, which trains them all in one pass
        (``fedlr.fused``). The ledger counts what each client would receive on its own — the model,
        and the once-sent tensors on its first participation — as the plan does; the group
        shares one copy inside the simulation."""
        k = self.exp.federation.fused_clients
        once = to_record(server.once_state) if server.once_state else None
        messages, sent = [], 0
        for start in range(0, len(pids), k):
            group = pids[start:start + k]
            config = ConfigRecord({"server-round": server_round, KEEP_FROM_KEY: self.keep_from(server_round),
                                   FUSED_KEY: group})
            content = RecordDict({"arrays": arrays, "config": config})
            if once is not None:
                content["once"] = once
            first_time = sum(pid not in server.has_once for pid in group)
            sent += len(group) * arrays.count_bytes() + (first_time * once.count_bytes() if once else 0)
            messages.append(Message(content, dst_node_id=node_of[group[0]], message_type=FUSED_ACTION))
        return messages, sent

    def broadcast(self, server_round: int, arrays: ArrayRecord, server: ServerState
                  ) -> tuple[ArrayRecord, ArrayRecord | None]:
        """What travels down: the dense model, and under ``compression.downlink`` the dense
        reference B_t plus the compressed B_t − B_{t−1} for clients that hold B_{t−1}
        (``fedlr.compression.pipeline.encode_broadcast``; the server's error feedback is in
        ``server.downlink_state``). Clients train from B_t; the server aggregates into its exact θ."""
        cfg = self.exp.compression
        if not cfg.downlink:
            return arrays, None
        gen = torch_generator(self.exp.seed, "compress-downlink", server_round)
        sent = encode_broadcast(from_record(arrays), cfg, server.downlink_state, gen, server_round=server_round,
                                assignment=server.assignment)
        server.downlink_state = sent.server_state
        delta = payload_record(sent.payload) if sent.payload is not None else None
        return to_record(sent.reference), delta

    def keep_from(self, server_round: int) -> int:
        """The oldest round the server may still resume from once this round is checkpointed:
        clients keep the state snapshots a resume from there needs."""
        return max(0, server_round - self.exp.output.keep_checkpoints)

    def assignment_record(self, server_round: int, server: ServerState) -> ArrayRecord | None:
        """L-GreCo (``compression.adaptive = 'lgreco'``): every ``reselect_every`` rounds the server
        re-chooses each tensor's codec parameter from the last aggregate update; every client gets
        the same choice (an int32 per tensor, counted in the downlink), so message sizes reveal
        nothing about a client."""
        cfg = self.exp.compression
        if cfg.adaptive != "lgreco":
            return None
        if server.last_aggregate is not None and should_reselect(cfg, server_round):
            server.assignment = choose_assignment(server.last_aggregate, cfg)
        if server.assignment is None:
            return None
        keys = canonical_keys(server.assignment)
        return to_record({ASSIGNMENT_KEY: torch.tensor([server.assignment[k] for k in keys], dtype=torch.int32)})
