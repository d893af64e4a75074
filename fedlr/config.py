"""Experiment configuration: TOML in, a validated, typed object out.

Every section is a pydantic model that forbids unknown keys, so a typo fails before any work
with a message naming the field (``federation.clients_per_round``) and what is allowed.
``apply_overrides`` implements ``--set section.key=value`` where the value is parsed as TOML.

TOML has no null. A field that may be unset (``None``; not a string field) is unset with the
string ``NONE`` (``"none"``), in a file or with ``--set data.max_test_examples=none``; leaving it
out gives its default. ``to_toml`` leaves out a None whose default is None and writes ``NONE``
for the others (``data.max_test_examples``, ``train.max_grad_norm``), so every experiment
round-trips through its ``config.toml`` with the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fedlr.config_paths import set_dotted

from fedlr.compression.config import CompressionConfig
from fedlr.errors import ConfigError, format_validation_error
from fedlr.methods import DEFAULT_METHOD, get_method, method_names
from fedlr.privacy.modes import MODES, configured_mode, privacy_mode
BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"
BUNDLED_LLM = "bundled:SmolLM2-135M-Instruct"
TINY_MODEL = "tiny-random-bert"
TINY_LLAMA = "tiny-random-llama"
BUNDLED_DATASETS = ("rotten_tomatoes", "sms_spam", "chatterbot")
CLIENT_FILES = "client-files"  # data.dataset: every deployed client trains on its own file (docs/deployment.md)
NONE = "none"  # how TOML spells None for a field whose default is not None (module docstring)


def takes_none_token(field) -> bool:
    """Whether the string ``NONE`` unsets ``field`` (a pydantic FieldInfo): it may be None and
    takes no strings (where ``"none"`` would be a value)."""
    args = typing.get_args(field.annotation)
    return type(None) in args and str not in args


class _Section(BaseModel):
    # no float field takes inf or nan unless it says so (privacy.target_epsilon = inf: no DP)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _none_token(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: None if v == NONE and k in cls.model_fields and takes_none_token(cls.model_fields[k]) else v
                for k, v in data.items()}


class ModelConfig(_Section):
    name_or_path: str = Field(
        BUNDLED_MODEL,
        description=f"'{BUNDLED_MODEL}' (offline default), '{BUNDLED_LLM}' (causal LM, offline), "
        f"'{TINY_MODEL}' / '{TINY_LLAMA}' (unit tests), a local folder or config.json, or a Hugging Face hub id",
    )
    task: Literal["classification", "causal_lm"] = Field(
        "classification", description="classification: a labelled text table, a classifier head; causal_lm: "
        "instruction -> response pairs, the loss on the response tokens (fedlr.tasks)")
    targets: list[str] = Field(["query", "value"], min_length=1)
    layers: list[int] | None = Field(
        None, min_length=1, description="adapters only on these transformer blocks (0 = the first; PEFT's "
        "layers_to_transform); default: every block")
    prefix_cache_bytes: int = Field(
        2**30, ge=0, description="bound of the frozen-prefix cache (fedlr.models.frozen_prefix) per worker "
        "process, in bytes: the hidden states entering the lowest adapted block, kept per example; least recently "
        "used evicted beyond it; 0 keeps none (recomputed every batch)")
    prefix_cache_dir: str | None = Field(
        None, description="also keep the frozen-prefix cache on disk in this folder, shared by every run and "
        "process that names it (a sweep computes each example's frozen layers once); files named by the prefix's "
        "weights, the boundary block and the token ids; not bounded (delete the folder to reclaim it)")
    max_length: int = Field(64, ge=8, le=4096, description="tokens per example")


# Fields that change where or how fast a run is computed, never one of its numbers (the frozen-prefix
# cache is exact: tests/test_frozen_prefix.py): reports group across them and sweeps keep complete runs.
RESULT_NEUTRAL_FIELDS = ("model.prefix_cache_bytes", "model.prefix_cache_dir")


class DataConfig(_Section):
    dataset: str = Field(
        "rotten_tomatoes",
        description="'rotten_tomatoes', 'sms_spam', 'chatterbot' (instructions, model.task = 'causal_lm'), a local "
        ".csv/.json/.jsonl/.parquet file, a Hugging Face dataset id, or '" + CLIENT_FILES + "' (deployment: each "
        "SuperNode's own file, no corpus)",
    )
    text_column: str = "text"
    label_column: str = "label"
    instruction_column: str = Field("instruction", description="causal_lm: the column with the prompts")
    response_column: str = Field("response", description="causal_lm: the column with the answers")
    labels: list[str] | None = Field(
        None, min_length=2, description=f"the label names in class order; required with '{CLIENT_FILES}', where no "
        "party sees every label (otherwise they come from the data)")
    test_file: str | None = Field(
        None, description="central evaluation on this file (same columns) instead of a test_fraction split of the "
        "data; the server's own test data under '" + CLIENT_FILES + "'")
    partitioner: Literal["natural", "iid", "dirichlet"] = "natural"
    partition_by: str | None = Field(
        None, description="natural: the id column (default movie_name for rotten_tomatoes, category for chatterbot)"
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration over labels")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="of each client's data, for client-side eval")
    max_train_examples: int | None = Field(None, gt=0, description="random subset of the train rows")
    max_test_examples: int | None = Field(500, gt=0, description="central test rows evaluated per round")

    @property
    def client_files(self) -> bool:
        return self.dataset == CLIENT_FILES

    @model_validator(mode="after")
    def _labels_where_needed(self) -> "DataConfig":
        if self.client_files and self.labels is None:
            raise ValueError(f"data.labels: with data.dataset = '{CLIENT_FILES}' no party sees every label; name them "
                             "in class order, e.g. labels = [\"negative\", \"positive\"]")
        if self.labels is not None and not self.client_files:
            raise ValueError(f"data.labels: only with data.dataset = '{CLIENT_FILES}' (otherwise the labels come from "
                             "the data)")
        if self.test_file is not None and not self.client_files:
            raise ValueError(f"data.test_file: only with data.dataset = '{CLIENT_FILES}' (a corpus is tested on its "
                             "data.test_fraction split)")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"data.labels: names repeat: {self.labels}")
        return self


class MethodConfig(_Section):
    name: str = Field(DEFAULT_METHOD, description="a registered method (fedlr.methods)")
    rank: int = Field(16, gt=0)
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; scale s = alpha/rank (default alpha = rank)")
    train_head: bool = True
    init: Literal["federated", "random"] = Field(
        "federated", description="methods with an init round (Fed-SB): LoRA-SB init from clients' gradients, or "
        "random orthonormal (ablation)")
    init_examples: int = Field(64, gt=0, description="federated init round: examples per init client")
    init_step_size: float = Field(
        1e-3, gt=0, description="Fed-SB's init: step size eta of the approximated first step -eta*sign(G)"
    )
    client_ranks: list[int] | None = Field(
        None, min_length=1,
        description="heterogeneous client ranks (methods that stack adapters, FLoRA): rank tiers assigned to "
        "partition ids cyclically, client k trains rank client_ranks[k % len(client_ranks)] (give num_clients "
        "entries for one rank per client); every client keeps the scale s = alpha/rank. Unset: every client trains method.rank",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in method_names():
            *others, last = (repr(n) for n in method_names())
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": f"{', '.join(others)} or {last}"})
        return name

    @model_validator(mode="after")
    def _client_ranks_fit(self) -> "MethodConfig":
        if self.client_ranks is None:
            return self
        bad = [r for r in self.client_ranks if r <= 0]
        if bad:
            raise ValueError(f"method.client_ranks: ranks must be positive integers, got {bad}")
        refused = get_method(self.name).client_ranks_refused
        if refused is not None:
            able = " or ".join(f"method.name = {n!r}" for n in method_names()
                               if get_method(n).client_ranks_refused is None)
            raise ValueError(
                f"method.client_ranks: {self.name} cannot give clients different ranks: {refused}. Use {able}, "
                "which stacks adapters of any ranks exactly (docs/methods.md, Heterogeneous ranks)")
        return self

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    def client_rank(self, partition_id: int) -> int:
        """The adapter rank of client ``partition_id``: its tier in ``client_ranks``, else ``rank``."""
        return self.client_ranks[partition_id % len(self.client_ranks)] if self.client_ranks else self.rank


class FederationConfig(_Section):
    num_clients: int = Field(10, gt=0)
    clients_per_round: int = Field(5, gt=0)
    num_rounds: int = Field(3, gt=0)
    num_cpus: int = Field(1, gt=0, description="CPU cores per simulated client (Ray)")
    num_gpus: float = Field(0.0, ge=0, le=1, description="fraction of a GPU per client (0: CPU)")
    ray_num_cpus: int | None = Field(None, gt=0, description="CPUs Ray may use (default: all)")
    round_timeout_s: float = Field(3600.0, gt=0)
    enroll_timeout_s: float = Field(600.0, gt=0, description="how long the server waits for every client to "
                                    "connect and answer the enrollment query (workers start slowly)")
    min_replies: int = Field(
        1, gt=0, description="valid updates a round needs to aggregate; with fewer the global model stays as it "
        "was and the ledger row says aggregated = false")
    fused_clients: int = Field(
        1, gt=0, description="simulation only: train up to this many sampled clients in one worker call, in one "
        "pass over the shared frozen base (fedlr.fused); 1 trains each client on its own")
    weighting: Literal["examples", "uniform"] = Field(
        "examples", description="how the server weights the clients' updates: 'examples' (by each client's "
        "number of training examples, which each client sends with its update) or 'uniform' (equal weights; a "
        "client's reply then carries nothing but its update: no example count, loss or accuracy)")

    @model_validator(mode="after")
    def _sampling_fits(self) -> "FederationConfig":
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) must be <= num_clients ({self.num_clients})"
            )
        if self.min_replies > self.clients_per_round:
            raise ValueError(f"min_replies ({self.min_replies}) must be <= clients_per_round "
                             f"({self.clients_per_round}): no round could ever aggregate")
        return self


def fused_refusal(exp: "Experiment") -> str | None:
    """Why ``exp``'s clients cannot be trained fused (``fedlr.fused``), or None. A fused call runs
    several clients' rounds in one worker, so it must need nothing a client keeps between rounds
    (an accountant, error-feedback memory, a cached broadcast) and nothing drawn per client inside
    training beyond its batches."""
    if get_method(exp.method.name).adapter is None:
        return "full fine-tuning trains every weight, so clients share no frozen base to fuse over"
    if (reason := privacy_mode(exp.privacy).fused_refusal) is not None:
        return reason
    if exp.compression.active:
        return "compression keeps error-feedback memory and a warm start in each client between rounds"
    if exp.method.client_ranks:
        return "method.client_ranks gives clients adapters of different shapes, which cannot be stacked"
    if exp.faults.fraction > 0:
        return "[faults] injects failures per client, and a fused call succeeds or fails as a whole"
    return None


def exact_on_combined_update() -> list[str]:
    """The methods whose aggregation stays exact when client-level DP averages the updates first."""
    return [n for n in method_names() if get_method(n).exact_under(combines_updates=True)]


FAULT_KINDS = ("raise", "hang", "garbage")


class FaultConfig(_Section):
    """Injected client failures, to study robustness in simulation (``fedlr.faults``). In each
    round every sampled client fails with probability ``fraction``, the kind drawn uniformly from
    ``kinds``: ``raise`` (an exception: an error reply), ``hang`` (sleeps ``hang_s`` past the round
    timeout: no reply) or ``garbage`` (a reply of NaN tensors of the wrong shapes: rejected).
    The draw is seeded by (seed, round, partition id), so a run and its resume fail alike."""

    fraction: float = Field(0.0, ge=0, le=1, description="probability that a sampled client fails in a round")
    kinds: list[Literal["raise", "hang", "garbage"]] = Field(
        list(FAULT_KINDS), min_length=1, description="ways a failing client fails, drawn uniformly")
    hang_s: float | None = Field(
        None, gt=0, description="how long a hanging client sleeps (default: federation.round_timeout_s + 5)")

    @property
    def active(self) -> bool:
        return self.fraction > 0


class TrainConfig(_Section):
    local_steps: int = Field(10, gt=0, description="optimizer steps per client per round")
    batch_size: int = Field(16, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(
        0.0, ge=0, lt=1, description="sgd: heavy-ball momentum m (v ← m·v + g, θ ← θ − lr·v; torch.optim.SGD); "
        "0 is plain SGD. Under DP-SGD it acts on the noised gradient (post-processing)")
    lr: float = Field(2e-3, gt=0)
    head_lr: float | None = Field(None, gt=0, description="learning rate of the head (default: lr)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="batch-gradient clipping (non-DP; under privacy.mode 'sample' the per-example "
        "bound privacy.max_grad_norm replaces it)")

    @model_validator(mode="after")
    def _momentum_needs_sgd(self) -> "TrainConfig":
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"train.momentum = {self.momentum:g} applies to train.optimizer 'sgd' only "
                             f"({self.optimizer!r} keeps its own moment estimates); set train.optimizer = 'sgd' "
                             "or train.momentum = 0")
        return self


class PrivacyConfig(_Section):
    """Differential privacy (reference/privacy.md). ``mode``:

    - ``none``: no DP;
    - ``sample``: DP-SGD (Opacus) in every client on exactly the tensors the method trains;
      guarantee per example (add/remove one example of one client), ε = max over clients;
    - ``client_central``: each client's update clipped to L2 norm ``max_grad_norm``, Gaussian
      noise added once to the sum at the server (DP-FedAvg); guarantee per client;
    - ``client_local``: the same clipping, the noise added by each client before upload.

    Exactly one of ``noise_multiplier`` and ``target_epsilon`` sets the noise; a target ε is
    calibrated once for the whole planned run (``fedlr.privacy.planning``): for the worst case, or
    per client (``calibration = 'per_client'``). ``target_epsilon = inf`` means ε = ∞: the run
    trains without clipping or noise (the non-private column of a study).
    """

    mode: Literal[tuple(MODES)] = "none"
    noise_multiplier: float | None = Field(
        None, gt=0,
        description="σ: noise std / clipping bound (per step for sample, per round for client modes)")
    target_epsilon: float | None = Field(
        None, gt=0, allow_inf_nan=True,
        description="ε the whole planned run may spend; σ is calibrated to it (inf: no DP)")
    calibration: Literal["worst_case", "per_client"] = Field(
        "worst_case", description="with target_epsilon: one sigma for every client, from the worst case (the "
        "client with the largest q in every round), or each client's own sigma_k from its q_k and the rounds the "
        "seeded schedule gives it, so that every client ends within 1% under the target (sample, client_local)")
    max_grad_norm: float = Field(
        1.0, gt=0,
        description="clipping bound: C per example (sample) or S per client update (client modes)")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="RDP (default) or PRV; never GDP")
    grad_sample_mode: Literal["hooks", "functorch"] = Field(
        "hooks", description="Opacus per-sample gradients: per-layer hooks (default for LoRA) or functorch")
    noise_source: Literal["seeded", "secure"] = Field(
        "seeded", description="seeded: noise drawn from the experiment seed (reproducible; a resumed run is "
        "identical); secure: every draw seeded from the operating system's CSPRNG (os.urandom) with Opacus's "
        "secure_mode sampling — for deployments; not reproducible")

    @model_validator(mode="after")
    def _settings_fit_the_mode(self) -> "PrivacyConfig":
        if (problem := configured_mode(self).settings_problem(self)) is not None:
            raise ValueError(problem)
        return self

    @property
    def enabled(self) -> bool:
        """False for mode 'none' and for target_epsilon = inf (ε = ∞ trains without DP)."""
        return configured_mode(self).private and not (self.target_epsilon is not None
                                                      and math.isinf(self.target_epsilon))


class EvaluationConfig(_Section):
    batch_size: int = Field(64, gt=0)
    central: bool = True
    client_side: bool = Field(True, description="sampled clients evaluate the received model on local val data")
    every: int = Field(1, ge=1, description="evaluate (central and client-side) every k-th round; always round 0 "
                       "and the last round")

    def due(self, server_round: int, num_rounds: int) -> bool:
        """Whether round ``server_round`` of ``num_rounds`` is evaluated: round 0 (the initial
        model, centrally), every ``every``-th round and the last one, so a run's final figure is
        always its trained model's."""
        return server_round % self.every == 0 or server_round == num_rounds


