"""Data: bundled corpora and user files (``corpora``), held-out and federated splits through
flwr-datasets partitioners (``partition``), and tokenization once per partition (``tokens``)."""

from fedlr.data.federated import ClientFile, FederatedData

__all__ = ["ClientFile", "FederatedData"]
