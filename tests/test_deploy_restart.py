"""Acceptance test of a SuperLink that comes back (issue 21.3): a real SuperLink with its state in
an SQLite file (``--database``), TLS and SuperNode authentication, and two registered SuperNodes
on 127.0.0.1. One run goes through uninterrupted; a second run of the same experiment has its
SuperLink SIGKILLed mid-round 2, at a moment that leaves both kinds of debris a crash leaves:

- node-0 trained round 2 and its reply waits on the SuperLink, never collected (the ServerApp was
  paused, then killed with the SuperLink);
- node-1 (paused) never took its round 2 message; released once the killed run's ServerApp missed
  its heartbeat deadline (60 s), it is handed that message, which its SuperNode ignores (the first
  request about the run finds it over, and the SuperLink then deletes the run's messages, node-0's
  reply included) and its warm worker gives up.

``fedlr deploy resume RUN_DIR`` then finishes the run from its checkpoint: its ledger equals the
uninterrupted run's apart from wall times, and its bytes agree with Flower's counts of both Flower
runs. Every process is stopped by pid at the end (``LocalDeployment.stop``)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from fedlr import checkpoint
from fedlr.cli import main
from fedlr.config import load_experiment
from fedlr.deploy.local import LocalDeployment
from fedlr.results import RunDir

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.toml"


def _runtime_calls(superlink_log: str, call: str) -> list[float]:
    """When the ServerApp called the SuperLink's runtime API ``call`` (epoch s)."""
    stamps = re.findall(rf"^(\S+Z) INFO \[uvicorn\.access\].*POST /v1/runtime/{call} ", superlink_log, re.M)
    return [datetime.fromisoformat(t).timestamp() for t in stamps]


def _waiting_for_replies_after(superlink_log: str, since: float) -> bool:
    """Whether the ServerApp pushed messages after ``since`` and then polled for replies: the
    round's messages are all on the SuperLink."""
    pushed = [t for t in _runtime_calls(superlink_log, "push-messages") if t > since]
    return bool(pushed) and any(t > max(pushed) for t in _runtime_calls(superlink_log, "pull-messages"))


def _replied(log: str, before: int) -> bool:
    """Whether a SuperNode log shows more train replies than ``before``, the last one sent."""
    return log.count("Sending: train message") > before and \
        "Sent successfully" in log.rsplit("Sending: train message", 1)[1]


def _serverapp(superlink_pid: int) -> psutil.Process:
    apps = [p for p in psutil.Process(superlink_pid).children(recursive=True)
            if any("flwr-serverapp" in a for a in p.cmdline()[:2])]
    assert len(apps) == 1, apps
    return apps[0]


def _wait_for(condition, what: str, timeout_s: float = 600, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


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
        cut = fed.submit(exp, cut_dir, run_name="cut", wait=False)
        for i, node in enumerate(nodes):  # each paused once it has sent its round 1 reply
            _wait_for(lambda: _replied(fed.tree.log(f"node-{i}"), replies[i]), f"node-{i}'s round 1 reply")
            os.killpg(node.pid, signal.SIGSTOP)
        _wait_for(lambda: checkpoint.rounds(RunDir(cut_dir).checkpoint_dir)[-1:] == [1], "round 1's checkpoint")
        saved_at = (RunDir(cut_dir).checkpoint_dir).stat().st_mtime
        _wait_for(lambda: _waiting_for_replies_after(fed.tree.log("superlink"), saved_at), "round 2's messages")
        serverapp = _serverapp(fed.tree.procs["superlink"].pid)
        serverapp.suspend()  # it will never collect node-0's round 2 reply; its last heartbeat was before
        suspended_at = time.monotonic()
        os.killpg(nodes[0].pid, signal.SIGCONT)
        _wait_for(lambda: _replied(fed.tree.log("node-0"), replies[0] + 1), "node-0's round 2 reply")
        serverapp.kill()
        fed.restart_superlink(down_s=5, timeout_s=600)
        # The restarted SuperLink reports the killed run running until its ServerApp's heartbeat
        # deadline (Flower: 2 × 30 s after the last one); a `flwr list` would then delete its messages.
        time.sleep(max(0.0, suspended_at + 2 * 30 + 10 - time.monotonic()))
        os.killpg(nodes[1].pid, signal.SIGCONT)
        _wait_for(lambda: "is not in `RUNNING` status. Ignoring message" in fed.tree.log("node-1"),
                  "node-1 handed its round 2 message of the killed run")
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
    # node-1, handed its round 2 message of the killed run, ignored it (Flower), leaving the task
    # behind; its warm worker gave that task up instead of waiting for its content. node-0 had
    # consumed its message before the crash: nothing stale for it.
    handed = ["is not in `RUNNING` status. Ignoring message" in log for log in node_logs]
    skipped = ["skipped a ClientApp task" in log for log in node_logs]
    assert handed == skipped == [False, True], [log[-2000:] for log in node_logs]

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
    # every ledger byte was counted by Flower in one of the two Flower runs of this run
    traffic = json.loads((cut_dir / "traffic.json").read_text())["check"]
    assert traffic["flwr_run_ids"] == [str(cut.run_id), str(deployment["flwr_run_id"])]
    assert traffic["consistent"] and traffic["ledger_uplink_bytes"] == got[-1].cumulative_uplink_bytes > 0
