"""The FedAvg-family strategy every fedlr method runs on (Flower Message API, 1.39/1.41).

It subclasses ``flwr.serverapp.strategy.FedAvg`` and overrides
- ``configure_train``: clients sampled from the experiment seed over partition ids; each message
  carries the global trained tensors and, on a client's first participation, the tensors the
  method broadcasts once (Fed-SB's B and A);
- ``aggregate_train``: drops error replies, sorts the rest by partition id, rejects malformed
  updates (missing/extra keys, wrong shape or dtype, NaN/Inf) with a logged reason, and calls the
  method's pure ``aggregate`` — sample-weighted, or under client-level DP on the uniform
  (``client_local``) or clipped-and-noised fixed-denominator (``client_central``) mean update;
- ``start``: fedlr's round loop (enrollment, an optional init round, rounds, central evaluation,
  one ``LedgerRow`` per round for the ledger, a checkpoint after each round).
Resume (``fedlr run --resume``): ``checkpoint_state`` is everything the loop carries from one
round to the next (the global and once-broadcast tensors, who holds them, L-GreCo's choice and
input, the clients' last ε, the federation accountant, the byte totals); ``run(resume=...)``
restores it, tells every client in the enrollment query which round to restore its own state
to, and continues. Every random draw derives from (seed, purpose, round), so no RNG state is kept.
Bytes are counted from the ArrayRecords actually sent and received (``ArrayRecord.count_bytes``).
Privacy (``fedlr.privacy``): each row carries the cumulative ε — the largest of any client's
(sample-level and ``client_local``: clients report their own accountant's ε) or the federation's
(``client_central``: the server's accountant composes one release per round).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedlr.config import Experiment
from fedlr.methods import MethodSpec
from fedlr.results.ledger import LedgerRow
from fedlr.privacy.client_level import global_norm
from fedlr.privacy.federation_accountant import FederationAccountant
from fedlr.privacy.modes import privacy_mode
from fedlr.privacy.planning import PrivacyPlan
from fedlr.compression.base import canonical_keys
from fedlr.compression.pipeline import (choose_assignment, decode_update, encode_broadcast, planned_bytes,
                                       should_reselect)
from fedlr.run.records import (BASE_ROUND_KEY, BROADCAST_KEY, FUSED_ACTION, FUSED_KEY, KEEP_FROM_KEY, PARTITION_KEY,
                               RESUME_ROUND_KEY, STATE_DIR_KEY, experiment_config, from_record, fused_key,
                               payload_record, record_payload, to_record)
from fedlr.seeding import torch_generator
from fedlr.sampling import sample_clients
from fedlr.validation import at_rank, expected_of, update_problem
from fedlr.wire import record_wire_bytes

log = logging.getLogger("fedlr")
ENROLL_BATCH = 256  # enrollment queries in flight at once
State = dict[str, torch.Tensor]


class FedLRStrategy(FedAvg):
    def __init__(self, exp: Experiment, spec: MethodSpec, state: State, once_state: State,
                 target_weights: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 evaluate: Callable[[State, State], tuple[float, float]] | None = None,
                 on_round: Callable[[LedgerRow], None] | None = None, privacy: PrivacyPlan | None = None,
                 checkpoint: Callable[[int, dict], None] | None = None, client_state_dir: str | None = None):
        fed = exp.federation
        super().__init__(
            fraction_train=fed.clients_per_round / fed.num_clients, fraction_evaluate=0.0,
            min_train_nodes=fed.clients_per_round, min_evaluate_nodes=0, min_available_nodes=fed.num_clients,
        )
        self.exp = exp
        self.spec = spec
        self.state = state
        self.once_state = once_state
        self.target_weights = target_weights  # "<layer>.base.weight" -> (shape, dtype), for init rounds
        self.evaluate = evaluate
        self.on_round = on_round or (lambda report: None)
        self.checkpoint = checkpoint  # (round, checkpoint_state()) after every round
        self.client_state_dir = client_state_dir  # where simulated clients snapshot their state
        self.resume_round = -1  # the round a resumed run restarts after (-1: a fresh run)
        self._wall_offset = 0.0  # wall time the run had spent before it was resumed
        self.node_of: dict[int, int] = {}  # partition id -> Flower node id
        self.sent_to: dict[str, list[int]] = {}  # message id -> the partition ids it serves, for the last exchange
        self.assignment: dict[str, int] | None = None  # L-GreCo's per-tensor codec parameters
        self.last_aggregate: State | None = None  # θ_t − θ_{t−1} of the uploaded tensors (L-GreCo's input)
        self.has_once: set[int] = set()  # partition ids that already hold the once-broadcast tensors
        self.downlink_state: State = {}  # compression.downlink: the reference B_t clients hold, the codec's warm start
        self.holds_broadcast: dict[int, int] = {}  # partition id -> the round whose broadcast B_t it holds
        self.report: LedgerRow | None = None
        self._totals = [0, 0]
        self.privacy = privacy
        self.privacy_mode = privacy_mode(exp.privacy)
        self.client_epsilon: dict[int, float] = {}  # last cumulative ε each client reported
        self.federation_accountant = self.privacy_mode.server_accountant(privacy, fed.num_clients,
                                                                         fed.clients_per_round)

    def update_keys(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What each client uploads: every state tensor but the per-round broadcast ones (FedSVD's A)."""
        return expected_of({k: v for k, v in self.state.items() if not self.spec.is_broadcast(k)})

    def expected_from(self, pid: int, expected):
        """``expected`` for client ``pid``: with ``method.client_ranks`` its LoRA factors at its own rank."""
        return at_rank(expected, self.exp.method.client_rank(pid)) if self.exp.method.client_ranks else expected

    # ---------------------------------------------------------------- enrollment
    def enroll(self, grid: Grid) -> None:
        """Wait for every client, send it the experiment, learn its partition id."""
        want = self.exp.federation.num_clients
        deadline = time.monotonic() + self.exp.federation.enroll_timeout_s
        while len(node_ids := list(grid.get_node_ids())) < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(node_ids)} of {want} clients connected")
            time.sleep(0.5)
        query = experiment_config(self.exp.to_json())
        query[RESUME_ROUND_KEY] = self.resume_round
        if self.client_state_dir is not None:
            query[STATE_DIR_KEY] = self.client_state_dir
        content = RecordDict({"config": query})
        # in batches: a SuperLink's in-memory LinkState scans every stored message for each node
        # that pulls, so N queries at once would cost N² per pull interval (the simulation's poller
        # scans once per poll instead: fedlr.run.engine_poll)
        for start in range(0, len(node_ids), ENROLL_BATCH):
            batch = node_ids[start:start + ENROLL_BATCH]
            msgs = [Message(content, dst_node_id=n, message_type=MessageType.QUERY) for n in batch]
            for reply in grid.send_and_receive(msgs, timeout=self.exp.federation.enroll_timeout_s):
                if reply.has_error():
                    raise RuntimeError(f"client enrollment failed: {reply.error.reason}")
                pid = int(reply.content["metrics"][PARTITION_KEY])
                self.node_of[pid] = reply.metadata.src_node_id
        missing = sorted(set(range(want)) - set(self.node_of))
        if missing:
            raise RuntimeError(f"no client reported partition ids {missing}")

    # ---------------------------------------------------------------- hooks
    def initialize(self, grid: Grid, report: LedgerRow) -> None:
        """Round 0 work before training; the base methods need none."""

    def exchange(self, grid: Grid, messages: list[Message]) -> Iterable[Message]:
        """Send and wait for replies; remember which partition each message went to (Flower sets
        the message ids when it pushes them)."""
        partition_of = {node: pid for pid, node in self.node_of.items()}
        replies = grid.send_and_receive(messages, timeout=self.exp.federation.round_timeout_s)
        self.sent_to = {m.metadata.message_id: served_partitions(m, partition_of) for m in messages}
        return replies

    # ---------------------------------------------------------------- train
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        fed = self.exp.federation
        pids = sample_clients(self.exp.seed, server_round, fed.num_clients, fed.clients_per_round)
        self.report.clients_sampled = pids
        assignment = self.assignment_record(server_round)
        if self.spec.fresh:  # FLoRA: each client draws its fresh adapters from the seed at its own rank
            arrays = ArrayRecord(array_dict={k: a for k, a in arrays.items() if not self.spec.is_fresh(k)})
        arrays, delta = self.broadcast(server_round, arrays)
        if fed.fused_clients > 1:
            return self.fused_messages(server_round, pids, arrays)
        messages = []
        for pid in pids:
            config = ConfigRecord({"server-round": server_round, KEEP_FROM_KEY: self.keep_from(server_round)})
            if delta is not None and self.holds_broadcast.get(pid) == server_round - 1:
                config[BASE_ROUND_KEY] = server_round - 1  # the client rebuilds B_t from its B_{t-1}
                content = RecordDict({BROADCAST_KEY: delta, "config": config})
                self.report.downlink_bytes += delta.count_bytes()
            else:
                content = RecordDict({"arrays": arrays, "config": config})
                self.report.downlink_bytes += arrays.count_bytes()
            if assignment is not None:
                content["assignment"] = assignment
                self.report.downlink_bytes += assignment.count_bytes()
            if self.once_state and pid not in self.has_once:
                once = to_record(self.once_state)
                content["once"] = once
                self.report.downlink_bytes += once.count_bytes()
            messages.append(Message(content, dst_node_id=self.node_of[pid], message_type=MessageType.TRAIN))
        return messages

    def fused_messages(self, server_round: int, pids: list[int], arrays: ArrayRecord) -> list[Message]:
        """``federation.fused_clients`` = K (simulation): the sampled clients in groups of up to K,
        one message per group to its first client's worker, which trains them all in one pass
        (``fedlr.fused``). The ledger counts what each client would receive on its own — the model,
        and the once-broadcast tensors on its first participation — as the plan does; the group
        shares one copy inside the simulation."""
        k = self.exp.federation.fused_clients
        once = to_record(self.once_state) if self.once_state else None
        messages = []
        for start in range(0, len(pids), k):
            group = pids[start:start + k]
            config = ConfigRecord({"server-round": server_round, KEEP_FROM_KEY: self.keep_from(server_round),
                                   FUSED_KEY: group})
            content = RecordDict({"arrays": arrays, "config": config})
            if once is not None:
                content["once"] = once
            first_time = sum(pid not in self.has_once for pid in group)
            self.report.downlink_bytes += len(group) * arrays.count_bytes() + (first_time * once.count_bytes() if once else 0)
            messages.append(Message(content, dst_node_id=self.node_of[group[0]], message_type=FUSED_ACTION))
        return messages

    def broadcast(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, ArrayRecord | None]:
        """What travels down: the dense model, and under ``compression.downlink`` the dense
        reference B_t plus the compressed B_t − B_{t−1} for clients that hold B_{t−1}
        (``fedlr.compression.pipeline.encode_broadcast``; the server's error feedback is in
        ``downlink_state``). Clients train from B_t; the server aggregates into its exact θ."""
        cfg = self.exp.compression
        if not cfg.downlink:
            return arrays, None
        gen = torch_generator(self.exp.seed, "compress-downlink", server_round)
        sent = encode_broadcast(from_record(arrays), cfg, self.downlink_state, gen, server_round=server_round,
                                assignment=self.assignment)
        self.downlink_state = sent.server_state
        delta = payload_record(sent.payload) if sent.payload is not None else None
        return to_record(sent.reference), delta

    def keep_from(self, server_round: int) -> int:
        """The oldest round the server may still resume from once this round is checkpointed:
        clients keep the state snapshots a resume from there needs."""
        return max(0, server_round - self.exp.output.keep_checkpoints)

    def assignment_record(self, server_round: int) -> ArrayRecord | None:
        """L-GreCo (``compression.adaptive = 'lgreco'``): every ``reselect_every`` rounds the server
        re-chooses each tensor's codec parameter from the last aggregate update; every client gets
        the same choice (an int32 per tensor, counted in the downlink), so message sizes reveal
        nothing about a client."""
        cfg = self.exp.compression
        if cfg.adaptive != "lgreco":
            return None
        if self.last_aggregate is not None and should_reselect(cfg, server_round):
            self.assignment = choose_assignment(self.last_aggregate, cfg)
        if self.assignment is None:
            return None
        keys = canonical_keys(self.assignment)
        return to_record({"assignment": torch.tensor([self.assignment[k] for k in keys], dtype=torch.int32)})

    def decode(self, record: ArrayRecord, array_key: str, expected) -> State:
        """The tensors a reply stands for: compressed updates are decoded (``PayloadError`` on
        anything malformed), everything else read as is."""
        cfg = self.exp.compression
        if array_key != "arrays" or not cfg.active:
            return from_record(record)
        shapes = {k: shape for k, (shape, _) in expected.items()}
        return decode_update(record_payload(record), cfg, shapes, server_round=self.report.round,
                             assignment=self.assignment)

    def collect(self, replies: Iterable[Message], array_key: str, expected) -> list[tuple[int, State, MetricRecord]]:
        """Valid replies as (partition id, tensors, metrics) sorted by partition id. Error replies,
        sampled clients that never replied (timeout) and rejected updates
        (``fedlr.validation.update_problem`` against ``expected``) are recorded in the report."""
        rep = self.report
        accepted, heard = [], set()
        for pid, error, content in self.client_replies(replies, array_key):
            heard.add(pid)
            if error is not None:
                self._fail(pid, "error", error)
                continue
            rep.clients_replied += 1
            received = sum(rec.count_bytes() for rec in content.array_records.values())
            rep.uplink_bytes += received
            try:
                metrics = content["metrics"]
                want = self.expected_from(pid, expected)
                reason = self.size_problem(received, array_key, want)
                if reason is None:
                    tensors = self.decode(content[array_key], array_key, want)
                    reason = update_problem(tensors, want) or self.norm_problem(tensors, array_key)
                weight = float(metrics["num-examples"])
                if reason is None and not weight > 0:
                    reason = f"num-examples {weight} is not positive"
            except Exception as e:  # malformed payload
                reason = f"malformed reply: {type(e).__name__}: {e}"
            if reason is not None:
                rep.clients_rejected += 1
                rep.failures.append({"partition": pid, "kind": "rejected", "reason": reason})
                log.warning("round %d: rejected update from partition %d: %s", rep.round, pid, reason)
                continue
            accepted.append((pid, tensors, metrics))
        for pid in sorted(set(rep.clients_sampled) - heard):
            self._fail(pid, "timeout", f"no reply within {self.exp.federation.round_timeout_s} s")
        accepted.sort(key=lambda t: t[0])
        return accepted

    def client_replies(self, replies: Iterable[Message], array_key: str):
        """(partition id, error reason or None, content) for each client a reply answers for: a
        fused reply (``fused_messages``) stands for every client of its group, each client's
        arrays and metrics under its own keys."""
        partition_of = {node: pid for pid, node in self.node_of.items()}
        for msg in replies:
            # a reply the SuperLink wrote for a dead node comes from the SuperLink's own id: find
            # the partitions through the message it answers
            pids = self.sent_to.get(msg.metadata.reply_to_message_id,
                                    [partition_of.get(msg.metadata.src_node_id, -1)])
            for pid in pids:
                if msg.has_error():
                    yield pid, msg.error.reason, None
                elif msg.metadata.message_type != FUSED_ACTION:
                    yield pid, None, msg.content
                else:
                    keys = {kind: fused_key(kind, pid) for kind in (array_key, "metrics")}
                    yield pid, None, RecordDict({kind: msg.content[key] for kind, key in keys.items()
                                                 if key in msg.content})

    def size_problem(self, received: int, array_key: str, expected) -> str | None:
        """A training reply larger than the plan allows: the dense record of the expected tensors,
        or the codec's payload for this round's parameters (sizes are data-independent)."""
        if array_key != "arrays":
            return None
        shapes = {k: shape for k, (shape, _) in expected.items()}
        if self.exp.compression.active:
            allowed = planned_bytes(shapes, self.exp.compression, server_round=self.report.round,
                                    assignment=self.assignment)
        else:
            allowed = record_wire_bytes([(k, math.prod(shape)) for k, shape in shapes.items()])
        return None if received <= allowed else f"{received} bytes received, more than the {allowed} the plan allows"

    def norm_problem(self, update: State, array_key: str) -> str | None:
        """Under ``client_central`` every update must lie within the clipping bound S the server's
        noise is calibrated for (a client that skipped clipping would break the guarantee)."""
        bound = self.privacy_mode.update_norm_bound(self.privacy)
        if array_key != "arrays" or bound is None:
            return None
        norm = global_norm(update)
        return None if norm <= bound * (1 + 1e-4) else f"update norm {norm:.6g} exceeds the clipping bound S = {bound}"

    def _fail(self, pid: int, kind: str, reason: str) -> None:
        self.report.clients_failed += 1
        self.report.failures.append({"partition": pid, "kind": kind, "reason": reason})
        log.warning("round %d: client %d failed (%s): %s", self.report.round, pid, kind, reason)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        accepted = self.collect(replies, "arrays", self.update_keys())
        if self.federation_accountant is not None:
            self.federation_accountant.compose(1)  # a release every round, even one that carries no update
        for pid, _, metrics in accepted:
            self.has_once.add(pid)  # it trained with them (a failed client gets them again)
            self.holds_broadcast[pid] = server_round  # it rebuilt B_t and keeps it for next round's delta
            if "epsilon" in metrics:
                self.client_epsilon[pid] = float(metrics["epsilon"])
        needed = self.exp.federation.min_replies
        if len(accepted) < needed:
            log.warning("round %d: %d valid update(s), fewer than federation.min_replies = %d; the global "
                        "state is unchanged", server_round, len(accepted), needed)
            return None, None
        self.report.aggregated = True
        updates = [u for _, u, _ in accepted]
        previous = self.state
        # the privacy mode combines them: as they are, sample-weighted; or one uniform (client_local) or
        # clipped-and-noised fixed-denominator (client_central) mean
        combined, weights = self.privacy_mode.combine(
            updates, [float(m["num-examples"]) for _, _, m in accepted], self.privacy,
            self.exp.federation.clients_per_round, self.exp.privacy.noise_source, self.exp.seed, server_round)
        self.state = self.spec.aggregate(self.state, combined, weights, **self.round_context(server_round))
        self.last_aggregate = {k: self.state[k] - previous[k] for k in updates[0]}
        self.report.train_loss = _weighted(accepted, "train_loss", "num-examples")
        self.report.client_val_accuracy = _weighted(accepted, "val_accuracy", "val_examples")
        return to_record(self.state), None

    def round_context(self, server_round: int) -> dict:
        """What FedEx-LoRA and FLoRA's aggregation needs beyond the updates."""
        if not self.spec.needs_round_context:
            return {}
        return {"scale": self.exp.method.scale, "server_round": server_round, "seed": self.exp.seed}

    # ---------------------------------------------------------------- loop
    def checkpoint_state(self, server_round: int) -> dict:
        """Everything the next round needs (plain values and tensors: ``fedlr.checkpoint``)."""
        return {
            "round": server_round, "state": self.state, "once_state": self.once_state,
            "has_once": sorted(self.has_once), "assignment": self.assignment, "last_aggregate": self.last_aggregate,
            "client_epsilon": {str(k): v for k, v in self.client_epsilon.items()},
            "federation_accountant": (self.federation_accountant.state_dict()
                                      if self.federation_accountant is not None else None),
            "totals": list(self._totals), "fingerprint": self.exp.fingerprint(),
            "wall_time_s": self.report.wall_time_s, "downlink_state": self.downlink_state,
            "holds_broadcast": {str(k): v for k, v in self.holds_broadcast.items()},
        }

    def restore(self, saved: dict) -> None:
        """Continue after the checkpointed round (the inverse of ``checkpoint_state``)."""
        if saved["fingerprint"] != self.exp.fingerprint():
            raise RuntimeError("the checkpoint was written by a different experiment configuration")
        self.resume_round = int(saved["round"])
        self.state, self.once_state = dict(saved["state"]), dict(saved["once_state"])
        self.has_once = set(saved["has_once"])
        self.assignment, self.last_aggregate = saved["assignment"], saved["last_aggregate"]
        self.client_epsilon = {int(k): float(v) for k, v in saved["client_epsilon"].items()}
        if saved["federation_accountant"] is not None:
            self.federation_accountant = FederationAccountant.from_state(saved["federation_accountant"])
        self._totals = list(saved["totals"])
        self._wall_offset = float(saved["wall_time_s"])
        self.downlink_state = dict(saved["downlink_state"])
        self.holds_broadcast = {int(k): int(v) for k, v in saved["holds_broadcast"].items()}

    def run(self, grid: Grid, num_rounds: int) -> State:
        """Enroll, run round 0 (init + evaluation of the initial model), then ``num_rounds`` rounds;
        after ``restore``, the rounds after the restored one."""
        started = time.perf_counter()
        self.enroll(grid)
        for server_round in range(self.resume_round + 1, num_rounds + 1):
            self.report = LedgerRow(round=server_round, clients_sampled=[])
            if server_round == 0:
                self.initialize(grid, self.report)
            else:
                messages = self.configure_train(server_round, to_record(self.state), ConfigRecord(), grid)
                replies = self.exchange(grid, list(messages))
                self.aggregate_train(server_round, replies)
            self.record_privacy(self.report)
            if self.evaluate is not None:
                self.report.eval_loss, self.report.eval_accuracy = self.evaluate(self.state, self.once_state)
            self._totals[0] += self.report.uplink_bytes
            self._totals[1] += self.report.downlink_bytes
            self.report.cumulative_uplink_bytes, self.report.cumulative_downlink_bytes = self._totals
            self.report.cumulative_bytes = sum(self._totals)
            self.report.wall_time_s = round(self._wall_offset + time.perf_counter() - started, 3)
            self.on_round(self.report)  # the ledger row first: a kill before the checkpoint replays the round
            if self.checkpoint is not None:
                self.checkpoint(server_round, self.checkpoint_state(server_round))
        return self.state

    def record_privacy(self, report: LedgerRow) -> None:
        """The round's cumulative ε (None without DP; 0 before any private release)."""
        if self.privacy is None:
            return
        report.delta = self.privacy.delta
        if self.federation_accountant is not None:
            report.epsilon = self.federation_accountant.epsilon(self.privacy.delta)
        else:
            report.client_epsilon = {str(pid): eps for pid, eps in sorted(self.client_epsilon.items())}
            report.epsilon = max(self.client_epsilon.values(), default=0.0)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, **kwargs):
        """Flower's entry point, routed to ``run`` (fedlr keeps its own state and ledger)."""
        self.state = from_record(initial_arrays)
        return self.run(grid, num_rounds)


def served_partitions(message: Message, partition_of: dict[int, int]) -> list[int]:
    """The partition ids a training message serves: its group when fused, else its node's."""
    if message.metadata.message_type == FUSED_ACTION:
        return [int(p) for p in message.content["config"][FUSED_KEY]]
    return [partition_of[message.metadata.dst_node_id]]


def _weighted(accepted, key: str, weight_key: str) -> float | None:
    pairs = [(float(m[key]), float(m[weight_key])) for _, _, m in accepted if key in m and weight_key in m]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total > 0 else None
