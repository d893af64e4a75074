"""A real sweep: two runs of the tiny config (1 round each) through Flower's simulation engine on
Ray, interrupted after the first run, restarted, reported. About two minutes on 2 cores, most of it
Ray start-up, hence ``slow``; ``test_sweep.py`` covers the 2 x 2 x 2 bookkeeping in seconds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import psutil
import pytest

from fedlr.cli import main
from fedlr.results.console import Console
from fedlr.sweep import execute_sweep, load_sweep, simulate_runner

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


class InterruptOnSecondRun:
    """The real simulation for the first run; Ctrl-C (KeyboardInterrupt) as the second starts."""

    def __init__(self):
        self.calls: list[str] = []
        self.real = simulate_runner(Console(quiet=True))

    def __call__(self, exp, run_dir):
        self.calls.append(run_dir.path.name)
        if len(self.calls) == 2:
            raise KeyboardInterrupt
        return self.real(exp, run_dir)


class Recording:
    def __init__(self):
        self.calls: list[str] = []
        self.real = simulate_runner(Console(quiet=True))

    def __call__(self, exp, run_dir):
        self.calls.append(run_dir.path.name)
        return self.real(exp, run_dir)


def test_real_sweep_interrupted_restarted_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    text = (REPO / "experiments" / "tiny.toml").read_text()
    text += '\n[sweep]\n"method.name" = ["fedit", "fed_sb"]\n'
    path = tmp_path / "real.toml"
    path.write_text(text)
    overrides = ["federation.num_rounds=1", "output.export_peft=false", f'output.dir="{tmp_path / "runs"}"']
    sweep = load_sweep(path, overrides)
    slugs = [p.slug for p in sweep.points]
    assert slugs == ["method-fedit", "method-fed_sb"]

    first = InterruptOnSecondRun()
    with pytest.raises(KeyboardInterrupt):
        execute_sweep(sweep, first, console=Console(quiet=True))
    assert first.calls == slugs
    assert [sweep.status(p) for p in sweep.points] == ["complete", "partial"]

    second = Recording()
    result = execute_sweep(load_sweep(path, overrides), second, console=Console(quiet=True))
    assert second.calls == ["method-fed_sb"] and result.ran == ["method-fed_sb"] and result.skipped == ["method-fedit"]
    assert [sweep.status(p) for p in sweep.points] == ["complete", "complete"]
    _, alive = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=15)
    assert not alive, f"the simulation left processes behind: {alive}"

    assert main(["report", str(sweep.root)]) == 0
    rows = {r["run"]: r for r in csv.DictReader((sweep.root / "report" / "runs.csv").open())}
    assert sorted(rows) == sorted(slugs)
    for slug in slugs:
        ledger = [json.loads(x) for x in (sweep.root / slug / "ledger.jsonl").read_text().splitlines()]
        summary = json.loads((sweep.root / slug / "summary.json").read_text())
        assert [r["round"] for r in ledger] == [0, 1]
        accs = [r["eval_accuracy"] for r in ledger]
        row = rows[slug]
        assert row["method"] == slug.split("-", 1)[1]
        assert float(row["final_accuracy"]) == pytest.approx(accs[-1]) == pytest.approx(summary["final_accuracy"])
        assert float(row["best_accuracy"]) == pytest.approx(max(accs))
        assert int(row["uplink_bytes"]) == ledger[-1]["cumulative_uplink_bytes"] == summary["uplink_bytes"]
        assert int(row["downlink_bytes"]) == ledger[-1]["cumulative_downlink_bytes"] == summary["downlink_bytes"]
        assert float(row["wall_time_s"]) == pytest.approx(summary["wall_time_s"])
    assert int(rows["method-fed_sb"]["uplink_bytes"]) > int(rows["method-fedit"]["uplink_bytes"])  # Fed-SB's init round
