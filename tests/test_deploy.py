"""Acceptance tests of real deployment: a SuperLink and SuperNodes as processes on 127.0.0.1,
SuperNodes connected over gRPC-rere with TLS (certificates made by the test) and SuperNode
authentication, experiments submitted with ``flwr run``.

One federation serves the module: SuperLink (TLS + --auth), three registered SuperNodes — node-0
on Flower's stock executor (``flower-superexec`` + one ``flwr-clientapp`` per message), node-1 and
node-2 on fedlr's warm worker — and a fourth SuperNode with an unregistered key. Every process
the module starts, and every descendant it ever had, is stopped by pid when the module ends,
also when a test fails (``LocalDeployment.stop`` in the fixture's ``finally``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedlr.cli import main
from fedlr.config import load_experiment, to_toml
from fedlr.results import RunDir
from fedlr.deploy.certs import make_certs
from fedlr.deploy.flower_argv import flwr_env
from fedlr.deploy.local import LocalDeployment
from fedlr.deploy.network import CONTROL_PORT, FLEET_PORT, free_port
from fedlr.deploy.processes import ProcessTree
from fedlr.sampling import sample_clients

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.toml"
NUM_CLIENTS = 3
FLOWER_PROCESSES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp")


def _experiment(tmp: Path, *overrides: str):
    return load_experiment(TINY, [f"federation.num_clients={NUM_CLIENTS}", "federation.clients_per_round=2",
                                  f"output.dir='{tmp}'", "output.quiet=true", *overrides])


def _family_alive(tree: ProcessTree) -> list[str]:
    return [n for n in tree.alive_names() if any(f in n for f in FLOWER_PROCESSES) or "fedlr" in n]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = LocalDeployment(tmp_path_factory.mktemp("federation"), auth=True)
    try:
        fed.start_superlink()
        keys = fed.make_keys([f"node-{i}" for i in range(NUM_CLIENTS)] + ["rogue"])
        node_ids = fed.register([keys[f"node-{i}"][1] for i in range(NUM_CLIENTS)])
        assert len(set(node_ids)) == NUM_CLIENTS
        for i in range(NUM_CLIENTS):
            fed.start_supernode(f"node-{i}", i, NUM_CLIENTS, auth_key=keys[f"node-{i}"][0], warm=i != 0)
        fed.start_supernode("rogue", 0, NUM_CLIENTS, auth_key=keys["rogue"][0],  # key never registered
                            extra=["--max-wait-time", "10"])  # refused: tries again for 10 s, not 120
        yield fed
    finally:
        fed.stop()
        left = _family_alive(fed.tree)
        assert not left, f"processes survived the federation: {left}"


def test_unregistered_supernode_is_refused(federation):
    rogue = federation.tree.procs["rogue"]
    rogue.wait(timeout=180)
    log = federation.tree.log("rogue")
    assert rogue.returncode != 0
    assert "Failed to activate SuperNode" in log and "[code: 2004]" in log, log[-2000:]
    assert "ApiError:2004" in federation.tree.log("superlink")
    for i in range(NUM_CLIENTS):
        assert federation.tree.procs[f"node-{i}"].poll() is None, federation.tree.log(f"node-{i}")[-2000:]


def test_deployed_run_matches_the_simulation(federation, tmp_path):
    """Two rounds of Fed-SB on a tiny BERT over gRPC + TLS: the run directory and ledger of a
    simulation, bytes cross-checked with Flower's traffic figures, and the same sampled clients,
    bytes and metrics as the simulated run of the same config and seed (run side by side)."""
    exp = _experiment(tmp_path / "deployed", "federation.round_timeout_s=240")
    assert exp.method.name == "fed_sb" and exp.federation.num_rounds == 2
    sim_exp = _experiment(tmp_path / "simulated", "federation.round_timeout_s=240", "output.name='sim'")
    (tmp_path / "sim.toml").write_text(to_toml(sim_exp))
    sim_tree = ProcessTree(tmp_path / "sim-logs", flwr_env())
    try:
        sim = sim_tree.start("simulation", [sys.executable, "-m", "fedlr.cli", "run", str(tmp_path / "sim.toml"),
                                            "--quiet"])
        lines: list[str] = []
        res = federation.submit(exp, tmp_path / "deployed" / "run", run_name="tiny", echo=lines.append)
        assert sim.wait(timeout=900) == 0, sim_tree.log("simulation")[-3000:]
    finally:
        left = sim_tree.stop()
    assert not left, f"simulation processes had to be killed: {left}"
    assert res.status == "finished:completed", "\n".join(lines[-60:])

    run_dir = res.run_dir
    for name in ("config.toml", "seeds.json", "ledger.jsonl", "summary.json", "deployment.json", "traffic.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "model" / "adapter_config.json").is_file()
    assert json.loads((run_dir / "deployment.json").read_text())["flwr_run_id"] == res.run_id
    rows = RunDir(run_dir).ledger()
    assert [r.round for r in rows] == [0, 1, 2]
    for r in rows:
        assert r.clients_sampled == sample_clients(exp.seed, r.round, NUM_CLIENTS, 2)
        assert (r.clients_replied, r.clients_failed, r.clients_rejected) == (2, 0, 0), r.failures

    # the byte ledger against what the SuperLink counted on the Fleet API (flwr list --run-id)
    t = res.traffic
    assert t["consistent"], t
    assert t["ledger_uplink_bytes"] == rows[-1].cumulative_uplink_bytes > 0
    messages = NUM_CLIENTS + sum(len(r.clients_sampled) for r in rows)  # enrollment + rounds
    assert 0 <= t["uplink_overhead_bytes"] < 8192 * messages, t
    assert 0 <= t["downlink_overhead_bytes"] < 8192 * messages, t

    # deployed == simulated: same clients, same exact bytes, same metrics up to float noise
    sim_rows = RunDir(tmp_path / "simulated" / "sim").ledger()
    assert len(sim_rows) == len(rows)
    for d, s in zip((r.to_dict() for r in rows), (r.to_dict() for r in sim_rows)):
        for key in ("clients_sampled", "clients_replied", "uplink_bytes", "downlink_bytes"):
            assert d[key] == s[key], (d["round"], key, d[key], s[key])
        for key in ("train_loss", "client_val_accuracy", "eval_loss", "eval_accuracy"):
            assert (d[key] is None) == (s[key] is None), (d["round"], key)
            if d[key] is not None:
                assert d[key] == pytest.approx(s[key], rel=1e-5, abs=1e-6), (d["round"], key, d[key], s[key])
    summary = json.loads((run_dir / "summary.json").read_text())
    sim_summary = json.loads((tmp_path / "simulated" / "sim" / "summary.json").read_text())
    assert summary["final_accuracy"] == pytest.approx(sim_summary["final_accuracy"], abs=1e-6)
    assert summary["total_bytes"] == sim_summary["total_bytes"]

    # the user's environment stays intact: flwr run got the throw-away app (never the project,
    # whose pyproject.toml it could rewrite), and nothing was installed with uv
    assert res.info["fab-id"] == "fedlr/fedlr-deploy", res.info
    seen = federation.tree.seen_cmdlines()
    assert not any(c.split()[:1] == ["uv"] for c in seen), seen
    cmdlines = " ".join(seen)
    for proc in ("flower-superexec", "flwr-serverapp", "flwr-clientapp"):
        assert proc in cmdlines, f"{proc} never ran (stock executor path not exercised)"


def test_bad_input_against_a_running_superlink(federation, tmp_path, capsys):
    other = make_certs(tmp_path / "other")
    fleet, control = federation.fleet_address, federation.control_address
    assert main(["deploy", "supernode", "--superlink", fleet, "--root-certificates", str(other.ca_cert),
                 "--partition-id", "0", "--dry-run"]) == 2
    assert "mismatched certificate: the SuperLink Fleet API" in capsys.readouterr().err
    assert main(["deploy", "supernode", "--superlink", fleet, "--insecure", "--partition-id", "0", "--dry-run"]) == 2
    assert "uses TLS but --insecure was given" in capsys.readouterr().err
    assert main(["deploy", "submit", str(TINY), "--superlink", control, "--root-certificates",
                 str(other.ca_cert)]) == 2
    assert "mismatched certificate: the SuperLink Control API" in capsys.readouterr().err

    # as a real command (no --dry-run): exit 2 with the message, and no process started
    tree = ProcessTree(tmp_path / "logs", flwr_env())
    try:
        proc = tree.start("bad-supernode", [sys.executable, "-m", "fedlr.cli", "deploy", "supernode",
                                            "--superlink", fleet, "--root-certificates", str(other.ca_cert),
                                            "--node-config", "partition-id=0"])
        assert proc.wait(timeout=120) == 2
    finally:
        tree.stop()
    assert "fedlr: error: mismatched certificate" in tree.log("bad-supernode")
    assert len(tree.seen) == 1, f"something was started: {tree.seen}"


def test_taken_ports_and_mixed_up_apis_are_one_line(federation, tmp_path, capsys):
    """Against the running SuperLink: submit pointed at the Fleet port and a SuperNode pointed at
    the Control port are told which port to use; a second SuperLink on the first one's Fleet port
    and a SuperNode whose Runtime API port is taken exit 2 with one line naming the port and the
    process that holds it, and start nothing."""
    ca = str(federation.certs.ca_cert)
    fleet, control = federation.fleet_address, federation.control_address
    assert main(["deploy", "submit", str(TINY), "--superlink", fleet, "--root-certificates", ca]) == 2
    err = capsys.readouterr().err
    assert f"{fleet} is the SuperLink's Fleet API" in err and f"--port ({CONTROL_PORT} by default)" in err, err
    assert main(["deploy", "supernode", "--superlink", control, "--root-certificates", ca, "--partition-id", "0",
                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{control} is the SuperLink's Control API" in err and f"({FLEET_PORT} by default)" in err, err

    holder = f"pid {federation.tree.procs['superlink'].pid} (python"  # fedlr deploy superlink exec'd Flower's
    cmd = [sys.executable, "-m", "fedlr.cli", "deploy"]
    tree = ProcessTree(tmp_path / "logs", flwr_env(tmp_path / "flwr-home"))
    try:
        second = tree.start("second-superlink", [*cmd, "superlink", "--certs", str(federation.certs.ca_cert.parent),
                                                 "--fleet-address", fleet, "--port", str(free_port())])
        node = tree.start("supernode", [*cmd, "supernode", "--superlink", fleet, "--root-certificates", ca,
                                        "--partition-id", "0", "--port", str(federation.control_port)])
        assert second.wait(timeout=120) == 2 and node.wait(timeout=120) == 2
    finally:
        tree.stop()
    for name, flag, port in (("second-superlink", "--fleet-address", federation.fleet_port),
                             ("supernode", "--port", federation.control_port)):
        log = tree.log(name)
        assert log.startswith(f"fedlr: error: {flag}: port {port} is already in use by {holder}"), log
        assert log.count("\n") == 1, log  # one line, no traceback
    assert not any("flower-" in c for c in tree.seen_cmdlines()), tree.seen_cmdlines()


def test_a_refusal_by_the_superlink_exits_3(federation, capsys):
    """A runtime failure of a deployment (here the SuperLink refuses to register a key a second
    time) is DeploymentFailed: one line and exit code 3, not the 2 of bad input."""
    pub = federation.workdir / "keys" / "node-0.pub"
    assert main(["deploy", "register", str(pub), "--superlink", federation.control_address,
                 "--root-certificates", str(federation.certs.ca_cert)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"fedlr: error: registering {pub} failed"), err


def test_a_supernode_killed_mid_round(federation, tmp_path):
    """SIGKILL node-0's whole process group (SuperNode, flower-superexec, flwr-clientapp) as soon
    as it has received its round-1 message: the round completes with the other client within the round timeout, the
    ledger names partition 0 as the one that failed, and the run finishes."""
    timeout_s = 60.0
    exp = _experiment(tmp_path, "method.name='fedit'", "federation.num_rounds=1",
                      f"federation.round_timeout_s={timeout_s}")
    assert sample_clients(exp.seed, 1, NUM_CLIENTS, 2) == [0, 2]
    run_dir = tmp_path / "killed"
    killed_at: list[float] = []
    received = "Receiving: train message"
    before = federation.tree.log("node-0").count(received)

    def kill_once_node_0_has_its_round_1_message():
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if federation.tree.log("node-0").count(received) > before:
                federation.kill("node-0")  # its flwr-clientapp is starting or training
                killed_at.append(time.monotonic())
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_once_node_0_has_its_round_1_message, daemon=True)
    killer.start()
    res = federation.submit(exp, run_dir, run_name="killed")
    killer.join(timeout=5)
    assert killed_at, "node-0 never received its round-1 message"
    assert res.status == "finished:completed"
    row0, row1 = RunDir(run_dir).ledger()
    assert row1.clients_sampled == [0, 2]
    assert (row1.clients_replied, row1.clients_failed) == (1, 1), row1
    (failure,) = row1.failures
    # whichever comes first: the round timeout, or the SuperLink declaring the node unavailable
    # after 2 missed heartbeats (Flower's 30 s interval) — either way partition 0 is named
    assert failure["partition"] == 0, failure
    assert failure["kind"] == "timeout" or (failure["kind"] == "error"
                                            and "Node Unavailable" in failure["reason"]), failure
    assert row1.uplink_bytes > 0 and row1.train_loss is not None
    round_s = row1.wall_time_s - row0.wall_time_s
    assert round_s < timeout_s + 60, round_s  # bounded by the timeout, not hanging
    assert json.loads((run_dir / "summary.json").read_text())["failed_client_rounds"] == 1
    import psutil

    group = federation.tree.procs["node-0"].pid
    assert federation.tree.procs["node-0"].poll() is not None
    survivors = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == group and p.status() != psutil.STATUS_ZOMBIE:
                survivors.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    assert not survivors, f"node-0's processes outlived SIGKILL of its group: {survivors}"


# ------------------------------------------------------------------ fedlr deploy local: the key folder
def _local_deployment(tmp_path: Path, *args: str) -> tuple[ProcessTree, subprocess.Popen, Path]:
    """``fedlr deploy local`` as a process whose temp folder is ``tmp_path/tmp`` (TMPDIR)."""
    exp = _experiment(tmp_path / "runs", "method.name='fedit'", "federation.num_clients=2",
                      "federation.num_rounds=1", "federation.round_timeout_s=240")
    (tmp_path / "local.toml").write_text(to_toml(exp))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = flwr_env(tmp_path / "flwr-home")
    env["TMPDIR"] = str(tmp)
    tree = ProcessTree(tmp_path / "logs", env)
    proc = tree.start("local", [sys.executable, "-m", "fedlr.cli", "deploy", "local", str(tmp_path / "local.toml"),
                                *args])
    return tree, proc, tmp


def _stopped(tree: ProcessTree, proc) -> list[str]:
    """What is still alive of everything ``proc`` ever started, after a short grace."""
    deadline = time.monotonic() + 20
    while (left := _family_alive(tree)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_deploy_local_removes_its_keys_when_the_run_ends(tmp_path):
    """With --auth the temp folder holds the CA key, the server key and the node private keys: it
    is gone when the run has finished, as is every process."""
    tree, proc, tmp = _local_deployment(tmp_path, "--auth")
    try:
        assert proc.wait(timeout=900) == 0, tree.log("local")[-3000:]
        left = _stopped(tree, proc)
    finally:
        tree.stop()
    log = tree.log("local")
    assert f"logs in {tmp}/fedlr-local-" in log and "(removed at the end" in log, log[:2000]
    assert not list(tmp.glob("fedlr-local-*")), list(tmp.rglob("fedlr-local-*/**/*"))
    assert not left, left
    assert "finished:completed" in log
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "summary.json").is_file()


def test_deploy_local_removes_its_keys_when_stopped(tmp_path):
    """SIGTERM while the federation starts: every process stopped, the key folder removed."""
    tree, proc, tmp = _local_deployment(tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not list(tmp.glob("fedlr-local-*/logs/superlink.log")) and time.monotonic() < deadline:
            assert proc.poll() is None, tree.log("local")[-3000:]
            time.sleep(0.2)
        assert list(tmp.glob("fedlr-local-*/certs/ca.key")), list(tmp.rglob("*"))
        time.sleep(2)  # the SuperLink and its children are starting
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, tree.log("local")[-3000:]
        left = _stopped(tree, proc)
    finally:
        tree.stop()
    assert not list(tmp.glob("fedlr-local-*")), list(tmp.rglob("fedlr-local-*/**/*"))
    assert not left, left
