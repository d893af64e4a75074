"""The run directory: resolved config, seeds, per-round ledger (JSONL), summary, exported model."""

from fedlr.results.ledger import LedgerError, LedgerRow, read_ledger
from fedlr.results.rundir import RunDir

__all__ = ["LedgerError", "LedgerRow", "RunDir", "read_ledger"]
