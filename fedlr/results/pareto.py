"""Pareto frontiers: the best a report's groups buy for a given cost (``fedlr report``).

A point *dominates* another if it is at least as good in every objective and strictly better in
one (better = smaller for a ``"min"`` objective such as bytes or ε, larger for a ``"max"``
objective such as accuracy). The frontier is the set of points no other point dominates: the
best accuracy one can buy for a given communication or privacy budget.
"""

from __future__ import annotations

import math
from typing import Sequence

Sense = str  # "min" | "max"


def _usable(point: Sequence[float | None]) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in point)


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[Sense] = ("min", "max")) -> bool:
    """Whether ``a`` dominates ``b`` under ``senses`` (one per coordinate)."""
    if len(a) != len(b) or len(a) != len(senses):
        raise ValueError(f"points of {len(a)} and {len(b)} coordinates for {len(senses)} objectives")
    better_somewhere = False
    for x, y, sense in zip(a, b, senses):
        if sense not in ("min", "max"):
            raise ValueError(f"objective sense {sense!r}: expected 'min' or 'max'")
        if sense == "max":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better_somewhere = True
    return better_somewhere


def pareto_front(points: Sequence[Sequence[float | None]], senses: Sequence[Sense] = ("min", "max")) -> list[int]:
    """Indices of the non-dominated points, ordered by the first coordinate (then the others).

    The default senses fit (cost, accuracy) pairs: minimize the first, maximize the second.
    Points with a missing (None) or non-finite coordinate take no part: they are neither on the
    frontier nor dominate anything. Identical points do not dominate each other, so both stay.
    O(n^2), which is plenty for the tens of runs a sweep makes.
    """
    usable = [i for i, p in enumerate(points) if _usable(p)]
    front = [i for i in usable if not any(dominates(points[j], points[i], senses) for j in usable if j != i)]

    def order(i: int) -> tuple:
        return tuple(v if s == "min" else -v for v, s in zip(points[i], senses))

    return sorted(front, key=lambda i: (order(i), i))
