"""``fedlr sweep``: expansion, validation before any run, run directories, skip-on-restart.

The acceptance test (2 methods x 2 ranks x 2 seeds, interrupted, restarted, reported) runs the
sweep's real bookkeeping, the real preflight and the real report with an executor that writes
the run directory the way the simulation does (``RunDir`` + ``LedgerRow`` rows + a summary like
``fedlr.run.server``'s), so it takes seconds; ``test_sweep_e2e.py`` does the same with the real
simulation on a 2-run sweep. Privacy (ε) does not exist yet, so the rank is swept in its place.
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
import tomllib
from pathlib import Path

import pytest

from fedlr.cli import main
from fedlr.config import ConfigError, toml_value
from fedlr.results import LedgerRow, RunDir
from fedlr.results.console import Console
from fedlr.sweep import (SweepSpec, axis_labels, build_sweep, check_field, execute_sweep, expand, load_sweep,
                         parse_sweep_table, slug_for)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "tiny.toml"


def tiny_data(tmp_path: Path, sweep: dict | None = None) -> dict:
    data = tomllib.loads(TINY.read_text())
    data["output"]["dir"] = str(tmp_path / "runs")
    if sweep is not None:
        data["sweep"] = sweep
    return data


def write_toml(path: Path, data: dict) -> Path:
    """A small TOML writer for the test configs (tables of scalars and lists, one level deep)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- expansion
def test_grid_and_zip_expansion_order():
    grid = SweepSpec(axes={"method.name": ["fedit", "fed_sb"], "seed": [0, 1, 2]})
    points = expand(grid)
    assert len(points) == 6
    assert points[0] == {"method.name": "fedit", "seed": 0}
    assert points[1] == {"method.name": "fedit", "seed": 1}  # the last key varies fastest
    assert points[3] == {"method.name": "fed_sb", "seed": 0}
    zipped = SweepSpec(axes={"method.name": ["fedit", "fed_sb"], "train.lr": [1e-3, 5e-3]}, mode="zip")
    assert expand(zipped) == [{"method.name": "fedit", "train.lr": 1e-3}, {"method.name": "fed_sb", "train.lr": 5e-3}]


def test_sweep_table_settings_are_not_fields():
    spec = parse_sweep_table({"mode": "zip", "name": "pairs", "method.name": ["fedit"], "train": {"lr": [0.1]}})
    assert spec == SweepSpec(axes={"method.name": ["fedit"], "train.lr": [0.1]}, mode="zip", name="pairs")
    assert parse_sweep_table({"seed": [0]}).mode == "grid"


def test_slugs_name_the_swept_values():
    labels = axis_labels(["method.name", "method.rank", "seed"])
    assert labels == {"method.name": "method", "method.rank": "rank", "seed": "seed"}
    assert slug_for({"method.name": "fed_sb", "method.rank": 4, "seed": 0}, labels) == "method-fed_sb__rank-4__seed-0"
    # colliding short names fall back to the whole key
    assert axis_labels(["method.alpha", "data.alpha"]) == {"method.alpha": "method-alpha", "data.alpha": "data-alpha"}
    assert slug_for({"train.lr": 1e-05}) == "lr-1e-05"
    assert slug_for({"model.targets": ["query", "value"]}) == "targets-query+value"
    assert slug_for({"data.dataset": "/data/my file.csv"}) == "dataset-data-my-file.csv"
    long = slug_for({"data.dataset": "x" * 300})
    assert len(long) == 100 and long != slug_for({"data.dataset": "x" * 299})


def test_nested_toml_keys_and_settings(tmp_path):
    # unquoted dotted keys in TOML arrive as nested tables; they mean the same field
    sweep = build_sweep(tiny_data(tmp_path, {"method": {"name": ["fedit", "ffa_lora"]}, "name": "study"}), "x")
    assert sweep.name == "study"
    assert [p.params for p in sweep.points] == [{"method.name": "fedit"}, {"method.name": "ffa_lora"}]
    assert sweep.root == tmp_path / "runs" / "study"
    exp = sweep.points[1].experiment
    assert exp.method.name == "ffa_lora"
    assert exp.output.dir == str(tmp_path / "runs" / "study") and exp.output.name == "method-ffa_lora"
    assert exp.method.rank == 4  # the rest of the base experiment is kept


