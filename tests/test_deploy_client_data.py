"""Acceptance test of client-owned data (issue 21.1): a real SuperLink and two SuperNodes on
127.0.0.1, each SuperNode training on its own CSV file (different column names on one of them),
the server evaluating on its own test file. No process is given a corpus: the experiment's
``data.dataset`` is 'client-files', which no simulation and no partitioner can load. Every
process is stopped by pid at the end (``LocalDeployment.stop``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlr.config import load_experiment
from fedlr.deploy.local import LocalDeployment
from fedlr.results import RunDir

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.toml"
POS = ["a great film", "wonderful acting", "loved every minute", "a superb story", "truly moving", "brilliant"]
NEG = ["a dull film", "terrible acting", "hated every minute", "a boring story", "truly awful", "pointless"]


def _write(path: Path, header: str, rows: list[tuple[str, str]]) -> Path:
    path.write_text(header + "\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    return path


def test_two_supernodes_train_on_their_own_files(tmp_path):
    mixed = [(t, "pos") for t in POS] + [(t, "neg") for t in NEG]
    alice = _write(tmp_path / "alice.csv", "text,label", mixed * 2)  # 24 rows, the experiment's column names
    bob = _write(tmp_path / "bob.csv", "review,sentiment", mixed[3:9] * 2)  # 12 rows, its own column names
    server_test = _write(tmp_path / "server-test.csv", "text,label", [("great story", "pos"), ("awful film", "neg"),
                                                                        ("moving acting", "pos")])
    exp = load_experiment(TINY, ["data.dataset='client-files'", "data.labels=['neg', 'pos']",
                                 f"data.test_file='{server_test}'", "federation.num_clients=2",
                                 "federation.clients_per_round=2", "federation.round_timeout_s=300",
                                 "federation.enroll_timeout_s=300", f"output.dir='{tmp_path}'", "output.quiet=true"])
    with LocalDeployment(tmp_path / "federation") as fed:
        fed.start_superlink()
        fed.start_supernode("alice", 0, 2, extra=["--data", str(alice)])
        fed.start_supernode("bob", 1, 2, extra=["--data", str(bob), "--text-column", "review",
                                                "--label-column", "sentiment"])
        lines: list[str] = []
        res = fed.submit(exp, tmp_path / "run", run_name="own-data", echo=lines.append)
        logs = {name: fed.tree.log(name)[-3000:] for name in ("alice", "bob", "superlink")}
    assert res.status == "finished:completed", ("\n".join(lines[-60:]), logs)
    rows = RunDir(res.run_dir).ledger()
    assert [r.round for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r.clients_sampled == [0, 1] and r.clients_replied == 2 and r.aggregated, r
        assert r.train_loss is not None and r.client_val_accuracy is not None, r
    assert all(r.eval_accuracy is not None for r in rows)  # the server's own test file
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["test_examples"] == 3 and summary["majority_rate"] is None
    assert json.loads((res.run_dir / "model" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}


def test_dp_on_own_files_plans_from_the_sizes_reported_at_enrollment(tmp_path):
    """privacy.mode 'sample' on client-owned data (issue 21.1): no process can derive the clients'
    sizes, so each SuperNode reports its n_k at enrollment and the server calibrates σ from them.
    Both files' row counts are known here (val_fraction 0: every row trains), and the run's σ and ε
    are those of the plan computed from exactly these sizes: each client's own ε from its own
    q_k = B / n_k, the federation's the larger (the smaller client's)."""
    from fedlr.privacy.planning import epsilon_of_client, plan_privacy

    mixed = [(t, "pos") for t in POS] + [(t, "neg") for t in NEG]
    alice = _write(tmp_path / "alice.csv", "text,label", mixed * 2)  # 24 rows
    bob = _write(tmp_path / "bob.csv", "text,label", mixed[3:9] * 2)  # 12 rows
    exp = load_experiment(TINY, ["data.dataset='client-files'", "data.labels=['neg', 'pos']", "data.val_fraction=0",
                                 "evaluation.central=false", "evaluation.client_side=false", "method.name='fedit'", "federation.num_clients=2",
                                 "federation.clients_per_round=2", "federation.round_timeout_s=300",
                                 "federation.enroll_timeout_s=300", 'privacy.mode="sample"',
                                 "privacy.target_epsilon=8.0", "privacy.delta=1e-3", 'privacy.noise_source="secure"',
                                 f"output.dir='{tmp_path}'", "output.quiet=true"])
    plan = plan_privacy(exp, [24, 12])
    with LocalDeployment(tmp_path / "federation") as fed:
        fed.start_superlink()
        fed.start_supernode("alice", 0, 2, extra=["--data", str(alice)])
        fed.start_supernode("bob", 1, 2, extra=["--data", str(bob)])
        lines: list[str] = []
        res = fed.submit(exp, tmp_path / "run", run_name="own-data-dp", echo=lines.append)
        logs = {name: fed.tree.log(name)[-3000:] for name in ("alice", "bob", "superlink")}
    assert res.status == "finished:completed", ("\n".join(lines[-60:]), logs)
    rows = RunDir(res.run_dir).ledger()
    assert [r.round for r in rows] == [0, 1, 2] and all(r.clients_replied == 2 for r in rows[1:])
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["noise_multiplier"] == pytest.approx(plan.noise_multiplier, rel=1e-12)
    assert plan.sample_rates == [8 / 24, 8 / 12]  # batch_size / n_k
    want = {str(pid): epsilon_of_client(exp, n, plan.noise_multiplier, 2) for pid, n in enumerate([24, 12])}
    assert rows[-1].client_epsilon == pytest.approx(want, rel=1e-6)  # each reported by its own accountant
    assert want["1"] > want["0"]  # the smaller client spends more: its q is larger
    assert rows[-1].epsilon == summary["epsilon"] == pytest.approx(plan.epsilon, rel=1e-6) == max(want.values())
    assert summary["epsilon"] <= 8.0
