"""One Flower strategy per method, thin: decode, validate, call the method's pure aggregation,
encode. Installed as ``fedlr.strategies``."""

if __name__ != "fedlr.strategies":  # ``import strategies`` from the repository root
    raise ImportError(f"import fedlr.strategies, not {__name__}: this folder is installed as fedlr.strategies "
                      "(pyproject.toml [tool.setuptools.package-dir]); under its bare name it would load a second "
                      "copy of every class")

from fedlr.methods import MethodSpec
from fedlr.strategies.base import FedLRStrategy
from fedlr.strategies.fed_sb import FedSBStrategy


def strategy_class(spec: MethodSpec) -> type[FedLRStrategy]:
    """The strategy that runs the method's init round (``MethodSpec.init_round``: Fed-SB's), or the
    base for methods without one."""
    return FedSBStrategy if spec.init_round == FedSBStrategy.init_round else FedLRStrategy


__all__ = ["FedLRStrategy", "FedSBStrategy", "strategy_class"]