class OutputConfig(_Section):
    dir: str = "runs"
    name: str | None = None
    export_peft: bool = True
    quiet: bool = False
    checkpoint: bool = Field(True, description="write an atomic checkpoint after every round (fedlr run --resume)")
    keep_checkpoints: int = Field(2, ge=2, description="newest checkpoints kept; older ones are deleted (at least "
                                  "2, so a corrupt newest one falls back to the one before)")


class Experiment(_Section):
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    federation: FederationConfig = FederationConfig()
    train: TrainConfig = TrainConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    compression: CompressionConfig = CompressionConfig()
    faults: FaultConfig = FaultConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _downlink_fits_the_method(self) -> "Experiment":
        comp = self.compression
        if comp.downlink and not comp.active:
            raise ValueError("compression.downlink compresses the broadcast with compression.codec, which is 'none'")
        refused = get_method(self.method.name).downlink_refused
        if comp.downlink and refused is not None:
            raise ValueError(f"compression.downlink: {self.method.name} {refused}; the broadcast delta "
                             "B_t − B_(t−1) would not be the small change a codec can shrink. Leave it false for this "
                             "method")
        return self

    @model_validator(mode="after")
    def _fused_clients_fit_the_run(self) -> "Experiment":
        if self.federation.fused_clients == 1:
            return self
        reason = fused_refusal(self)
        if reason is not None:
            raise ValueError(f"federation.fused_clients = {self.federation.fused_clients}: {reason}; set "
                             "federation.fused_clients = 1")
        return self

    @model_validator(mode="after")
    def _client_files_fit_the_run(self) -> "Experiment":
        if not self.data.client_files:
            return self
        if self.model.task != "classification":
            raise ValueError(f"data.dataset = '{CLIENT_FILES}' holds labelled text for model.task = 'classification'; "
                             f"{self.model.task!r} needs a corpus")
        if self.evaluation.central and self.data.test_file is None:
            raise ValueError(f"data.test_file: with data.dataset = '{CLIENT_FILES}' the server holds no client data; "
                             "give it its own test file for central evaluation, or set evaluation.central = false")
        return self

    @model_validator(mode="after")
    def _private_init(self) -> "Experiment":
        if self.privacy.enabled and get_method(self.method.name).runs_init_round(self.method.init):
            raise ValueError(
                "method.init: 'federated' sends clients' raw gradients to the server without differential "
                f"privacy ({self.method.name}'s init round), which privacy.mode {self.privacy.mode!r} would not "
                "account for; use method.init = 'random' under DP")
        return self

    @model_validator(mode="after")
    def _client_ranks_fit_the_run(self) -> "Experiment":
        ranks, n = self.method.client_ranks, self.federation.num_clients
        if ranks is None:
            return self
        if len(ranks) > n:
            raise ValueError(f"method.client_ranks: {len(ranks)} ranks for federation.num_clients = {n} clients; "
                             f"entries after the first {n} would never be used")
        if privacy_mode(self.privacy).combines_updates:
            raise ValueError(f"method.client_ranks: privacy.mode {self.privacy.mode!r} averages the clients' update "
                             "tensors before aggregation, which needs one rank; use privacy.mode 'sample' "
                             "(DP-SGD in each client) with heterogeneous ranks")
        if self.compression.adaptive == "lgreco":
            raise ValueError("method.client_ranks: compression.adaptive 'lgreco' chooses one codec parameter per "
                             "tensor from an aggregate of one shape; use compression.adaptive = 'none'")
        return self

    @model_validator(mode="after")
    def _aggregation_stays_exact(self) -> "Experiment":
        spec, mode = get_method(self.method.name), privacy_mode(self.privacy)
        if spec.exact and not spec.exact_under(mode.combines_updates):
            raise ValueError(
                f"method.name: {self.method.name} aggregates exactly only from each client's own update, and "
                f"privacy.mode {mode.name!r} hands the server one averaged update (clipped and noised), so the run "
                "would be neither exact nor the published method; use privacy.mode 'sample' (DP-SGD in each client) "
                f"or a method exact on one averaged update ({', '.join(exact_on_combined_update())})")
        return self

    @model_validator(mode="after")
    def _data_fits_the_task(self) -> "Experiment":
        instructions = self.data.dataset == "chatterbot"
        if self.model.task == "causal_lm":
            if self.data.dataset in ("rotten_tomatoes", "sms_spam"):
                raise ValueError(f"data.dataset: {self.data.dataset!r} is a labelled corpus and model.task is "
                                 "'causal_lm'; use 'chatterbot' or a file with instruction/response columns")
            if self.data.partitioner == "dirichlet":
                raise ValueError("data.partitioner: 'dirichlet' splits by label and instruction data has none; "
                                 "use 'natural' (data.partition_by) or 'iid'")
            if self.data.client_files:
                raise ValueError(f"data.dataset: '{CLIENT_FILES}' reads labelled text files; model.task = 'causal_lm' "
                                 "trains on instruction data the run loads itself ('chatterbot' or a file)")
        elif instructions:
            raise ValueError("data.dataset: 'chatterbot' is instruction data; set model.task = 'causal_lm'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def fingerprint(self) -> str:
        """A short hash of the whole resolved experiment."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


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
        value = raw  # a bare word such as fedit
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        try:
            set_dotted(data, key, value)
        except ValueError as e:
            raise ConfigError(f"--set {key}: {e}") from None
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
    if "sweep" in data:
        raise ConfigError(f"{path} has a [sweep] table: run it with `fedlr sweep {path}` (`--dry-run` lists every "
                          "run with its bytes and epsilon)")
    apply_overrides(data, overrides or [])
    return experiment_from_dict(data)


def experiment_from_dict(data: dict[str, Any]) -> Experiment:
    try:
        return Experiment.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model=Experiment)) from None


def experiment_from_json(text: str) -> Experiment:
    return experiment_from_dict(json.loads(text))


def toml_value(v: Any) -> str:
    """A scalar or list as a TOML value (bool, int, float, string, list of those)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(exp: Experiment) -> str:
    """Write the resolved experiment as TOML (flat tables, the value types TOML has; None as the
    module docstring says: left out where it is the default, else ``NONE``)."""
    d = exp.to_dict()
    lines = [f"seed = {d.pop('seed')}"]
    for section, values in d.items():
        model = type(getattr(exp, section))
        lines.append(f"\n[{section}]")
        for k, v in values.items():
            if v is not None:
                lines.append(f"{k} = {toml_value(v)}")
            elif model.model_fields[k].default is not None:
                if not (issubclass(model, _Section) and takes_none_token(model.model_fields[k])):
                    raise TypeError(f"{section}.{k}: None cannot be written to TOML")
                lines.append(f"{k} = {toml_value(NONE)}")
    return "\n".join(lines) + "\n"
