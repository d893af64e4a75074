"""Kill-and-resume and injected faults, through Flower's simulation engine on Ray (tiny model).

A run killed with SIGKILL after round k and resumed with ``fedlr run --resume`` must produce the
ledger and final tensors of the uninterrupted run, with DP-SGD (per-client accountants),
error-feedback compression (per-client memory) and the compressed downlink (the server's
reference and the clients' cached broadcast) on; a corrupt newest checkpoint falls back to the
one before. A run with injected faults finishes every round it can and records each failure.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fedlr import checkpoint
from fedlr.cli import main
from fedlr.config import load_experiment
from fedlr.faults import OBSERVED_AS, fault_schedule
from fedlr.results import RunDir
from fedlr.sampling import sample_clients

pytestmark = pytest.mark.slow
PRIVATE_EF = ["method.name=fedit", 'privacy.mode="sample"', "privacy.noise_multiplier=1.0",
              'compression.codec="topk"', "compression.density=0.25", "compression.error_feedback=true",
              "compression.downlink=true",
              "federation.num_rounds=4", "output.export_peft=false"]


def args(tiny_path, out, name, overrides):
    return ["run", str(tiny_path), "--quiet", "--set", f'output.dir="{out}"', "--set", f'output.name="{name}"',
            *[x for o in overrides for x in ("--set", o)]]


def without_timing(rows):
    return [{k: v for k, v in r.to_dict().items() if k != "wall_time_s"} for r in rows]


def final_state(run_dir):
    r, saved = checkpoint.latest(run_dir / "checkpoints")
    return r, saved["state"]


def start_run(cmd, **popen):
    """``fedlr run`` in its own process group (so a signal reaches it and its workers, as a terminal's)."""
    return subprocess.Popen([sys.executable, "-m", "fedlr.cli", *cmd], start_new_session=True, **popen)


def wait_for_round(proc, ledger, k, timeout=600):
    """Return once round k is in the ledger; fail if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and len(ledger.read_text().splitlines()) > k:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before round k could be interrupted"


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def kill_after_round(cmd, ledger, k, timeout=600):
    """Start ``fedlr run``; SIGKILL its process group once round k is in the ledger."""
    proc = start_run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_round(proc, ledger, k, timeout)
    finally:
        kill_group(proc)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import TINY

    out = tmp_path_factory.mktemp("runs")
    assert main(args(TINY, out, "full", PRIVATE_EF)) == 0
    return out / "full"


@pytest.mark.parametrize("k, corrupt", [(1, False), (3, True)])
def test_killed_run_resumes_to_the_identical_ledger_and_model(uninterrupted, tiny_path, tmp_path, k, corrupt):
    name = f"killed-{k}"
    kill_after_round(args(tiny_path, tmp_path, name, PRIVATE_EF), tmp_path / name / "ledger.jsonl", k)
    run_dir = tmp_path / name
    assert not (run_dir / "summary.json").exists()
    if corrupt:  # the newest checkpoint is damaged: the resume must start from the one before
        newest = checkpoint.rounds(run_dir / "checkpoints")[-1]
        path = checkpoint.path_for(run_dir / "checkpoints", newest)
        path.write_bytes(path.read_bytes()[:-100])
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0
    want, got = RunDir(uninterrupted).ledger(), RunDir(run_dir).ledger()
    assert without_timing(got) == without_timing(want)
    assert got[-1].epsilon > 0 and got[-1].client_epsilon  # DP was on and its accounts continued
    # one clock over both sessions: the summary's wall time is the ledger's last (not the resume's own)
    assert RunDir(run_dir).summary()["wall_time_s"] == got[-1].wall_time_s > got[k].wall_time_s
    (r1, s1), (r2, s2) = final_state(uninterrupted), final_state(run_dir)
    assert r1 == r2 == 4 and s1.keys() == s2.keys()
    assert all(torch.equal(s1[key], s2[key]) for key in s1)


def test_one_ctrl_c_stops_the_run_cleanly_and_it_resumes(tiny_path, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the run ends (exit 130) within
    seconds, without a traceback, prints the --resume command, and resumes from its checkpoint."""
    name, overrides = "interrupted", ["method.name=fedit", "federation.num_rounds=8", "train.local_steps=30",
                                      "output.export_peft=false"]
    proc = start_run(args(tiny_path, tmp_path, name, overrides), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     text=True)
    try:
        wait_for_round(proc, tmp_path / name / "ledger.jsonl", 1)
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        output, _ = proc.communicate(timeout=120)
        stopped_in = time.monotonic() - sent
    finally:
        kill_group(proc)
    assert proc.returncode == 130, output[-3000:]
    assert stopped_in < 60 and "Traceback" not in output, output[-3000:]
    last = RunDir(tmp_path / name).ledger()[-1].round
    assert 1 <= last < 8 and f"fedlr run --resume {tmp_path / name}" in output
    assert f"interrupted after round {last} of 8" in output
    assert checkpoint.latest(tmp_path / name / "checkpoints")[0] == last  # intact: it verifies
    assert not (tmp_path / name / "summary.json").exists()
    assert main(["run", "--resume", str(tmp_path / name), "--quiet"]) == 0
    assert [r.round for r in RunDir(tmp_path / name).ledger()] == list(range(9))


def test_resume_refuses_a_run_without_checkpoints(tmp_path, tiny_path, capsys):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(tiny_path.read_text())
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "no valid checkpoint" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nowhere")]) == 2


def test_a_run_in_which_no_round_aggregated_fails_and_says_so(tiny_path, tmp_path, capsys):
    overrides = ["method.name=fedit", "federation.num_rounds=2", 'faults.kinds=["garbage"]', "faults.fraction=1.0",
                 "evaluation.client_side=false"]
    assert main(args(tiny_path, tmp_path, "rejected", overrides)) == 1
    assert "no round aggregated" in capsys.readouterr().err
    summary = json.loads((tmp_path / "rejected" / "summary.json").read_text())
    assert summary["rounds_aggregated"] == 0 and "no round aggregated" in summary["error"]
    assert summary["rejected_updates"] == 4
    assert not (tmp_path / "rejected" / "model").exists()


def test_faults_are_recorded_and_rounds_go_on(tiny_path, tmp_path):
    overrides = ["seed=36", "method.name=fedit", "federation.num_clients=6", "federation.clients_per_round=5",
                 "federation.num_rounds=3", "federation.round_timeout_s=30", "federation.min_replies=3",
                 "faults.fraction=0.3", "faults.hang_s=40", "output.export_peft=false", "evaluation.client_side=false"]
    assert main(args(tiny_path, tmp_path, "faults", overrides)) == 0
    exp = load_experiment(tmp_path / "faults" / "config.toml")
    rows = RunDir(tmp_path / "faults").ledger()
    assert [r.round for r in rows] == [0, 1, 2, 3]
    seen_kinds = set()
    for row in rows[1:]:
        sampled = sample_clients(exp.seed, row.round, 6, 5)
        injected = fault_schedule(exp, row.round, sampled)
        observed = {f["partition"]: f["kind"] for f in row.failures}
        assert observed == {pid: OBSERVED_AS[kind] for pid, kind in injected.items()}
        assert row.clients_failed + row.clients_rejected == len(injected)
        assert row.aggregated == (len(sampled) - len(injected) >= 3)
        seen_kinds.update(injected.values())
    assert seen_kinds == {"raise", "hang", "garbage"}  # seed 36 exercises every kind
    assert [r.aggregated for r in rows[1:]] == [True, False, True]  # round 2: 2 valid < min_replies
