"""A run directory::

    runs/<name>/
      config.toml      the resolved experiment (every default filled in)
      seeds.json       the experiment seed and how each random stream derives from it
      ledger.jsonl     one JSON object per round (round 0: init + initial evaluation)
      summary.json     final figures
      model/           the final adapters as a standard PEFT checkpoint
      checkpoints/     the server's state after the newest rounds (``fedlr run --resume``)
      client-state/    simulated clients' snapshots of their persistent state
      deployment.json  only in a run on Flower's Deployment Engine: its Flower run id and run config
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedlr.checkpoint import write_atomic
from fedlr.config import ConfigError, Experiment, load_experiment, to_toml

SEED_STREAMS = {
    "client sampling": "derive_seed(seed, 'sample', round)",
    "test split": "derive_seed(seed, 'test-split')",
    "partitioning": "derive_seed(seed, 'partition-shuffle') (+ 'dirichlet')",
    "local val split": "derive_seed(seed, 'local-split', partition_id)",
    "classification head init": "derive_seed(seed, 'head', module)",
    "adapter init": "derive_seed(seed, 'adapter', layer_path)",
    "batch order": "derive_seed(seed, 'batches', round, partition_id)",
    "dropout": "derive_seed(seed, 'dropout', round, partition_id)",
}


class RunDir:
    def __init__(self, path: Path):
        self.path = path

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
        (path / "config.toml").write_text(to_toml(exp))
        (path / "seeds.json").write_text(json.dumps({"seed": exp.seed, "streams": SEED_STREAMS}, indent=2) + "\n")
        return run

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        """A run directory written before (``fedlr run --resume``); ConfigError if it is not one."""
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise ConfigError(f"--resume {path}: not a fedlr run directory (no config.toml)")
        return cls(path)

    def experiment(self) -> Experiment:
        """The resolved experiment the run was started with."""
        return load_experiment(self.path / "config.toml")

    @property
    def ledger_path(self) -> Path:
        return self.path / "ledger.jsonl"

    @property
    def deployment_path(self) -> Path:
        return self.path / "deployment.json"

    @property
    def engine(self) -> str:
        """``"deployment"`` for a run on Flower's Deployment Engine (it wrote ``deployment.json``),
        else ``"simulation"``: a run resumes only on the engine it ran on."""
        return "deployment" if self.deployment_path.is_file() else "simulation"

    @property
    def complete(self) -> bool:
        """The run wrote its summary: nothing is left to resume."""
        return (self.path / "summary.json").is_file()

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def client_state_dir(self) -> Path:
        return self.path / "client-state"

    def truncate_ledger(self, last_round: int) -> list[dict]:
        """Keep the ledger rows of rounds ≤ ``last_round`` (a resume replays the rest) and return
        them; a line torn by a kill mid-write is dropped. The rewrite is atomic."""
        rows = []
        if self.ledger_path.exists():
            for line in self.ledger_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row["round"] <= last_round:
                    rows.append(row)
        write_atomic(self.ledger_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
        return rows

    def append(self, row: dict) -> None:
        with self.ledger_path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def write_summary(self, summary: dict) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")

    @property
    def model_dir(self) -> Path:
        return self.path / "model"


def read_ledger(path: Path | str) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
