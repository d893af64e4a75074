"""The run directory: resolved config, seeds, per-round ledger (JSONL), summary, exported model."""

from fedlr.results.rundir import RunDir, read_ledger

__all__ = ["RunDir", "read_ledger"]
