"""How the CLI talks to a running SuperLink's Control API: a throw-away Flower configuration
(``$FLWR_HOME/config.toml`` in a temp dir, one connection) or a named connection of the user's
own; the ``flwr`` CLI calls made through it (``flwr supernode register``, ``flwr list``)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from fedlr.deploy.certs import check_ca_cert
from fedlr.deploy.flower_argv import flower_bin, flwr_env
from fedlr.deploy.network import CONTROL_PORT, HTTP, check_api, check_tls_endpoint, parse_address
from fedlr.errors import DeployError, DeploymentFailed

CONNECTION_NAME = "fedlr"


def write_flower_config(flwr_home: str | Path, address: str, root_certificates: str | Path | None,
                        insecure: bool, name: str = CONNECTION_NAME) -> Path:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection (the Control API address, port 8000
    by default — not the Fleet API's 9092)."""
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f"address = {json.dumps(address)}"]
    if insecure:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}")
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Connection:
    """How the CLI reaches the SuperLink's Control API: a throw-away Flower config, or a named
    connection in the user's own ``$FLWR_HOME/config.toml``."""

    address: str = f"127.0.0.1:{CONTROL_PORT}"
    root_certificates: str | None = None
    insecure: bool = False
    name: str | None = None  # an existing connection in the user's Flower config
    check: bool = True

    def env(self, scratch: Path) -> tuple[dict[str, str], str]:
        if self.name:
            return flwr_env(), self.name
        host, port = parse_address(self.address, CONTROL_PORT, what="--superlink")
        if self.insecure:
            if self.root_certificates:
                raise DeployError("--insecure and --root-certificates are mutually exclusive")
            ca = None
        else:
            ca = check_ca_cert(self.root_certificates)
        if self.check:
            check_tls_endpoint(host, port, ca, "SuperLink Control API")
            check_api(host, port, ca, HTTP)
        home = scratch / "flwr-home"
        write_flower_config(home, f"{host}:{port}", ca, self.insecure)
        return flwr_env(home), CONNECTION_NAME


def run_flwr(args: list[str], env: dict, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
    """``flwr ARGS``; with ``check`` a non-zero exit is a DeploymentFailed quoting its output."""
    proc = subprocess.run([flower_bin("flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise DeploymentFailed(f"`flwr {' '.join(args[:2])}` failed (exit {proc.returncode}):\n"
                          f"{(proc.stdout + proc.stderr).strip()[-3000:]}")
    return proc


def flwr_json(proc: subprocess.CompletedProcess) -> dict:
    """The JSON object a ``flwr … --format json`` call printed ({} if none)."""
    text = proc.stdout
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        raise DeploymentFailed(f"unexpected output from flwr: {text[-2000:]}") from None


def register_node_keys(public_keys: Iterable[str | Path], connection: Connection) -> list[str]:
    """``flwr supernode register`` each public key with the SuperLink (started with --auth);
    returns the node ids the SuperLink assigned. The CLI calls run side by side."""
    keys = [Path(p) for p in public_keys]
    for p in keys:
        if not p.is_file():
            raise DeployError(f"public key {p} does not exist (make key pairs with `fedlr deploy keys DIR`)")
    with tempfile.TemporaryDirectory(prefix="fedlr-flwr-") as tmp:
        env, name = connection.env(Path(tmp))
        procs = [subprocess.Popen([flower_bin("flwr"), "supernode", "register", str(p.resolve()), name,
                                   "--format", "json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for p in keys]
        outs = [(p, *proc.communicate(timeout=120), proc.returncode) for p, proc in zip(keys, procs)]
    node_ids = []
    for path, out, err, code in outs:
        res = flwr_json(subprocess.CompletedProcess([], code, out, err))
        if code != 0 or not res.get("success", True):
            raise DeploymentFailed(f"registering {path} failed (exit {code}): {(out + err).strip()[-2000:]}")
        node_ids.append(str(res.get("node-id", res)))
    return node_ids


def run_info(run_id: int, env: dict, name: str) -> dict:
    """One run as ``flwr list --run-id`` reports it (status, traffic, compute time)."""
    res = flwr_json(run_flwr(["list", name, "--run-id", str(run_id), "--format", "json"], env))
    runs = res.get("runs") or []
    if not runs:
        raise DeploymentFailed(f"the SuperLink does not know run {run_id}: {res}")
    return runs[0]