def test_sweep_name_defaults_to_the_file_stem_and_overrides_apply_first(tmp_path):
    path = write_toml(tmp_path / "my study.toml", tiny_data(tmp_path, {"seed": [0, 1]}))
    sweep = load_sweep(path, ["federation.num_rounds=1", 'sweep.mode="zip"'])
    assert sweep.name == "my-study"
    assert sweep.spec.mode == "zip"
    assert all(p.experiment.federation.num_rounds == 1 for p in sweep.points)
    assert [p.experiment.seed for p in sweep.points] == [0, 1]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("table, message", [
    ({"method.nme": ["fedit"]}, "sweep.method.nme: not a config field (method has no 'nme'"),
    ({"methd.name": ["fedit"]}, "sweep.methd.name: not a config field (the experiment has no 'methd'"),
    ({"seed.value": [1]}, "'seed' is a value, not a section"),
    ({"method": ["fedit"]}, "'method' is a section; sweep one of its fields"),
    ({"seed": []}, "sweep.seed: empty list"),
    ({"seed": 3}, "sweep.seed: expected a list of values, got 3"),
    ({"mode": "zip", "seed": [0, 1], "method.rank": [2, 4, 8]}, "needs lists of one length: seed has 2, method.rank has 3"),
    ({"mode": "random", "seed": [0]}, "sweep.mode: 'random' is not allowed"),
    ({"mode": "grid"}, "names no config field"),
    ({"output.dir": ["a", "b"]}, "sweep.output.dir: set by the sweep"),
    ({"seed": [0, 0]}, "two runs would share the directory 'seed-0'"),
    ({"method.rank": [4, -1]}, "method.rank = -1 is not a valid experiment"),
    ({"method.name": ["fedit", "fedavg"]}, "method.name: 'fedavg' is not allowed"),
    ({"name": "../escape", "seed": [0]}, "sweep.name: '../escape' must be a plain folder name"),
])
def test_bad_sweeps_fail_before_any_run(tmp_path, table, message):
    with pytest.raises(ConfigError) as err:
        build_sweep(tiny_data(tmp_path, table), "bad")
    assert message in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_no_sweep_table_and_bad_base(tmp_path):
    with pytest.raises(ConfigError, match=r"no \[sweep\] table"):
        build_sweep(tiny_data(tmp_path), "x")
    data = tiny_data(tmp_path, {"seed": [0]})
    data["federation"]["num_rounds"] = 0
    with pytest.raises(ConfigError, match="federation.num_rounds"):
        build_sweep(data, "x")


def test_check_field_accepts_every_kind_of_field():
    for key in ("seed", "method.name", "method.rank", "train.lr", "model.targets", "data.max_train_examples"):
        check_field(key)


def test_cli_bad_sweep_exits_2_and_runs_nothing(tmp_path, capsys):
    path = write_toml(tmp_path / "bad.toml", tiny_data(tmp_path, {"mode": "zip", "seed": [0, 1], "method.rank": [2]}))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "fedlr: error:" in err and "needs lists of one length" in err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- a fake executor
def fake_accuracy(exp, rnd: int) -> float:
    """Deterministic, distinct per (method, rank, seed, round), in [0.4, 0.9)."""
    key = f"{exp.method.name}/{exp.method.rank}/{exp.seed}/{rnd}".encode()
    return 0.4 + int(hashlib.sha256(key).hexdigest()[:8], 16) / 2**32 * 0.5


