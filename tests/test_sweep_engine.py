"""A sweep starts its engine once (``fedlr.run.shared_engine``): its runs share one Ray cluster and
one pool of workers, whose processes keep the tokenized data (and, where the sweep says it pays,
the base model) between runs (``fedlr.workbench.kept``) and build a new workbench for every run;
a run inside the sweep gives the same ledger and summary as the same run alone, byte for byte
apart from the wall times. The sweep test runs real simulations on Ray, hence ``slow``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import psutil
import pytest

import torch

from fedlr import workbench
from fedlr.config import load_experiment
from fedlr.results import RunDir
from fedlr.results.console import Console
from fedlr.run import shared_engine
from fedlr.run.simulation import simulate
from fedlr.sweep import execute_sweep, keeps_base_model, load_sweep, simulate_runner

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "tiny.toml"


def test_a_workbench_from_kept_parts_equals_one_built_from_scratch(monkeypatch):
    monkeypatch.delenv(workbench.KEEP_BASE_MODEL, raising=False)
    workbench._KEPT.clear()
    workbench.Workbench(load_experiment(TINY, ['method.name="fedit"', "method.rank=2"]))
    assert "base model" not in workbench._KEPT  # a lone run keeps no spare copy of the base model
    monkeypatch.setenv(workbench.KEEP_BASE_MODEL, "1")
    first = workbench.Workbench(load_experiment(TINY, ['method.name="fedit"', "method.rank=2"]))
    kept_base = workbench._KEPT["base model"][1]
    exp = load_experiment(TINY, ['method.name="fed_sb"', "method.rank=4"])
    reused = workbench.Workbench(exp)
    assert workbench._KEPT["base model"][1] is kept_base  # same model, task, labels and seed: loaded once
    assert reused.data is first.data  # same data section, seed and tokenizer: split and tokenized once
    workbench._KEPT.clear()
    fresh = workbench.Workbench(exp)
    assert fresh.data is not first.data
    want = fresh.adapted.model.state_dict()
    got = reused.adapted.model.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert reused.adapted.trained_keys == fresh.adapted.trained_keys
    for pid in range(exp.federation.num_clients):
        assert reused.data.client_train(pid).input_ids == fresh.data.client_train(pid).input_ids
    other_seed = workbench.Workbench(load_experiment(TINY, ["seed=1"]))
    assert other_seed.data is not fresh.data  # the partitions depend on the seed
    assert not torch.equal(other_seed.adapted.model.classifier.weight, fresh.adapted.model.classifier.weight)


def test_the_base_model_is_kept_only_where_two_runs_in_a_row_share_it(tmp_path):
    def sweep(axes: dict):
        text = TINY.read_text() + "\n[sweep]\n" + "".join(f'"{k}" = {v}\n' for k, v in axes.items())
        (tmp_path / "s.toml").write_text(text)
        return load_sweep(tmp_path / "s.toml", [f'output.dir="{tmp_path / "runs"}"'])

    assert keeps_base_model(sweep({"method.name": '["fedit", "fed_sb"]'}))
    assert not keeps_base_model(sweep({"method.name": '["fedit", "fed_sb"]', "seed": "[0, 1]"}))  # seed fastest
    assert not keeps_base_model(sweep({"seed": "[0, 1, 2]"}))


def in_process_run(exp, run_dir: Path, run_id: int) -> list[str]:
    """fedlr's ServerApp body and ClientApp in this process (``benchmarks/common.py``), as Flower
    run ``run_id``; the ledger's lines without wall times."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import InProcessGrid

    from fedlr.clients.app import app
    from fedlr.run.server import run_server

    run_dir.mkdir()
    run_server(InProcessGrid(app, exp.federation.num_clients, run_id=run_id), exp, RunDir(run_dir),
               Console(quiet=True), run_id=run_id)
    return ledger_lines(run_dir)


def test_a_second_run_of_one_experiment_in_a_process_starts_from_its_initial_adapters(tmp_path):
    """The workbench the first run left (its final adapters loaded) is not the second run's start:
    Fed-SB's server would otherwise begin from the first run's trained state."""
    exp = load_experiment(TINY, ["output.export_peft=false", f'output.dir="{tmp_path}"'])
    first = in_process_run(exp, tmp_path / "first", run_id=1)
    second = in_process_run(exp, tmp_path / "second", run_id=2)
    assert len(first) == exp.federation.num_rounds + 1
    assert second == first


def ledger_lines(path: Path) -> list[str]:
    """The ledger's rows as written, each without its wall time (the only field that may differ)."""
    return [re.sub(r'(, )?"wall_time_s": [-0-9.eE+]+', "", line)
            for line in (path / "ledger.jsonl").read_text().splitlines()]


def summary_lines(path: Path) -> list[str]:
    """summary.json as written, without its wall time and its run directory."""
    return [line for line in (path / "summary.json").read_text().splitlines()
            if not re.match(r'\s*"(wall_time_s|run_dir)": ', line)]


class PoolRecorder:
    """The real simulation, noting after each run which worker pool the shared engine holds."""

    def __init__(self):
        self.real = simulate_runner(Console(quiet=True))
        self.pools: list[int | None] = []

    def __call__(self, exp, run_dir, resume=False):
        try:
            return self.real(exp, run_dir, resume=resume)
        finally:
            pool = shared_engine._ENGINE.pool
            self.pools.append(None if pool is None else id(pool))


@pytest.mark.slow
def test_a_run_inside_a_sweep_gives_the_ledger_it_gives_alone(tmp_path, monkeypatch):
    """Three runs on one pool: FedIT, FedIT whose clients all raise (the run fails; ``keep_going``
    goes on), Fed-SB — whose ledger must be the one it gives alone on a fresh engine."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    text = TINY.read_text() + ('\n[sweep]\nmode = "zip"\n"method.name" = ["fedit", "fedit", "fed_sb"]\n'
                               '"faults.fraction" = [0.0, 1.0, 0.0]\n')
    path = tmp_path / "engine.toml"
    path.write_text(text)
    sweep = load_sweep(path, ["output.export_peft=false", 'faults.kinds=["raise"]',
                              f'output.dir="{tmp_path / "runs"}"'])
    slugs = [p.slug for p in sweep.points]

    recorder = PoolRecorder()
    assert keeps_base_model(sweep)  # the workers keep the base model too: the runs share it
    with shared_engine.shared_engine(keep_base_model=keeps_base_model(sweep)):
        result = execute_sweep(sweep, recorder, console=Console(quiet=True), keep_going=True)
    assert [slug for slug, _ in result.failed] == [slugs[1]] and result.ran == [slugs[0], slugs[2]]
    assert recorder.pools[0] is not None and recorder.pools == [recorder.pools[0]] * 3, "one pool for every run"
    assert shared_engine._ENGINE.pool is None
    _, alive = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=15)
    assert not alive, f"the shared engine left processes behind: {alive}"

    second = sweep.points[2]  # it ran on the workers the first two runs left
    alone = RunDir(tmp_path / "alone")
    alone.path.mkdir()
    simulate(second.experiment, alone, Console(quiet=True))
    in_sweep = sweep.run_path(second)
    assert ledger_lines(in_sweep) == ledger_lines(alone.path)
    assert len(ledger_lines(alone.path)) == second.experiment.federation.num_rounds + 1
    assert summary_lines(in_sweep) == summary_lines(alone.path)
