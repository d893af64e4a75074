"""Heterogeneous client ranks (``method.client_ranks``, FLoRA only): the stacked aggregate of
clients of ranks 2, 4 and 8 is exact on square and non-square layers; one process serves clients of
every rank; a reply at another client's rank is rejected; the plan counts each client at its own
rank and a real simulation through Ray matches it byte for byte; every other method refuses the
field with an error that names it."""

import json
import math

import pytest
import torch
from flwr.app import Metadata, Message, MetricRecord, RecordDict

from conftest import assert_merged_export_reloads
from fedlr.cli import main
from fedlr.config import ConfigError, experiment_from_dict, load_experiment
from fedlr.methods import get_method, method_names
from fedlr.methods.flora import fresh_factors
from fedlr.models.adapted import adapter_paths, build_adapted_model
from fedlr.plan import communication_plan
from fedlr.results import RunDir
from fedlr.compression.pipeline import encode_update
from fedlr.run.records import payload_record, to_record
from fedlr.results.ledger import LedgerRow
from fedlr.strategies import FedLRStrategy
from fedlr.strategies.collector import ReplyCollector
from fedlr.wire import record_wire_bytes

RANKS = [2, 4, 8]
TINY = {"model": {"name_or_path": "tiny-random-bert", "max_length": 32, "targets": ["query", "dense"]},
        "data": {"max_train_examples": 200, "max_test_examples": 16},
        "method": {"name": "flora", "rank": 4, "alpha": 8.0, "client_ranks": RANKS},
        "federation": {"num_clients": 3, "clients_per_round": 3},
        "train": {"local_steps": 2, "batch_size": 8}}


def flora_exp(**method):
    return experiment_from_dict({**TINY, "method": {**TINY["method"], **method}})


# ----------------------------------------------------------------------------- exactness, pure
def test_stacked_aggregate_of_ranks_2_4_8_is_the_exact_average_on_random_tensors():
    """W0' = W0 + s·Σp_k B_k A_k with A_k = A_fresh(r_k) + ΔA_k, B_k = ΔB_k, on a square and a
    non-square layer; the state's A, B become next round's fresh adapters at the server's rank."""
    seed, rnd, s, r_server = 7, 3, 2.0, 4
    layers = {"sq": (6, 6), "wide": (5, 9)}  # (d_out, d_in)
    g = torch.Generator().manual_seed(0)
    state = {"head.bias": torch.randn(2, generator=g)}
    for name, (d_out, d_in) in layers.items():
        state[f"{name}.base.weight"] = torch.randn(d_out, d_in, generator=g)
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = fresh_factors(seed, rnd, name, r_server, d_in, d_out)
    updates = []
    for r in RANKS:
        u = {"head.bias": torch.randn(2, generator=g)}
        for name, (d_out, d_in) in layers.items():
            u[f"{name}.lora_A.weight"] = 0.1 * torch.randn(r, d_in, generator=g)
            u[f"{name}.lora_B.weight"] = 0.1 * torch.randn(d_out, r, generator=g)
        updates.append(u)
    weights = [1.0, 2.0, 5.0]
    p = [w / sum(weights) for w in weights]
    new = get_method("flora").aggregate(state, updates, weights, scale=s, server_round=rnd, seed=seed)
    for name, (d_out, d_in) in layers.items():
        exact = state[f"{name}.base.weight"].double()
        for pk, r, u in zip(p, RANKS, updates):
            a0, b0 = fresh_factors(seed, rnd, name, r, d_in, d_out)
            assert torch.count_nonzero(b0) == 0
            exact = exact + pk * s * (b0 + u[f"{name}.lora_B.weight"]).double() @ (a0 + u[f"{name}.lora_A.weight"]).double()
        assert torch.allclose(new[f"{name}.base.weight"].double(), exact, atol=1e-6), name
        a_next, b_next = fresh_factors(seed, rnd + 1, name, r_server, d_in, d_out)
        assert torch.equal(new[f"{name}.lora_A.weight"], a_next) and torch.count_nonzero(new[f"{name}.lora_B.weight"]) == 0
    assert torch.allclose(new["head.bias"], state["head.bias"] + sum(pk * u["head.bias"] for pk, u in zip(p, updates)))


def test_fresh_adapters_of_round_1_are_the_injected_ones():
    """The server's initial model is round 1's start: its A is fresh_factors(seed, 1, ...) at its rank."""
    exp = flora_exp()
    adapted = build_adapted_model(exp, 2)
    state = adapted.round_state()
    for path in adapter_paths(adapted):
        d_out, d_in = state[f"{path}.base.weight"].shape
        a, b = fresh_factors(exp.seed, 1, path, exp.method.rank, d_in, d_out)
        assert torch.equal(state[f"{path}.lora_A.weight"], a) and torch.equal(state[f"{path}.lora_B.weight"], b)


