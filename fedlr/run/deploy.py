"""Real deployment on Flower's Deployment Engine (flwr 1.39): a SuperLink, one SuperNode per client
connected over gRPC-rere, and ``flwr run`` of the same ServerApp, ClientApp and experiment TOML a
simulation uses.

What lives here (the ``fedlr deploy`` commands are thin shells over it):

- **certificates** — ``make_certs`` writes a CA and a server certificate (SAN localhost and
  127.0.0.1 plus any host asked for) with the ``cryptography`` package; ``check_server_certs``
  and ``check_tls_endpoint`` turn a missing or mismatched certificate into a clear error before
  any process starts;
- **SuperNode authentication** — ``make_node_keys`` writes ECDSA P-384 key pairs in the OpenSSH
  format Flower reads; ``register_node_keys`` registers the public halves with the SuperLink
  (``flwr supernode register``);
- **process command lines** — ``superlink_argv`` (TLS unless ``insecure``, runtime dependency
  installation always disabled so no ``uv sync`` ever touches the user's environment) and
  ``supernode_argv`` (node config validated: a partition id is required);
- **submission** — ``submit`` writes a throw-away app directory (``pyproject.toml`` with
  ``dependencies = []`` naming fedlr's installed ServerApp and ClientApp) and a throw-away Flower
  configuration (``$FLWR_HOME/config.toml`` in a temp dir), runs ``flwr run`` on them with the
  experiment in ``--run-config``, waits for the run and cross-checks the byte ledger against the
  traffic the SuperLink reports (``flwr list --run-id``). The user's project ``pyproject.toml``
  is never read or written;
- **process hygiene** — ``ProcessTree`` starts processes in their own session, keeps sampling
  their descendants (``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``) and stops all
  of them by pid; ``LocalDeployment`` is a whole federation on 127.0.0.1 (``fedlr deploy local``
  and the tests).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from fedlr.config import ConfigError, Experiment, deployment_refusal

FLEET_PORT = 9092  # gRPC-rere Fleet API: SuperNodes connect here
CONTROL_PORT = 8000  # HTTP(S) Control + Runtime APIs: `flwr run`/`flwr list` and the ServerApp connect here
SUPERNODE_RUNTIME_PORT = 9094  # each SuperNode's own local Runtime API (one per SuperNode on a host)
CONNECTION_NAME = "fedlr"
APP_NAME = "fedlr-deploy"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


class DeployError(ConfigError):
    """Bad deployment input (certificate, address, node config), reported before anything starts."""


# ---------------------------------------------------------------------------------------- addresses
def parse_address(text: str, default_port: int | None = None, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``, or ``HOST`` when ``default_port`` is given)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not port:
        if default_port is None:
            raise DeployError(f"{what} {text!r}: expected HOST:PORT")
        port = str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeployError(f"{what} {text!r}: expected HOST:PORT with a port between 1 and 65535")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_reachable(host: str, port: int, what: str, timeout: float = 5.0) -> None:
    """A TCP connection to ``host:port`` opens, or a DeployError says why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror as e:
        reason = f"unknown host ({e.strerror})"
    except ConnectionRefusedError:
        reason = "connection refused: nothing listens there"
    except (socket.timeout, TimeoutError):
        reason = f"no answer within {timeout:g} s (wrong address, or a firewall drops the traffic)"
    except OSError as e:
        reason = e.strerror or str(e)
    raise DeployError(f"cannot reach the {what} at {host}:{port}: {reason}. Is the SuperLink running "
                      f"(`fedlr deploy superlink`), and is the port open from this machine?")


# ------------------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, directory: str | Path) -> "CertPaths":
        d = Path(directory)
        return cls(d / "ca.crt", d / "ca.key", d / "server.pem", d / "server.key")


