"""Acceptance test of a SuperLink that comes back (issue 21.3): a real SuperLink with its state in
an SQLite file (``--database``), TLS and SuperNode authentication, and two registered SuperNodes
on 127.0.0.1. One run goes through uninterrupted; a second run of the same experiment has its
SuperLink SIGKILLed (process group: its ServerApp dies with it) after round 2's training messages
were pushed and before the SuperNodes (paused) took them, and started again on the same ports and
database. The SuperNodes reconnect with their registered keys and node ids, are handed the killed
run's messages (which they ignore, the warm workers giving up the tasks Flower leaves behind), and
``fedlr deploy resume RUN_DIR`` finishes the run from its checkpoint: its ledger equals the
uninterrupted run's apart from wall times. Every process is stopped by pid at the end
(``LocalDeployment.stop``)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from fedlr import checkpoint
from fedlr.cli import main
from fedlr.config import load_experiment
from fedlr.deploy.local import LocalDeployment
from fedlr.results import RunDir

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.toml"


def _pushed_after(superlink_log: str, since: float) -> bool:
    """Whether the ServerApp pushed messages to the SuperLink after time ``since`` (epoch s)."""
    pushes = re.findall(r"^(\S+Z) INFO \[uvicorn\.access\].*POST /v1/runtime/push-messages", superlink_log, re.M)
    return any(datetime.fromisoformat(t).timestamp() > since for t in pushes)


def _wait_for(condition, what: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_superlink_killed_mid_run_comes_back_and_the_run_finishes(tmp_path, capsys):
    exp = load_experiment(TINY, ["method.name='fedit'", "federation.num_clients=2", "federation.clients_per_round=2",
                                 "federation.num_rounds=3", "federation.round_timeout_s=300",
                                 "federation.enroll_timeout_s=300", f"output.dir='{tmp_path}'", "output.quiet=true"])
    with LocalDeployment(tmp_path / "federation", auth=True, database=str(tmp_path / "superlink.db")) as fed:
        fed.start_superlink(timeout_s=600)  # a loaded machine imports slowly
        keys = fed.make_keys(["node-0", "node-1"])
        fed.register([pub for _, pub in keys.values()])
        for i in range(2):
            fed.start_supernode(f"node-{i}", i, 2, auth_key=keys[f"node-{i}"][0])
        whole = fed.submit(exp, tmp_path / "whole", run_name="whole")
        assert whole.status == "finished:completed", fed.tree.log("superlink")[-3000:]

        cut_dir = tmp_path / "cut"
        nodes = [fed.tree.procs[f"node-{i}"] for i in range(2)]
        replies = [fed.tree.log(f"node-{i}").count("Sending: train message") for i in range(2)]
        fed.submit(exp, cut_dir, run_name="cut", wait=False)
        # The worst moment for the crash: round 2's training messages wait on the SuperLink, untaken.
        # Each node is paused once it has sent its round 1 reply, the kill comes after round 2's push,
        # and the nodes go on once the SuperLink is back: they are handed messages of a run that is no
        # longer running (issue 21.3).
        for i, node in enumerate(nodes):
            _wait_for(lambda: fed.tree.log(f"node-{i}").count("Sending: train message") > replies[i] and
                      "Sent successfully" in fed.tree.log(f"node-{i}").rsplit("Sending: train message", 1)[1],
                      f"node-{i}'s round 1 reply")
            os.killpg(node.pid, signal.SIGSTOP)
        _wait_for(lambda: checkpoint.rounds(RunDir(cut_dir).checkpoint_dir)[-1:] == [1], "round 1's checkpoint")
        saved_at = (RunDir(cut_dir).checkpoint_dir).stat().st_mtime
        _wait_for(lambda: _pushed_after(fed.tree.log("superlink"), saved_at), "round 2's training messages")
        time.sleep(1)  # the rest of the push
        fed.restart_superlink(down_s=5, timeout_s=600)
        for node in nodes:
            os.killpg(node.pid, signal.SIGCONT)
        assert not (cut_dir / "summary.json").exists()
        rows_at_crash = RunDir(cut_dir).ledger()
        assert [r.round for r in rows_at_crash][:2] == [0, 1]

        assert main(["run", "--resume", str(cut_dir)]) == 2  # not as a simulation
        assert f"fedlr deploy resume {cut_dir}" in capsys.readouterr().err
        code = main(["deploy", "resume", str(cut_dir), "--superlink", fed.control_address,
                     "--root-certificates", str(fed.certs.ca_cert)])
        out = capsys.readouterr().out
        nodes_alive = [fed.tree.procs[f"node-{i}"].poll() is None for i in range(2)]
        node_logs = [fed.tree.log(f"node-{i}") for i in range(2)]
        superlink_log = fed.tree.log("superlink")
    assert code == 0, (out[-3000:], superlink_log[-3000:])
    assert nodes_alive == [True, True], [log[-2000:] for log in node_logs]
    for log in node_logs:  # they reconnected quietly: no traceback, their node ids still valid
        assert "Traceback" not in log and "Invalid node ID" not in log, log[-3000:]
    # a node handed its round 2 message of the killed run ignores it (Flower), leaving the task behind;
    # its warm worker gave that task up instead of waiting for its content
    handed = ["is not in `RUNNING` status. Ignoring message" in log for log in node_logs]
    assert any(handed), [log[-2000:] for log in node_logs]
    for log, stale in zip(node_logs, handed):
        assert ("skipped a ClientApp task" in log) == stale, log[-3000:]

    deployment = json.loads((cut_dir / "deployment.json").read_text())
    assert len(deployment["earlier_flwr_run_ids"]) == 1 and deployment["flwr_run_id"] != whole.run_id
    got, want = RunDir(cut_dir).ledger(), RunDir(whole.run_dir).ledger()
    assert [r.round for r in got] == [0, 1, 2, 3]
    for g, w in zip((r.to_dict() for r in got), (r.to_dict() for r in want)):
        for key in w:
            if key == "wall_time_s":
                continue
            if isinstance(w[key], float):
                assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-9), (w["round"], key)
            else:
                assert g[key] == w[key], (w["round"], key, g[key], w[key])
    traffic = json.loads((cut_dir / "traffic.json").read_text())["check"]
    assert traffic["consistent"] and 0 < traffic["ledger_uplink_bytes"] < got[-1].cumulative_uplink_bytes
