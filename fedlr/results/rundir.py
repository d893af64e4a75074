"""A run directory::

    runs/<name>/
      config.toml      the resolved experiment (every default filled in)
      seeds.json       the experiment seed and how each random stream derives from it
      ledger.jsonl     one JSON object per round (round 0: init + initial evaluation), written and
                       read by ``fedlr.results.ledger`` only
      summary.json     final figures (its existence marks the run complete)
      model/           the final adapters as a standard PEFT checkpoint
      checkpoints/     the server's state after the newest rounds (``fedlr run --resume``)
      client-state/    simulated clients' snapshots of their persistent state
      deployment.json  only in a run on Flower's Deployment Engine: its Flower run id and run config
      traffic.json     only in a deployed run submitted with --wait: Flower's byte counts beside the ledger's
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedlr.config import ConfigError, Experiment, load_experiment, to_toml
from fedlr.results.ledger import LedgerRow, append_row, read_ledger, write_ledger

SEED_STREAMS = {
    "client sampling": "derive_seed(seed, 'sample', round)",
    "test split": "derive_seed(seed, 'test-split')",
    "partitioning": "derive_seed(seed, 'partition-shuffle') (+ 'dirichlet')",
    "local val split": "derive_seed(seed, 'local-split', partition_id)",
    "classification head init": "derive_seed(seed, 'head', module)",
    "adapter init": "derive_seed(seed, 'adapter', layer_path)",
    "dropout": "derive_seed(seed, 'dropout', round, partition_id)",
}
# Drawn by fedlr.privacy.noise.noise_generator: as written under privacy.noise_source = "seeded";
# from the operating system's secure source under "secure", where the seed says nothing about them
NOISE_SOURCE_STREAMS = {
    "batch order": "derive_seed(seed, 'batches', round, partition_id)",
    "DP noise": "derive_seed(seed, 'dp-noise' or 'client-noise', round, partition_id); derive_seed(seed, "
                "'server-noise', round)",
}
SECURE_DRAW = "secrets.randbits(63) for every draw (privacy.noise_source = 'secure'): not derived from the seed"


def seed_streams(noise_source: str) -> dict[str, str]:
    """How each random stream of a run with this ``privacy.noise_source`` is seeded (seeds.json)."""
    drawn = {name: recipe if noise_source == "seeded" else SECURE_DRAW for name, recipe in NOISE_SOURCE_STREAMS.items()}
    return {**SEED_STREAMS, **drawn}


class RunDir:
    """A run directory; the one place that names the files in it (see the module docstring)."""

    CONFIG = "config.toml"
    SEEDS = "seeds.json"
    LEDGER = "ledger.jsonl"
    SUMMARY = "summary.json"
    MODEL = "model"
    CHECKPOINTS = "checkpoints"
    CLIENT_STATE = "client-state"
    DEPLOYMENT = "deployment.json"  # written by a deployed run's ServerApp (fedlr.deploy)
    TRAFFIC = "traffic.json"  # a deployed run's bytes as Flower counted them (fedlr deploy submit)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, exp: Experiment, default_name: str) -> "RunDir":
        root = Path(exp.output.dir)
        name = exp.output.name or f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = root / name
        suffix = 1
        while path.exists():
            suffix += 1
            path = root / f"{name}-{suffix}"
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise ConfigError(f"output.dir: cannot create the run directory {path}: {e.strerror}") from None
        run = cls(path)
        run.write_config(exp)
        run.seeds_path.write_text(json.dumps({"seed": exp.seed, "noise_source": exp.privacy.noise_source,
                                              "streams": seed_streams(exp.privacy.noise_source)}, indent=2) + "\n")
        return run

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        """A run directory written before (``fedlr run --resume``); ConfigError if it is not one."""
        run = cls(path)
        if not run.config_path.is_file():
            raise ConfigError(f"--resume {run.path}: not a fedlr run directory (no {cls.CONFIG})")
        return run

    @classmethod
    def below(cls, root: str | Path) -> list["RunDir"]:
        """Every run directory (a folder holding a config) at or below ``root``, sorted."""
        return [cls(p.parent) for p in sorted(Path(root).rglob(cls.CONFIG))]

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def seeds_path(self) -> Path:
        return self.path / self.SEEDS

    @property
    def ledger_path(self) -> Path:
        return self.path / self.LEDGER

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def deployment_path(self) -> Path:
        return self.path / self.DEPLOYMENT

    @property
    def traffic_path(self) -> Path:
        return self.path / self.TRAFFIC

    @property
    def engine(self) -> str:
        """``"deployment"`` for a run on Flower's Deployment Engine (it wrote ``deployment.json``),
        else ``"simulation"``: a run resumes only on the engine it ran on."""
        return "deployment" if self.deployment_path.is_file() else "simulation"

    @property
    def model_dir(self) -> Path:
        return self.path / self.MODEL

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def client_state_dir(self) -> Path:
        return self.path / self.CLIENT_STATE

    def write_config(self, exp: Experiment) -> None:
        self.config_path.write_text(to_toml(exp))

    def experiment(self) -> Experiment:
        """The resolved experiment the run was started with."""
        return load_experiment(self.config_path)

    @property
    def complete(self) -> bool:
        """A run is complete once its summary is written (its last act)."""
        return self.summary_path.is_file()

    def ledger(self) -> list[LedgerRow]:
        """The ledger's rows (``fedlr.results.ledger.read_ledger``: LedgerError if it is garbled)."""
        return read_ledger(self.ledger_path)

    def append(self, row: LedgerRow) -> None:
        append_row(self.ledger_path, row)

    def truncate_ledger(self, last_round: int) -> list[LedgerRow]:
        """Keep the ledger rows of rounds ≤ ``last_round`` (a resume replays the rest) and return
        them; a line torn by a kill mid-write is dropped. A ledger that cannot be read raises
        ``LedgerError`` and is left as it is; the rewrite is atomic."""
        rows = [row for row in self.ledger() if row.round <= last_round]
        write_ledger(self.ledger_path, rows)
        return rows

    def summary(self) -> dict | None:
        """The summary, None before the run completes (``ValueError`` if it is not JSON)."""
        return json.loads(self.summary_path.read_text()) if self.complete else None

    def write_summary(self, summary: dict) -> None:
        self.summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
