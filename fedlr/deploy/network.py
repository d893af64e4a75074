"""Addresses and ports, and the probes that turn a network problem into one clear line before any
process starts: an unreachable SuperLink, TLS on one side only, a port already taken (and by whom),
a client pointed at the wrong one of the SuperLink's two APIs."""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path

from fedlr.errors import DeployError

FLEET_PORT = 9092  # gRPC-rere Fleet API: SuperNodes connect here
CONTROL_PORT = 8000  # HTTP(S) Control + Runtime APIs: `flwr run`/`flwr list` and the ServerApp connect here
SUPERNODE_RUNTIME_PORT = 9094  # each SuperNode's own local Runtime API (one per SuperNode on a host)
GRPC, HTTP = "gRPC", "HTTP"  # what an endpoint speaks (api_kind)


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


def port_holder(port: int) -> str | None:
    """``pid N (command line head)`` of a process listening on TCP ``port``, or None when none
    can be seen (another user's process is invisible without privileges)."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                cmd = " ".join(Path(a).name for a in psutil.Process(c.pid).cmdline()[:2])
            except psutil.Error:
                cmd = ""
            return f"pid {c.pid}" + (f" ({cmd})" if cmd else "")
    return None


def check_port_free(host: str, port: int, flag: str) -> None:
    """A server could listen on ``host:port`` now, or a DeployError names the port and, where it
    can be found, the process that holds it. (``SO_REUSEADDR`` as servers set it: a port whose
    last connection lingers in TIME_WAIT counts as free, one with a listener does not.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return
        except socket.gaierror as e:
            raise DeployError(f"{flag} {host}:{port}: unknown host ({e.strerror})") from None
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                holder = port_holder(port)
                raise DeployError(f"{flag}: port {port} is already in use"
                                  f"{f' by {holder}' if holder else ' by another process'}; stop it or choose "
                                  f"another port") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise DeployError(f"{flag} {host}:{port}: {host} is not an address of this machine") from None
            raise DeployError(f"{flag}: cannot listen on {host}:{port}: {e.strerror or e}") from None


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


def _client_context(cafile: Path | None) -> ssl.SSLContext:
    """TLS as a Flower client: verified against ``cafile``, offering HTTP/2 (gRPC) and HTTP/1.1."""
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def check_tls_endpoint(host: str, port: int, cafile: Path | None, what: str, timeout: float = 5.0) -> None:
    """Open a TLS connection the way a Flower client would and verify the server's certificate
    against ``cafile`` (hostname included). With ``cafile=None`` (``--insecure``) check that the
    endpoint is *not* TLS, since an insecure client cannot talk to a TLS server."""
    check_reachable(host, port, what, timeout)
    ctx = _client_context(cafile)
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


def api_kind(host: str, port: int, cafile: Path | None, timeout: float = 5.0) -> str | None:
    """What the endpoint speaks, from its answer to an HTTP/1.1 request: ``HTTP`` (the SuperLink's
    Control API answers with a status line), ``GRPC`` (the Fleet API, a gRPC server, opens with an
    HTTP/2 SETTINGS frame whatever it is sent), or None when it cannot tell."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock = _client_context(cafile).wrap_socket(raw, server_hostname=host) if cafile else raw
            with sock:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                head = sock.recv(16)
    except (ssl.SSLError, OSError):
        return None
    if head.startswith(b"HTTP/"):
        return HTTP
    if len(head) >= 4 and head[3] == 0x04:  # an HTTP/2 frame header whose type is SETTINGS
        return GRPC
    return None


def check_api(host: str, port: int, cafile: Path | None, want: str) -> None:
    """The endpoint is the SuperLink API a command needs (``want``: ``HTTP`` for the Control API,
    ``GRPC`` for the Fleet API), or a DeployError says which one the address points at."""
    got = api_kind(host, port, cafile)
    if got == GRPC and want == HTTP:
        raise DeployError(f"{host}:{port} is the SuperLink's Fleet API (gRPC, where SuperNodes connect; "
                          f"{FLEET_PORT} by default), not its Control API: pass --superlink HOST:PORT with the "
                          f"SuperLink's --port ({CONTROL_PORT} by default)")
    if got == HTTP and want == GRPC:
        raise DeployError(f"{host}:{port} is the SuperLink's Control API (HTTP, where runs are submitted; "
                          f"{CONTROL_PORT} by default), not its Fleet API: pass --superlink HOST:PORT with the "
                          f"SuperLink's --fleet-address port ({FLEET_PORT} by default)")
