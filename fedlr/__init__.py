"""fedlr: federated, differentially private fine-tuning with low-rank adapters."""

__version__ = "0.1.0"
