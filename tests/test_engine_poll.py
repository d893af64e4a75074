"""fedlr.run.engine_poll against Flower's own poll, on Flower's real in-memory LinkState: the same
messages delivered (at most one per node, the first stored, expired ones deleted), each stored
message examined once per poll instead of once per node."""

from __future__ import annotations

import threading
import time
from queue import Queue

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from fedlr.run import engine_poll

RUN_ID = 7


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages take their run and source node from the process's task identity, which
    ``flwr.simulation.run_simulation`` sets; set it the same way for these tests, then restore it."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)


def engine(num_nodes: int):
    """Flower's simulation set-up: an in-memory LinkState, a run, ``num_nodes`` registered nodes
    (node id -> partition id) and the ServerApp's grid (as ``flwr.simulation.run_simulation``)."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=RUN_ID)
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    nodes = vce_api._register_nodes(num_nodes, factory)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    return state, nodes, grid


def push(grid, dst_nodes: list[int], ttl: float | None = None) -> list[str]:
    msgs = [Message(RecordDict({"config": ConfigRecord({"i": i})}), dst_node_id=n, message_type=MessageType.QUERY,
                    ttl=ttl) for i, n in enumerate(dst_nodes)]
    return list(grid.push_messages(msgs))


def flower_pass(state, nodes) -> list[Message]:
    """One pass of Flower's own loop (vce_api.add_messages_to_queue without its sleep)."""
    out = []
    for node_id in nodes:
        out.extend(state.get_message_ins(node_id=node_id, limit=1))
    return out


def twin_engines(num_nodes: int, layout):
    """Two identical engines with the same messages pushed (``layout`` maps node index lists)."""
    out = []
    for _ in range(2):
        state, nodes, grid = engine(num_nodes)
        order = list(nodes)
        push(grid, [order[i] for i in layout])
        out.append((state, nodes, order))
    return out


def by_partition(msgs, nodes):
    return sorted((nodes[m.metadata.dst_node_id], int(m.content["config"]["i"])) for m in msgs)


def test_same_messages_as_flowers_poll_pass_after_pass():
    # node 1 has three queued messages, node 4 two: one per node per pass, first stored first
    layout = [0, 1, 1, 4, 2, 1, 4, 5]
    (s1, n1, _), (s2, n2, _) = twin_engines(6, layout)
    for _ in range(4):
        ours = engine_poll.deliverable_messages(s1, set(n1))
        theirs = flower_pass(s2, n2)
        assert by_partition(ours, n1) == by_partition(theirs, n2)
        assert all(m.metadata.delivered_at != "" for m in ours)
    assert engine_poll.deliverable_messages(s1, set(n1)) == []


def test_first_pass_gives_one_message_per_node_in_store_order():
    state, nodes, grid = engine(5)
    order = list(nodes)
    push(grid, [order[3], order[3], order[0]])
    first = engine_poll.deliverable_messages(state, set(nodes))
    assert by_partition(first, nodes) == [(0, 2), (3, 0)]
    second = engine_poll.deliverable_messages(state, set(nodes))
    assert by_partition(second, nodes) == [(3, 1)]


def test_expired_messages_are_deleted_not_delivered():
    state, nodes, grid = engine(3)
    order = list(nodes)
    ids = push(grid, [order[0]], ttl=0.2)
    live = push(grid, [order[1]])
    time.sleep(0.3)
    assert engine_poll.deliverable_messages(state, set(nodes))[0].metadata.message_id == live[0]
    assert ids[0] not in state.message_ins_store


def test_messages_for_other_nodes_stay_queued():
    state, nodes, grid = engine(4)
    order = list(nodes)
    push(grid, [order[0], order[2]])
    got = engine_poll.deliverable_messages(state, {order[0]})
    assert by_partition(got, nodes) == [(0, 0)]
    assert by_partition(engine_poll.deliverable_messages(state, set(nodes)), nodes) == [(2, 1)]


def test_one_scan_per_poll_not_one_per_node(monkeypatch):
    """The mechanism the scale benchmark depends on: Flower's pass examines every stored message
    once per node (N · S), the replacement once (S)."""
    num_nodes, queued = 300, 20
    counts = {}
    for name, poll in (("flower", flower_pass), ("fedlr", lambda s, n: engine_poll.deliverable_messages(s, set(n)))):
        state, nodes, grid = engine(num_nodes)
        push(grid, list(nodes)[:queued])
        examined = [0]
        check = state._check_stored_messages

        def counting(ids, run_id=None, check=check, examined=examined):
            examined[0] += len(ids)
            return check(ids, run_id)

        monkeypatch.setattr(state, "_check_stored_messages", counting)
        assert len(poll(state, nodes)) == queued
        counts[name] = examined[0]
    assert counts["fedlr"] == queued
    assert counts["flower"] >= num_nodes * queued // 2


def test_poller_thread_delivers_and_stops():
    state, nodes, grid = engine(4)
    order = list(nodes)
    push(grid, [order[1], order[2]])
    queue, stop = Queue(), threading.Event()
    th = threading.Thread(target=engine_poll.add_messages_to_queue, args=(state, queue, nodes, stop))
    th.start()
    got = [queue.get(timeout=5), queue.get(timeout=5)]
    stop.set()
    th.join(timeout=5)
    assert not th.is_alive()
    assert by_partition(got, nodes) == [(1, 0), (2, 1)]


def test_install_replaces_flowers_poller_only_on_the_pinned_version(monkeypatch):
    monkeypatch.setattr(vce_api, "add_messages_to_queue", engine_poll.FLOWER_POLLER)
    assert engine_poll.install()
    assert vce_api.add_messages_to_queue is engine_poll.add_messages_to_queue
    monkeypatch.setattr(vce_api, "add_messages_to_queue", engine_poll.FLOWER_POLLER)
    monkeypatch.setattr(engine_poll.flwr, "__version__", "9.9.9")
    assert not engine_poll.install()
    assert vce_api.add_messages_to_queue is engine_poll.FLOWER_POLLER


def test_poll_interval_is_short_for_a_round_and_flowers_for_a_burst():
    assert engine_poll.poll_interval(0) == engine_poll.poll_interval(10) == 0.01
    assert 0.01 < engine_poll.poll_interval(100) < 0.1
    assert engine_poll.poll_interval(256) == engine_poll.poll_interval(10_000) == 0.1  # Flower's own


def test_fast_pull_sets_the_in_memory_grids_interval_per_exchange():
    state, nodes, grid = engine(30)
    assert grid.pull_interval == 0.1  # Flower's
    engine_poll.fast_pull(grid)
    order = list(nodes)
    stop = threading.Event()
    th = threading.Thread(target=engine_poll.add_messages_to_queue, args=(state, Queue(), nodes, stop))
    th.start()  # delivers the messages; nobody answers them, so each exchange times out
    try:
        for count in (2, 30):
            msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in order[:count]]
            assert grid.send_and_receive(msgs, timeout=0.05) == []
            assert grid.pull_interval == engine_poll.poll_interval(count)
    finally:
        stop.set()
        th.join(timeout=5)

    class OtherGrid:
        pull_interval = 3.0

        def send_and_receive(self, messages, *, timeout=None):
            return []

    other = OtherGrid()
    engine_poll.fast_pull(other)
    assert other.pull_interval == 3.0 and "send_and_receive" not in vars(other)
