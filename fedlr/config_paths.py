"""Dotted config paths (``method.rank``) over nested dicts: the one flattener and the one setter
that ``--set``, ``[sweep]`` and ``fedlr report`` share."""

from __future__ import annotations

import copy
from typing import Any


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method": {"rank": 4}}`` -> ``{"method.rank": 4}``, in the order of ``data``; lists
    and ``None`` stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``dotted = "a.b.c"``, making missing sections; ``ValueError``
    when a part on the way is a value rather than a section. The value is copied, so one value
    set into many dicts is not shared between them."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"'{part}' is not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)
