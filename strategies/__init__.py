"""One Flower strategy per method, thin: decode, validate, call the method's pure aggregation,
encode. Installed as ``fedlr.strategies``."""

if __name__ != "fedlr.strategies":  # ``import strategies`` from the repository root
    raise ImportError(f"import fedlr.strategies, not {__name__}: this folder is installed as fedlr.strategies "
                      "(pyproject.toml [tool.setuptools.package-dir]); under its bare name it would load a second "
                      "copy of every class")

from fedlr.strategies.base import FedLRStrategy
from fedlr.strategies.fed_sb import FedSBStrategy


def strategy_class(method_name: str) -> type[FedLRStrategy]:
    """Fed-SB adds its federated init round; FedIT, FFA-LoRA, FedSVD (its A rides in the round
    state), DP-LoRA and full FT need only the base."""
    return FedSBStrategy if method_name == "fed_sb" else FedLRStrategy


__all__ = ["FedLRStrategy", "FedSBStrategy", "strategy_class"]