# ----------------------------------------------------------------------------- exactness, real clients
@pytest.fixture(scope="module")
def trained(one_torch_thread):
    """Three clients of ranks 2, 4, 8 train in one process (one workbench) from what the server
    sends (no adapters), then the server aggregates."""
    from fedlr.workbench import Workbench

    exp = flora_exp()
    bench = Workbench(exp)
    state = bench.adapted.round_state()
    sent = {k: v for k, v in state.items() if k in bench.adapted.downlink_keys}
    updates, weights, effective = [], [], []
    for pid in range(3):
        update, metrics = bench.client_round(pid, 1, sent, {})
        layers = {x: bench.adapted.model.get_submodule(x) for x in adapter_paths(bench.adapted)}
        effective.append({x: (m.base.weight + m.delta_weight()).detach().double().cpu() for x, m in layers.items()})
        updates.append(update)
        weights.append(metrics["num-examples"])
    new = bench.adapted.spec.aggregate(state, updates, weights, scale=exp.method.scale, server_round=1, seed=exp.seed)
    return exp, bench, state, sent, updates, weights, effective, new


def test_the_server_sends_no_adapters_and_each_client_uploads_its_own_rank(trained):
    exp, bench, state, sent, updates, *_ = trained
    assert not any(".lora_" in k for k in sent) and any(k.endswith("base.weight") for k in sent)
    for pid, update in enumerate(updates):
        r = RANKS[pid]
        for key, value in update.items():
            if key.endswith("lora_A.weight"):
                assert value.shape == (r, state[key].shape[1])
            elif key.endswith("lora_B.weight"):
                assert value.shape == (state[key].shape[0], r)
            else:
                assert value.shape == state[key].shape


def test_aggregate_equals_the_average_of_the_clients_trained_models(trained):
    exp, bench, state, sent, updates, weights, effective, new = trained
    p = [w / sum(weights) for w in weights]
    bench.central_eval(new, {})  # back at the server's rank, the new global model loaded
    shapes = set()
    for path in adapter_paths(bench.adapted):
        layer = bench.adapted.model.get_submodule(path)
        shapes.add(tuple(layer.base.weight.shape))
        exact = sum(pk * eff[path] for pk, eff in zip(p, effective))
        assert torch.allclose((layer.base.weight + layer.delta_weight()).detach().double(), exact, atol=1e-5), path
    assert any(a == b for a, b in shapes) and any(a != b for a, b in shapes)  # square and non-square layers


def test_a_process_switching_ranks_gives_each_client_the_same_update(trained):
    exp, bench, state, sent, updates, *_ = trained
    again, _ = bench.client_round(0, 1, sent, {})  # rank 2 again, after clients of rank 4 and 8
    assert set(again) == set(updates[0]) and all(torch.equal(again[k], updates[0][k]) for k in again)


def test_merged_export_after_heterogeneous_rounds_reloads_with_the_same_logits(trained, tmp_path):
    exp, bench, *_, new = trained
    bench.central_eval(new, {})
    assert_merged_export_reloads(bench, tmp_path / "model")


# ----------------------------------------------------------------------------- validation
def reply(node, tensors, metrics):
    meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                    group_id="", created_at=0.0, ttl=60.0, message_type="train")
    return Message(RecordDict({"arrays": to_record(tensors), "metrics": MetricRecord(metrics)}), metadata=meta)


def lora_update(r, d_out=6, d_in=5):
    return {"l.lora_A.weight": 0.01 * torch.ones(r, d_in), "l.lora_B.weight": 0.01 * torch.ones(d_out, r),
            "head.bias": torch.zeros(2)}