def _san(hosts: Iterable[str]):
    from cryptography import x509

    names = []
    for h in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_certs(directory: str | Path, hosts: Iterable[str] = (), days: int = 365,
               overwrite: bool = False) -> CertPaths:
    """A CA (``ca.crt``/``ca.key``) and a server certificate signed by it (``server.pem``/
    ``server.key``) whose SAN lists localhost, 127.0.0.1 and ``hosts``. For trying things out:
    in production use certificates from your own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    paths = CertPaths.in_dir(directory)
    existing = [str(p) for p in vars(paths).values() if p.exists()]
    if existing and not overwrite:
        raise DeployError(f"refusing to overwrite {', '.join(existing)} (pass --force)")
    Path(directory).mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlr test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    all_hosts = [*DEFAULT_HOSTS, *hosts]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(all_hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    for path, data in ((paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM)),
                       (paths.ca_key, key_pem(ca_key)),
                       (paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM)),
                       (paths.server_key, key_pem(server_key))):
        path.write_bytes(data)
    paths.ca_key.chmod(0o600)
    paths.server_key.chmod(0o600)
    return paths


def _need_file(path: str | Path | None, flag: str, hint: str = "") -> Path:
    if path is None or str(path) == "":
        raise DeployError(f"missing certificate: {flag} is required for TLS{hint}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DeployError(f"missing certificate: {flag} {p} does not exist{hint}")
    return p


def _load_cert(path: Path, flag: str):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise DeployError(f"{flag} {path} is not a PEM certificate") from None


def check_ca_cert(path: str | Path | None, flag: str = "--root-certificates") -> Path:
    hint = " (the CA certificate, e.g. ca.crt from `fedlr deploy certs`; or pass --insecure)"
    p = _need_file(path, flag, hint)
    _check_validity(_load_cert(p, flag), p, flag)
    return p


def _check_validity(cert, path: Path, flag: str) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc < now:
        raise DeployError(f"{flag} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise DeployError(f"{flag} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def check_server_certs(certfile, keyfile, cafile, hosts: Iterable[str] = ()) -> tuple[Path, Path, Path]:
    """The SuperLink's certificate, key and CA exist, parse, belong together and are in date;
    a DeployError names the first problem."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    hint = " (make a test set with `fedlr deploy certs DIR`, or pass --insecure)"
    cert_p = _need_file(certfile, "--ssl-certfile", hint)
    key_p = _need_file(keyfile, "--ssl-keyfile", hint)
    ca_p = _need_file(cafile, "--ssl-ca-certfile", hint)
    cert, ca = _load_cert(cert_p, "--ssl-certfile"), _load_cert(ca_p, "--ssl-ca-certfile")
    try:
        key = serialization.load_pem_private_key(key_p.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise DeployError(f"--ssl-keyfile {key_p} is not an unencrypted PEM private key ({e})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise DeployError(f"mismatched certificate: --ssl-keyfile {key_p} is not the key of --ssl-certfile {cert_p}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise DeployError(f"mismatched certificate: --ssl-certfile {cert_p} is not signed by "
                          f"--ssl-ca-certfile {ca_p}; SuperNodes verifying with that CA would be refused") from None
    _check_validity(cert, cert_p, "--ssl-certfile")
    _check_validity(ca, ca_p, "--ssl-ca-certfile")
    missing = [h for h in hosts if not _cert_covers(cert, h)]
    if missing:
        raise DeployError(f"--ssl-certfile {cert_p} does not name {', '.join(missing)} in its subject alternative "
                          f"names; clients connecting to that address would be refused (remake it with "
                          f"`fedlr deploy certs DIR --host {missing[0]}`)")
    return cert_p, key_p, ca_p


def _cert_covers(cert, host: str) -> bool:
    from cryptography import x509

    if host in ("0.0.0.0", "::", ""):
        return True
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host.lower() in (n.lower() for n in names.get_values_for_type(x509.DNSName))


def check_tls_endpoint(host: str, port: int, cafile: Path | None, what: str, timeout: float = 5.0) -> None:
    """Open a TLS connection the way a Flower client would and verify the server's certificate
    against ``cafile`` (hostname included). With ``cafile=None`` (``--insecure``) check that the
    endpoint is *not* TLS, since an insecure client cannot talk to a TLS server."""
    check_reachable(host, port, what, timeout)
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host):
                speaks_tls = True
    except ssl.SSLCertVerificationError as e:
        raise DeployError(f"mismatched certificate: the {what} at {host}:{port} presents a certificate that "
                          f"{cafile} does not accept ({e.verify_message}). Use the CA that signed the "
                          f"SuperLink's --ssl-certfile, and connect with a host name in its SAN") from None
    except (ssl.SSLError, ConnectionResetError, socket.timeout, TimeoutError, OSError):
        speaks_tls = False
    if cafile and not speaks_tls:
        raise DeployError(f"the {what} at {host}:{port} does not answer TLS: it was probably started with "
                          f"--insecure (then pass --insecure here too), or that port is not the {what}")
    if not cafile and speaks_tls:
        raise DeployError(f"the {what} at {host}:{port} uses TLS but --insecure was given: pass "
                          f"--root-certificates CA.crt instead")


# ------------------------------------------------------------------------------- SuperNode auth keys
def make_node_keys(directory: str | Path, names: Iterable[str], overwrite: bool = False) -> list[tuple[Path, Path]]:
    """One ECDSA P-384 key pair per name: ``NAME`` (OpenSSH private key, what
    ``flower-supernode --auth-supernode-private-key`` reads) and ``NAME.pub`` (what
    ``flwr supernode register`` reads). Same format as ``ssh-keygen -t ecdsa -b 384``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name in names:
        priv, pub = d / name, d / f"{name}.pub"
        if (priv.exists() or pub.exists()) and not overwrite:
            raise DeployError(f"refusing to overwrite {priv} (pass --force)")
        key = ec.generate_private_key(ec.SECP384R1())
        priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
        priv.chmod(0o600)
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH) + b"\n")
        pairs.append((priv, pub))
    return pairs


def check_node_key(path: str | Path) -> Path:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    p = Path(path).expanduser()
    if not p.is_file():
        raise DeployError(f"--auth-key {p} does not exist (make key pairs with `fedlr deploy keys DIR`)")
    try:
        key = load_ssh_private_key(p.read_bytes(), None)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise DeployError(f"--auth-key {p} is not an unencrypted OpenSSH private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"--auth-key {p}: SuperNode authentication needs an ECDSA key")
    return p


# ------------------------------------------------------------------------------------- node config
def parse_node_config(text: str | None, num_partitions: int | None = None) -> dict[str, Any]:
    """A SuperNode's ``--node-config`` ("partition-id=0 num-partitions=3"), validated: the
    ClientApp needs an integer ``partition-id`` in ``[0, num-partitions)``."""
    from flwr.common.config import parse_config_args

    try:
        config = dict(parse_config_args([text])) if text and text.strip() else {}
    except Exception as e:  # noqa: BLE001 - flwr raises ValueError/TOML errors
        raise DeployError(f"--node-config {text!r} is not a list of key=value pairs: {e}") from None
    if "partition-id" not in config:
        raise DeployError(f"--node-config {text!r} has no partition-id: every SuperNode serves one client and "
                          f"needs --node-config 'partition-id=N' (or --partition-id N), N from 0 to "
                          f"num_clients - 1")
    pid = config["partition-id"]
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise DeployError(f"--node-config: partition-id must be a non-negative integer, got {pid!r}")
    if "num-partitions" in config:
        n = config["num-partitions"]
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise DeployError(f"--node-config: num-partitions must be a positive integer, got {n!r}")
        if num_partitions is not None and n != num_partitions:
            raise DeployError(f"--node-config: num-partitions={n} but the experiment has "
                              f"federation.num_clients = {num_partitions}")
    elif num_partitions is not None:
        config["num-partitions"] = num_partitions
    n = config.get("num-partitions")
    if n is not None and pid >= n:
        raise DeployError(f"--node-config: partition-id={pid} is out of range for {n} partitions (0..{n - 1})")
    return config


def format_node_config(config: dict[str, Any]) -> str:
    def fmt(v):
        return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in config.items())


# ------------------------------------------------------------------------------- environment, argv
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


def supernode_argv(o: SuperNodeOptions) -> list[str]:
    """``flower-supernode`` command line after validating the node config, the certificate and
    that the SuperLink's Fleet API answers (DeployError otherwise)."""
    text = o.node_config or ""
    if o.partition_id is not None:
        text = f"{text} partition-id={o.partition_id}".strip()
    config = parse_node_config(text, o.num_partitions)
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
    argv += ["--node-config", format_node_config(config), "--port", str(o.port)]
    if o.max_retries is not None:
        argv += ["--max-retries", str(o.max_retries)]
    if o.max_wait_time is not None:
        argv += ["--max-wait-time", str(o.max_wait_time)]
    return argv


# ------------------------------------------------------------------------------------- submission
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
serverapp = "fedlr.run.deploy_app:server_app"
clientapp = "fedlr.clients.app:app"

[tool.flwr.app.config]
experiment = ""
run-dir = ""
run-name = ""
"""


def write_app_dir(directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "pyproject.toml").write_text(APP_PYPROJECT.format(name=APP_NAME))
    (d / "README.md").write_text("fedlr deployment app (generated; see docs/deployment.md)\n")
    return d


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


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid TOML basic string


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
        home = scratch / "flwr-home"
        write_flower_config(home, f"{host}:{port}", ca, self.insecure)
        return flwr_env(home), CONNECTION_NAME


def _flwr(args: list[str], env: dict, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([flower_bin("flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise DeployError(f"`flwr {' '.join(args[:2])}` failed (exit {proc.returncode}):\n"
                          f"{(proc.stdout + proc.stderr).strip()[-3000:]}")
    return proc


def _json_out(proc: subprocess.CompletedProcess) -> dict:
    text = proc.stdout
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        raise DeployError(f"unexpected output from flwr: {text[-2000:]}") from None


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
        res = _json_out(subprocess.CompletedProcess([], code, out, err))
        if code != 0 or not res.get("success", True):
            raise DeployError(f"registering {path} failed (exit {code}): {(out + err).strip()[-2000:]}")
        node_ids.append(str(res.get("node-id", res)))
    return node_ids


def run_info(run_id: int, env: dict, name: str) -> dict:
    """One run as ``flwr list --run-id`` reports it (status, traffic, compute time)."""
    res = _json_out(_flwr(["list", name, "--run-id", str(run_id), "--format", "json"], env))
    runs = res.get("runs") or []
    if not runs:
        raise DeployError(f"the SuperLink does not know run {run_id}: {res}")
    return runs[0]


def traffic_check(rows: list[dict], info: dict) -> dict:
    """Compare fedlr's byte ledger with the traffic the SuperLink counted for the run.

    Flower counts every Fleet API request and response of the run (protobuf sizes of pushed and
    pulled messages and objects: record framing, metadata, the experiment sent at enrollment, the
    config records), so its inbound (SuperNodes → SuperLink) must be at least fedlr's uplink and
    its outbound at least fedlr's downlink; the difference is the protocol overhead."""
    up = rows[-1]["cumulative_uplink_bytes"] if rows else 0
    down = rows[-1]["cumulative_downlink_bytes"] if rows else 0
    traffic = info.get("network-traffic", {})
    inbound, outbound = int(traffic.get("inbound-bytes", 0)), int(traffic.get("outbound-bytes", 0))
    return {
        "ledger_uplink_bytes": up, "ledger_downlink_bytes": down,
        "flower_inbound_bytes": inbound, "flower_outbound_bytes": outbound,
        "uplink_overhead_bytes": inbound - up, "downlink_overhead_bytes": outbound - down,
        "consistent": inbound >= up and outbound >= down,
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
           wait: bool = True, timeout_s: float | None = None, echo=None) -> SubmitResult:
    """Submit ``exp`` to a running SuperLink with ``flwr run`` and (``wait``) wait for it to finish.

    The run directory is a path on the SuperLink's machine (absolute); with the CLI and the
    SuperLink on one machine its ledger is read back and cross-checked against Flower's traffic
    figures (``traffic.json`` in the run directory)."""
    from fedlr.preflight import preflight

    if (reason := deployment_refusal(exp)) is not None:
        raise DeployError(reason)
    echo = echo or (lambda text: None)
    run_dir = Path(run_dir).expanduser() if run_dir else default_run_dir(exp, run_name)
    if not run_dir.is_absolute():
        run_dir = run_dir.resolve()
    if run_dir.exists():
        raise DeployError(f"run directory {run_dir} already exists")
    with tempfile.TemporaryDirectory(prefix="fedlr-submit-") as tmp:
        scratch = Path(tmp)
        env, name = connection.env(scratch)  # certificate and address checks first: cheap and common
        preflight(exp)
        app = write_app_dir(scratch / "app")
        overrides = scratch / "run-config.toml"
        overrides.write_text(f"experiment = {_toml_str(exp.to_json())}\nrun-dir = {_toml_str(str(run_dir))}\n"
                             f"run-name = {_toml_str(run_name)}\n")
        argv = [flower_bin("flwr"), "run", str(app), name, "--run-config", str(overrides)]
        if not wait:
            res = _json_out(_flwr(argv[1:] + ["--format", "json"], env))
            if not res.get("success") or not res.get("run-id"):
                raise DeployError(f"flwr run did not start a run: {res}")
            echo(f"fedlr: submitted Flower run {res['run-id']}; run directory {run_dir}")
            return SubmitResult(int(res["run-id"]), run_dir, "submitted", {}, None)
        timeout_s = timeout_s or 600.0 + exp.federation.round_timeout_s * (exp.federation.num_rounds + 2)
        run_id, logs = _run_and_stream(argv + ["--stream"], env, timeout_s, echo)
        info = run_info(run_id, env, name)
        status = str(info.get("status", ""))
    traffic = None
    ledger = run_dir / "ledger.jsonl"
    if ledger.is_file():
        from fedlr.results import read_ledger

        traffic = traffic_check(read_ledger(ledger), info)
        (run_dir / "traffic.json").write_text(json.dumps({"flwr_run": info, "check": traffic}, indent=2) + "\n")
    return SubmitResult(run_id, run_dir, status, info, traffic, logs)


def _run_and_stream(argv: list[str], env: dict, timeout_s: float, echo) -> tuple[int, str]:
    """``flwr run --stream``: one CLI process submits the run and streams its logs until the run
    finishes (cheaper than polling ``flwr list``). Returns the run id and the logs."""
    import re

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
        raise DeployError(f"flwr run did not start a run (exit {proc.returncode}):\n{text.strip()[-3000:]}")
    if proc.returncode and proc.returncode < 0:
        raise DeployError(f"run {run_id} did not finish within {timeout_s:g} s (stop it with `flwr stop {run_id}`)")
    return run_id, text


# --------------------------------------------------------------------------------- process hygiene
class ProcessTree:
    """Processes this object started (each in its own session) and every descendant they ever had.

    Flower's SuperLink starts ``flower-superexec`` in a *new session* and that one starts
    ``flwr-serverapp`` per run; a SuperNode starts ``flower-superexec`` which starts one
    ``flwr-clientapp`` per message. A sampler thread records (pid, start time) of all
    descendants, so ``stop`` can end them by pid even after their parent died (re-parented to
    init) — and never a recycled pid that belongs to someone else."""

    def __init__(self, log_dir: Path, env: dict[str, str], sample_s: float = 0.25):
        import psutil

        self._psutil = psutil
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: dict[int, tuple[float, str]] = {}  # pid -> (create_time, command line head)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, args=(sample_s,), daemon=True)
        self._thread.start()

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        with self._lock:
            self.procs[name] = proc
        self._record(proc.pid)
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _record(self, pid: int) -> None:
        ps = self._psutil
        try:
            root = ps.Process(pid)
            family = [root, *root.children(recursive=True)]
        except ps.Error:
            return
        for p in family:
            try:
                key = (p.create_time(), " ".join(Path(a).name if i < 2 else a for i, a in enumerate(p.cmdline()[:4])))
            except ps.Error:
                continue
            with self._lock:
                known = self.seen.get(p.pid)
                if known is None or known[0] == key[0]:
                    # the same process keeps its newest command line: one sampled between fork and
                    # exec still shows its parent's (a pid reused by a later process is not relabelled)
                    self.seen[p.pid] = key

    def _sample_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                pids = [p.pid for p in self.procs.values() if p.poll() is None]
            for pid in pids:
                self._record(pid)

    def _alive(self) -> list:
        """psutil.Process objects of everything recorded that still runs (same start time)."""
        ps = self._psutil
        out = []
        with self._lock:
            items = list(self.seen.items())
        for pid, (created, _) in items:
            try:
                p = ps.Process(pid)
                if abs(p.create_time() - created) < 1e-3 and p.status() != ps.STATUS_ZOMBIE:
                    out.append(p)
            except ps.Error:
                continue
        return out

    def alive_names(self) -> list[str]:
        """Command lines (head) of everything recorded that still runs."""
        with self._lock:
            labels = dict(self.seen)
        return [labels[p.pid][1] for p in self._alive()]

    def seen_cmdlines(self) -> list[str]:
        with self._lock:
            return [label for _, label in self.seen.values()]

    def stop(self, grace_s: float = 5.0) -> list[str]:
        """SIGTERM everything recorded, SIGKILL what is left after ``grace_s``; returns what had to
        be killed. Safe to call twice."""
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                self._record(proc.pid)
        self._stop.set()
        victims = self._alive()
        for p in victims:
            try:
                p.send_signal(signal.SIGTERM)
            except self._psutil.Error:
                pass
        _, left = self._psutil.wait_procs(victims, timeout=grace_s)
        killed = []
        with self._lock:
            labels = dict(self.seen)
        for p in left:
            try:
                p.kill()
                killed.append(labels[p.pid][1])
            except self._psutil.Error:
                pass
        self._psutil.wait_procs(left, timeout=5)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        return killed


class LocalDeployment:
    """A whole federation on one machine over loopback: a SuperLink with TLS (test certificates
    made here unless ``certs_dir`` holds some), optionally SuperNode authentication, and
    SuperNodes started on demand. A context manager: every process it started, and their
    descendants, are stopped on exit, also on error."""

    def __init__(self, workdir: str | Path, insecure: bool = False, auth: bool = False,
                 certs_dir: str | Path | None = None, host: str = "127.0.0.1"):
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
                           "--port", str(self.control_port), *(["--auth"] if self.auth else []))
        proc = self.tree.start("superlink", argv)
        self._wait_port(self.fleet_port, "superlink", timeout_s)
        self._wait_port(self.control_port, "superlink", timeout_s)
        return proc

    def _wait_port(self, port: int, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.tree.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{self.tree.log(name)[-3000:]}")
            try:
                with socket.create_connection((self.host, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{name} did not open port {port} within {timeout_s:g} s:\n{self.tree.log(name)[-3000:]}")

    def make_keys(self, names: Iterable[str]) -> dict[str, tuple[Path, Path]]:
        names = list(names)
        return dict(zip(names, make_node_keys(self.workdir / "keys", names, overwrite=True)))

    def register(self, public_keys: Iterable[Path]) -> list[str]:
        return register_node_keys(public_keys, self.connection())

    def supernode_args(self, partition_id: int | None, num_partitions: int | None = None,
                       auth_key: Path | None = None, warm: bool = True, node_config: str | None = None) -> list[str]:
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
        return args

    def start_supernode(self, name: str, partition_id: int, num_partitions: int | None = None,
                        auth_key: Path | None = None, warm: bool = True) -> subprocess.Popen:
        """``fedlr deploy supernode`` for one partition (warm worker unless ``warm=False``)."""
        proc = self.tree.start(name, self._fedlr(*self.supernode_args(partition_id, num_partitions, auth_key, warm)))
        self.nodes[name] = {"partition_id": partition_id, "pid": proc.pid, "warm": warm}
        return proc

    def kill_supernode(self, name: str) -> None:
        """SIGKILL a SuperNode's whole process group at once (its worker or flower-superexec and
        flwr-clientapp children included), as when its machine loses power."""
        proc = self.tree.procs[name]
        self.tree._record(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def submit(self, exp: Experiment, run_dir: Path | None, **kwargs) -> SubmitResult:
        return submit(exp, self.connection(), run_dir=run_dir, **kwargs)


# ------------------------------------------------------------------------------ SuperNode supervisor
def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies (Linux), so a SuperNode never
    outlives the fedlr process that serves its ClientApp tasks."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the worker's own liveness check still stops it
        pass


def serve_supernode(argv: list[str], runtime_port: int, warm: bool = True) -> int:
    """Run a SuperNode in the foreground.

    ``warm`` (default): ``flower-supernode --isolation process`` as a child, and this process as
    its warm ClientApp worker (``fedlr.run.deploy_app.run_warm_worker``); both stop together.
    Otherwise exec Flower's stock SuperNode, which starts ``flower-superexec`` and one
    ``flwr-clientapp`` process per message."""
    env = flwr_env()
    if not warm:
        sys.stdout.flush()
        os.execve(argv[0], argv, env)
    from fedlr.run.deploy_app import run_warm_worker

    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack (diagnosis)
    child = subprocess.Popen([*argv, "--isolation", "process"], env=env, preexec_fn=_die_with_parent)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        run_warm_worker(f"127.0.0.1:{runtime_port}", is_alive=lambda: child.poll() is None)
        code = child.returncode or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    # Leave at once: library threads (tokenizers, torch, Flower's object pools) would otherwise
    # hold the interpreter's shutdown; the worker has nothing left to flush.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ------------------------------------------------------------------------------------ command line
def add_deploy_parser(sub) -> None:
    """``fedlr deploy certs | keys | register | superlink | supernode | submit | local``."""
    d = sub.add_parser("deploy", help="run an experiment on a real SuperLink and SuperNodes (gRPC, TLS)",
                       description="Deployment on Flower's Deployment Engine; see docs/deployment.md.")
    dsub = d.add_subparsers(dest="deploy_command", required=True)

    def tls_client(c, default_address: str, what: str) -> None:
        c.add_argument("--superlink", default=default_address, metavar="HOST:PORT",
                       help=f"the SuperLink's {what} (default {default_address})")
        g = c.add_mutually_exclusive_group()
        g.add_argument("--root-certificates", metavar="CA.crt", help="CA certificate that signed the SuperLink's")
        g.add_argument("--insecure", action="store_true", help="no TLS (only if the SuperLink runs --insecure)")

    def control_client(c) -> None:
        tls_client(c, f"127.0.0.1:{CONTROL_PORT}", "Control API, HTTP(S)")
        c.add_argument("--connection", metavar="NAME",
                       help="use the SuperLink connection NAME of your own $FLWR_HOME/config.toml instead")

    def experiment_args(c, required: bool = True) -> None:
        if required:
            c.add_argument("experiment", help="experiment TOML file")
        else:
            c.add_argument("--experiment", help="experiment TOML file (checks the partition against num_clients)")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a field; the value is parsed as TOML (repeatable)")

    c = dsub.add_parser("certs", help="make a test CA and a server certificate (SAN localhost, 127.0.0.1)")
    c.add_argument("dir", help="output folder: ca.crt, ca.key, server.pem, server.key")
    c.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                   help="another name or address clients use to reach the SuperLink (repeatable)")
    c.add_argument("--days", type=int, default=365)
    c.add_argument("--force", action="store_true", help="overwrite existing files")
    c.set_defaults(func=cmd_certs)

    c = dsub.add_parser("keys", help="make ECDSA key pairs for SuperNode authentication (and register them)")
    c.add_argument("dir", help="output folder: NAME (private) and NAME.pub per SuperNode")
    c.add_argument("--nodes", type=int, default=None, help="make node-0 .. node-(N-1)")
    c.add_argument("--name", action="append", default=[], help="make a pair with this name (repeatable)")
    c.add_argument("--force", action="store_true", help="overwrite existing keys")
    c.add_argument("--register", action="store_true", help="register the public keys with the SuperLink")
    control_client(c)
    c.set_defaults(func=cmd_keys)

    c = dsub.add_parser("register", help="register SuperNode public keys with a SuperLink started with --auth")
    c.add_argument("public_keys", nargs="+", help="NAME.pub files")
    control_client(c)
    c.set_defaults(func=cmd_register)

    c = dsub.add_parser("superlink", help="start a SuperLink (foreground; runtime dependency installation off)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--certs", metavar="DIR", help="folder from `fedlr deploy certs` (server.pem, server.key, ca.crt)")
    g.add_argument("--insecure", action="store_true", help="no TLS: only on a trusted network")
    c.add_argument("--ssl-certfile")
    c.add_argument("--ssl-keyfile")
    c.add_argument("--ssl-ca-certfile")
    c.add_argument("--fleet-address", default=f"0.0.0.0:{FLEET_PORT}",
                   help=f"where SuperNodes connect, gRPC (default 0.0.0.0:{FLEET_PORT})")
    c.add_argument("--host", default="127.0.0.1",
                   help="interface of the HTTP Control/Runtime API (default 127.0.0.1; 0.0.0.0 to submit "
                        "from another machine)")
    c.add_argument("--port", type=int, default=CONTROL_PORT, help=f"HTTP Control/Runtime API port (default {CONTROL_PORT})")
    c.add_argument("--auth", action="store_true", help="accept only registered SuperNodes (needs TLS)")
    c.add_argument("--database", help="SQLite file for the SuperLink's state (default: in memory)")
    c.add_argument("--log-file")
    c.add_argument("--public-host", action="append", default=[], metavar="NAME_OR_IP",
                   help="a name clients use; checked against the certificate's SAN (repeatable)")
    c.add_argument("--dry-run", action="store_true", help="validate and print the command; start nothing")
    c.set_defaults(func=cmd_superlink)

    c = dsub.add_parser("supernode", help="start a SuperNode serving one client's partition (foreground)")
    tls_client(c, f"127.0.0.1:{FLEET_PORT}", "Fleet API, gRPC")
    c.add_argument("--partition-id", type=int, help="this client's partition (0 .. num_clients-1)")
    c.add_argument("--node-config", help="Flower node config, e.g. \"partition-id=0 num-partitions=3\"")
    experiment_args(c, required=False)
    c.add_argument("--auth-key", metavar="PRIVATE_KEY", help="this node's private key (from `fedlr deploy keys`)")
    c.add_argument("--port", type=int, default=SUPERNODE_RUNTIME_PORT,
                   help=f"this SuperNode's local Runtime API port (default {SUPERNODE_RUNTIME_PORT}; one per SuperNode)")
    c.add_argument("--cold", action="store_true",
                   help="Flower's stock executor: a new flwr-clientapp process per message (slower)")
    c.add_argument("--max-retries", type=int, help="give up connecting after N tries (default: retry forever)")
    c.add_argument("--max-wait-time", type=float, help="give up connecting after S seconds")
    c.add_argument("--dry-run", action="store_true", help="validate and print the command; start nothing")
    c.set_defaults(func=cmd_supernode)

    c = dsub.add_parser("submit", help="submit an experiment to a running SuperLink and wait for the result")
    experiment_args(c)
    control_client(c)
    c.add_argument("--run-dir", help="run directory to create, on the SuperLink's machine (absolute)")
    c.add_argument("--no-wait", action="store_true", help="return after submitting")
    c.add_argument("--timeout", type=float, default=None, help="seconds to wait for the run")
    c.set_defaults(func=cmd_submit)

    c = dsub.add_parser("local", help="SuperLink + one SuperNode per client on this machine (loopback), run, stop")
    experiment_args(c)
    c.add_argument("--insecure", action="store_true", help="no TLS (default: TLS with certificates made here)")
    c.add_argument("--auth", action="store_true", help="SuperNode authentication with keys made here")
    c.add_argument("--cold", action="store_true", help="Flower's stock per-message ClientApp processes")
    c.add_argument("--workdir", help="where certificates, keys and logs go (default: a temp folder)")
    c.set_defaults(func=cmd_local)


def _connection(args) -> Connection:
    return Connection(args.superlink, args.root_certificates, args.insecure, args.connection)


def cmd_certs(args) -> int:
    paths = make_certs(args.dir, args.host, args.days, args.force)
    for key, path in vars(paths).items():
        print(f"{key}: {path}")
    print("keep ca.key and server.key private; give ca.crt to every SuperNode and CLI user")
    return 0


def cmd_keys(args) -> int:
    names = list(args.name) + ([f"node-{i}" for i in range(args.nodes)] if args.nodes else [])
    if not names:
        raise DeployError("say which keys to make: --nodes N or --name NAME")
    pairs = make_node_keys(args.dir, names, args.force)
    for priv, pub in pairs:
        print(f"{priv}  {pub}")
    if args.register:
        for (_, pub), node in zip(pairs, register_node_keys([p for _, p in pairs], _connection(args))):
            print(f"registered {pub}: {node}")
    return 0


def cmd_register(args) -> int:
    for pub, node in zip(args.public_keys, register_node_keys(args.public_keys, _connection(args))):
        print(f"registered {pub}: {node}")
    return 0


def cmd_superlink(args) -> int:
    opts = SuperLinkOptions(insecure=args.insecure, certs_dir=args.certs, ssl_certfile=args.ssl_certfile,
                            ssl_keyfile=args.ssl_keyfile, ssl_ca_certfile=args.ssl_ca_certfile,
                            fleet_address=args.fleet_address, host=args.host, port=args.port, auth=args.auth,
                            database=args.database, log_file=args.log_file, hosts=args.public_host)
    argv = superlink_argv(opts)
    print(" ".join(argv), flush=True)
    if args.dry_run:
        return 0
    os.execve(argv[0], argv, flwr_env())
    return 1  # not reached


def cmd_supernode(args) -> int:
    num = None
    if args.experiment:  # this node can load the experiment's model and data, and serves one of its clients
        from fedlr.config import load_experiment
        from fedlr.preflight import preflight

        exp = load_experiment(args.experiment, args.overrides)
        num = exp.federation.num_clients
        parse_node_config(f"{args.node_config or ''} "
                          f"{'' if args.partition_id is None else f'partition-id={args.partition_id}'}", num)
        preflight(exp)
    opts = SuperNodeOptions(superlink=args.superlink, node_config=args.node_config, partition_id=args.partition_id,
                            num_partitions=num, insecure=args.insecure, root_certificates=args.root_certificates,
                            auth_key=args.auth_key, port=args.port, max_retries=args.max_retries,
                            max_wait_time=args.max_wait_time)
    argv = supernode_argv(opts)
    print(" ".join(argv), flush=True)
    if args.dry_run:
        return 0
    return serve_supernode(argv, args.port, warm=not args.cold)


def cmd_submit(args) -> int:
    from fedlr.config import load_experiment

    exp = load_experiment(args.experiment, args.overrides)
    res = submit(exp, _connection(args), run_dir=args.run_dir, run_name=Path(args.experiment).stem,
                 wait=not args.no_wait, timeout_s=args.timeout, echo=print)
    return _report(res)


def _report(res: SubmitResult) -> int:
    if res.status == "submitted":
        return 0
    print(f"fedlr: Flower run {res.run_id}: {res.status}; run directory {res.run_dir}")
    if res.traffic:
        t = res.traffic
        print(f"fedlr: bytes, ledger vs Flower's count: up {t['ledger_uplink_bytes']:,} / in "
              f"{t['flower_inbound_bytes']:,}, down {t['ledger_downlink_bytes']:,} / out "
              f"{t['flower_outbound_bytes']:,} ({'consistent' if t['consistent'] else 'INCONSISTENT'})")
    return 0 if res.completed and (res.traffic is None or res.traffic["consistent"]) else 1


def cmd_local(args) -> int:
    from fedlr.config import load_experiment
    from fedlr.preflight import preflight

    exp = load_experiment(args.experiment, args.overrides)
    if (reason := deployment_refusal(exp)) is not None:
        raise DeployError(reason)
    preflight(exp)
    n = exp.federation.num_clients
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fedlr-local-"))
    with LocalDeployment(workdir, insecure=args.insecure, auth=args.auth) as fed:
        print(f"fedlr: SuperLink on {fed.fleet_address} (gRPC) / {fed.control_address} (HTTP), "
              f"{n} SuperNodes, logs in {fed.tree.log_dir}", flush=True)
        fed.start_superlink()
        keys = fed.make_keys([f"node-{i}" for i in range(n)]) if args.auth else {}
        if keys:
            fed.register([pub for _, pub in keys.values()])
        for i in range(n):
            fed.start_supernode(f"node-{i}", i, n, auth_key=keys[f"node-{i}"][0] if keys else None, warm=not args.cold)
        res = fed.submit(exp, None, run_name=Path(args.experiment).stem, echo=print)
        return _report(res)
