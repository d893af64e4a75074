"""The per-round ledger: one typed row per round, one JSON object per line.

This module is the only one that writes or reads a ledger file (``RunDir`` names it). The rule
for a damaged file is one for every reader: a LAST line that does not parse and does not end in
a newline was torn by a kill mid-write and is dropped (``append`` writes a row and its newline
in one call, so a complete row always ends in one); any other line that is not a ledger row is
a ``LedgerError`` naming the file and the line, and nothing is dropped or rewritten.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from fedlr.errors import ConfigError


class LedgerError(ConfigError):
    """A ledger file that cannot be read: a line other than a torn last one is not a ledger row."""


@dataclass
class LedgerRow:
    """One ledger row: a round of a run (round 0: init + initial evaluation)."""

    round: int
    clients_sampled: list[int]
    clients_replied: int = 0
    clients_failed: int = 0
    clients_rejected: int = 0
    aggregated: bool = False  # False when fewer than federation.min_replies valid updates arrived
    failures: list[dict] = field(default_factory=list)
    train_loss: float | None = None
    client_val_accuracy: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    # central evaluation's other metrics (fedlr.metrics), from the same logits; per-class counts by class id
    eval_balanced_accuracy: float | None = None
    eval_macro_f1: float | None = None
    eval_roc_auc: float | None = None  # None also where no class has both positive and negative test examples
    eval_class_support: list[int] | None = None
    eval_class_predicted: list[int] | None = None
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    cumulative_uplink_bytes: int = 0
    cumulative_downlink_bytes: int = 0
    cumulative_bytes: int = 0
    epsilon: float | None = None  # cumulative; max over clients (sample, client_local) or the federation's
    delta: float | None = None
    client_epsilon: dict[str, float] | None = None  # partition id -> cumulative ε (sample, client_local)
    wall_time_s: float = 0.0  # since the round loop started, summed over a resumed run's sessions
    rejoined: list[int] | None = None  # partitions whose node came back and was enrolled again before the round

    def to_dict(self) -> dict:
        """The row as written; ``rejoined`` only in a round where a node rejoined (deployment)."""
        row = asdict(self)
        if row["rejoined"] is None:
            del row["rejoined"]
        return row

    def to_json(self) -> str:
        """The row as written: one line of JSON, keys sorted."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data) -> "LedgerRow":
        """The row ``to_dict`` wrote; a field it lacks takes its default (rows written before the
        field existed). ``ValueError`` naming the problem for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        missing = [k for k in ("round", "clients_sampled") if k not in data]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        if not isinstance(data["round"], int) or isinstance(data["round"], bool):
            raise ValueError(f"round must be an integer, got {data['round']!r}")
        return cls(**data)


def read_ledger(path: Path | str) -> list[LedgerRow]:
    """Every row of the ledger file ``path`` (a missing file has none); see the module docstring
    for the one rule on damaged files."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise LedgerError(f"{path}: not a ledger (not UTF-8 text: {e}); the file is left as it is") from None
    lines = text.splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(LedgerRow.from_dict(json.loads(line)))
        except ValueError as e:  # json.JSONDecodeError is one
            torn = n == len(lines) and not text.endswith("\n")
            if torn:
                break
            raise LedgerError(f"{path}:{n}: not a ledger row ({e}); the file is left as it is") from None
    return rows


def append_row(path: Path, row: LedgerRow) -> None:
    """Add one row (with its newline, in one write)."""
    with Path(path).open("a") as f:
        f.write(row.to_json() + "\n")


def write_ledger(path: Path, rows: list[LedgerRow]) -> None:
    """Replace the ledger file with ``rows``, atomically."""
    from fedlr.checkpoint import write_atomic  # (imports torch, which reading a ledger does not need)

    write_atomic(Path(path), "".join(row.to_json() + "\n" for row in rows).encode())