class FakeSimulation:
    """Writes a run directory the way ``fedlr.run.server.run_server`` does: one ``LedgerRow``
    row per round (round 0 = initial evaluation) via ``RunDir.append``, then the summary built
    from those rows. ``interrupt_on`` (1-based call number) raises KeyboardInterrupt after the
    first ledger row, as Ctrl-C in the middle of a run would."""

    def __init__(self, interrupt_on: int | None = None):
        self.calls: list[str] = []
        self.interrupt_on = interrupt_on

    def __call__(self, exp, run_dir: RunDir) -> dict:
        self.calls.append(run_dir.path.name)
        fed = exp.federation
        per_client = 1000 * exp.method.rank + (50_000 if exp.method.name == "fed_sb" else 0)
        up = down = 0
        rows = []
        for rnd in range(fed.num_rounds + 1):
            rep = LedgerRow(round=rnd, clients_sampled=list(range(fed.clients_per_round)))
            if rnd:
                rep.clients_replied = fed.clients_per_round
                rep.train_loss = 0.7 - 0.01 * rnd
                rep.uplink_bytes = fed.clients_per_round * per_client + exp.seed * 7
                rep.downlink_bytes = fed.clients_per_round * per_client // 2
            rep.eval_loss, rep.eval_accuracy = 0.69, fake_accuracy(exp, rnd)
            up, down = up + rep.uplink_bytes, down + rep.downlink_bytes
            rep.cumulative_uplink_bytes, rep.cumulative_downlink_bytes, rep.cumulative_bytes = up, down, up + down
            rep.wall_time_s = 0.5 * (rnd + 1)
            run_dir.append(rep)
            rows.append(rep.to_dict())
            if rnd == 0 and self.interrupt_on == len(self.calls):
                raise KeyboardInterrupt
        accs = [r["eval_accuracy"] for r in rows]
        summary = {
            "method": exp.method.name, "rank": exp.method.rank, "num_rounds": fed.num_rounds,
            "num_clients": fed.num_clients, "clients_per_round": fed.clients_per_round,
            "final_accuracy": accs[-1], "best_accuracy": max(accs), "majority_rate": 0.5, "test_examples": 64,
            "uplink_bytes": up, "downlink_bytes": down, "total_bytes": up + down, "trained_params": 100,
            "failed_client_rounds": 0, "rejected_updates": 0, "wall_time_s": 1.0 + exp.seed,
            "run_dir": str(run_dir.path), **fake_privacy(exp),
        }
        run_dir.write_summary(summary)
        return summary


def fake_privacy(exp) -> dict:
    """What a private run's summary states: the ε it spent (at most the target; a little less
    here, differently per seed, so the report's numbers can only come from the summaries)."""
    if exp.privacy.mode == "none":
        return {}
    return {"epsilon": exp.privacy.target_epsilon * (0.99 - 0.01 * exp.seed), "delta": exp.privacy.delta,
            "accountant": exp.privacy.accountant}


def acceptance_sweep(tmp_path) -> Path:
    data = tiny_data(tmp_path, {"method.name": ["fedit", "ffa_lora"], "privacy.target_epsilon": [1.0, 3.0],
                                "seed": [0, 1]})
    data["federation"]["num_rounds"] = 3
    data["privacy"] = {"mode": "sample", "target_epsilon": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}
    data["method"]["init"] = "random"  # the base names fed_sb, whose federated init is refused under DP
    return write_toml(tmp_path / "study.toml", data)


