"""A client's persistent state on its own disk, so a resumed run continues where it stopped.

Flower keeps a node's ``context.state`` (the once-broadcast tensors, the DP accountant, the
error-feedback memory and PowerSGD warm start) in memory only; a killed run loses it. After every
round it takes part in, a client writes that state to ``<state dir>/partition-<id>/round-NNNNNN.ckpt``
(``fedlr.checkpoint``: atomic, digest-checked). On resume from the server's checkpoint of round k
the client restores its newest snapshot at or before k — exactly the state it had when the server
wrote that checkpoint — and drops newer ones, which the replayed rounds rewrite.

Privacy on replay: with seeded noise (``privacy.noise_source = 'seeded'``) a replayed round sends
bit for bit what it sent before, a deterministic function of an earlier release, so restoring the
accountant of round k is exact. With ``'secure'`` noise a replay is a fresh release: the client
keeps the accountant of its newest snapshot (the steps it really took), never an older one.

Snapshots a resume can no longer need are pruned (``fedlr.checkpoint.prune``) against the oldest
round the server still holds a checkpoint of (``keep-from`` in each train message).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedlr import checkpoint
from fedlr.run.records import from_record, to_record


def folder_for(state_dir: str | Path, partition_id: int) -> Path:
    return Path(state_dir) / f"partition-{partition_id}"


def snapshot(state: RecordDict, skip: tuple[str, ...]) -> dict:
    """The records of ``state`` (but ``skip``) as plain values: tensors and config values."""
    arrays = {k: from_record(v) for k, v in state.array_records.items() if k not in skip}
    configs = {k: dict(v) for k, v in state.config_records.items() if k not in skip}
    return {"arrays": arrays, "configs": configs}


def restore_into(state: RecordDict, snap: dict) -> None:
    for key, tensors in snap["arrays"].items():
        state[key] = to_record(tensors)
    for key, values in snap["configs"].items():
        state[key] = ConfigRecord(values)


def save(state_dir: str | Path, partition_id: int, server_round: int, state: RecordDict,
         skip: tuple[str, ...], keep_from: int | None) -> None:
    """Snapshot after ``server_round``; prune what a resume from ≥ ``keep_from`` cannot need."""
    folder = folder_for(state_dir, partition_id)
    checkpoint.save(folder, server_round, snapshot(state, skip))
    if keep_from is not None:
        checkpoint.prune(folder, keep_from)


class SnapshotMissing(RuntimeError):
    """The snapshot a resume needs is unreadable: restoring an older one could under-count ε."""


def restore(state_dir: str | Path, partition_id: int, resume_round: int, state: RecordDict,
            accountant_key: str, keep_newest_accountant: bool) -> int | None:
    """Restore the newest snapshot at or before ``resume_round`` into ``state`` (None: the client
    had not taken part by then; its state stays fresh). Newer snapshots are deleted — after their
    accountant was carried over when ``keep_newest_accountant`` (secure noise)."""
    folder = folder_for(state_dir, partition_id)
    have = checkpoint.rounds(folder)
    newest_accountant = None
    if keep_newest_accountant and have and have[-1] > resume_round:
        newest = checkpoint.load(folder, have[-1])
        newest_accountant = newest["configs"].get(accountant_key)
    below = [r for r in have if r <= resume_round]
    restored = None
    if below:
        try:
            restore_into(state, checkpoint.load(folder, below[-1]))
        except checkpoint.CorruptCheckpoint as e:
            raise SnapshotMissing(f"client {partition_id}: its state snapshot of round {below[-1]} is corrupt ({e}); "
                                  "an older one would under-count its privacy spending, so it is not used") from None
        restored = below[-1]
    if newest_accountant is not None:
        state[accountant_key] = ConfigRecord(newest_accountant)
    checkpoint.discard_after(folder, resume_round)
    return restored
