"""Test certificates and the checks that name a missing, mismatched or expired certificate before
any process starts. ``make_certs`` writes a CA and a server certificate (SAN localhost and
127.0.0.1 plus any host asked for) with the ``cryptography`` package; in production use
certificates from your own CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from fedlr.errors import DeployError

DEFAULT_HOSTS = ("localhost", "127.0.0.1")


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

