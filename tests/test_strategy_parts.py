"""The server strategy's parts without Ray: enrollment, the server state a checkpoint holds, and
the ε the ledger charges a DP client whose reply was lost (issue 20.3)."""

import sys

import pytest
import torch
from flwr.app import Metadata, Message, MetricRecord, RecordDict

from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "benchmarks"))

from common import InProcessGrid  # noqa: E402

from fedlr import checkpoint  # noqa: E402
from fedlr.config import experiment_from_dict, load_experiment  # noqa: E402
from fedlr.privacy.accountant import StepAccountant  # noqa: E402
from fedlr.privacy.federation_accountant import FederationAccountant  # noqa: E402
from fedlr.privacy.modes import privacy_mode  # noqa: E402
from fedlr.privacy.planning import plan_privacy  # noqa: E402
from fedlr.results import RunDir  # noqa: E402
from fedlr.results.console import Console  # noqa: E402
from fedlr.results.ledger import LedgerRow  # noqa: E402
from fedlr.results.ledger import read_ledger  # noqa: E402
from fedlr.run.records import to_record  # noqa: E402
from fedlr.strategies import FedIT, ServerState  # noqa: E402
from fedlr.strategies.client_epsilon import planned_epsilon  # noqa: E402
from fedlr.strategies.collector import ReplyCollector  # noqa: E402
from fedlr.strategies.enrollment import EnrollmentError, enroll  # noqa: E402


# ----------------------------------------------------------------------------- enrollment
def test_two_nodes_claiming_one_partition_are_refused_naming_both():
    from fedlr.clients.app import app

    exp = load_experiment(TINY, ['method.name="fedit"', "federation.num_clients=3", "federation.clients_per_round=2",
                                 "federation.enroll_timeout_s=5"])
    grid = InProcessGrid(app, 3)
    grid.contexts[3].node_config["partition-id"] = 1  # nodes 2 and 3 both say partition 1; nobody has 2
    with pytest.raises(EnrollmentError, match=r"nodes 2 and 3 both report partition-id 1") as e:
        enroll(FedIT.from_experiment(exp), grid)
    assert "--node-config 'partition-id=N'" in str(e.value)


def test_a_partition_id_out_of_range_is_refused_naming_the_node():
    from fedlr.clients.app import app

    exp = load_experiment(TINY, ['method.name="fedit"', "federation.num_clients=2", "federation.clients_per_round=2"])
    grid = InProcessGrid(app, 2)
    grid.contexts[2].node_config["partition-id"] = 7
    with pytest.raises(EnrollmentError, match=r"node 2 reports partition-id 7, outside 0\.\.1"):
        enroll(FedIT.from_experiment(exp), grid)


def test_enrollment_maps_each_partition_to_its_node():
    from fedlr.clients.app import app

    exp = load_experiment(TINY, ['method.name="fedit"', "federation.num_clients=3", "federation.clients_per_round=2"])
    strategy = FedIT.from_experiment(exp)
    enroll(strategy, InProcessGrid(app, 3))
    assert strategy.node_of == {0: 1, 1: 2, 2: 3}


# ----------------------------------------------------------------------------- server state
def test_server_state_survives_a_checkpoint_file_and_refuses_another_experiment(tmp_path):
    acc = FederationAccountant(1.1, 10, 3)
    acc.compose(2)
    server = ServerState(round=4, state={"a": torch.arange(6.0).reshape(2, 3)}, once_state={"b": torch.ones(2)},
                         has_once={3, 1}, assignment={"a": 2}, last_aggregate={"a": torch.zeros(2, 3)},
                         client_epsilon={1: 0.5}, federation_accountant=acc, totals=[10, 20], wall_time_s=3.5,
                         holds_broadcast={1: 4}, sampled_rounds={1: 2, 3: 1}, reported_rounds={1: 1})
    checkpoint.save(tmp_path, 4, server.state_dict("abc"))
    _, saved = checkpoint.latest(tmp_path)
    back = ServerState.from_state(saved, "abc")
    assert torch.equal(back.state["a"], server.state["a"]) and torch.equal(back.once_state["b"], torch.ones(2))
    assert (back.round, back.has_once, back.assignment, back.client_epsilon, back.totals, back.wall_time_s) == \
        (4, {1, 3}, {"a": 2}, {1: 0.5}, [10, 20], 3.5)
    assert (back.holds_broadcast, back.sampled_rounds, back.reported_rounds) == ({1: 4}, {1: 2, 3: 1}, {1: 1})
    assert back.federation_accountant.epsilon(1e-3) == acc.epsilon(1e-3)
    with pytest.raises(RuntimeError, match="different experiment configuration"):
        ServerState.from_state(saved, "xyz")


