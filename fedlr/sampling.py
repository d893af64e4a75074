"""Client sampling from the experiment seed, over partition ids (never Flower's random node ids,
which differ between runs — reference/flower.md §12)."""

from __future__ import annotations

from fedlr.seeding import numpy_rng


def sample_clients(seed: int, server_round: int, num_clients: int, clients_per_round: int) -> list[int]:
    """The sorted partition ids taking part in ``server_round`` (uniform without replacement)."""
    rng = numpy_rng(seed, "sample", server_round)
    return sorted(int(i) for i in rng.choice(num_clients, size=clients_per_round, replace=False))
