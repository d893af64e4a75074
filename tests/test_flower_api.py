"""fedlr's strategies in a stock Flower ServerApp: the example of docs/flower.md, run exactly as
written under ``flwr.simulation.run_simulation`` (Ray, tiny model), gives the model fedlr's own
loop gives for the same experiment; and ``start`` returns Flower's ``Result``."""

import re
import subprocess
import sys

import pytest
import torch
from flwr.serverapp.strategy import Result

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from common import InProcessGrid  # noqa: E402

from fedlr.plan import communication_plan  # noqa: E402
from fedlr.strategies import FedSB  # noqa: E402

DOC = ROOT / "docs" / "flower.md"
# the strategy of docs/flower.md's example
ARGS = dict(model="tiny-random-bert", dataset="rotten_tomatoes", num_clients=2, rank=4,
            data={"max_train_examples": 400, "max_test_examples": 64}, train={"local_steps": 2, "batch_size": 8})


def example() -> str:
    return re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)


def test_the_example_builds_the_strategy_this_test_compares_with():
    code = example()
    assert "FedSB(" in code and "run_simulation(" in code
    for key in ("model", "dataset", "num_clients", "rank"):
        assert f"{key}={ARGS[key]!r}".replace("'", '"') in code


def test_start_returns_flowers_result_with_the_rounds_metrics_and_the_planned_bytes(one_torch_thread):
    from fedlr.clients.app import app

    rows = []
    strategy = FedSB(**ARGS, on_round=rows.append)
    initial = strategy.initial_arrays()
    result = strategy.start(InProcessGrid(app, 2), initial, num_rounds=2, evaluate_fn=strategy.central_evaluation)
    assert isinstance(result, Result)
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert [r.round for r in rows] == [0, 1, 2]
    assert result.evaluate_metrics_serverapp[2]["accuracy"] == rows[2].eval_accuracy
    plan = communication_plan(strategy.exp, 2)
    for rnd in (1, 2):
        assert result.train_metrics_clientapp[rnd]["uplink_bytes"] == plan["uplink_bytes_by_round"][rnd - 1]
    final, start = result.arrays.to_torch_state_dict(), initial.to_torch_state_dict()
    r_keys = [k for k in start if k.endswith("lora_R.weight")]
    assert r_keys and all(not torch.equal(final[k], start[k]) for k in r_keys)  # trained
    assert any(k.endswith("lora_B.weight") for k in final)  # with the once-sent B and A: the whole model


@pytest.mark.slow
def test_the_docs_example_runs_under_run_simulation_and_equals_fedlrs_own_loop(tmp_path, one_torch_thread):
    from fedlr.clients.app import app

    done = subprocess.run([sys.executable, "-c", example()], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ServerApp-side Evaluate Metrics" in done.stdout and "accuracy" in done.stdout  # print(result)
    ran = torch.load(tmp_path / "fedsb-final.pt")
    strategy = FedSB(**ARGS)
    expected = strategy.start(InProcessGrid(app, 2), strategy.initial_arrays(), num_rounds=2).arrays.to_torch_state_dict()
    assert set(ran) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(ran[key], value, rtol=1e-5, atol=1e-6)
