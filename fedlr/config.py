"""Experiment configuration: TOML in, a validated, typed object out.

Every section is a pydantic model that forbids unknown keys, so a typo fails before any work
with a message naming the field (``federation.clients_per_round``) and what is allowed.
``apply_overrides`` implements ``--set section.key=value`` where the value is parsed as TOML.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedlr.compression.config import CompressionConfig
from fedlr.errors import ConfigError, format_validation_error

METHOD_NAMES = ("fedit", "ffa_lora", "fed_sb", "fed_svd", "dp_lora", "fedpara", "fedex_lora", "flora", "full_ft")
PRIVACY_MODES = ("none", "sample", "client_central", "client_local")
BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"
TINY_MODEL = "tiny-random-bert"
BUNDLED_DATASETS = ("rotten_tomatoes", "sms_spam")




class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    name_or_path: str = Field(
        BUNDLED_MODEL,
        description=f"'{BUNDLED_MODEL}' (offline default), '{TINY_MODEL}' (unit tests), "
        "a local folder or config.json, or a Hugging Face hub id",
    )
    targets: list[str] = Field(["query", "value"], min_length=1)
    max_length: int = Field(64, ge=8, le=4096, description="tokens per example")


class DataConfig(_Section):
    dataset: str = Field(
        "rotten_tomatoes",
        description="'rotten_tomatoes', 'sms_spam', a local .csv/.json/.jsonl/.parquet file, "
        "or a Hugging Face dataset id",
    )
    text_column: str = "text"
    label_column: str = "label"
    partitioner: Literal["natural", "iid", "dirichlet"] = "natural"
    partition_by: str | None = Field(
        None, description="natural: the id column (default movie_name for rotten_tomatoes)"
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration over labels")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="of each client's data, for client-side eval")
    max_train_examples: int | None = Field(None, gt=0, description="random subset of the train rows")
    max_test_examples: int | None = Field(500, gt=0, description="central test rows evaluated per round")


class MethodConfig(_Section):
    name: Literal["fedit", "ffa_lora", "fed_sb", "fed_svd", "dp_lora", "fedpara", "fedex_lora", "flora", "full_ft"] = "fed_sb"
    rank: int = Field(16, gt=0)
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; scale s = alpha/rank (default alpha = rank)")
    train_head: bool = True
    init: Literal["federated", "random"] = Field(
        "federated", description="fed_sb: LoRA-SB init from clients' gradients, or random orthonormal (ablation)"
    )
    init_examples: int = Field(64, gt=0, description="fed_sb federated init: examples per init client")
    init_step_size: float = Field(
        1e-3, gt=0, description="fed_sb: step size eta of the approximated first step -eta*sign(G)"
    )

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank


class FederationConfig(_Section):
    num_clients: int = Field(10, gt=0)
    clients_per_round: int = Field(5, gt=0)
    num_rounds: int = Field(3, gt=0)
    num_cpus: int = Field(1, gt=0, description="CPU cores per simulated client (Ray)")
    num_gpus: float = Field(0.0, ge=0, le=1, description="fraction of a GPU per client (0: CPU)")
    ray_num_cpus: int | None = Field(None, gt=0, description="CPUs Ray may use (default: all)")
    round_timeout_s: float = Field(3600.0, gt=0)

    @model_validator(mode="after")
    def _sampling_fits(self) -> "FederationConfig":
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) must be <= num_clients ({self.num_clients})"
            )
        return self


class TrainConfig(_Section):
    local_steps: int = Field(10, gt=0, description="optimizer steps per client per round")
    batch_size: int = Field(16, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    head_lr: float | None = Field(None, gt=0, description="learning rate of the head (default: lr)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="batch-gradient clipping (non-DP; under privacy.mode 'sample' the per-example "
        "bound privacy.max_grad_norm replaces it)")


class PrivacyConfig(_Section):
    """Differential privacy (reference/privacy.md). ``mode``:

    - ``none``: no DP;
    - ``sample``: DP-SGD (Opacus) in every client on exactly the tensors the method trains;
      guarantee per example (add/remove one example of one client), ε = max over clients;
    - ``client_central``: each client's update clipped to L2 norm ``max_grad_norm``, Gaussian
      noise added once to the sum at the server (DP-FedAvg); guarantee per client;
    - ``client_local``: the same clipping, the noise added by each client before upload.

    Exactly one of ``noise_multiplier`` and ``target_epsilon`` sets the noise; a target ε is
    calibrated once for the whole planned run (``fedlr.privacy.planning``). ``target_epsilon =
    inf`` means ε = ∞: the run trains without clipping or noise (the non-private column of a study).
    """

    mode: Literal["none", "sample", "client_central", "client_local"] = "none"
    noise_multiplier: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="σ: noise std / clipping bound (per step for sample, per round for client modes)")
    target_epsilon: float | None = Field(
        None, gt=0, description="ε the whole planned run may spend; σ is calibrated to it (inf: no DP)")
    max_grad_norm: float = Field(
        1.0, gt=0, allow_inf_nan=False,
        description="clipping bound: C per example (sample) or S per client update (client modes)")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="RDP (default) or PRV; never GDP")
    grad_sample_mode: Literal["hooks", "functorch"] = Field(
        "hooks", description="Opacus per-sample gradients: per-layer hooks (default for LoRA) or functorch")

    @model_validator(mode="after")
    def _noise_is_set_once(self) -> "PrivacyConfig":
        given = [k for k in ("noise_multiplier", "target_epsilon") if getattr(self, k) is not None]
        if self.mode == "none":
            if given:
                raise ValueError(f"privacy.{given[0]} is set but privacy.mode is 'none'; "
                                 "choose privacy.mode 'sample', 'client_central' or 'client_local'")
        elif len(given) != 1:
            which = "both" if given else "neither"
            raise ValueError(f"privacy.mode {self.mode!r} needs exactly one of privacy.noise_multiplier and "
                             f"privacy.target_epsilon ({which} given)")
        if self.mode == "client_central" and self.accountant == "prv":
            raise ValueError("privacy.accountant 'prv' cannot account client_central: fedlr samples a fixed number "
                             "of clients without replacement, which only the RDP accountant (Wang et al. 2019) "
                             "covers; use privacy.accountant = 'rdp'")
        return self

    @property
    def enabled(self) -> bool:
        """False for mode 'none' and for target_epsilon = inf (ε = ∞ trains without DP)."""
        return self.mode != "none" and not (self.target_epsilon is not None and math.isinf(self.target_epsilon))


class EvaluationConfig(_Section):
    batch_size: int = Field(64, gt=0)
    central: bool = True
    client_side: bool = Field(True, description="sampled clients evaluate the received model on local val data")


class OutputConfig(_Section):
    dir: str = "runs"
    name: str | None = None
    export_peft: bool = True
    quiet: bool = False


class Experiment(_Section):
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    federation: FederationConfig = FederationConfig()
    train: TrainConfig = TrainConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    compression: CompressionConfig = CompressionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _private_init(self) -> "Experiment":
        if self.privacy.enabled and self.method.name == "fed_sb" and self.method.init == "federated":
            raise ValueError(
                "method.init: 'federated' sends clients' raw gradients to the server without differential "
                f"privacy (Fed-SB's init round), which privacy.mode {self.privacy.mode!r} would not account for; "
                "use method.init = 'random' under DP")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def fingerprint(self) -> str:
        """A short hash of the whole resolved experiment."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is a TOML value, falling back to a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as fed_sb
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    """An experiment file's tables; ConfigError if it is missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None) -> Experiment:
    """Read a TOML experiment, apply ``--set`` overrides, validate. Raises ConfigError."""
    data = read_toml(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    return experiment_from_dict(data)


def experiment_from_dict(data: dict[str, Any]) -> Experiment:
    try:
        return Experiment.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def experiment_from_json(text: str) -> Experiment:
    return experiment_from_dict(json.loads(text))


def to_toml(exp: Experiment) -> str:
    """Write the resolved experiment as TOML (flat tables, the value types TOML has)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        raise TypeError(v)

    d = exp.to_dict()
    lines = [f"seed = {d.pop('seed')}"]
    for section, fields in d.items():
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {fmt(v)}" for k, v in fields.items() if v is not None]
    return "\n".join(lines) + "\n"
