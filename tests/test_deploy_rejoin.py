"""Nodes that come back (issue 21.2), through the real strategy and ClientApp with an in-process
grid (benchmarks/common.py's ``InProcessGrid``) that restarts a SuperNode after round 1:

- with the same node id (SuperNode authentication: the same key) and its state gone, its round-2
  reply says it lost the experiment; it is enrolled again before round 3 and trains;
- with a new node id (no authentication), it is enrolled again before the next round is sampled.

Its ``state-dir`` brings its DP accountant back: ε keeps counting, never reset. The ledger row of
the round it rejoined before names it in ``rejoined``."""

import sys

import pytest
from flwr.app import RecordDict

from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "benchmarks"))

from common import InProcessGrid  # noqa: E402

from fedlr.config import load_experiment  # noqa: E402
from fedlr.privacy.accountant import StepAccountant  # noqa: E402
from fedlr.results import RunDir  # noqa: E402
from fedlr.results.console import Console  # noqa: E402
from fedlr.run.records import NOT_ENROLLED  # noqa: E402


class RestartingGrid(InProcessGrid):
    """Restarts the node of partition ``pid`` once round ``after``'s training messages were
    answered: its state emptied (``same_id``) or a new node id in its place."""

    def __init__(self, app, num_nodes, pid, after, same_id, state_dirs):
        super().__init__(app, num_nodes)
        for node, ctx in self.contexts.items():
            ctx.node_config["state-dir"] = str(state_dirs / f"node-{node}")
        self.pid, self.after, self.same_id, self.restarted = pid, after, same_id, False

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        rounds = {int(m.content["config"]["server-round"]) for m in messages if m.metadata.message_type == "train"}
        if self.after in rounds and not self.restarted:
            self.restarted = True
            node = self.pid + 1
            if self.same_id:
                self.contexts[node].state = RecordDict()
            else:
                old = self.contexts.pop(node)
                self.contexts[100] = type(old)(run_id=old.run_id, node_id=100, node_config=dict(old.node_config),
                                               state=RecordDict(), run_config={})
        return replies


class AwayGrid(InProcessGrid):
    """The node of partition ``pid`` goes away after round 1 (the SuperLink reports it unavailable
    and leaves it out of the connected nodes) and is back, restarted with its node id (the same
    key) and no state, from the next look at the connected nodes on."""

    def __init__(self, app, num_nodes, pid):
        super().__init__(app, num_nodes)
        self.node, self.away, self.looks = pid + 1, False, 0

    def get_node_ids(self):
        ids = super().get_node_ids()
        if self.away:
            self.looks += 1
            if self.looks > 1:  # back
                self.away = False
                self.contexts[self.node].state = RecordDict()
            else:
                ids.remove(self.node)
        return ids

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error, Message

        rounds = {int(m.content["config"]["server-round"]) for m in messages if m.metadata.message_type == "train"}
        if self.away:
            gone = [m for m in messages if m.metadata.dst_node_id == self.node]
            kept = [m for m in messages if m.metadata.dst_node_id != self.node]
            replies = super().send_and_receive(kept, timeout=timeout)
            for m in gone:
                m.metadata.__dict__["_message_id"] = f"gone-{id(m)}"
                reply = Message(Error(code=0, reason="Node Unavailable"), reply_to=m)
                reply.metadata.__dict__["_src_node_id"] = self.node
                replies.append(reply)
            return replies
        replies = super().send_and_receive(messages, timeout=timeout)
        if 1 in rounds:
            self.away = True
        return replies


def test_a_node_back_with_its_node_id_after_it_was_gone_rejoins_at_once(tmp_path, one_torch_thread):
    from fedlr.clients.app import app
    from fedlr.run.server import run_server

    exp = load_experiment(TINY, [f'output.dir="{tmp_path}"', "output.export_peft=false", 'method.name="fedit"',
                                 "federation.num_clients=2", "federation.clients_per_round=2",
                                 "federation.num_rounds=3", "evaluation.central=false"])
    run_dir = RunDir.create(exp, "away")
    run_server(AwayGrid(app, 2, pid=1), exp, run_dir, Console(quiet=True))
    r1, r2, r3 = [r.to_dict() for r in run_dir.ledger()][1:]
    assert [(f["partition"], f["reason"]) for f in r2["failures"]] == [(1, "Node Unavailable")], r2
    assert r3["rejoined"] == [1] and r3["clients_replied"] == 2 and not r3["failures"], r3  # no round lost to it


def _run(tmp_path, same_id: bool):
    from fedlr.clients.app import STATE_ACCOUNTANT, app
    from fedlr.run.server import run_server

    exp = load_experiment(TINY, [f'output.dir="{tmp_path}"', "output.export_peft=false", 'method.name="fedit"',
                                 'privacy.mode="sample"', "privacy.noise_multiplier=1.0", "privacy.delta=1e-3",
                                 "federation.num_clients=2", "federation.clients_per_round=2",
                                 "federation.num_rounds=3", "evaluation.central=false"])
    grid = RestartingGrid(app, 2, pid=1, after=1, same_id=same_id, state_dirs=tmp_path / "state")
    run_dir = RunDir.create(exp, "rejoin")
    run_server(grid, exp, run_dir, Console(quiet=True))
    node = 2 if same_id else 100
    accountant = StepAccountant.from_state(dict(grid.contexts[node].state[STATE_ACCOUNTANT]))
    return [r.to_dict() for r in run_dir.ledger()], accountant


def test_a_node_restarted_with_its_node_id_rejoins_after_the_round_it_lost(tmp_path, one_torch_thread):
    rows, accountant = _run(tmp_path, same_id=True)
    r1, r2, r3 = rows[1:]
    assert "rejoined" not in r1 and "rejoined" not in rows[0]  # rows without a rejoin are as before
    (failure,) = r2["failures"]
    assert failure["partition"] == 1 and failure["kind"] == "error" and NOT_ENROLLED in failure["reason"]
    assert r2["clients_replied"] == 1 and "rejoined" not in r2
    assert r3["rejoined"] == [1] and r3["clients_replied"] == 2 and not r3["failures"]
    # its accountant came back from its state-dir: round 3 composed onto round 1, ε above one round's;
    # the ledger also charges the lost round 2 (a sampled client may have released), so it is above that
    assert r3["client_epsilon"]["1"] > accountant.epsilon(1e-3) > r1["client_epsilon"]["1"] > 0


def test_a_node_back_with_a_new_node_id_rejoins_before_the_next_round(tmp_path, one_torch_thread):
    rows, accountant = _run(tmp_path, same_id=False)
    r1, r2, r3 = rows[1:]
    assert r2["rejoined"] == [1] and r2["clients_replied"] == 2 and not r2["failures"]
    assert "rejoined" not in r3 and r3["clients_replied"] == 2
    assert r3["client_epsilon"]["1"] > r2["client_epsilon"]["1"] > r1["client_epsilon"]["1"] > 0
    assert accountant.epsilon(1e-3) == pytest.approx(r3["client_epsilon"]["1"], rel=1e-9)
