"""The mechanisms that keep a simulation cheap (issue 8), asserted on what the code does, not on
timings: a worker builds the base model once and tokenizes each client's data once across many
client calls; what each client keeps between rounds does not grow with the number of clients.

Runs fedlr's real ServerApp body and ClientApp through the in-process grid of the benchmarks
(``benchmarks/common.py``): the same calls a Ray worker makes, without Ray.
"""

import sys

import pytest

from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "benchmarks"))

from common import InProcessGrid  # noqa: E402

from fedlr.tasks.classification import Classification  # noqa: E402
import fedlr.workbench as workbench  # noqa: E402
from fedlr.config import load_experiment  # noqa: E402
from fedlr.results import RunDir  # noqa: E402
from fedlr.results.console import Console  # noqa: E402


def run_in_process(exp, tmp_path, name):
    from fedlr.clients.app import app
    from fedlr.run.server import run_server

    grid = InProcessGrid(app, exp.federation.num_clients)
    run_server(grid, exp, RunDir.create(exp, name), Console(quiet=True))
    return grid


def tiny(tmp_path, *overrides):
    return load_experiment(TINY, [f'output.dir="{tmp_path}"', "output.export_peft=false", *overrides])


def test_base_model_built_once_and_data_tokenized_once_across_many_client_calls(tmp_path, monkeypatch,
                                                                                one_torch_thread):
    builds, tokenized = [], []
    real_build, real_tokenize = workbench.build_adapted_model, Classification.tokenize
    monkeypatch.setattr(workbench, "build_adapted_model", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    monkeypatch.setattr(Classification, "tokenize", staticmethod(lambda *a, **k: tokenized.append(1) or real_tokenize(*a, **k)))
    monkeypatch.setattr(workbench, "_WORKBENCHES", {})
    monkeypatch.setattr(workbench, "_KEPT", {})  # nothing kept from an earlier test's experiment
    exp = tiny(tmp_path, "federation.num_rounds=4", "train.local_steps=1")
    grid = run_in_process(exp, tmp_path, "once")
    fed = exp.federation
    # enrollment of every node, Fed-SB's init round and the training rounds: all served by this one "worker"
    assert grid.messages_handled == fed.num_clients + (1 + fed.num_rounds) * fed.clients_per_round
    assert len(builds) == 1
    cache = workbench.get_workbench(exp).data._cache
    assert len(tokenized) == len(cache)  # each client's train/val split and the test split: once each


def test_each_evaluation_runs_once(tmp_path, monkeypatch, one_torch_thread):
    """Central evaluation once per round (round 0 included), each sampled client's validation once
    per round it takes part in: nothing is evaluated twice."""
    central, client_side = [], []

    def counting(model, data, *args, **kwargs):
        (central if data is bench.data.test() else client_side).append(1)
        return real_evaluate(model, data, *args, **kwargs)

    exp = tiny(tmp_path, "federation.num_rounds=3", "train.local_steps=1", "evaluation.client_side=true",
               'method.init="random"')
    monkeypatch.setattr(workbench, "_WORKBENCHES", {})
    bench = workbench.get_workbench(exp)
    real_evaluate = bench.adapted.task.evaluate
    monkeypatch.setattr(bench.adapted.task, "evaluate", counting)
    run_in_process(exp, tmp_path, "evals")
    fed = exp.federation
    assert len(central) == fed.num_rounds + 1
    assert len(client_side) == fed.num_rounds * fed.clients_per_round


@pytest.mark.parametrize("extra", [
    ['privacy.mode="sample"', "privacy.noise_multiplier=1.0", 'method.init="random"'],
    ['compression.codec="topk"', "compression.density=0.1"],
], ids=["dp-accountant", "error-feedback"])
def test_per_client_state_does_not_grow_with_the_number_of_clients(tmp_path, extra, one_torch_thread):
    """Each client keeps the experiment, plus only what its method must: the accountant's history
    under DP-SGD, the error-feedback residual under a compressing codec, Fed-SB's frozen factors."""
    per_client = {}
    for n in (4, 16):
        exp = tiny(tmp_path, f"federation.num_clients={n}", "federation.clients_per_round=2",
                   "federation.num_rounds=2", "train.local_steps=1", "evaluation.central=false",
                   "evaluation.client_side=false", 'data.partitioner="iid"', f"data.max_train_examples={100 * n}",
                   *extra)  # equal client sizes: one DP sampling rate q, so the RDP curve is computed once
        grid = run_in_process(exp, tmp_path, f"n{n}")
        sizes = {ctx.node_config["partition-id"]: {k: rec.count_bytes() for k, rec in ctx.state.items()}
                 for ctx in grid.contexts.values()}
        trained = [s for s in sizes.values() if len(s) > 1]
        idle = [s for s in sizes.values() if len(s) == 1]
        assert trained and all(set(s) == {"fedlr"} for s in idle)  # idle clients keep only the experiment
        per_client[n] = {k: max(s.get(k, 0) for s in trained) for k in trained[0]}
    # the experiment text differs only in the digits of num_clients; what a client keeps does not scale with N
    small, large = per_client[4], per_client[16]
    assert set(small) == set(large)
    assert abs(small.pop("fedlr") - large.pop("fedlr")) <= 2
    assert small == large


@pytest.mark.parametrize("num_clients", [1, 3, 7, 64])
def test_iid_shards_are_flwr_datasets_iid_partitions(num_clients):
    """The direct computation gives IidPartitioner's partitions, so runs keep their data."""
    import datasets
    import numpy as np
    from flwr_datasets.partitioner import IidPartitioner

    from fedlr.data.partition import iid_shards

    shuffled = np.random.default_rng(0).permutation(np.arange(1000, 1203))
    partitioner = IidPartitioner(num_partitions=num_clients)
    partitioner.dataset = datasets.Dataset.from_dict({"row": shuffled})
    expected = [np.asarray(partitioner.load_partition(i)["row"]) for i in range(num_clients)]
    got = iid_shards(shuffled, num_clients)
    assert len(got) == num_clients and all(np.array_equal(a, b) for a, b in zip(got, expected))
