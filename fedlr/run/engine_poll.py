"""One scan of the message store per poll for Flower's simulation engine (Flower 1.39.0).

Flower's simulation engine hands messages to its workers from a thread that, every 0.1 s, asks
the in-memory LinkState for each virtual node's next message
(``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`` →
``InMemoryLinkState.get_message_ins(node_id, limit=1)``), and each of those calls scans every
stored message. One poll therefore costs O(N · S) for N nodes and S stored messages, holding the
GIL the ServerApp and the Ray backend need: at N = 10,000 that thread took 70 % of the driver's
samples and enrollment never finished (``benchmarks/scale.py``, docs/benchmarks.md).

``deliverable_messages`` does what one such pass does — drop expired or out-of-federation
messages (Flower's ``_check_stored_messages``), then hand out at most one undelivered message
per node, the first in store order, and mark it delivered — in one scan of the store: O(S), and
O(1) per poll when nothing is waiting. ``install`` puts the poller that uses it in place of
Flower's for the simulation this process runs; any other LinkState keeps Flower's own per-node
call.

Being cheap, the poll need not wait Flower's 0.1 s between looks: each exchange of a round waits
up to that on each side (tiny-model rounds showed a 0.1 s staircase, ``benchmarks/sim_overhead.txt``).
``poll_interval`` waits 0.01 s while few messages are pending and longer — up to Flower's 0.1 s —
as more are: a look costs a few µs per pending message, and 100 looks a second at 256 pending
enrollment queries slowed 10,000-client setup from 76–80 s to 91–92 s
(``benchmarks/poll_interval.txt``), while rounds gained 0.09 s.
``fast_pull`` gives the ServerApp's in-memory grid the same schedule for collecting replies, and
``stop_when`` lets a Ctrl-C end the ServerApp's thread, which would otherwise wait for replies up
to ``federation.round_timeout_s``.
"""

from __future__ import annotations

import logging
import threading
from queue import Queue

import flwr
from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkState
from flwr.supercore.date import now
from flwr.superlink.grid import InMemoryGrid

log = logging.getLogger("fedlr")
FLOWER_VERSION = "1.39.0"  # the engine whose poller this replaces (pinned in pyproject.toml)
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.01, 0.1  # Flower's is 0.1 s, for a poll that costs O(N · S)
INTERVAL_PER_MESSAGE_S = 0.0004  # 256 pending messages: 0.1 s; 25 or fewer: 0.01 s


def poll_interval(pending: int) -> float:
    """Seconds between looks for messages while ``pending`` are outstanding."""
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, pending * INTERVAL_PER_MESSAGE_S))


def deliverable_messages(state: InMemoryLinkState, nodes: set[int]) -> list[Message]:
    """The messages one pass of Flower's per-node poll would deliver to ``nodes``: at most one
    undelivered message per node (its first in store order), after deleting expired messages;
    each is marked delivered, as ``get_message_ins`` does."""
    with state.lock:
        ids = list(state.message_ins_store)
        if not ids:
            return []
        state._check_stored_messages(set(ids))  # pylint: disable=protected-access
        picked: dict[int, Message] = {}
        for msg_id in ids:
            msg = state.message_ins_store.get(msg_id)
            if msg is None or msg.metadata.delivered_at != "":
                continue
            node = msg.metadata.dst_node_id
            if node in nodes and node not in picked:
                picked[node] = msg
        delivered_at = now().isoformat()
        for msg in picked.values():
            msg.metadata.delivered_at = delivered_at
    return list(picked.values())


def add_messages_to_queue(state: LinkState, queue: Queue, nodes_mapping: dict[int, int],
                          f_stop: threading.Event) -> None:
    """Drop-in for ``vce_api.add_messages_to_queue`` (same arguments), looking every
    ``poll_interval`` of the messages the store holds."""
    if not isinstance(state, InMemoryLinkState):
        return FLOWER_POLLER(state, queue, nodes_mapping, f_stop)
    nodes = set(nodes_mapping)
    while not f_stop.is_set():
        for msg in deliverable_messages(state, nodes):
            queue.put(msg)
        f_stop.wait(poll_interval(len(state.message_ins_store)))
    return None


FLOWER_POLLER = vce_api.add_messages_to_queue


def install() -> bool:
    """Use ``add_messages_to_queue`` in Flower's simulation engine; returns whether it is in
    place. With another Flower than the one it was written against, Flower's own poller stays
    (with a warning): the engine's internals may have changed."""
    if flwr.__version__ != FLOWER_VERSION:
        log.warning("Flower %s is not %s: keeping its own simulation poller, whose cost grows with "
                    "clients × queued messages", flwr.__version__, FLOWER_VERSION)
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue
    return True


def fast_pull(grid) -> None:
    """Let a simulation's ``InMemoryGrid`` look for the replies of each ``send_and_receive`` every
    ``poll_interval`` of the messages sent (its ``pull_interval`` is 0.1 s); other grids are left
    as they are."""
    if not isinstance(grid, InMemoryGrid):
        return
    send = grid.send_and_receive

    def send_and_receive(messages, *, timeout=None):
        messages = list(messages)
        grid.pull_interval = poll_interval(len(messages))
        return send(messages, timeout=timeout)

    grid.send_and_receive = send_and_receive


class ServerStopped(RuntimeError):
    """Raised in the ServerApp's thread by a grid whose stop event is set (``stop_when``)."""


def stop_when(grid, stop: threading.Event) -> None:
    """Make ``grid``'s next call that sends, waits for replies or waits for clients raise
    ``ServerStopped`` once ``stop`` is set, so the ServerApp's thread ends within one poll interval.
    The round in progress is dropped; every finished round's checkpoint is already on disk."""
    for name in ("push_messages", "pull_messages", "get_node_ids"):
        call = getattr(grid, name)

        def guarded(*args, _call=call, _name=name, **kwargs):
            if stop.is_set():
                raise ServerStopped(f"the run was interrupted (grid.{_name})")
            return _call(*args, **kwargs)

        setattr(grid, name, guarded)
