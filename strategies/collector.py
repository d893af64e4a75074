"""Replies in, accepted updates and typed failures out — a pure step, no grid and no strategy.

A round's replies are checked against what the server expects of each client (``ReplyPolicy``):
a reply that reports an error, a sampled client that never replied (timeout), and an update
that is malformed, too large for the plan, of the wrong keys / shapes / dtypes, not finite
(``fedlr.validation.update_problem``), outside the clipping bound the server's noise assumes,
or without a positive example count when updates are weighted by it, each become a
``Failure``; the rest are ``Accepted``, sorted by partition id so aggregation never depends on
reply order (reference/flower.md §12).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedlr.privacy.client_level import global_norm
from fedlr.results.ledger import LedgerRow
from fedlr.run.records import FUSED_ACTION, FUSED_KEY, from_record, fused_key
from fedlr.validation import update_problem

log = logging.getLogger("fedlr")
State = dict[str, torch.Tensor]
Expected = Mapping[str, tuple[tuple[int, ...], torch.dtype]]
WEIGHT_KEY = "num-examples"  # Flower's weighting key: a client's training examples n_k


@dataclass(frozen=True)
class Failure:
    """A sampled client whose update is not aggregated this round: ``kind`` is ``error`` (its
    reply reports one), ``timeout`` (no reply) or ``rejected`` (a reply that fails a check)."""

    partition: int
    kind: str
    reason: str

    def to_dict(self) -> dict:
        return {"partition": self.partition, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class Accepted:
    partition: int
    update: State
    metrics: MetricRecord


@dataclass
class Collected:
    """One round's replies, sorted out."""

    accepted: list[Accepted] = field(default_factory=list)  # by partition id
    failures: list[Failure] = field(default_factory=list)  # errors and rejections in reply order, then timeouts
    replied: int = 0  # replies without an error (rejected ones included)
    uplink_bytes: int = 0  # ArrayRecord bytes of those replies

    def record(self, row: LedgerRow) -> None:
        """Add this exchange's counts, bytes and failures to the round's ledger row."""
        row.clients_replied += self.replied
        row.clients_failed += self.failed
        row.clients_rejected += self.rejected
        row.uplink_bytes += self.uplink_bytes
        row.failures.extend(f.to_dict() for f in self.failures)

    @property
    def rejected(self) -> int:
        return sum(f.kind == "rejected" for f in self.failures)

    @property
    def failed(self) -> int:
        return sum(f.kind != "rejected" for f in self.failures)


@dataclass(frozen=True)
class ReplyPolicy:
    """What the server expects of a reply this round."""

    expected: Callable[[int], Expected]  # partition id -> the tensors it must send (its own rank)
    timeout_s: float  # how long the round waited, for the timeout failures' reason
    decode: Callable[[ArrayRecord, Expected], State] = lambda record, expected: from_record(record)
    max_bytes: Callable[[Expected], int] | None = None  # the largest reply the plan allows
    norm_bound: float | None = None  # client_central: every update within the clipping bound S
    weight_key: str | None = WEIGHT_KEY  # None: updates weighted uniformly, no count expected

    def problem(self, content: RecordDict, received: int, array_key: str, expected: Expected) -> tuple[str | None, State | None]:
        """Why the reply cannot be aggregated (or None), and its decoded tensors."""
        metrics = content["metrics"]
        reason, tensors = None, None
        if self.max_bytes is not None and received > (allowed := self.max_bytes(expected)):
            reason = f"{received} bytes received, more than the {allowed} the plan allows"
        else:
            tensors = self.decode(content[array_key], expected)
            reason = update_problem(tensors, expected) or self.norm_problem(tensors)
        if self.weight_key is not None:
            weight = float(metrics[self.weight_key])
            if reason is None and not weight > 0:
                reason = f"{self.weight_key} {weight} is not positive"
        return reason, tensors

    def norm_problem(self, update: State) -> str | None:
        """A client that skipped clipping would break the guarantee the server's noise gives."""
        if self.norm_bound is None:
            return None
        norm = global_norm(update)
        bound = self.norm_bound
        return None if norm <= bound * (1 + 1e-4) else f"update norm {norm:.6g} exceeds the clipping bound S = {bound}"


class ReplyCollector:
    """Sorts one exchange's replies. ``partition_of``: Flower node id -> partition id (from
    enrollment); ``sent_to``: message id -> the partition ids that message served (a fused
    message serves a group; a reply the SuperLink writes for a dead node comes from its own id)."""

    def __init__(self, policy: ReplyPolicy, partition_of: Mapping[int, int],
                 sent_to: Mapping[str, Sequence[int]] | None = None):
        self.policy = policy
        self.partition_of = partition_of
        self.sent_to = sent_to or {}

    def collect(self, server_round: int, replies: Iterable[Message], sampled: Sequence[int],
                array_key: str = "arrays") -> Collected:
        out = Collected()
        heard = set()
        for pid, error, content in self.client_replies(replies, array_key):
            heard.add(pid)
            if error is not None:
                self._fail(out, server_round, Failure(pid, "error", error))
                continue
            out.replied += 1
            received = sum(rec.count_bytes() for rec in content.array_records.values())
            out.uplink_bytes += received
            try:
                reason, tensors = self.policy.problem(content, received, array_key, self.policy.expected(pid))
            except Exception as e:  # malformed payload
                reason = f"malformed reply: {type(e).__name__}: {e}"
            if reason is not None:
                out.failures.append(Failure(pid, "rejected", reason))
                log.warning("round %d: rejected update from partition %d: %s", server_round, pid, reason)
                continue
            out.accepted.append(Accepted(pid, tensors, content["metrics"]))
        for pid in sorted(set(sampled) - heard):
            self._fail(out, server_round, Failure(pid, "timeout", f"no reply within {self.policy.timeout_s} s"))
        out.accepted.sort(key=lambda a: a.partition)
        return out

    @staticmethod
    def _fail(out: Collected, server_round: int, failure: Failure) -> None:
        out.failures.append(failure)
        log.warning("round %d: client %d failed (%s): %s", server_round, failure.partition, failure.kind,
                    failure.reason)

    def client_replies(self, replies: Iterable[Message], array_key: str):
        """(partition id, error reason or None, content) for each client a reply answers for: a
        fused reply stands for every client of its group, each client's arrays and metrics under
        its own keys."""
        for msg in replies:
            pids = self.sent_to.get(msg.metadata.reply_to_message_id,
                                    [self.partition_of.get(msg.metadata.src_node_id, -1)])
            for pid in pids:
                if msg.has_error():
                    yield pid, msg.error.reason, None
                elif msg.metadata.message_type != FUSED_ACTION:
                    yield pid, None, msg.content
                else:
                    keys = {kind: fused_key(kind, pid) for kind in (array_key, "metrics")}
                    yield pid, None, RecordDict({kind: msg.content[key] for kind, key in keys.items()
                                                 if key in msg.content})


def served_partitions(message: Message, partition_of: Mapping[int, int]) -> list[int]:
    """The partition ids a training message serves: its group when fused, else its node's."""
    if message.metadata.message_type == FUSED_ACTION:
        return [int(p) for p in message.content["config"][FUSED_KEY]]
    return [partition_of[message.metadata.dst_node_id]]
