"""A whole federation on this machine over loopback (``fedlr deploy local`` and the tests):
``LocalDeployment`` starts a SuperLink and SuperNodes as ``fedlr deploy`` processes on free ports
and stops every process it started, and their descendants, on exit; ``run_local`` runs one
experiment on such a federation in a work folder that holds the CA key, the server key and the
node private keys — a temp folder, removed when it ends, unless the caller names one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from fedlr.config import Experiment
from fedlr.deploy.certs import CertPaths, make_certs
from fedlr.deploy.connection import Connection, register_node_keys
from fedlr.deploy.flower_argv import IN_MEMORY, flwr_env
from fedlr.deploy.network import free_port
from fedlr.deploy.node_keys import make_node_keys
from fedlr.deploy.processes import ProcessTree
from fedlr.deploy.submission import SubmitResult, submit
from fedlr.errors import DeploymentFailed

TEMP_PREFIX = "fedlr-local-"


class LocalDeployment:
    """A whole federation on one machine over loopback: a SuperLink with TLS (test certificates
    made here unless ``certs_dir`` holds some), optionally SuperNode authentication, and
    SuperNodes started on demand. A context manager: every process it started, and their
    descendants, are stopped on exit, also on error."""

    def __init__(self, workdir: str | Path, insecure: bool = False, auth: bool = False,
                 certs_dir: str | Path | None = None, host: str = "127.0.0.1", database: str = IN_MEMORY):
        """``database``: the SuperLink's state, in memory (a throw-away federation) or a file
        that survives a restart (``restart_superlink``)."""
        self.database = database
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.insecure, self.auth, self.host = insecure, auth, host
        self.flwr_home = self.workdir / "flwr-home"
        self.tree = ProcessTree(self.workdir / "logs", flwr_env(self.flwr_home))
        self.certs = None
        if not insecure:
            self.certs = CertPaths.in_dir(certs_dir) if certs_dir else make_certs(self.workdir / "certs")
        self.fleet_port, self.control_port = free_port(host), free_port(host)
        self.nodes: dict[str, dict] = {}

    # addresses
    @property
    def fleet_address(self) -> str:
        return f"{self.host}:{self.fleet_port}"

    @property
    def control_address(self) -> str:
        return f"{self.host}:{self.control_port}"

    def connection(self) -> Connection:
        return Connection(self.control_address, None if self.insecure else str(self.certs.ca_cert), self.insecure)

    # lifecycle
    def __enter__(self) -> "LocalDeployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> list[str]:
        return self.tree.stop()

    def _fedlr(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fedlr.cli", "deploy", *args]

    def start_superlink(self, timeout_s: float = 120.0) -> subprocess.Popen:
        """``fedlr deploy superlink`` on free loopback ports; returns once both ports answer."""
        tls = ["--insecure"] if self.insecure else ["--certs", str(self.certs.ca_cert.parent)]
        argv = self._fedlr("superlink", *tls, "--fleet-address", self.fleet_address, "--host", self.host,
                           "--port", str(self.control_port), "--database", self.database,
                           *(["--auth"] if self.auth else []))
        proc = self.tree.start("superlink", argv)
        self._wait_port(self.fleet_port, "superlink", timeout_s)
        self._wait_port(self.control_port, "superlink", timeout_s)
        return proc

    def restart_superlink(self, down_s: float = 0.0, timeout_s: float = 120.0) -> subprocess.Popen:
        """SIGKILL the SuperLink's process group (its ServerApp included), wait ``down_s``, start it
        again on the same ports and database."""
        self.kill("superlink")
        time.sleep(down_s)
        return self.start_superlink(timeout_s)

    def _wait_port(self, port: int, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.tree.procs[name]
            if proc.poll() is not None:
                raise DeploymentFailed(f"{name} exited with code {proc.returncode}:\n{self.tree.log(name)[-3000:]}")
            try:
                with socket.create_connection((self.host, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise DeploymentFailed(f"{name} did not open port {port} within {timeout_s:g} s:\n"
                               f"{self.tree.log(name)[-3000:]}")

    def make_keys(self, names: Iterable[str]) -> dict[str, tuple[Path, Path]]:
        names = list(names)
        return dict(zip(names, make_node_keys(self.workdir / "keys", names, overwrite=True)))

    def register(self, public_keys: Iterable[Path]) -> list[str]:
        return register_node_keys(public_keys, self.connection())

    def supernode_args(self, partition_id: int | None, num_partitions: int | None = None,
                       auth_key: Path | None = None, warm: bool = True, node_config: str | None = None,
                       extra: Iterable[str] = ()) -> list[str]:
        """``fedlr deploy supernode``'s arguments; ``extra`` goes last (``--data FILE``, ...)."""
        args = ["supernode", "--superlink", self.fleet_address, "--port", str(free_port(self.host))]
        args += ["--insecure"] if self.insecure else ["--root-certificates", str(self.certs.ca_cert)]
        if partition_id is not None:
            args += ["--partition-id", str(partition_id)]
        if node_config is None and num_partitions is not None:
            node_config = f"num-partitions={num_partitions}"
        if node_config is not None:
            args += ["--node-config", node_config]
        if auth_key is not None:
            args += ["--auth-key", str(auth_key)]
        if not warm:
            args.append("--cold")
        return [*args, *extra]

    def start_supernode(self, name: str, partition_id: int, num_partitions: int | None = None,
                        auth_key: Path | None = None, warm: bool = True, extra: Iterable[str] = ()) -> subprocess.Popen:
        """``fedlr deploy supernode`` for one partition (warm worker unless ``warm=False``)."""
        argv = self.supernode_args(partition_id, num_partitions, auth_key, warm, extra=extra)
        proc = self.tree.start(name, self._fedlr(*argv))
        self.nodes[name] = {"partition_id": partition_id, "pid": proc.pid, "warm": warm}
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL a process's whole group at once (a SuperNode's worker or flower-superexec and
        flwr-clientapp children; a SuperLink's flower-superexec and ServerApp), as when its machine
        loses power."""
        proc = self.tree.procs[name]
        self.tree._record(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def submit(self, exp: Experiment, run_dir: Path | None, **kwargs) -> SubmitResult:
        return submit(exp, self.connection(), run_dir=run_dir, **kwargs)


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises SystemExit in the main thread while inside, so ``finally`` blocks run (the
    process tree is stopped, the key folder removed) as they do for Ctrl-C; a second SIGTERM is
    ignored so that it cannot cut that cleanup short."""
    def unwind(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_local(exp: Experiment, run_name: str, insecure: bool = False, auth: bool = False, warm: bool = True,
              workdir: str | Path | None = None, echo: Callable[[str], None] = print) -> SubmitResult:
    """SuperLink + one SuperNode per client on loopback, ``exp`` submitted and waited for, every
    process stopped. Certificates, keys and logs go to ``workdir``; without one, to a temp folder
    ``fedlr-local-*`` that is removed when this returns or raises (it holds private keys)."""
    path = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    n = exp.federation.num_clients
    try:
        with _sigterm_unwinds(), LocalDeployment(path, insecure=insecure, auth=auth) as fed:
            kept = "" if workdir else " (removed at the end; --workdir DIR keeps them)"
            echo(f"fedlr: SuperLink on {fed.fleet_address} (gRPC) / {fed.control_address} (HTTP), "
                 f"{n} SuperNodes, logs in {fed.tree.log_dir}{kept}")
            fed.start_superlink()
            keys = fed.make_keys([f"node-{i}" for i in range(n)]) if auth else {}
            if keys:
                fed.register([pub for _, pub in keys.values()])
            for i in range(n):
                fed.start_supernode(f"node-{i}", i, n, auth_key=keys[f"node-{i}"][0] if keys else None, warm=warm)
            return fed.submit(exp, None, run_name=run_name, echo=echo)
    finally:
        if not workdir:
            shutil.rmtree(path, ignore_errors=True)
