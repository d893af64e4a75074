"""Compression in real rounds (tiny model through Ray): the ledger's uplink equals the codec's
planned payload, far below the dense update, and a run with error feedback and L-GreCo trains
with every update accepted; a bad [compression] value exits 2 before any work."""

import pytest

from conftest import TINY
from fedlr.cli import main
from fedlr.config import load_experiment
from fedlr.plan import communication_plan
from fedlr.results import read_ledger

pytestmark = pytest.mark.slow


def test_powersgd_uplink_in_the_ledger_equals_the_plan(tmp_path):
    overrides = ["method.name=fedit", "method.rank=8", 'compression.codec="powersgd"', "compression.rank=1"]
    assert main(["run", str(TINY), "--quiet", "--set", f'output.dir="{tmp_path}"', "--set", 'output.name="p"',
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    plan = communication_plan(load_experiment(TINY, overrides), 2)
    ledger = read_ledger(tmp_path / "p")
    assert plan["codec"] == "powersgd" and plan["compression_ratio"] > 4
    assert plan["uplink_bytes_per_client"] * plan["compression_ratio"] > 0.9 * plan["dense_uplink_bytes_per_client"]
    for row in ledger[1:]:
        assert row["clients_rejected"] == 0 and row["clients_failed"] == 0
        assert row["uplink_bytes"] == 2 * plan["uplink_bytes_per_client"]
    assert ledger[-1]["cumulative_bytes"] == plan["total_bytes"]


def test_lgreco_topk_with_error_feedback_runs_within_the_uniform_bytes(tmp_path):
    overrides = ["method.name=fedit", "method.rank=8", "federation.num_rounds=3", 'compression.codec="topk"',
                 "compression.density=0.1", 'compression.adaptive="lgreco"', "compression.reselect_every=1"]
    assert main(["run", str(TINY), "--quiet", "--set", f'output.dir="{tmp_path}"', "--set", 'output.name="l"',
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    plan = communication_plan(load_experiment(TINY, overrides), 2)
    ledger = read_ledger(tmp_path / "l")
    assert all(r["clients_rejected"] == 0 and r["clients_failed"] == 0 for r in ledger)
    assert ledger[-1]["cumulative_uplink_bytes"] <= plan["total_uplink_bytes"]
    assert ledger[-1]["cumulative_downlink_bytes"] == plan["total_downlink_bytes"]  # the assignment is counted
    assert ledger[-1]["train_loss"] is not None


@pytest.mark.parametrize("override, message", [('compression.codec="zip"', "compression.codec"),
                                               ("compression.density=1.5", "compression.density"),
                                               ("compression.downlink=true", "compression.downlink")])
def test_bad_compression_config_exits_2(tmp_path, capsys, override, message):
    assert main(["run", str(TINY), "--set", f'output.dir="{tmp_path / "runs"}"', "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
