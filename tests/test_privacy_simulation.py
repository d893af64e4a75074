"""One private run through Flower's simulation engine (Ray, tiny model): FedSVD under DP-SGD with σ
calibrated to a target ε. The ledger's ε is cumulative and ends where the plan says the seeded
client schedule ends; the summary states ε, δ, the accountant and the adjacency; bytes equal the
plan's (A travels down every round)."""

import json

import pytest

from fedlr.cli import main
from fedlr.config import load_experiment
from fedlr.plan import communication_plan
from fedlr.results import RunDir

pytestmark = pytest.mark.slow

OVERRIDES = ["method.name=fed_svd", "privacy.mode=sample", "privacy.target_epsilon=3.0", "federation.num_rounds=3",
             "evaluation.client_side=false", "output.export_peft=false"]


def test_private_fed_svd_run_accounts_what_the_plan_said(tmp_path, tiny_path):
    args = ["run", str(tiny_path), "--quiet", "--set", f'output.dir="{tmp_path}"', "--set", 'output.name="dp"']
    assert main(args + [x for o in OVERRIDES for x in ("--set", o)]) == 0
    exp = load_experiment(tiny_path, OVERRIDES)
    plan = communication_plan(exp, 2)
    ledger = RunDir(tmp_path / "dp").ledger()
    eps = [r.epsilon for r in ledger]
    assert eps[0] == 0.0 and all(a <= b for a, b in zip(eps, eps[1:])) and eps[-1] > 0
    assert eps[-1] == pytest.approx(plan["epsilon_seeded_schedule"], rel=1e-9)
    assert eps[-1] <= plan["epsilon"] <= 3.0
    for row in ledger[1:]:
        assert row.delta == 1e-5 and row.epsilon == max(row.client_epsilon.values())
        assert set(map(int, row.client_epsilon)) >= set(row.clients_sampled)
    assert ledger[-1].cumulative_uplink_bytes == plan["total_uplink_bytes"]
    assert ledger[-1].cumulative_downlink_bytes == plan["total_downlink_bytes"]
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["epsilon"] == eps[-1] and summary["delta"] == 1e-5 and summary["accountant"] == "rdp"
    assert summary["adjacency"] == "add/remove one training example of one client"
    assert summary["noise_multiplier"] == pytest.approx(plan["noise_multiplier"]) and summary["noise_calibrated"]
