"""Submitting an experiment to a running SuperLink (``flwr run``) and checking what came back.

``submit`` writes a throw-away app directory (``pyproject.toml`` with ``dependencies = []``
naming fedlr's installed ServerApp and ClientApp) beside the throw-away Flower configuration of
``fedlr.deploy.connection``, runs ``flwr run`` on them with the experiment in ``--run-config``,
waits for the run and cross-checks the byte ledger against the traffic the SuperLink reports
(``flwr list --run-id``). The user's project ``pyproject.toml`` is never read or written."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedlr.config import Experiment
from fedlr.deploy.connection import Connection, flwr_json, run_flwr, run_info
from fedlr.deploy.eligibility import refuse_undeployable
from fedlr.deploy.flower_argv import flower_bin
from fedlr.errors import DeployError, DeploymentFailed
from fedlr.results import LedgerRow, RunDir

APP_NAME = "fedlr-deploy"
SERVER_APP_REF = "fedlr.deploy.server_app:server_app"
CLIENT_APP_REF = "fedlr.clients.app:app"
APP_PYPROJECT = """\
# Written by `fedlr deploy submit`: the Flower App `flwr run` packages. fedlr itself comes from the
# environment the SuperLink and SuperNodes run in (runtime dependency installation is disabled), so
# nothing is listed in dependencies: never torch, which uv would fetch as a multi-GB CUDA build.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "fedlr experiment on Flower's Deployment Engine"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedlr"

[tool.flwr.app.components]
serverapp = "{server_app}"
clientapp = "{client_app}"

