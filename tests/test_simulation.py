"""Runs through Flower's simulation engine on Ray (tiny model): the ledger's bytes equal
`fedlr plan`, two runs give identical ledgers, and every run writes a complete run directory."""

import json

import pytest

from fedlr.cli import main
from fedlr.config import load_experiment
from fedlr.data.corpora import load_table
from fedlr.plan import communication_plan
from fedlr.results import RunDir

pytestmark = pytest.mark.slow
TIMING_KEYS = {"wall_time_s"}


def run(tiny_path, out, name, *overrides):
    code = main(["run", str(tiny_path), "--quiet", "--set", f'output.dir="{out}"', "--set", f'output.name="{name}"',
                 *[x for o in overrides for x in ("--set", o)]])
    assert code == 0
    return out / name


def without_timing(rows):
    return [{k: v for k, v in r.to_dict().items() if k not in TIMING_KEYS} for r in rows]


@pytest.fixture(scope="module")
def fed_sb_runs(tmp_path_factory):
    from conftest import TINY

    out = tmp_path_factory.mktemp("runs")
    return TINY, run(TINY, out, "a"), run(TINY, out, "b")


def test_ledger_bytes_match_the_plan(fed_sb_runs):
    tiny, first, _ = fed_sb_runs
    exp = load_experiment(tiny)
    plan = communication_plan(exp, len(load_table(exp.data)[1]))
    ledger = RunDir(first).ledger()
    assert [r.round for r in ledger] == list(range(exp.federation.num_rounds + 1))
    assert ledger[0].uplink_bytes == plan["init_uplink_bytes"] > 0  # Fed-SB's federated init is counted
    for row in ledger[1:]:
        assert row.clients_replied == exp.federation.clients_per_round and row.clients_failed == 0
        assert row.uplink_bytes == exp.federation.clients_per_round * plan["uplink_bytes_per_client"]
    assert ledger[-1].cumulative_uplink_bytes == plan["total_uplink_bytes"]
    assert ledger[-1].cumulative_downlink_bytes == plan["total_downlink_bytes"]
    summary = json.loads((first / "summary.json").read_text())
    assert summary["total_bytes"] == plan["total_bytes"]
    assert (first / "config.toml").is_file() and (first / "seeds.json").is_file()
    assert (first / "model" / "adapter_model.safetensors").is_file()


def test_two_runs_of_one_config_give_identical_ledgers(fed_sb_runs):
    _, first, second = fed_sb_runs
    a, b = RunDir(first).ledger(), RunDir(second).ledger()
    assert without_timing(a) == without_timing(b)
    assert a[-1].train_loss is not None and a[-1].eval_accuracy is not None


def test_fused_fedit_run_through_ray_matches_its_plan(tmp_path, tiny_path):
    """Both sampled clients trained in one worker call (``federation.fused_clients``): the ledger
    still counts what each client would receive and send on its own, which is the plan."""
    overrides = ["method.name=fedit", "federation.num_rounds=1", "federation.fused_clients=2"]
    path = run(tiny_path, tmp_path, "fedit", *overrides)
    exp = load_experiment(tiny_path, overrides)
    plan = communication_plan(exp, 2)
    ledger = RunDir(path).ledger()
    assert ledger[0].uplink_bytes == 0  # no init round for FedIT
    assert ledger[1].clients_replied == 2 and ledger[1].clients_failed == ledger[1].clients_rejected == 0
    assert ledger[-1].cumulative_bytes == plan["total_bytes"]
