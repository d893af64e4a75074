"""fedlr's Flower strategies: one class per method (``strategies.catalog``), each a Flower
strategy over the pure parts of ``strategies.base``, usable in any Flower ``ServerApp`` with
fedlr's ClientApp (docs/flower.md). Installed as ``fedlr.strategies``."""

if __name__ != "fedlr.strategies":  # ``import strategies`` from the repository root
    raise ImportError(f"import fedlr.strategies, not {__name__}: this folder is installed as fedlr.strategies "
                      "(pyproject.toml [tool.setuptools.package-dir]); under its bare name it would load a second "
                      "copy of every class")

from fedlr.strategies.base import FedLRStrategy
from fedlr.strategies.catalog import (DPLoRA, FedExLoRA, FedIT, FedPara, FedSB, FedSVD, FFALoRA, FLoRA,
                                      FullFineTuning, MethodStrategy, strategy_class)
from fedlr.strategies.state import ServerState

__all__ = ["DPLoRA", "FedExLoRA", "FedIT", "FedLRStrategy", "FedPara", "FedSB", "FedSVD", "FFALoRA", "FLoRA",
           "FullFineTuning", "MethodStrategy", "ServerState", "strategy_class"]
