"""SuperNode authentication keys: ECDSA P-384 pairs in the OpenSSH format Flower reads (what
``ssh-keygen -t ecdsa -b 384`` makes). The public halves are registered with the SuperLink
(``fedlr.deploy.connection.register_node_keys``); each private half stays on its client machine."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from fedlr.errors import DeployError


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

