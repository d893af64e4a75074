"""Whether a Hugging Face hub id can be loaded, decided before asking the hub.

A model or dataset name that is neither bundled nor a local path is taken for a hub id. Without
a network (or in offline mode) the libraries retry for about 35 s before failing; fedlr says so at
once unless the id is already in the local cache, which the libraries read offline."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from fedlr.errors import ConfigError

PROBE_TIMEOUT_S = 3.0
TRUE = ("1", "true", "yes", "on")


def hub_unreachable(offline_vars: tuple[str, ...]) -> str | None:
    """Why the hub cannot be asked (an offline variable set, or its host not answering within
    ``PROBE_TIMEOUT_S``), or None when it answers."""
    for var in offline_vars:
        if os.environ.get(var, "").strip().lower() in TRUE:
            return f"{var} is set"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    outcome: list[str | None] = []

    def probe() -> None:  # in a thread: a name lookup has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{host} cannot be reached ({e.strerror or e})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    return outcome[0] if outcome else f"{host} did not answer within {PROBE_TIMEOUT_S:g} s"


def cached(name: str, kind: str) -> bool:
    """Whether hub id ``name`` (``kind`` 'model' or 'dataset') has anything in the local caches."""
    from huggingface_hub import constants

    folders = [Path(constants.HF_HUB_CACHE) / f"{kind}s--{name.replace('/', '--')}"]
    if kind == "dataset":
        import datasets.config

        folders.append(Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___"))
    return any(f.is_dir() for f in folders)


def require_hub(field: str, name: str, kind: str, bundled: tuple[str, ...]) -> None:
    """ConfigError at once when ``name`` would be loaded from an unreachable hub and is not cached."""
    offline_vars = ("HF_HUB_OFFLINE",) + (("HF_DATASETS_OFFLINE",) if kind == "dataset" else ())
    why = hub_unreachable(offline_vars)
    if why is not None and not cached(name, kind):
        raise ConfigError(f"{field}: {name!r} is neither a local path nor a bundled name ({', '.join(bundled)}), "
                          f"and the Hugging Face hub cannot be asked for it as a {kind} id: {why} "
                          "(and it is not in the local cache)")