def test_a_reply_at_another_clients_rank_is_rejected_with_the_reason():
    exp = experiment_from_dict({"model": {"name_or_path": "tiny-random-bert"},
                                "method": {"name": "flora", "rank": 4, "client_ranks": RANKS},
                                "federation": {"num_clients": 3, "clients_per_round": 3}})
    d_out, d_in = 6, 5
    a, b = fresh_factors(exp.seed, 1, "l", 4, d_in, d_out)
    state = {"l.base.weight": torch.zeros(d_out, d_in), "l.lora_A.weight": a, "l.lora_B.weight": b,
             "head.bias": torch.zeros(2)}
    strat = FedLRStrategy(exp)
    server = strat.fresh_state(state)
    rep = LedgerRow(round=1, clients_sampled=[0, 1, 2])
    collector = ReplyCollector(strat.reply_policy(1, server), {100 + pid: pid for pid in range(3)})
    # client 0 (rank 2) and client 2 (rank 8) send rank 4 factors, client 1 (rank 4) its own
    strat.aggregate(server, rep, collector.collect(1, [reply(100, lora_update(4), {"num-examples": 1.0}),
                                                       reply(101, lora_update(4), {"num-examples": 1.0}),
                                                       reply(102, lora_update(4), {"num-examples": 1.0})], [0, 1, 2]))
    assert rep.clients_replied == 3 and rep.clients_rejected == 2
    reasons = {f["partition"]: f["reason"] for f in rep.failures if f["kind"] == "rejected"}
    assert set(reasons) == {0, 2} and reasons[0]
    assert reasons[2] == "l.lora_A.weight: shape (4, 5) != (8, 5)"
    assert not torch.equal(server.state["l.base.weight"], state["l.base.weight"])  # the valid one was merged


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("method", [m for m in method_names() if m != "flora"])
def test_every_other_method_refuses_client_ranks_naming_itself_and_flora(method):
    with pytest.raises(ConfigError) as e:
        experiment_from_dict({"method": {"name": method, "client_ranks": [2, 4]}})
    msg = str(e.value)
    assert "method.client_ranks" in msg and f"{method} cannot give clients different ranks" in msg
    assert "method.name = 'flora'" in msg


@pytest.mark.parametrize("data, message", [
    ({"method": {"client_ranks": [4, 0]}}, "ranks must be positive integers, got [0]"),
    ({"method": {"client_ranks": []}}, "method.client_ranks: List should have at least 1 item"),
    ({"method": {"client_ranks": [2] * 11}}, "11 ranks for federation.num_clients = 10 clients"),
    ({"method": {"client_ranks": [2, 4]}, "privacy": {"mode": "client_central", "noise_multiplier": 1.0}},
     "privacy.mode 'client_central' averages the clients' update tensors"),
    ({"method": {"client_ranks": [2, 4]}, "compression": {"codec": "topk", "adaptive": "lgreco"}},
     "compression.adaptive 'lgreco'"),
])
def test_bad_client_ranks_fail_with_the_field_named(data, message):
    data = {**data, "method": {"name": "flora", **data["method"]}}
    with pytest.raises(ConfigError, match="method.client_ranks") as e:
        experiment_from_dict(data)
    assert message in str(e.value)