[tool.flwr.app.config]
experiment = ""
run-dir = ""
run-name = ""
resume = false
"""


def write_app_dir(directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    text = APP_PYPROJECT.format(name=APP_NAME, server_app=SERVER_APP_REF, client_app=CLIENT_APP_REF)
    (d / "pyproject.toml").write_text(text)
    (d / "README.md").write_text("fedlr deployment app (generated; see docs/deployment.md)\n")
    return d


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid TOML basic string


def traffic_check(rows: list[LedgerRow], runs: list[dict], unknown: list = ()) -> dict:
    """Compare fedlr's byte ledger with the traffic the SuperLink counted for the Flower runs that
    carried it: one run, or a resumed run's earlier attempts and its last one (``runs``, each as
    ``flwr list --run-id`` reports it).

    Flower counts the Fleet API requests and responses of a run (protobuf sizes of pushed and
    pulled messages and objects: record framing, metadata, the experiment sent at enrollment, the
    config records), so its inbound (SuperNodes → SuperLink) must be at least fedlr's uplink and
    its outbound at least fedlr's downlink; the difference is the protocol overhead. Inbound is
    summed over the runs: the SuperLink stores objects by content hash and counts an object only
    when a SuperNode pushes it, not when it already holds it, and a reply the interrupted run
    received but never consumed is byte-identical to the resumed run's reply of that round
    (the same checkpoint, the same seeds), so those bytes are counted in the interrupted run.
    ``unknown``: earlier runs the SuperLink no longer reports (its state was in memory); without
    their counts nothing can be checked (``consistent`` is None)."""
    up = rows[-1].cumulative_uplink_bytes if rows else 0
    down = rows[-1].cumulative_downlink_bytes if rows else 0
    counts = [run.get("network-traffic", {}) for run in runs]
    inbound = sum(int(c.get("inbound-bytes", 0)) for c in counts)
    outbound = sum(int(c.get("outbound-bytes", 0)) for c in counts)
    return {
        "flwr_run_ids": [str(run.get("run-id", "")) for run in runs],
        "ledger_uplink_bytes": up, "ledger_downlink_bytes": down,
        "flower_inbound_bytes": inbound, "flower_outbound_bytes": outbound,
        "uplink_overhead_bytes": inbound - up, "downlink_overhead_bytes": outbound - down,
        "unknown_flwr_run_ids": [str(i) for i in unknown],
        "consistent": None if unknown else inbound >= up and outbound >= down,
    }


@dataclass
class SubmitResult:
    run_id: int
    run_dir: Path
    status: str
    info: dict
    traffic: dict | None
    logs: str = ""

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def default_run_dir(exp: Experiment, name: str) -> Path:
    root = Path(exp.output.dir).expanduser().resolve()
    base = exp.output.name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return path


def submit(exp: Experiment, connection: Connection, run_dir: str | Path | None = None, run_name: str = "deploy",
           wait: bool = True, timeout_s: float | None = None, echo=None, resume: bool = False) -> SubmitResult:
    """Submit ``exp`` to a running SuperLink with ``flwr run`` and (``wait``) wait for it to finish.

    The run directory is a path on the SuperLink's machine (absolute); with the CLI and the
    SuperLink on one machine its ledger is read back and cross-checked against Flower's traffic
    figures (``traffic.json`` in the run directory). ``resume``: the run directory exists and the
    ServerApp continues it from its newest checkpoint (``fedlr deploy resume``) as a new Flower run;
    the SuperNodes restore their state from their ``state-dir``."""
    from fedlr.preflight import preflight

    refuse_undeployable(exp)
    echo = echo or (lambda text: None)
    run_dir = Path(run_dir).expanduser() if run_dir else default_run_dir(exp, run_name)
    if not run_dir.is_absolute():
        run_dir = run_dir.resolve()
    if run_dir.exists() and not resume:
        raise DeployError(f"run directory {run_dir} already exists")
    with tempfile.TemporaryDirectory(prefix="fedlr-submit-") as tmp:
        scratch = Path(tmp)
        env, name = connection.env(scratch)  # certificate and address checks first: cheap and common
        preflight(exp)
        app = write_app_dir(scratch / "app")
        overrides = scratch / "run-config.toml"
        overrides.write_text(f"experiment = {_toml_str(exp.to_json())}\nrun-dir = {_toml_str(str(run_dir))}\n"
                             f"run-name = {_toml_str(run_name)}\nresume = {str(resume).lower()}\n")
        argv = [flower_bin("flwr"), "run", str(app), name, "--run-config", str(overrides)]
        if not wait:
            res = flwr_json(run_flwr(argv[1:] + ["--format", "json"], env))
            if not res.get("success") or not res.get("run-id"):
                raise DeploymentFailed(f"flwr run did not start a run: {res}")
            echo(f"fedlr: submitted Flower run {res['run-id']}; run directory {run_dir}")
            return SubmitResult(int(res["run-id"]), run_dir, "submitted", {}, None)
        fed = exp.federation
        timeout_s = timeout_s or fed.enroll_timeout_s + fed.round_timeout_s * (fed.num_rounds + 2)
        deadline = time.monotonic() + timeout_s
        run_id, logs = _run_and_stream(argv + ["--stream"], env, timeout_s, echo)
        info = wait_until_finished(lambda: run_info(run_id, env, name), deadline, echo)
        status = str(info.get("status", ""))
        run = RunDir(run_dir)
        earlier, unknown = _earlier_flwr_runs(run, env, name) if resume else ([], [])
    traffic = None
    if run.ledger_path.is_file():
        traffic = traffic_check(run.ledger(), [*earlier, info], unknown)
        run.traffic_path.write_text(json.dumps({"flwr_run": info, "earlier_flwr_runs": earlier, "check": traffic},
                                               indent=2) + "\n")
    return SubmitResult(run_id, run_dir, status, info, traffic, logs)


def wait_until_finished(info_now, deadline: float, echo, poll_s: float = 2.0) -> dict:
    """The run's ``flwr list`` entry once its status is ``finished:*``, or at ``deadline`` (monotonic)
    as it then is. ``flwr run --stream`` can return while the run goes on: when a ServerApp misses
    its start deadline Flower launches another, and the first launch's log stream ends; reading the
    ledger then would find it rounds short."""
    info = info_now()
    if not str(info.get("status", "")).startswith("finished") and time.monotonic() < deadline:
        echo("fedlr: the log stream ended before the run; waiting for it to finish")
    while not str(info.get("status", "")).startswith("finished") and time.monotonic() < deadline:
        time.sleep(poll_s)
        info = info_now()
    return info


def _earlier_flwr_runs(run: RunDir, env: dict, name: str) -> tuple[list[dict], list]:
    """The Flower runs that carried a resumed run before its last one (``deployment.json``), as
    the SuperLink reports them, and the ids of those it no longer knows."""
    if not run.deployment_path.is_file():
        return [], []
    known, unknown = [], []
    for run_id in json.loads(run.deployment_path.read_text()).get("earlier_flwr_run_ids", []):
        try:
            known.append(run_info(int(run_id), env, name))
        except DeploymentFailed:
            unknown.append(run_id)
    return known, unknown


def _run_and_stream(argv: list[str], env: dict, timeout_s: float, echo) -> tuple[int, str]:
    """``flwr run --stream``: one CLI process submits the run and streams its logs until the run
    finishes (cheaper than polling ``flwr list``). Returns the run id and the logs."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, bufsize=1)
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    lines, run_id = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if run_id is None and (m := re.search(r"Successfully started run (\d+)", line)):
                run_id = int(m.group(1))
                echo(f"fedlr: Flower run {run_id} started")
            else:
                echo(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    if run_id is None:
        raise DeploymentFailed(f"flwr run did not start a run (exit {proc.returncode}):\n{text.strip()[-3000:]}")
    if proc.returncode and proc.returncode < 0:
        raise DeploymentFailed(f"run {run_id} did not finish within {timeout_s:g} s "
                               f"(stop it with `flwr stop {run_id}`)")
    return run_id, text