def test_acceptance_interrupt_restart_and_report(tmp_path):
    """2 methods x 2 ε x 2 seeds: interrupted in the 4th run, restarted: exactly the five
    missing runs run (the interrupted one from scratch), and the report's rows and numbers are
    the ledgers'."""
    path = acceptance_sweep(tmp_path)
    sweep = load_sweep(path)
    assert len(sweep.points) == 8
    slugs = [p.slug for p in sweep.points]
    assert (slugs[0] == "method-fedit__target_epsilon-1.0__seed-0"
            and slugs[-1] == "method-ffa_lora__target_epsilon-3.0__seed-1")

    first = FakeSimulation(interrupt_on=4)
    out: list[str] = []
    console = Console(stream=_Lines(out))
    with pytest.raises(KeyboardInterrupt):
        execute_sweep(sweep, first, console=console)
    assert first.calls == slugs[:4]
    assert [sweep.status(p) for p in sweep.points] == ["complete"] * 3 + ["partial"] + ["pending"] * 4
    assert any("interrupted during method-fedit__target_epsilon-3.0__seed-1; 3 of 8 runs complete" in line
               for line in out)
    done_before = {s: (sweep.root / s / "summary.json").stat().st_mtime_ns for s in slugs[:3]}

    # restart from the file, as `fedlr sweep study.toml` again would
    sweep = load_sweep(path)
    second = FakeSimulation()
    out.clear()
    result = execute_sweep(sweep, second, console=Console(stream=_Lines(out)))
    assert second.calls == slugs[3:]  # exactly the missing runs, in order
    assert result.ran == slugs[3:] and result.skipped == slugs[:3] and not result.failed
    assert {s: (sweep.root / s / "summary.json").stat().st_mtime_ns for s in slugs[:3]} == done_before
    assert sorted(p.name for p in sweep.root.iterdir() if p.is_dir()) == sorted(slugs)  # no "-2" copies
    assert any("3 complete, 5 to run" in line for line in out)
    assert any("removing" in line and slugs[3] in line for line in out)
    assert any(line.startswith("[sweep 8/8] done  method-ffa_lora__target_epsilon-3.0__seed-1") and "0 left" in line
               for line in out)
    # the interrupted run was redone from scratch: one ledger row per round, not 1 + 4
    assert len(RunDir(sweep.root / slugs[3]).ledger()) == 4
    manifest = json.loads((sweep.root / "sweep.json").read_text())
    assert [r["slug"] for r in manifest["runs"]] == slugs

    # a third start has nothing to do
    third = FakeSimulation()
    assert execute_sweep(load_sweep(path), third, console=Console(quiet=True)).ran == []
    assert third.calls == []

    # the report, checked against the ledgers read here independently
    assert main(["report", str(sweep.root)]) == 0
    report_dir = sweep.root / "report"
    runs = {r["run"]: r for r in csv.DictReader((report_dir / "runs.csv").open())}
    assert sorted(runs) == sorted(slugs)
    expected_groups = {}
    for slug in slugs:
        ledger = [json.loads(line) for line in (sweep.root / slug / "ledger.jsonl").read_text().splitlines()]
        config = tomllib.loads((sweep.root / slug / "config.toml").read_text())
        accs = [r["eval_accuracy"] for r in ledger]
        up = sum(r["uplink_bytes"] for r in ledger)
        down = sum(r["downlink_bytes"] for r in ledger)
        row = runs[slug]
        summary = json.loads((sweep.root / slug / "summary.json").read_text())
        assert row["method"] == config["method"]["name"] and int(row["rank"]) == config["method"]["rank"]
        assert int(row["seed"]) == config["seed"] and row["codec"] == "none"
        assert float(row["final_accuracy"]) == pytest.approx(accs[-1])
        assert float(row["best_accuracy"]) == pytest.approx(max(accs))
        assert int(row["uplink_bytes"]) == up == ledger[-1]["cumulative_uplink_bytes"]
        assert int(row["downlink_bytes"]) == down
        assert float(row["total_MiB"]) == pytest.approx((up + down) / 2**20)
        assert float(row["epsilon"]) == pytest.approx(summary["epsilon"]) and summary["epsilon"] < 3.0
        assert float(row["delta"]) == pytest.approx(1e-5)
        key = (config["method"]["name"], config["privacy"]["target_epsilon"])
        expected_groups.setdefault(key, []).append((accs[-1], max(accs), up, down, 1.0 + config["seed"],
                                                    summary["epsilon"]))

    table = list(csv.DictReader((report_dir / "table.csv").open()))
    assert sorted((r["method"], float(r["epsilon"])) for r in table) == sorted(expected_groups)
    for r in table:
        runs_of = expected_groups[(r["method"], float(r["epsilon"]))]
        finals, bests = [x[0] for x in runs_of], [x[1] for x in runs_of]
        assert int(r["n_seeds"]) == 2 and r["seeds"] == "0 1"
        assert float(r["final_accuracy_mean"]) == pytest.approx(statistics.fmean(finals))
        assert float(r["final_accuracy_std"]) == pytest.approx(statistics.stdev(finals))
        assert float(r["best_accuracy_mean"]) == pytest.approx(statistics.fmean(bests))
        assert float(r["best_accuracy_std"]) == pytest.approx(statistics.stdev(bests))
        assert float(r["uplink_MiB_mean"]) == pytest.approx(statistics.fmean(x[2] for x in runs_of) / 2**20)
        assert float(r["downlink_MiB_mean"]) == pytest.approx(statistics.fmean(x[3] for x in runs_of) / 2**20)
        assert float(r["wall_time_s_mean"]) == pytest.approx(1.5)
        assert float(r["epsilon_mean"]) == pytest.approx(statistics.fmean(x[5] for x in runs_of))
    md = (report_dir / "table.md").read_text().splitlines()
    assert len(md) == 2 + 4
    for key, runs_of in expected_groups.items():
        finals = [x[0] for x in runs_of]
        ci95 = 12.706204736174707 * statistics.stdev(finals) / 2**0.5  # t_{0.975, 1}·s/√n, n = 2 seeds
        assert any(f"{statistics.fmean(finals):.4f} ± {ci95:.4f} (n=2)" in line for line in md[2:])
    for name in ("accuracy_vs_bytes.png", "accuracy_vs_epsilon.png", "accuracy_per_round.png", "report.html"):
        assert (report_dir / name).stat().st_size > 1000


