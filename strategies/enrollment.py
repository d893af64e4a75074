"""Enrollment: wait for every client, send it the experiment, learn its partition id.

Two nodes claiming one partition id would train on the same data while another partition never
trains (one of them would silently idle): that is refused, naming both nodes; so is a partition id
outside 0..N−1. Under client-owned data with DP each client also reports its number of training
examples n_k, from which the server plans σ and ε (``FedLRStrategy.privacy``).

Rejoining (``rejoin``, before every round is sampled): a SuperNode that comes back after a
restart is enrolled again — a new node id (no SuperNode authentication) as soon as it is connected,
a known one (the same key) once it is connected again after the SuperLink counted it gone, or a
reply said it lost the experiment (``NOT_ENROLLED``). Its
query names the last finished round, so a node with a ``state-dir`` restores its state of then
(its accountant included: ε keeps counting).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Iterable

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlr.run.records import (NOT_ENROLLED, PARTITION_KEY, RESUME_ROUND_KEY, STATE_DIR_KEY, TRAIN_EXAMPLES_KEY,
                               experiment_config)

if TYPE_CHECKING:
    from fedlr.strategies.base import FedLRStrategy

log = logging.getLogger("fedlr")
ENROLL_BATCH = 256  # enrollment queries in flight at once


class EnrollmentError(RuntimeError):
    """The clients that answered cannot make up the federation (a partition claimed twice or by nobody)."""


def partitions_of(replies: Iterable[Message], node_of: dict[int, int], num_clients: int,
                  sizes: dict[int, int] | None = None) -> None:
    """Add each enrollment reply's (partition id -> node id) to ``node_of``; a partition id out of
    range, or one that two nodes report, is refused, naming the nodes. ``sizes``: also collect each
    client's reported number of training examples n_k (client-owned data under DP)."""
    for reply in replies:
        if reply.has_error():
            raise EnrollmentError(f"client enrollment failed: {reply.error.reason}")
        pid = int(reply.content["metrics"][PARTITION_KEY])
        node = reply.metadata.src_node_id
        if sizes is not None:
            sizes[pid] = reported_size(reply, node)
        if not 0 <= pid < num_clients:
            raise EnrollmentError(f"node {node} reports partition-id {pid}, outside 0..{num_clients - 1} "
                                  f"(federation.num_clients = {num_clients})")
        if pid in node_of and node_of[pid] != node:
            raise EnrollmentError(
                f"nodes {node_of[pid]} and {node} both report partition-id {pid}: each client needs its own "
                f"partition (start every SuperNode with a different --node-config 'partition-id=N')")
        node_of[pid] = node


def reported_size(reply: Message, node: int) -> int:
    """The n_k an enrollment reply reports (client-owned data under DP)."""
    if TRAIN_EXAMPLES_KEY not in reply.content["metrics"]:
        raise EnrollmentError(f"node {node} did not report its number of training examples, which the privacy plan "
                              "of client-owned data needs (a SuperNode of an older fedlr?)")
    return int(reply.content["metrics"][TRAIN_EXAMPLES_KEY])


def _query(strategy: "FedLRStrategy", resume_round: int) -> RecordDict:
    query = experiment_config(strategy.exp.to_json())
    query[RESUME_ROUND_KEY] = resume_round
    if strategy.client_state_dir is not None:
        query[STATE_DIR_KEY] = strategy.client_state_dir
    return RecordDict({"config": query})


def lost_enrollment(failures: Iterable[dict]) -> set[int]:
    """Partitions whose round failed because their node no longer holds the experiment (restarted
    with the same node id): they are enrolled again before the next round."""
    return {f["partition"] for f in failures if f["kind"] == "error" and NOT_ENROLLED in f["reason"]}


def rejoin(strategy: "FedLRStrategy", grid: Grid, stale: set[int], seen: set[int]) -> list[int]:
    """Enroll again the connected nodes that are not enrolled (new node ids), the enrolled ones
    that were not connected at the last look (``seen``, updated here: a node back with its node id)
    and the nodes of the ``stale`` partitions; return the partitions that rejoined. A new node
    takes over a partition only from a node that is gone; one claiming a partition whose node is
    still connected is left out (logged) — it would be a second copy of that client."""
    connected = set(grid.get_node_ids())
    known = set(strategy.node_of.values())
    back = (known & connected) - seen
    seen.clear()
    seen.update(connected)
    nodes = sorted((connected - known) | back
                   | {strategy.node_of[p] for p in stale if strategy.node_of.get(p) in connected})
    if not nodes:
        return []
    content = _query(strategy, strategy.server.round)
    msgs = [Message(content, dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    rejoined = []
    for reply in grid.send_and_receive(msgs, timeout=strategy.exp.federation.enroll_timeout_s):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %d could not rejoin: %s", node, reply.error.reason)
            continue
        pid = int(reply.content["metrics"][PARTITION_KEY])
        holder = strategy.node_of.get(pid)
        if not 0 <= pid < strategy.exp.federation.num_clients or (holder != node and holder in connected):
            log.warning("node %d claims partition-id %d, which node %s serves: left out", node, pid, holder)
            continue
        if strategy.train_sizes is not None and (n := reported_size(reply, node)) != strategy.train_sizes[pid]:
            log.warning("node %d rejoins as partition %d with %d training examples, the privacy plan has %d: left out",
                        node, pid, n, strategy.train_sizes[pid])
            continue
        strategy.node_of[pid] = node
        rejoined.append(pid)
    return sorted(rejoined)


def enroll(strategy: "FedLRStrategy", grid: Grid) -> None:
    """Fill ``strategy.node_of`` once ``federation.num_clients`` nodes are connected and have answered."""
    exp = strategy.exp
    want = exp.federation.num_clients
    deadline = time.monotonic() + exp.federation.enroll_timeout_s
    while len(node_ids := list(grid.get_node_ids())) < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(node_ids)} of {want} clients connected")
        time.sleep(0.5)
    content = _query(strategy, strategy.server.round if strategy.resumed else -1)
    # in batches: a SuperLink's in-memory LinkState scans every stored message for each node
    # that pulls, so N queries at once would cost N² per pull interval (the simulation's poller
    # scans once per poll instead: fedlr.run.engine_poll)
    for start in range(0, len(node_ids), ENROLL_BATCH):
        batch = node_ids[start:start + ENROLL_BATCH]
        msgs = [Message(content, dst_node_id=n, message_type=MessageType.QUERY) for n in batch]
        partitions_of(grid.send_and_receive(msgs, timeout=exp.federation.enroll_timeout_s), strategy.node_of, want,
                      strategy.train_sizes)
    missing = sorted(set(range(want)) - set(strategy.node_of))
    if missing:
        raise EnrollmentError(f"no client reported partition ids {missing}")
