"""Flower's process command lines and environment: ``flower-superlink`` (TLS unless ``insecure``,
runtime dependency installation always disabled so no ``uv sync`` ever touches the user's
environment) and ``flower-supernode`` (node config validated: a partition id is required), each
built only after its certificates, keys and addresses are checked."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fedlr.deploy.certs import CertPaths, check_ca_cert, check_server_certs
from fedlr.deploy.network import (CONTROL_PORT, FLEET_PORT, GRPC, SUPERNODE_RUNTIME_PORT, check_api,
                                  check_port_free, check_tls_endpoint, parse_address)
from fedlr.deploy.node_config import EXPERIMENT_SECTIONS_KEY, format_node_config, parse_node_config
from fedlr.deploy.node_keys import check_node_key
from fedlr.errors import DeployError

IN_MEMORY = ":flwr-in-memory:"  # Flower's name for a SuperLink state kept in memory (``--database``)
DEFAULT_DATABASE = "fedlr-superlink.db"  # ``fedlr deploy superlink``'s state file, in its working directory


def flwr_env(flwr_home: str | Path | None = None, base: dict | None = None) -> dict[str, str]:
    """Environment for Flower's processes: this interpreter's ``bin`` first on PATH (the SuperLink
    launches ``flower-superexec``, which launches ``flwr-serverapp``/``flwr-clientapp``), telemetry
    and update checks off, runtime dependency installation off."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def flower_bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise DeployError(f"{name} not found next to {sys.executable} or on PATH (is flwr installed?)")
    return found


@dataclass
class SuperLinkOptions:
    insecure: bool = False
    certs_dir: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_ca_certfile: str | None = None
    fleet_address: str = f"0.0.0.0:{FLEET_PORT}"
    host: str = "127.0.0.1"
    port: int = CONTROL_PORT
    auth: bool = False
    database: str | None = None
    log_file: str | None = None
    hosts: list[str] = field(default_factory=list)  # names clients will use; must be in the cert's SAN


def superlink_argv(o: SuperLinkOptions) -> list[str]:
    """``flower-superlink`` command line after validating the options (DeployError otherwise)."""
    parse_address(o.fleet_address, what="--fleet-address")
    argv = [flower_bin("flower-superlink")]
    if o.insecure:
        if o.auth:
            raise DeployError("SuperNode authentication (--auth) requires TLS: drop --insecure")
        if o.certs_dir or o.ssl_certfile:
            raise DeployError("--insecure and certificates are mutually exclusive")
        argv.append("--insecure")
    else:
        if o.certs_dir:
            c = CertPaths.in_dir(o.certs_dir)
            o.ssl_certfile = o.ssl_certfile or str(c.server_cert)
            o.ssl_keyfile = o.ssl_keyfile or str(c.server_key)
            o.ssl_ca_certfile = o.ssl_ca_certfile or str(c.ca_cert)
        # the SuperLink's own flower-superexec reaches its Runtime API over TLS at --host (a
        # bind-all host becomes loopback), so the certificate must name that address too
        runtime_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(o.host, o.host)
        cert, key, ca = check_server_certs(o.ssl_certfile, o.ssl_keyfile, o.ssl_ca_certfile,
                                           [*o.hosts, runtime_host])
        argv += ["--ssl-certfile", str(cert.resolve()), "--ssl-keyfile", str(key.resolve()),
                 "--ssl-ca-certfile", str(ca.resolve())]
    argv += ["--fleet-api-address", o.fleet_address, "--host", o.host, "--port", str(o.port),
             "--disable-runtime-dependency-installation"]
    if o.auth:
        argv.append("--enable-supernode-auth")
    if o.database:
        argv += ["--database", o.database]
    if o.log_file:
        argv += ["--log-file", o.log_file]
    return argv


def check_superlink_ports(o: SuperLinkOptions) -> None:
    """Both ports the SuperLink will listen on are free (a DeployError names a taken one and its
    holder, instead of Flower's traceback)."""
    check_port_free(*parse_address(o.fleet_address, what="--fleet-address"), "--fleet-address")
    check_port_free(o.host, o.port, "--port")


@dataclass
class SuperNodeOptions:
    superlink: str = f"127.0.0.1:{FLEET_PORT}"
    node_config: str | None = None
    partition_id: int | None = None
    num_partitions: int | None = None
    insecure: bool = False
    root_certificates: str | None = None
    auth_key: str | None = None
    port: int = SUPERNODE_RUNTIME_PORT
    max_retries: int | None = None
    max_wait_time: float | None = None
    check_connection: bool = True
    experiment_sections: str | None = None  # node_config.section_fingerprints of the node's --experiment


def supernode_argv(o: SuperNodeOptions) -> list[str]:
    """``flower-supernode`` command line after validating the node config, the certificate and
    that the SuperLink's Fleet API answers (DeployError otherwise)."""
    text = o.node_config or ""
    if o.partition_id is not None:
        text = f"{text} partition-id={o.partition_id}".strip()
    config = parse_node_config(text, o.num_partitions)
    if o.experiment_sections:
        config[EXPERIMENT_SECTIONS_KEY] = o.experiment_sections
    host, port = parse_address(o.superlink, FLEET_PORT, what="--superlink")
    argv = [flower_bin("flower-supernode"), "--superlink", f"{host}:{port}"]
    if o.insecure:
        if o.root_certificates:
            raise DeployError("--insecure and --root-certificates are mutually exclusive")
        if o.auth_key:
            raise DeployError("SuperNode authentication (--auth-key) requires TLS: drop --insecure")
        ca = None
        argv.append("--insecure")
    else:
        ca = check_ca_cert(o.root_certificates)
        argv += ["--root-certificates", str(ca.resolve())]
    if o.auth_key:
        argv += ["--auth-supernode-private-key", str(check_node_key(o.auth_key).resolve())]
    if o.check_connection:
        check_tls_endpoint(host, port, ca, "SuperLink Fleet API")
        check_api(host, port, ca, GRPC)
    argv += ["--node-config", format_node_config(config), "--port", str(o.port)]
    if o.max_retries is not None:
        argv += ["--max-retries", str(o.max_retries)]
    if o.max_wait_time is not None:
        argv += ["--max-wait-time", str(o.max_wait_time)]
    return argv