# ----------------------------------------------------------------------------- ε of lost replies
def reply(node, tensors, metrics):
    meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                    group_id="", created_at=0.0, ttl=60.0, message_type="train")
    return Message(RecordDict({"arrays": to_record(tensors), "metrics": MetricRecord(metrics)}), metadata=meta)


def test_a_client_local_client_that_timed_out_or_was_rejected_is_charged_the_planned_round():
    exp = experiment_from_dict({
        "model": {"name_or_path": "tiny-random-bert"}, "method": {"name": "fedit", "rank": 2},
        "federation": {"num_clients": 6, "clients_per_round": 3, "num_rounds": 4},
        "privacy": {"mode": "client_local", "noise_multiplier": 2.0, "max_grad_norm": 0.5, "delta": 1e-3}})
    plan = plan_privacy(exp, [50] * 6)
    strategy = FedIT.from_experiment(exp, privacy=plan)
    server = strategy.fresh_state({"a.lora_A.weight": torch.zeros(2, 3)})
    one_round = planned_epsilon(strategy.privacy_mode, plan, 0, 1)
    assert one_round > 0

    def run_round(rnd, sampled, replies):
        collector = ReplyCollector(strategy.reply_policy(rnd, server), {100 + p: p for p in range(6)})
        row = LedgerRow(round=rnd, clients_sampled=sampled)
        strategy.aggregate(server, row, collector.collect(rnd, [reply(100 + p, t, m) for p, t, m in replies], sampled))
        strategy.record_privacy(server, row)
        return row

    ok = {"a.lora_A.weight": torch.full((2, 3), 0.01)}
    bad = {"a.lora_A.weight": torch.full((3, 3), float("nan"))}
    row = run_round(1, [0, 2, 4], [(0, ok, {"num-examples": 5.0, "epsilon": one_round}),
                                   (4, bad, {"num-examples": 5.0, "epsilon": one_round})])  # 2: no reply
    kinds = {f["partition"]: f["kind"] for f in row.failures}
    assert kinds == {2: "timeout", 4: "rejected"}
    # the straggler and the rejected client may have released: each charged one planned round
    assert row.client_epsilon == {"0": one_round, "2": one_round, "4": one_round}
    row = run_round(2, [2], [(2, ok, {"num-examples": 5.0, "epsilon": one_round})])  # its report misses round 1
    assert row.client_epsilon["2"] == planned_epsilon(strategy.privacy_mode, plan, 2, 2) > one_round
    assert row.epsilon == max(row.client_epsilon.values())


class DroppingGrid(InProcessGrid):
    """Delivers every message, but loses one client's reply in one round: a straggler whose update
    was computed (and, in a deployment, reached the SuperLink) after the round closed."""

    def __init__(self, app, num_nodes, drop_round, drop_node):
        super().__init__(app, num_nodes)
        self.drop = (drop_round, drop_node)

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        rnd, node = self.drop
        return [r for m, r in zip(messages, replies)
                if not (m.metadata.message_type == "train" and m.metadata.dst_node_id == node
                        and int(m.content["config"]["server-round"]) == rnd)]


def test_a_sample_level_straggler_keeps_its_epsilon_in_the_ledger(tmp_path, one_torch_thread):
    from fedlr.clients.app import STATE_ACCOUNTANT, app
    from fedlr.sampling import sample_clients

    exp = load_experiment(TINY, [f'output.dir="{tmp_path}"', "output.export_peft=false", 'method.name="fedit"',
                                 'privacy.mode="sample"', "privacy.noise_multiplier=1.0", "privacy.delta=1e-3",
                                 "federation.num_rounds=1", "evaluation.central=false"])
    late = sample_clients(exp.seed, 1, exp.federation.num_clients, exp.federation.clients_per_round)[0]
    grid = DroppingGrid(app, exp.federation.num_clients, drop_round=1, drop_node=late + 1)
    from fedlr.run.server import run_server

    run_dir = RunDir.create(exp, "straggler")
    run_server(grid, exp, run_dir, Console(quiet=True))
    row = read_ledger(run_dir.ledger_path)[-1]
    assert [f["kind"] for f in row.failures] == ["timeout"] and row.failures[0]["partition"] == late
    spent = StepAccountant.from_state(dict(grid.contexts[late + 1].state[STATE_ACCOUNTANT])).epsilon(1e-3)
    assert spent > 0  # it trained 2 DP-SGD steps and released its update, late
    assert row.client_epsilon[str(late)] == pytest.approx(spent, rel=1e-12)
    assert row.epsilon >= spent


