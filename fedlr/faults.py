"""Injected client failures for robustness studies in simulation (``[faults]``, FaultConfig).

The schedule is a pure function of (seed, round, partition id): in every round each sampled client
fails with probability ``fraction`` and the kind is drawn uniformly from ``kinds``. The client
applies it (``inject``) and the server observes it like any real failure:

==========  ==============================================  ======================
kind        what the client does                            what the ledger shows
==========  ==============================================  ======================
raise       raises ``InjectedFault``                        ``error``
hang        sleeps ``hang_s`` (past the round timeout),     ``timeout``
            then raises: its late reply is dropped
garbage     replies NaN tensors of the wrong shapes         ``rejected``
==========  ==============================================  ======================
"""

from __future__ import annotations

import time
from typing import Mapping

import torch

from fedlr.config import Experiment
from fedlr.seeding import numpy_rng

OBSERVED_AS = {"raise": "error", "hang": "timeout", "garbage": "rejected"}


class InjectedFault(RuntimeError):
    """The failure ``faults.kinds = ['raise']`` asks for."""


def fault_for(exp: Experiment, server_round: int, partition_id: int) -> str | None:
    """The kind of failure client ``partition_id`` injects in ``server_round``, or None."""
    cfg = exp.faults
    if not cfg.active:
        return None
    rng = numpy_rng(exp.seed, "fault", server_round, partition_id)
    if rng.random() >= cfg.fraction:
        return None
    return cfg.kinds[int(rng.integers(len(cfg.kinds)))]


def fault_schedule(exp: Experiment, server_round: int, partition_ids: list[int]) -> dict[int, str]:
    """Partition id -> injected kind for the clients of ``partition_ids`` that fail this round."""
    faults = {pid: fault_for(exp, server_round, pid) for pid in partition_ids}
    return {pid: kind for pid, kind in faults.items() if kind is not None}


def garbage(update: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a broken client sends: every tensor NaN and one entry longer than it should be."""
    return {k: torch.full((v.numel() + 1,), float("nan"), dtype=v.dtype) for k, v in update.items()}


def inject(kind: str, exp: Experiment, server_round: int, partition_id: int) -> None:
    """Act out ``raise`` and ``hang`` (``garbage`` is applied to the reply by the caller)."""
    if kind == "raise":
        raise InjectedFault(f"injected fault: client {partition_id} raised in round {server_round}")
    if kind == "hang":
        hang_s = exp.faults.hang_s if exp.faults.hang_s is not None else exp.federation.round_timeout_s + 5
        time.sleep(hang_s)
        raise InjectedFault(f"injected fault: client {partition_id} hung for {hang_s} s in round {server_round}")
