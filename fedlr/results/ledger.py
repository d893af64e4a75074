"""The per-round ledger: one typed row per round."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LedgerRow:
    """One ledger row: a round of a run, as written to ``ledger.jsonl``."""

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
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    cumulative_uplink_bytes: int = 0
    cumulative_downlink_bytes: int = 0
    cumulative_bytes: int = 0
    epsilon: float | None = None  # cumulative; max over clients (sample, client_local) or the federation's
    delta: float | None = None
    client_epsilon: dict[str, float] | None = None  # partition id -> cumulative ε (sample, client_local)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)
