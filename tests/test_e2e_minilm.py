"""End to end on the real parts: the bundled all-MiniLM-L6-v2, Rotten Tomatoes reviews split by
movie, Fed-SB with its federated init, Flower's simulation engine on Ray. After training, the
central test accuracy must be clearly above always predicting the majority class."""

import json

import pytest

from conftest import ROOT
from fedlr.cli import main
from fedlr.results import RunDir

pytestmark = pytest.mark.slow


def test_fed_sb_on_minilm_beats_the_majority_class(tmp_path):
    overrides = [
        f'output.dir="{tmp_path}"', 'output.name="e2e"', "federation.num_clients=4", "federation.clients_per_round=4",
        "federation.num_rounds=4", "data.max_train_examples=1600", "data.max_test_examples=300",
    ]
    code = main(["run", str(ROOT / "experiments" / "quickstart.toml"), "--quiet", *[a for o in overrides for a in ("--set", o)]])
    assert code == 0
    summary = json.loads((tmp_path / "e2e" / "summary.json").read_text())
    ledger = RunDir(tmp_path / "e2e").ledger()
    # 300 test reviews: one standard error of an accuracy near 0.65 is 0.028
    assert summary["final_accuracy"] >= summary["majority_rate"] + 0.07, summary
    assert summary["final_accuracy"] > ledger[0].eval_accuracy + 0.03  # training, not the initial head
    assert ledger[-1].eval_loss < ledger[0].eval_loss
