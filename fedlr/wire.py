"""Bytes on the wire, computed the way Flower serializes an ``ArrayRecord``.

Each array travels as an ``.npy`` buffer (``np.save``): raw bytes plus a 128-byte header, and
``ArrayRecord.count_bytes()`` adds the length of each key (reference/compression.md §6). The
ledger counts the records actually sent; ``fedlr plan`` uses this formula, and a test checks the
two agree.
"""

from __future__ import annotations

from typing import Iterable

NPY_HEADER_BYTES = 128


def tensor_wire_bytes(key: str, numel: int, bytes_per_value: int = 4) -> int:
    return numel * bytes_per_value + NPY_HEADER_BYTES + len(key)


def record_wire_bytes(entries: Iterable[tuple[str, int]], bytes_per_value: int = 4) -> int:
    """Σ over (key, numel) of the serialized size of one fp32 (or other width) array."""
    return sum(tensor_wire_bytes(k, n, bytes_per_value) for k, n in entries)
