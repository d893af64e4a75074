"""Compression in real rounds (tiny model through Ray): the ledger's uplink equals the codec's
planned payload, far below the dense update, and a run with error feedback and L-GreCo trains
with every update accepted; a bad [compression] value exits 2 before any work."""

import pytest

from conftest import TINY
from fedlr.cli import main
from fedlr.config import load_experiment
from fedlr.plan import communication_plan
from fedlr.results import RunDir

pytestmark = pytest.mark.slow


def run_tiny(tmp_path, name, overrides):
    """Run the tiny experiment with ``overrides`` through Ray; its plan and its ledger."""
    assert main(["run", str(TINY), "--quiet", "--set", f'output.dir="{tmp_path}"', "--set", f'output.name="{name}"',
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    return communication_plan(load_experiment(TINY, overrides), 2), RunDir(tmp_path / name).ledger()


def test_powersgd_uplink_in_the_ledger_equals_the_plan(tmp_path):
    overrides = ["method.name=fedit", "method.rank=8", 'compression.codec="powersgd"', "compression.rank=1"]
    plan, ledger = run_tiny(tmp_path, "p", overrides)
    assert plan["codec"] == "powersgd" and plan["compression_ratio"] > 4
    assert plan["uplink_bytes_per_client"] * plan["compression_ratio"] > 0.9 * plan["dense_uplink_bytes_per_client"]
    for row in ledger[1:]:
        assert row.clients_rejected == 0 and row.clients_failed == 0
        assert row.uplink_bytes == 2 * plan["uplink_bytes_per_client"]
    assert ledger[-1].cumulative_bytes == plan["total_bytes"]


def test_lgreco_topk_with_error_feedback_runs_within_the_uniform_bytes(tmp_path):
    overrides = ["method.name=fedit", "method.rank=8", "federation.num_rounds=3", 'compression.codec="topk"',
                 "compression.density=0.1", 'compression.adaptive="lgreco"', "compression.reselect_every=1"]
    plan, ledger = run_tiny(tmp_path, "l", overrides)
    assert all(r.clients_rejected == 0 and r.clients_failed == 0 for r in ledger)
    assert ledger[-1].cumulative_uplink_bytes <= plan["total_uplink_bytes"]
    assert ledger[-1].cumulative_downlink_bytes == plan["total_downlink_bytes"]  # the assignment is counted
    assert ledger[-1].train_loss is not None


def test_compressed_downlink_in_the_ledger_equals_the_plan(tmp_path):
    """Clients that took part in the previous round get the PowerSGD-compressed B_t − B_(t−1), the
    others the dense B_t; every client rebuilds the server's B_t (no reply rejected) and the
    downlink bytes of every round equal the plan's."""
    overrides = ["method.name=fedit", "method.rank=8", "federation.num_rounds=4", 'compression.codec="powersgd"',
                 "compression.rank=1", "compression.downlink=true", "evaluation.client_side=false"]
    plan, ledger = run_tiny(tmp_path, "d", overrides)
    assert all(r.clients_rejected == 0 and r.clients_failed == 0 for r in ledger)
    assert [r.downlink_bytes for r in ledger[1:]] == plan["downlink_bytes_by_round"]
    dense_round = 2 * plan["downlink_bytes"]
    assert min(plan["downlink_bytes_by_round"]) < dense_round  # some client got the delta
    assert ledger[-1].cumulative_bytes == plan["total_bytes"]
    assert ledger[-1].eval_loss < ledger[0].eval_loss + 0.05  # it still trains from B_t


@pytest.mark.parametrize("override, message", [('compression.codec="zip"', "compression.codec"),
                                               ("compression.density=1.5", "compression.density"),
                                               ("compression.downlink=true", "compression.downlink compresses"),
                                               ('compression.codec="fp16";compression.downlink=true;'
                                                'method.name="fed_svd"', "re-factorizes")])
def test_bad_compression_config_exits_2(tmp_path, capsys, override, message):
    sets = [a for o in override.split(";") for a in ("--set", o)]
    assert main(["run", str(TINY), "--set", f'output.dir="{tmp_path / "runs"}"', *sets]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
