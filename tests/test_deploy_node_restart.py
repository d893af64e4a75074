"""Acceptance test of nodes that come back (issue 21.2): a real SuperLink and two SuperNodes on
127.0.0.1; node-1 is SIGKILLed (its whole process group) once round 1 is in the ledger and started
again at once with the same partition (and, with ``--auth``, the same key: the SuperLink refuses it
while it still counts the old connection, and it tries again with back-off). It is enrolled again
before a later round samples it, and trains there; the ledger names the round it rejoined before.
Rounds without it take seconds once the SuperLink counts it gone, and with ``--auth`` it is
refused for up to a minute after the kill: 16 rounds leave it time to come back.
Every process is stopped by pid at the end (``LocalDeployment.stop``)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from fedlr.config import load_experiment
from fedlr.deploy.local import LocalDeployment
from fedlr.results import RunDir

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.toml"


@pytest.mark.parametrize("auth", [False, True], ids=["new-node-id", "auth-same-key"])
def test_a_supernode_killed_and_restarted_trains_again(auth, tmp_path):
    exp = load_experiment(TINY, ["method.name='fedit'", "federation.num_clients=2", "federation.clients_per_round=2",
                                 "federation.num_rounds=16", "federation.round_timeout_s=90",
                                 "federation.enroll_timeout_s=300", f"output.dir='{tmp_path}'", "output.quiet=true"])
    run_dir = tmp_path / "run"
    with LocalDeployment(tmp_path / "federation", auth=auth) as fed:
        fed.start_superlink()
        keys = fed.make_keys(["node-0", "node-1"]) if auth else {}
        if keys:
            fed.register([pub for _, pub in keys.values()])

        def start(i: int):
            return fed.start_supernode(f"node-{i}", i, 2, auth_key=keys[f"node-{i}"][0] if keys else None)

        for i in range(2):
            start(i)
        restarted: list[float] = []

        def restart_node_1_after_round_1():
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                if len(RunDir(run_dir).ledger()) >= 2:
                    fed.kill("node-1")
                    start(1)
                    restarted.append(time.monotonic())
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=restart_node_1_after_round_1, daemon=True)
        killer.start()
        res = fed.submit(exp, run_dir, run_name="restart")
        killer.join(timeout=5)
        node_log = fed.tree.log("node-1")
    assert restarted, "round 1 never reached the ledger"
    assert res.status == "finished:completed", node_log[-3000:]
    rows = [r.to_dict() for r in RunDir(run_dir).ledger()]  # as written: 'rejoined' only where one rejoined
    assert [r["round"] for r in rows] == list(range(17))
    assert rows[1]["clients_replied"] == 2
    back = [r["round"] for r in rows if r.get("rejoined") == [1]]
    assert len(back) == 1 and back[0] >= 2, rows  # enrolled again once, before a later round sampled it
    for r in rows[back[0]:]:
        assert r["clients_replied"] == 2 and not r["failures"], r  # it trains again from then on
    assert json.loads((run_dir / "summary.json").read_text())["failed_client_rounds"] >= 1
    if auth:
        assert "trying again in" in node_log or "Failed to activate" not in node_log, node_log[-3000:]