@pytest.mark.parametrize("method, ranks, message", [
    ("flora", "[2, 65]", "method.client_ranks: 65 exceeds min(d_in, d_out) = 64"),  # larger than a layer
    ("fedit", "[2, 4]", "fedit cannot give clients different ranks"),
])
def test_fedlr_run_with_bad_client_ranks_exits_2_before_any_work(tmp_path, tiny_path, capsys, method, ranks, message):
    out = tmp_path / "runs"
    code = main(["run", str(tiny_path), "--set", f'output.dir="{out}"', "--set", f"method.name={method}",
                 "--set", f"method.client_ranks={ranks}"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- plan
def hand_uplink(r, layers, hidden, head_keys):
    """Bytes of one client's record, by hand: per query/value layer A (r×H) and B (H×r) in fp32, a
    128-byte .npy header and the key per tensor; the head (2×H weight, 2 bias) likewise."""
    total = 0
    for i in range(layers):
        for t in ("query", "value"):
            for f in ("lora_A", "lora_B"):
                key = f"bert.encoder.layer.{i}.attention.self.{t}.{f}.weight"
                total += 4 * r * hidden + 128 + len(key)
    return total + sum(4 * n + 128 + len(k) for k, n in head_keys)


def test_plan_counts_each_client_at_its_own_rank_by_hand(tiny_path):
    exp = load_experiment(tiny_path, ["method.name=flora", "method.client_ranks=[2, 4, 8]",
                                      "federation.clients_per_round=3", "federation.num_rounds=3"])
    plan = communication_plan(exp, 2)
    hidden, layers = 64, 2  # tiny-random-bert
    head = [("classifier.weight", 2 * hidden), ("classifier.bias", 2)]
    up = {r: hand_uplink(r, layers, hidden, head) for r in RANKS}
    assert plan["client_ranks"] == [2, 4, 8, 2]
    assert plan["uplink_bytes_by_client"] == [up[2], up[4], up[8], up[2]]
    assert plan["uplink_params_by_client"] == [2 * layers * 2 * r * hidden for r in (2, 4, 8, 2)]
    assert plan["uplink_bytes_per_client"] is None and plan["uplink_params_per_client"] is None
    from fedlr.sampling import sample_clients

    rounds = [sample_clients(exp.seed, t, 4, 3) for t in (1, 2, 3)]
    assert plan["uplink_bytes_by_round"] == [sum(up[plan["client_ranks"][k]] for k in s) for s in rounds]
    # down: the merged base weights (H×H) and the head, no adapters, the same for every rank
    base = [f"bert.encoder.layer.{i}.attention.self.{t}.base.weight" for i in range(layers) for t in ("query", "value")]
    down = sum(4 * hidden * hidden + 128 + len(k) for k in base) + sum(4 * n + 128 + len(k) for k, n in head)
    assert plan["downlink_bytes"] == down
    assert plan["total_uplink_bytes"] == sum(plan["uplink_bytes_by_round"])
    assert plan["total_downlink_bytes"] == 3 * 3 * down
    homogeneous = communication_plan(load_experiment(tiny_path, ["method.name=flora", "method.rank=8"]), 2)
    assert homogeneous["downlink_bytes"] == down and homogeneous["uplink_bytes_per_client"] == up[8]


@pytest.mark.parametrize("codec", ["fp16", "powersgd"])
def test_compressed_replies_at_each_rank_are_decoded_and_counted_as_planned(tiny_path, codec):
    """A codec encodes each client's factors at its own rank; the server decodes them with that
    client's shapes, accepts them, and counts the bytes the plan gives for that client."""
    overrides = ["method.name=flora", "method.client_ranks=[2, 8]", f'compression.codec="{codec}"',
                 "federation.clients_per_round=2"]
    exp = load_experiment(tiny_path, overrides)
    plan = communication_plan(exp, 2)
    adapted = build_adapted_model(exp, 2)
    strat = FedLRStrategy(exp)
    server = strat.fresh_state(adapted.round_state())
    rep = LedgerRow(round=1, clients_sampled=[0, 1])
    collector = ReplyCollector(strat.reply_policy(1, server), {100 + pid: pid for pid in range(4)})
    replies = []
    for pid in (0, 1):
        adapted.use_rank(exp.method.client_rank(pid), exp.seed)
        g = torch.Generator().manual_seed(pid)
        update = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in adapted.trained_state().items()}
        payload, _ = encode_update(update, exp.compression, {}, g, server_round=1)
        meta = Metadata(run_id=1, message_id="", src_node_id=100 + pid, dst_node_id=0, reply_to_message_id="m",
                        group_id="", created_at=0.0, ttl=60.0, message_type="train")
        content = RecordDict({"arrays": payload_record(payload), "metrics": MetricRecord({"num-examples": 1.0})})
        replies.append(Message(content, metadata=meta))
    strat.aggregate(server, rep, collector.collect(1, replies, [0, 1]))
    assert rep.clients_rejected == 0, rep.failures
    assert rep.uplink_bytes == plan["uplink_bytes_by_client"][0] + plan["uplink_bytes_by_client"][1]


def test_fedlr_plan_prints_each_rank(tiny_path, capsys):
    assert main(["plan", str(tiny_path), "--set", "method.name=flora", "--set", "method.client_ranks=[2, 4, 8]"]) == 0
    out = capsys.readouterr().out
    assert "client ranks [2, 4, 8, 2] (by partition id)" in out
    for r in RANKS:
        assert f"per client of rank {r} per round" in out
    assert main(["plan", str(tiny_path), "--json", "--set", "method.name=flora",
                 "--set", "method.client_ranks=[2, 4, 8]"]) == 0
    assert json.loads(capsys.readouterr().out)["client_ranks"] == [2, 4, 8, 2]


# ----------------------------------------------------------------------------- through Ray
@pytest.mark.slow
def test_simulation_with_heterogeneous_ranks_matches_the_plan_and_rejects_nothing(tmp_path, tiny_path):
    overrides = ["method.name=flora", "method.client_ranks=[2, 4, 8]", "federation.clients_per_round=3"]
    code = main(["run", str(tiny_path), "--quiet", "--set", f'output.dir="{tmp_path}"', "--set", 'output.name="het"',
                 *[x for o in overrides for x in ("--set", o)]])
    assert code == 0
    exp = load_experiment(tiny_path, overrides)
    plan = communication_plan(exp, 2)
    ledger = RunDir(tmp_path / "het").ledger()
    assert [r.uplink_bytes for r in ledger[1:]] == plan["uplink_bytes_by_round"]
    assert all(r.downlink_bytes == 3 * plan["downlink_bytes"] for r in ledger[1:])
    assert all(r.clients_replied == 3 and r.clients_rejected == 0 and r.clients_failed == 0 for r in ledger[1:])
    assert ledger[-1].cumulative_uplink_bytes == plan["total_uplink_bytes"]
    assert ledger[-1].cumulative_downlink_bytes == plan["total_downlink_bytes"]
    assert math.isfinite(ledger[-1].eval_loss)
    assert (tmp_path / "het" / "model" / "config.json").is_file()  # FLoRA's merged export
