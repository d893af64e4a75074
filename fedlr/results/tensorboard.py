"""Per-round ledger rows as TensorBoard scalars, when asked (``fedlr sweep --tensorboard`` logs
each run live into ``<run dir>/tensorboard/``; ``fedlr report --tensorboard`` exports every
ledger afterwards into ``<report>/tensorboard/<run>/``). The step is the round (0 = before
training). Needs the ``tensorboard`` package (pinned in requirements.txt); without it, asking
for TensorBoard is an error naming the package, and nothing else depends on it.

Scalars: ``accuracy/test``, ``loss/test``, ``loss/train``, ``accuracy/client_val``,
``bytes/uplink_MiB``, ``bytes/downlink_MiB``, ``bytes/cumulative_MiB``, ``clients/replied``,
``clients/failed``, ``clients/rejected``, and ``privacy/epsilon`` where the row has one.
"""

from __future__ import annotations

from pathlib import Path

from fedlr.errors import ConfigError
from fedlr.results.ledger import LedgerRow

MIB = 2**20
SCALARS = {  # LedgerRow field -> (tag, scale)
    "eval_accuracy": ("accuracy/test", 1.0),
    "eval_loss": ("loss/test", 1.0),
    "train_loss": ("loss/train", 1.0),
    "client_val_accuracy": ("accuracy/client_val", 1.0),
    "uplink_bytes": ("bytes/uplink_MiB", 1 / MIB),
    "downlink_bytes": ("bytes/downlink_MiB", 1 / MIB),
    "cumulative_bytes": ("bytes/cumulative_MiB", 1 / MIB),
    "clients_replied": ("clients/replied", 1.0),
    "clients_failed": ("clients/failed", 1.0),
    "clients_rejected": ("clients/rejected", 1.0),
    "epsilon": ("privacy/epsilon", 1.0),
}


class TensorBoardUnavailable(ConfigError):
    """Asked for TensorBoard without the tensorboard package (exit 2 before any work)."""


def scalars_of(row: LedgerRow) -> dict[str, float]:
    """The TensorBoard scalars of one ledger row (pure): tag -> value, missing values left out."""
    out = {}
    for key, (tag, scale) in SCALARS.items():
        value = getattr(row, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value) * scale
    return out


def require_tensorboard() -> None:
    """Raise ``TensorBoardUnavailable`` (naming the package) unless TensorBoard logging works."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise TensorBoardUnavailable(
            "TensorBoard logging needs the tensorboard package: pip install tensorboard==2.21.0"
        ) from e


class LedgerWriter:
    """Writes ledger rows to a TensorBoard log directory as they come (``write_row``)."""

    def __init__(self, log_dir: Path | str, config_text: str | None = None):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        if config_text:
            self._writer.add_text("config", "```toml\n" + config_text + "\n```", 0)

    def write_row(self, row: LedgerRow) -> None:
        step = row.round
        for tag, value in scalars_of(row).items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def export_ledgers(records, out: Path | str) -> list[Path]:
    """Every run's ledger (``report.RunRecord``s) into ``out/<run name>/``; returns the folders."""
    out = Path(out)
    written = []
    for rec in records:
        if not rec.ledger:
            continue
        writer = LedgerWriter(out / rec.name, rec.config_text)
        try:
            for row in rec.ledger:
                writer.write_row(row)
        finally:
            writer.close()
        written.append(writer.log_dir)
    return written