# ----------------------------------------------------------------------------- federation.weighting
def test_uniform_weighting_accepts_replies_without_counts_and_weights_them_equally():
    data = {"model": {"name_or_path": "tiny-random-bert"}, "method": {"name": "fedit", "rank": 2},
            "federation": {"num_clients": 4, "clients_per_round": 2, "weighting": "uniform"}}
    strategy = FedIT.from_experiment(experiment_from_dict(data))
    server = strategy.fresh_state({"a.lora_A.weight": torch.zeros(2, 3)})
    collector = ReplyCollector(strategy.reply_policy(1, server), {100 + p: p for p in range(4)})
    ups = [{"a.lora_A.weight": torch.full((2, 3), v)} for v in (1.0, 4.0)]
    row = LedgerRow(round=1, clients_sampled=[0, 3])
    strategy.aggregate(server, row, collector.collect(1, [reply(100, ups[0], {}), reply(103, ups[1], {})], [0, 3]))
    assert row.clients_rejected == 0 and row.aggregated
    assert torch.equal(server.state["a.lora_A.weight"], torch.full((2, 3), 2.5))
    # under the default a reply without its example count is malformed
    strategy = FedIT.from_experiment(experiment_from_dict({**data, "federation": {"num_clients": 4, "clients_per_round": 2}}))
    server = strategy.fresh_state({"a.lora_A.weight": torch.zeros(2, 3)})
    collected = ReplyCollector(strategy.reply_policy(1, server), {100: 0}).collect(1, [reply(100, ups[0], {})], [0])
    assert collected.rejected == 1 and "num-examples" in collected.failures[0].reason


class RecordingGrid(InProcessGrid):
    def __init__(self, app, num_nodes):
        super().__init__(app, num_nodes)
        self.train_replies = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        self.train_replies += [r for m, r in zip(messages, replies) if m.metadata.message_type == "train"]
        return replies


def test_under_uniform_weighting_a_dp_client_releases_nothing_but_its_update(tmp_path, one_torch_thread):
    from fedlr.clients.app import app
    from fedlr.privacy.disclosure import released_beside_epsilon
    from fedlr.run.server import run_server

    exp = load_experiment(TINY, [f'output.dir="{tmp_path}"', "output.export_peft=false", 'method.name="fedit"',
                                 'privacy.mode="sample"', "privacy.noise_multiplier=1.0", "privacy.delta=1e-3",
                                 "federation.num_rounds=1", "evaluation.central=false", 'federation.weighting="uniform"'])
    grid = RecordingGrid(app, exp.federation.num_clients)
    run_dir = RunDir.create(exp, "uniform")
    summary = run_server(grid, exp, run_dir, Console(quiet=True))
    assert len(grid.train_replies) == exp.federation.clients_per_round
    for r in grid.train_replies:
        assert set(r.content.array_records) == {"arrays"} and len(r.content["metrics"]) == 0
    row = read_ledger(run_dir.ledger_path)[-1]
    assert row.aggregated and row.train_loss is None and row.client_val_accuracy is None
    plan = plan_privacy(exp, [len(r) for r in _train_rows(exp)])
    assert row.client_epsilon == {str(p): planned_epsilon(privacy_mode(exp.privacy), plan, p, 1) for p in row.clients_sampled}
    assert row.epsilon > 0
    assert not any("n_k" in note for note in summary["released_beside_epsilon"])
    examples = load_experiment(TINY, ['method.name="fedit"', 'privacy.mode="client_central"',
                                      "privacy.noise_multiplier=1.0", "privacy.delta=1e-3"])
    notes = released_beside_epsilon(examples, plan_privacy(examples, [len(r) for r in _train_rows(examples)]))
    assert len(notes) == 2 and "n_k" in notes[0] and "cohort" in notes[1]


def _train_rows(exp):
    from fedlr.workbench import get_workbench

    data = get_workbench(exp).data
    return [data.client_rows(p)[0] for p in range(exp.federation.num_clients)]