def test_failed_run_stops_the_sweep_or_is_skipped_with_keep_going(tmp_path):
    sweep = build_sweep(tiny_data(tmp_path, {"seed": [0, 1, 2]}), "s")

    def broken(exp, run_dir):
        if exp.seed == 1:
            raise RuntimeError("boom")
        return FakeSimulation()(exp, run_dir)

    quiet = Console(quiet=True)
    with pytest.raises(RuntimeError, match="boom"):
        execute_sweep(sweep, broken, console=quiet, check=lambda exp: 2)
    assert [sweep.status(p) for p in sweep.points] == ["complete", "partial", "pending"]
    result = execute_sweep(sweep, broken, console=quiet, check=lambda exp: 2, keep_going=True)
    assert result.ran == ["seed-2"] and result.failed == [("seed-1", "RuntimeError: boom")]

    def no_summary(exp, run_dir):
        pass

    result = execute_sweep(sweep, no_summary, console=quiet, check=lambda exp: 2, keep_going=True)
    assert "without writing" in result.failed[0][1]


def test_a_run_in_which_no_round_aggregated_fails_the_sweep_and_runs_again(tmp_path, monkeypatch, capsys):
    """Issue 20.7: a run whose summary says no round aggregated (``fedlr.run.server`` writes
    ``rounds_aggregated: 0`` and an ``error``) is FAILED, not complete: the sweep exits 1, with
    --keep-going the others still run, and the next sweep runs it again instead of skipping it."""
    path = write_toml(tmp_path / "s.toml", tiny_data(tmp_path, {"seed": [0, 1, 2]}))
    calls = []

    def untrained_seed_1(exp, run_dir, resume=False):  # returns, as a runner that does not raise would
        calls.append(exp.seed)
        summary = FakeSimulation()(exp, run_dir)
        if exp.seed == 1:
            summary = {**summary, "rounds_aggregated": 0, "error": "no round aggregated: in all 2 rounds ..."}
            run_dir.write_summary(summary)
        return summary

    monkeypatch.setattr("fedlr.sweep.simulate_runner", lambda console, tensorboard=False: untrained_seed_1)
    assert main(["sweep", str(path), "--keep-going"]) == 1
    out = capsys.readouterr().out
    assert "[sweep 2/3] FAILED seed-1: RuntimeError: no round aggregated: in all 2 rounds" in out
    assert "1 failed" in out and calls == [0, 1, 2]
    sweep = load_sweep(path)
    assert [sweep.status(p) for p in sweep.points] == ["complete", "failed", "complete"]

    assert main(["sweep", str(path), "--keep-going"]) == 1  # run again, and failed again
    out = capsys.readouterr().out
    assert f"removing {sweep.root / 'seed-1'} (it failed: no round aggregated" in out
    assert "0 ran, 2 were complete, 1 failed" in out and calls == [0, 1, 2, 1]

    with pytest.raises(RuntimeError, match="no round aggregated"):  # without --keep-going it stops the sweep
        execute_sweep(build_sweep(tiny_data(tmp_path / "b", {"seed": [1, 2]}), "b"), untrained_seed_1,
                      console=Console(quiet=True), check=lambda exp: 2)
    assert calls[-1] == 1


def test_preflight_of_every_pending_run_happens_before_the_first(tmp_path):
    sweep = build_sweep(tiny_data(tmp_path, {"method.rank": [2, 4]}), "s")
    checked = []

    def check(exp):
        checked.append(exp.method.rank)
        if exp.method.rank == 4:
            raise ConfigError("method.rank: too large")

    fake = FakeSimulation()
    with pytest.raises(ConfigError, match="run rank-4: method.rank: too large"):
        execute_sweep(sweep, fake, console=Console(quiet=True), check=check)
    assert checked == [2, 4] and fake.calls == []
    assert not sweep.root.exists()


def test_a_complete_run_from_another_config_is_not_silently_reused(tmp_path):
    data = tiny_data(tmp_path, {"seed": [0]})
    execute_sweep(build_sweep(data, "s"), FakeSimulation(), console=Console(quiet=True), check=lambda e: 2)
    data["train"]["lr"] = 0.5
    changed = build_sweep(data, "s")
    with pytest.raises(ConfigError, match=r"complete but was made from a different config "
                                          r"\(train.lr: run has 0.002, sweep wants 0.5\)"):
        execute_sweep(changed, FakeSimulation(), console=Console(quiet=True), check=lambda e: 2)


