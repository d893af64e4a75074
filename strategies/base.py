"""The Flower strategy every fedlr method runs on (Flower Message API, 1.39), over pure parts:

- ``strategies.downlink.Downlink``: the training messages (dense or compressed broadcast,
  once-sent tensors, L-GreCo's assignment) and their bytes;
- ``strategies.collector.ReplyCollector``: replies → accepted updates and typed failures;
- ``strategies.state.ServerState``: everything carried between rounds (a checkpoint);
- ``aggregate`` (here): the privacy mode's combine, then the method's pure aggregation.

``FedLRStrategy`` subclasses ``flwr.serverapp.strategy.FedAvg`` and keeps Flower's contract:
``configure_train`` / ``aggregate_train`` per round, and ``start(grid, initial_arrays,
num_rounds, ...)`` returning ``flwr.serverapp.strategy.Result``. ``start`` is fedlr's round loop:
enrollment (every client gets the experiment and answers its partition id), an optional init
round 0, the rounds, central evaluation through Flower's ``evaluate_fn``, one ``LedgerRow`` per
round (``on_round``) and a checkpoint after each (``checkpoint``). Resume: build the strategy with
``resume=ServerState.from_state(...)``; the enrollment query then tells every client which round
to restore its own state to.

Privacy (``fedlr.privacy``): each row carries the cumulative ε — the largest of any client's
(sample-level and ``client_local``: ``strategies.client_epsilon``, which also charges the rounds
of clients whose reply was late or rejected) or the federation's (``client_central``: the
server's accountant composes one release per round).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from fedlr.compression.pipeline import decode_update, planned_bytes
from fedlr.config import Experiment
from fedlr.methods import MethodSpec, fed_sb, get_method
from fedlr.metrics import EVAL_METRICS, metric_values
from fedlr.privacy.modes import PrivacyMode, privacy_mode
from fedlr.privacy.planning import PrivacyPlan, plan_privacy
from fedlr.results.ledger import LedgerRow
from fedlr.run.records import PRIVACY_PLAN_KEY, from_record, record_payload, to_record
from fedlr.sampling import sample_clients
from fedlr.strategies.client_epsilon import client_epsilons
from fedlr.strategies.collector import WEIGHT_KEY, Collected, ReplyCollector, ReplyPolicy, served_partitions
from fedlr.strategies.downlink import Downlink
from fedlr.strategies.enrollment import enroll, lost_enrollment, rejoin
from fedlr.strategies.fed_sb import federated_init
from fedlr.strategies.state import ServerState
from fedlr.validation import at_rank, expected_of
from fedlr.wire import record_wire_bytes

log = logging.getLogger("fedlr")
State = dict[str, torch.Tensor]
INIT_ROUNDS = {fed_sb.INIT_ROUND: federated_init}  # the strategy hook each MethodSpec.init_round names


class FedLRStrategy(FedAvg):
    """``exp``: the experiment every client receives at enrollment. ``privacy``: its privacy plan
    (default: the workbench's, from the clients' dataset sizes). ``on_round``: given every ledger
    row; ``checkpoint(round, payload)`` after every round; ``client_state_dir``: where simulated
    clients snapshot their state; ``resume``: the server state to continue from."""

    def __init__(self, exp: Experiment, *, privacy: PrivacyPlan | None = None,
                 on_round: Callable[[LedgerRow], None] | None = None,
                 checkpoint: Callable[[int, dict], None] | None = None, client_state_dir: str | None = None,
                 resume: ServerState | None = None):
        fed = exp.federation
        super().__init__(
            fraction_train=fed.clients_per_round / fed.num_clients, fraction_evaluate=0.0,
            min_train_nodes=fed.clients_per_round, min_evaluate_nodes=0, min_available_nodes=fed.num_clients,
        )
        self.exp = exp
        self.spec: MethodSpec = get_method(exp.method.name)
        self._privacy = privacy
        self.privacy_mode: PrivacyMode = privacy_mode(exp.privacy)
        self.on_round = on_round or (lambda row: None)
        self.checkpoint = checkpoint
        self.client_state_dir = client_state_dir
        self.resumed = resume is not None
        self.server: ServerState | None = resume  # a fresh one from ``start``'s initial arrays otherwise
        self.downlink = Downlink(exp, self.spec)
        self.node_of: dict[int, int] = {}  # partition id -> Flower node id, from enrollment
        # partition id -> n_k as reported at enrollment: the privacy plan's sizes under client-owned data
        self.train_sizes: dict[int, int] | None = {} if exp.data.client_files and exp.privacy.enabled else None
        self.sent_to: dict[str, list[int]] = {}  # message id -> partition ids it serves, for the last exchange
        self.row: LedgerRow | None = None  # the round in progress

    @classmethod
    def from_experiment(cls, exp: Experiment, **options) -> "FedLRStrategy":
        """The strategy of a whole experiment (``fedlr run``), whatever the class's own constructor takes."""
        strategy = cls.__new__(cls)
        FedLRStrategy.__init__(strategy, exp, **options)
        return strategy

    @property
    def privacy(self) -> PrivacyPlan | None:
        """The run's privacy plan (None without DP): from the clients' sizes as the workbench derives
        them, or under client-owned data as the clients reported them at enrollment."""
        if self._privacy is None and self.exp.privacy.enabled:
            if self.train_sizes is None:
                self._privacy = self.workbench.privacy
            else:
                if len(self.train_sizes) != self.exp.federation.num_clients:
                    raise RuntimeError("the privacy plan of client-owned data needs every client's size: enroll first")
                self._privacy = plan_privacy(self.exp, [self.train_sizes[p] for p in sorted(self.train_sizes)])
        return self._privacy

    @property
    def workbench(self):
        """The server's model and data for this experiment (``fedlr.workbench``): the initial
        adapter state, central evaluation, the clients' dataset sizes for the privacy plan."""
        from fedlr.workbench import get_workbench

        return get_workbench(self.exp)

    def initial_arrays(self) -> ArrayRecord:
        """The global state a run starts from: the adapters as the seed initializes them."""
        return to_record(self.workbench.adapted.round_state())

    def central_evaluation(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """An ``evaluate_fn`` for ``start``: the whole model on the central test split."""
        res = self.workbench.central_eval(from_record(arrays), {})
        return MetricRecord({"loss": res.loss, "accuracy": res.accuracy, **metric_values(res.metrics)})

    def fresh_state(self, state: State | None = None) -> ServerState:
        """A run's server state before round 0, holding the global ``state``."""
        fed = self.exp.federation
        accountant = self.privacy_mode.server_accountant(self.privacy, fed.num_clients, fed.clients_per_round)
        return ServerState(state=dict(state or {}), federation_accountant=accountant)

    # ---------------------------------------------------------------- what the server expects
    def update_keys(self, state: State) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What each client uploads: every state tensor but the per-round broadcast ones (FedSVD's A)."""
        return expected_of({k: v for k, v in state.items() if not self.spec.is_broadcast(k)})

    def reply_policy(self, server_round: int, server: ServerState) -> ReplyPolicy:
        """What a training reply of ``server_round`` must satisfy: each client's update keys at its
        own rank (``method.client_ranks``), decoded by the round's codec, no larger than the plan
        allows, within the clipping bound under ``client_central``, and with a positive example
        count when updates are weighted by it."""
        expected, method, cfg = self.update_keys(server.state), self.exp.method, self.exp.compression

        def expected_from(pid: int):
            return at_rank(expected, method.client_rank(pid)) if method.client_ranks else expected

        def max_bytes(want) -> int:
            shapes = {k: shape for k, (shape, _) in want.items()}
            if cfg.active:
                return planned_bytes(shapes, cfg, server_round=server_round, assignment=server.assignment)
            return record_wire_bytes([(k, math.prod(shape)) for k, shape in shapes.items()])

        def decode(record: ArrayRecord, want) -> State:
            if not cfg.active:
                return from_record(record)
            shapes = {k: shape for k, (shape, _) in want.items()}
            return decode_update(record_payload(record), cfg, shapes, server_round=server_round,
                                 assignment=server.assignment)

        return ReplyPolicy(expected_from, self.exp.federation.round_timeout_s, decode=decode, max_bytes=max_bytes,
                           norm_bound=self.privacy_mode.update_norm_bound(self.privacy),
                           weight_key=WEIGHT_KEY if self.by_examples else None)

    @property
    def by_examples(self) -> bool:
        """Whether updates are weighted by the example counts clients send (``federation.weighting``)."""
        return self.exp.federation.weighting == "examples"

    def collector(self, policy: ReplyPolicy) -> ReplyCollector:
        """A collector for the last exchange's replies (routing from enrollment)."""
        return ReplyCollector(policy, {node: pid for pid, node in self.node_of.items()}, self.sent_to)

    # ---------------------------------------------------------------- Flower's round hooks
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        fed = self.exp.federation
        pids = sample_clients(self.exp.seed, server_round, fed.num_clients, fed.clients_per_round)
        self.row.clients_sampled = pids
        messages, sent = self.downlink.messages(server_round, pids, self.node_of, self.server, arrays)
        self.row.downlink_bytes += sent
        if self.train_sizes is not None:  # each client gets its part of the plan (PrivacyPlan.seen_by)
            partition_of = {node: pid for pid, node in self.node_of.items()}
            for message in messages:
                pid = partition_of[message.metadata.dst_node_id]
                message.content["config"][PRIVACY_PLAN_KEY] = json.dumps(self.privacy.seen_by(pid).to_dict())
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        collected = self.collector(self.reply_policy(server_round, self.server)).collect(
            server_round, replies, self.row.clients_sampled)
        if not self.aggregate(self.server, self.row, collected):
            return None, None
        return to_record(self.server.state), train_metrics(self.row)

    def exchange(self, grid: Grid, messages: list[Message]) -> Iterable[Message]:
        """Send and wait for replies; remember which partitions each message served (Flower sets
        the message ids when it pushes them)."""
        partition_of = {node: pid for pid, node in self.node_of.items()}
        replies = grid.send_and_receive(messages, timeout=self.exp.federation.round_timeout_s)
        self.sent_to = {m.metadata.message_id: served_partitions(m, partition_of) for m in messages}
        return replies

    # ---------------------------------------------------------------- aggregation (no grid)
    def aggregate(self, server: ServerState, row: LedgerRow, collected: Collected) -> bool:
        """Fold one round's collected replies into ``server`` and ``row``: counts, failures and
        bytes; the privacy bookkeeping; then — with at least ``federation.min_replies`` accepted
        updates — the new global state (the privacy mode's combine, then the method's pure
        aggregation). Returns whether the round aggregated."""
        server_round = row.round
        collected.record(row)
        if server.federation_accountant is not None:
            server.federation_accountant.compose(1)  # a release every round, even one that carries no update
        elif self.privacy_mode.client_accountant:  # a sampled client may have released, whatever its reply
            for pid in row.clients_sampled:
                server.sampled_rounds[pid] = server.sampled_rounds.get(pid, 0) + 1
        accepted = collected.accepted
        for a in accepted:
            server.has_once.add(a.partition)  # it trained with them (a failed client gets them again)
            server.holds_broadcast[a.partition] = server_round  # it rebuilt B_t, kept for next round's delta
            if "epsilon" in a.metrics:
                server.client_epsilon[a.partition] = float(a.metrics["epsilon"])
                server.reported_rounds[a.partition] = server.reported_rounds.get(a.partition, 0) + 1
        needed = self.exp.federation.min_replies
        if len(accepted) < needed:
            log.warning("round %d: %d valid update(s), fewer than federation.min_replies = %d; the global "
                        "state is unchanged", server_round, len(accepted), needed)
            return False
        row.aggregated = True
        updates = [a.update for a in accepted]
        previous = server.state
        # the privacy mode combines them: as they are, sample-weighted; or one uniform (client_local) or
        # clipped-and-noised fixed-denominator (client_central) mean
        combined, weights = self.privacy_mode.combine(
            updates, [float(a.metrics[WEIGHT_KEY]) if self.by_examples else 1.0 for a in accepted], self.privacy,
            self.exp.federation.clients_per_round, self.exp.privacy.noise_source, self.exp.seed, server_round)
        server.state = self.spec.aggregate(server.state, combined, weights, **self.round_context(server_round))
        server.last_aggregate = {k: server.state[k] - previous[k] for k in updates[0]}
        row.train_loss = _weighted(accepted, "train_loss", WEIGHT_KEY)
        row.client_val_accuracy = _weighted(accepted, "val_accuracy", "val_examples")
        return True

    def round_context(self, server_round: int) -> dict:
        """What FedEx-LoRA and FLoRA's aggregation needs beyond the updates."""
        if not self.spec.needs_round_context:
            return {}
        return {"scale": self.exp.method.scale, "server_round": server_round, "seed": self.exp.seed}

    def record_privacy(self, server: ServerState, row: LedgerRow) -> None:
        """The round's cumulative ε (None without DP; 0 before any private release)."""
        if self.privacy is None:
            return
        row.delta = self.privacy.delta
        if server.federation_accountant is not None:
            row.epsilon = server.federation_accountant.epsilon(self.privacy.delta)
            return
        eps = client_epsilons(self.privacy_mode, self.privacy, server.sampled_rounds, server.reported_rounds,
                              server.client_epsilon)
        row.client_epsilon = {str(pid): e for pid, e in eps.items()}
        row.epsilon = max(eps.values(), default=0.0)

    # ---------------------------------------------------------------- the round loop
    def initialize(self, grid: Grid, row: LedgerRow) -> None:
        """Round 0 work before training: the method's init round, where it has one and the
        experiment asks for it (Fed-SB's federated init)."""
        if self.spec.runs_init_round(self.exp.method.init):
            INIT_ROUNDS[self.spec.init_round](self, grid, row)

    def model_arrays(self) -> ArrayRecord:
        """The whole model the server holds: the global state and the once-sent tensors."""
        return to_record({**self.server.once_state, **self.server.state})

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Flower's entry point: enroll, run round 0 (init, and ``evaluate_fn`` on the initial
        model), then rounds 1..``num_rounds`` (after a resume: the rounds after the restored one).
        ``initial_arrays``: the global state to start from (ignored on resume); ``timeout`` and the
        configs are Flower's and unused: fedlr's timeouts and client settings are the experiment's.
        ``evaluate_fn(round, arrays)`` (the whole model, as ``model_arrays``), called in the rounds
        ``evaluation.every`` schedules, may return "loss" and "accuracy", which the ledger records
        as the central evaluation (a round not evaluated has None there)."""
        started = time.perf_counter()
        if num_rounds != self.exp.federation.num_rounds:
            raise ValueError(f"num_rounds = {num_rounds}, but the experiment the clients receive (and the privacy "
                             f"plan) has federation.num_rounds = {self.exp.federation.num_rounds}")
        enroll(self, grid)  # first: under client-owned data the privacy plan needs the sizes it collects
        if not self.resumed:
            self.server = self.fresh_state(from_record(initial_arrays))
        server = self.server
        wall_offset = server.wall_time_s
        result = Result()
        stale: set[int] = set()  # partitions whose node lost the experiment: enrolled again next round
        seen = set(grid.get_node_ids())  # the nodes connected at the last look
        for server_round in range(server.round + 1, num_rounds + 1):
            self.row = row = LedgerRow(round=server_round, clients_sampled=[])
            if server_round == 0:
                self.initialize(grid, row)
            else:
                row.rejoined = rejoin(self, grid, stale, seen) or None  # nodes back from a restart, before sampling
                messages = self.configure_train(server_round, to_record(server.state), ConfigRecord(), grid)
                _, metrics = self.aggregate_train(server_round, self.exchange(grid, list(messages)))
                stale = lost_enrollment(row.failures)
                if metrics is not None:
                    result.train_metrics_clientapp[server_round] = metrics
            self.record_privacy(server, row)
            if (evaluate_fn is not None and self.exp.evaluation.due(server_round, num_rounds)
                    and (evaluated := evaluate_fn(server_round, self.model_arrays())) is not None):
                result.evaluate_metrics_serverapp[server_round] = evaluated
                row.eval_loss, row.eval_accuracy = evaluated.get("loss"), evaluated.get("accuracy")
                for name in EVAL_METRICS:  # balanced accuracy, macro-F1, ROC AUC, per-class counts (fedlr.metrics)
                    setattr(row, f"eval_{name}", evaluated.get(name))
            server.totals[0] += row.uplink_bytes
            server.totals[1] += row.downlink_bytes
            row.cumulative_uplink_bytes, row.cumulative_downlink_bytes = server.totals
            row.cumulative_bytes = sum(server.totals)
            row.wall_time_s = server.wall_time_s = round(wall_offset + time.perf_counter() - started, 3)
            server.round = server_round
            self.on_round(row)  # the ledger row first: a kill before the checkpoint replays the round
            if self.checkpoint is not None:
                self.checkpoint(server_round, server.state_dict(self.exp.fingerprint()))
        result.arrays = self.model_arrays()
        return result


def train_metrics(row: LedgerRow) -> MetricRecord:
    """A round's aggregated client-side figures, as Flower's ``Result`` keeps them."""
    figures = {"train_loss": row.train_loss, "val_accuracy": row.client_val_accuracy,
               "clients_replied": row.clients_replied, "uplink_bytes": row.uplink_bytes,
               "downlink_bytes": row.downlink_bytes}
    return MetricRecord({k: v for k, v in figures.items() if v is not None})


def _weighted(accepted, key: str, weight_key: str) -> float | None:
    pairs = [(float(a.metrics[key]), float(a.metrics[weight_key])) for a in accepted
             if key in a.metrics and weight_key in a.metrics]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total > 0 else None
