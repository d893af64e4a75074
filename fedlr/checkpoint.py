"""Atomic, verified checkpoints: one file per round, the newest valid one is resumed from.

File format: the SHA-256 hex digest of the body, a newline, then the body — ``torch.save`` of a
dict of tensors and plain values, read back with ``weights_only=True`` (no code runs on load).
A write goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over
the final name (``os.replace`` is atomic on POSIX) and the folder fsync'ed: after a SIGKILL or a
power loss the file is either the old content, absent, or complete. A file that is truncated or
altered fails its digest and ``latest`` falls back to the one before it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("fedlr")
PATTERN = re.compile(r"round-(\d{6})\.ckpt")


class CorruptCheckpoint(ValueError):
    """A checkpoint whose digest, header or body does not check out."""


def path_for(folder: Path, server_round: int) -> Path:
    return Path(folder) / f"round-{server_round:06d}.ckpt"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def decode(data: bytes) -> dict[str, Any]:
    """The payload of a checkpoint file's bytes; ``CorruptCheckpoint`` if it does not verify."""
    digest, sep, body = data.partition(b"\n")
    if not sep or len(digest) != 64:
        raise CorruptCheckpoint("no digest header")
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise CorruptCheckpoint("digest mismatch (truncated or altered)")
    try:
        return torch.load(io.BytesIO(body), weights_only=True)
    except Exception as e:  # a body that verifies but does not load: written by something else
        raise CorruptCheckpoint(f"unreadable body: {type(e).__name__}: {e}") from None


def save(folder: Path, server_round: int, payload: dict[str, Any], keep: int | None = None) -> Path:
    """Write round ``server_round``'s checkpoint, then delete all but the ``keep`` newest (None:
    keep all)."""
    path = path_for(folder, server_round)
    write_atomic(path, encode(payload))
    if keep is not None:
        for old in rounds(folder)[:-keep]:
            path_for(folder, old).unlink(missing_ok=True)
    return path


def prune(folder: Path, floor: int) -> None:
    """Delete what no resume from a round ≥ ``floor`` can need: every checkpoint older than the
    newest one at or below ``floor``."""
    below = [r for r in rounds(folder) if r <= floor]
    for old in below[:-1]:
        path_for(folder, old).unlink(missing_ok=True)


def discard_after(folder: Path, server_round: int) -> None:
    """Delete checkpoints newer than ``server_round`` (written by rounds a resume replays)."""
    for r in rounds(folder):
        if r > server_round:
            path_for(folder, r).unlink(missing_ok=True)


def rounds(folder: Path) -> list[int]:
    """Rounds that have a checkpoint file in ``folder``, ascending (valid or not)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := PATTERN.fullmatch(p.name)))


def load(folder: Path, server_round: int) -> dict[str, Any]:
    return decode(path_for(folder, server_round).read_bytes())


def latest(folder: Path, at_most: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """The newest checkpoint that verifies (round ≤ ``at_most`` if given), skipping and logging
    corrupt ones; None when there is none."""
    for r in reversed(rounds(folder)):
        if at_most is not None and r > at_most:
            continue
        try:
            return r, load(folder, r)
        except (CorruptCheckpoint, OSError) as e:
            log.warning("checkpoint %s is unusable (%s); trying the one before", path_for(folder, r), e)
    return None