def test_a_complete_run_is_kept_when_only_where_its_caches_live_changed(tmp_path):
    data = tiny_data(tmp_path, {"seed": [0]})
    execute_sweep(build_sweep(data, "s"), FakeSimulation(), console=Console(quiet=True), check=lambda e: 2)
    data.setdefault("model", {}).update(prefix_cache_dir=str(tmp_path / "cache"), prefix_cache_bytes=0)
    fake = FakeSimulation()
    execute_sweep(build_sweep(data, "s"), fake, console=Console(quiet=True), check=lambda e: 2)
    assert fake.calls == []  # the complete run counts: no number depends on those fields


def test_config_differences_ignore_sections_added_later_at_their_defaults(tmp_path):
    from fedlr.config import to_toml
    from fedlr.sweep import config_differences

    exp = build_sweep(tiny_data(tmp_path, {"seed": [0]}), "s").points[0].experiment
    stored = tomllib.loads(to_toml(exp))
    assert config_differences(stored, exp) == []
    older = {k: v for k, v in stored.items() if k != "evaluation"}  # a run made before [evaluation] existed
    assert config_differences(older, exp) == []
    del older["train"]["lr"]  # ... but a field set off its default must match
    changed = exp.model_copy(update={"train": exp.train.model_copy(update={"lr": 0.5})})
    assert config_differences(older, changed) == ["train.lr: run has None, sweep wants 0.5"]


def test_dry_run_lists_runs_bytes_and_epsilon(tmp_path, capsys):
    path = write_toml(tmp_path / "s.toml", tiny_data(tmp_path, {"method.name": ["fedit", "fed_sb"]}))
    assert main(["sweep", str(path), "--dry-run", "--set", "federation.num_rounds=1"]) == 0
    text = capsys.readouterr().out
    assert "method-fedit" in text and "method-fed_sb" in text and "n/a" in text and "pending" in text
    assert main(["sweep", str(path), "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    from fedlr.config import load_experiment
    from fedlr.plan import communication_plan

    exp = load_experiment(TINY, ["method.name=fed_sb"])
    plan = communication_plan(exp, 2)
    assert rows[1]["total_bytes"] == plan["total_bytes"] and rows[1]["epsilon"] is None
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


class _Lines:
    """A text stream collecting whole lines (not a terminal)."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.extend(x for x in text.splitlines() if x)

    def flush(self) -> None:
        pass


def test_progress_lines_count_down_and_estimate(tmp_path):
    sweep = build_sweep(tiny_data(tmp_path, {"seed": [0, 1, 2]}), "s")
    now = [0.0]
    fake = FakeSimulation()

    def timed(exp, run_dir):  # runs of 10 s, 20 s and 30 s on a fake clock
        now[0] += 10.0 * (exp.seed + 1)
        return fake(exp, run_dir)

    out: list[str] = []
    execute_sweep(sweep, timed, console=Console(stream=_Lines(out)), check=lambda e: 2, clock=lambda: now[0])
    starts = [line for line in out if "] start" in line]
    dones = [line for line in out if "] done" in line]
    assert starts[0] == "[sweep 1/3] start seed-0 (3 left; elapsed 0s, ETA ?)"
    acc = fake_accuracy(sweep.points[0].experiment, 2)
    assert dones[0] == f"[sweep 1/3] done  seed-0 in 10s, final accuracy {acc:.4f} (2 left; elapsed 10s, ETA 20s)"
    assert starts[1] == "[sweep 2/3] start seed-1 (2 left; elapsed 10s, ETA 20s)"
    assert dones[1].endswith("(1 left; elapsed 30s, ETA 15s)")  # the mean of 10 s and 20 s, once
    assert dones[2].endswith("(0 left; elapsed 1m00s, ETA 0s)")


def test_an_interrupted_run_with_a_checkpoint_resumes_instead_of_starting_over(tmp_path):
    from fedlr import checkpoint

    sweep = build_sweep(tiny_data(tmp_path, {"seed": [0, 1]}), "s")
    for point in sweep.points:  # both interrupted after round 1; only seed 0 got its checkpoint written
        rd = RunDir.create(point.experiment, point.slug)
        rd.append(LedgerRow(round=0, clients_sampled=[]))
        if point.experiment.seed == 0:
            checkpoint.save(rd.checkpoint_dir, 0, {"round": 0})
    calls = []

    def run_one(exp, run_dir, resume=False):
        calls.append((exp.seed, resume, run_dir.ledger_path.exists()))
        return FakeSimulation()(exp, run_dir)

    execute_sweep(sweep, run_one, console=Console(quiet=True), check=lambda exp: 2)
    assert calls == [(0, True, True), (1, False, False)]  # seed 1 had nothing to resume from: started over
