"""One Flower strategy class per method, built from plain arguments, for any Flower ``ServerApp``:

    strategy = FedSB(model="tiny-random-bert", dataset="rotten_tomatoes", num_clients=2, rank=4)
    result = strategy.start(grid, strategy.initial_arrays(), num_rounds=2,
                            evaluate_fn=strategy.central_evaluation)

with fedlr's ClientApp (``fedlr.clients.app:app``) on the nodes (docs/flower.md). Each class
fixes its method (``spec``, from ``fedlr.methods``) and turns the arguments into the experiment
every client receives at enrollment; the remaining experiment sections (``train``, ``data``,
``federation``, ``evaluation``, ``output``, ``faults``, and more of ``method``) take the same keys
as an experiment TOML file. ``fedlr run`` builds the same classes from a whole experiment
(``from_experiment``).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from fedlr.config import Experiment, experiment_from_dict
from fedlr.methods import MethodSpec, dp_lora, fed_sb, fed_svd, fedex_lora, fedit, fedpara, ffa_lora, flora, full_ft
from fedlr.results.ledger import LedgerRow
from fedlr.strategies.base import FedLRStrategy


class MethodStrategy(FedLRStrategy):
    """``model``: a bundled model name, a local path or a hub id; ``dataset``: a bundled corpus, a
    local file or a hub id; ``num_clients`` nodes, ``clients_per_round`` of them sampled per round
    (default: all); ``rank``, ``alpha`` (scale α/r) and ``targets`` (module names to adapt) of the
    adapters; ``privacy`` and ``compression``: the ``[privacy]`` / ``[compression]`` settings
    (``{"mode": "client_central", "noise_multiplier": 1.0}``, ``{"codec": "topk", "density": 0.1}``);
    ``on_round``: given each round's ledger row; ``**sections``: any other experiment section as a
    mapping."""

    spec: ClassVar[MethodSpec]

    def __init__(self, *, model: str, dataset: str, num_clients: int, clients_per_round: int | None = None,
                 rank: int = 16, alpha: float | None = None, targets: Sequence[str] = ("query", "value"),
                 privacy: Mapping[str, Any] | None = None, compression: Mapping[str, Any] | None = None,
                 seed: int = 0, num_rounds: int = 3, on_round: Callable[[LedgerRow], None] | None = None,
                 **sections: Mapping[str, Any]):
        data: dict[str, Any] = {
            "seed": seed, "model": {"name_or_path": model, "targets": list(targets)}, "data": {"dataset": dataset},
            "method": {"name": self.spec.name, "rank": rank, **({"alpha": alpha} if alpha is not None else {})},
            "federation": {"num_clients": num_clients, "clients_per_round": clients_per_round or num_clients,
                           "num_rounds": num_rounds},
            "privacy": dict(privacy or {}), "compression": dict(compression or {}),
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        super().__init__(experiment_from_dict(data), on_round=on_round)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int | None = None, **kwargs) -> Result:
        """Flower's ``start`` (``FedLRStrategy.start``); ``num_rounds`` defaults to the
        constructor's, and a different one rebuilds the experiment (and its privacy plan) with it."""
        fed = self.exp.federation
        if num_rounds is not None and num_rounds != fed.num_rounds and not self.resumed:
            data = self.exp.to_dict()
            data["federation"]["num_rounds"] = num_rounds
            FedLRStrategy.__init__(self, experiment_from_dict(data), on_round=self.on_round, checkpoint=self.checkpoint,
                                   client_state_dir=self.client_state_dir)
        return super().start(grid, initial_arrays, self.exp.federation.num_rounds, **kwargs)

    @classmethod
    def from_experiment(cls, exp: Experiment, **options) -> "MethodStrategy":
        """The strategy of ``exp`` (``fedlr run``); ``options`` as ``FedLRStrategy``'s."""
        if exp.method.name != cls.spec.name:
            raise ValueError(f"{cls.__name__} runs {cls.spec.name}, the experiment asks for {exp.method.name}")
        return super().from_experiment(exp, **options)


class FedIT(MethodStrategy):
    """FedIT / FedAvg-LoRA: clients train A and B, the server averages each."""
    spec = fedit.SPEC


class FFALoRA(MethodStrategy):
    """FFA-LoRA: A frozen at its seeded init, clients train and send B only (exact)."""
    spec = ffa_lora.SPEC


class FedSB(MethodStrategy):
    """Fed-SB: B and A fixed (federated init round), clients train the r×r R (exact)."""
    spec = fed_sb.SPEC


class FedSVD(MethodStrategy):
    """FedSVD: clients train B; the server re-factorizes with an SVD and broadcasts an orthonormal A."""
    spec = fed_svd.SPEC


class DPLoRA(MethodStrategy):
    """DP-LoRA: FedIT's factors with uniform weights and per-tensor clipping under DP."""
    spec = dp_lora.SPEC


class FedPara(MethodStrategy):
    """FedPara: low-rank Hadamard-product (LoHa) adapters, averaged factor by factor."""
    spec = fedpara.SPEC


class FedExLoRA(MethodStrategy):
    """FedEx-LoRA: FedIT plus the averaging residual folded into the base weights (exact)."""
    spec = fedex_lora.SPEC


class FLoRA(MethodStrategy):
    """FLoRA: clients' factors stacked and merged into the base each round; fresh adapters drawn per round."""
    spec = flora.SPEC


class FullFineTuning(MethodStrategy):
    """Every weight trained and averaged: the baseline the adapters are measured against."""
    spec = full_ft.SPEC


STRATEGIES: tuple[type[MethodStrategy], ...] = (FedIT, FFALoRA, FedSB, FedSVD, DPLoRA, FedPara, FedExLoRA, FLoRA,
                                                FullFineTuning)


def strategy_class(spec: MethodSpec) -> type[FedLRStrategy]:
    """The strategy class of a method: its named class, or the base for a method registered
    elsewhere (the base asks the spec for everything)."""
    return next((cls for cls in STRATEGIES if cls.spec is spec), FedLRStrategy)
