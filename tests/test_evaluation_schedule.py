"""``evaluation.every = k`` (issue 17.3): central and client-side evaluation in round 0, every k-th
round and the last; the rows of other rounds carry no evaluation figures and nothing else changes;
final and best accuracy come from the evaluated rounds. Real rounds of the tiny model through the
ClientApp, in-process (no Ray)."""

import dataclasses
import sys
import tomllib

import pytest

from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "benchmarks"))

from common import InProcessGrid  # noqa: E402

from fedlr.config import ConfigError, EvaluationConfig, load_experiment  # noqa: E402
from fedlr.results import RunDir  # noqa: E402
from fedlr.results.console import Console  # noqa: E402
from fedlr.results.report import run_row  # noqa: E402
from fedlr.results.ledger import LedgerRow, read_ledger  # noqa: E402

# every figure an evaluation writes: the central eval_* metrics and the clients' validation accuracy
EVAL_KEYS = (*(f.name for f in dataclasses.fields(LedgerRow) if f.name.startswith("eval_")), "client_val_accuracy")


@pytest.mark.parametrize("every, num_rounds, evaluated", [(1, 3, [0, 1, 2, 3]), (2, 4, [0, 2, 4]), (2, 3, [0, 2, 3]),
                                                          (5, 3, [0, 3])])
def test_the_schedule_is_round_zero_every_kth_and_the_last(every, num_rounds, evaluated):
    due = EvaluationConfig(every=every).due
    assert [r for r in range(num_rounds + 1) if due(r, num_rounds)] == evaluated


def test_every_below_one_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="evaluation.every"):
        load_experiment(TINY, ["evaluation.every=0"])


def run(tmp_path, name: str, *overrides: str) -> tuple[list, dict, RunDir]:
    from fedlr.clients.app import app
    from fedlr.run.server import run_server

    exp = load_experiment(TINY, [f'output.dir="{tmp_path}"', f'output.name="{name}"', "output.export_peft=false",
                                 'method.name="fedit"', *overrides])
    run_dir = RunDir.create(exp, name)
    summary = run_server(InProcessGrid(app, exp.federation.num_clients), exp, run_dir, Console(quiet=True))
    return read_ledger(run_dir.ledger_path), summary, run_dir


def without(row, keys) -> dict:
    return {k: v for k, v in row.to_dict().items() if k not in keys}


def evaluated(ledger, key: str = "eval_accuracy") -> list[int]:
    return [r.round for r in ledger if getattr(r, key) is not None]


def test_every_two_evaluates_rounds_0_2_4_and_changes_nothing_else(tmp_path, one_torch_thread):
    every_round, _, _ = run(tmp_path, "every-1", "federation.num_rounds=4")
    ledger, summary, run_dir = run(tmp_path, "every-2", "federation.num_rounds=4", "evaluation.every=2")
    assert evaluated(ledger) == evaluated(ledger, "eval_loss") == [0, 2, 4]
    assert evaluated(ledger, "client_val_accuracy") == [2, 4]  # round 0 trains nobody
    assert evaluated(every_round, "client_val_accuracy") == [1, 2, 3, 4]
    for row, full in zip(ledger, every_round, strict=True):
        assert without(row, (*EVAL_KEYS, "wall_time_s")) == without(full, (*EVAL_KEYS, "wall_time_s"))
        if row.round in (0, 2, 4):  # the same model, evaluated the same way
            assert [getattr(row, k) for k in EVAL_KEYS] == [getattr(full, k) for k in EVAL_KEYS]
    accuracies = [ledger[r].eval_accuracy for r in (0, 2, 4)]
    assert summary["final_accuracy"] == accuracies[-1] and summary["best_accuracy"] == max(accuracies)
    figures = run_row(tomllib.loads(run_dir.config_path.read_text()), run_dir.summary(), ledger)
    assert (figures["final_accuracy"], figures["best_accuracy"]) == (accuracies[-1], max(accuracies))


def test_three_rounds_every_two_evaluates_rounds_0_2_3(tmp_path, one_torch_thread):
    ledger, summary, _ = run(tmp_path, "three", "federation.num_rounds=3", "evaluation.every=2")
    assert evaluated(ledger) == [0, 2, 3]
    assert evaluated(ledger, "client_val_accuracy") == [2, 3]
    assert summary["final_accuracy"] == ledger[3].eval_accuracy


def test_clients_without_validation_rows_train_and_report_no_validation_accuracy(tmp_path, one_torch_thread):
    ledger, summary, _ = run(tmp_path, "no-val", "federation.num_rounds=2", "data.val_fraction=0",
                             "evaluation.client_side=true")
    assert [r.aggregated for r in ledger[1:]] == [True, True] and summary.get("error") is None
    assert [r.clients_failed for r in ledger[1:]] == [0, 0]
    assert evaluated(ledger, "client_val_accuracy") == []  # nothing to validate on, not a failure
