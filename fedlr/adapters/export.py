"""Export of the final model: adapters as a standard PEFT checkpoint — LoRA (Fed-SB's B·R folded
into lora_B, lora_alpha = s·r so PEFT's scale equals fedlr's) or LoHa (FedPara) — with the head
in ``modules_to_save``; full fine-tuning as a plain Hugging Face model."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoHaConfig, LoraConfig, get_peft_model

from fedlr.adapters.naming import BASE_WEIGHT
from fedlr.models import head_modules, load_base_model


def export_model(bench, out_dir: Path) -> Path:
    """Write ``bench``'s current model to ``out_dir`` (PEFT checkpoint, or full HF model)."""
    from fedlr.models.adapted import adapter_paths

    adapted, exp = bench.adapted, bench.exp
    out_dir = Path(out_dir)
    tokenizer = bench.data.tokenizer
    if adapted.spec.adapter is None:
        adapted.model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        return out_dir
    if BASE_WEIGHT in adapted.spec.broadcast:  # FedEx-LoRA, FLoRA: the base weights changed
        merged_model(bench).save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        return out_dir
    base = load_base_model(exp.model, bench.data.num_labels, exp.seed)
    heads = [name for name, _ in head_modules(base)]
    common = dict(r=exp.method.rank, alpha=exp.method.scale * exp.method.rank,
                  target_modules=list(exp.model.targets), modules_to_save=list(heads), task_type="SEQ_CLS")
    if adapted.spec.adapter == "loha":
        config = LoHaConfig(**common)
    else:
        common["lora_alpha"] = common.pop("alpha")
        config = LoraConfig(lora_dropout=0.0, bias="none", **common)
    peft_model = get_peft_model(base, config)
    inner = peft_model.base_model.model
    with torch.no_grad():
        for path in adapter_paths(adapted):
            _copy_adapter(adapted.model.get_submodule(path), inner.get_submodule(path))
        for name in heads:
            getattr(inner, name).modules_to_save["default"].load_state_dict(getattr(adapted.model, name).state_dict())
    peft_model.peft_config["default"].base_model_name_or_path = _base_location(exp)
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def merged_model(bench):
    """A plain Hugging Face model with every adapter merged: W = W0 (as corrected) + ΔW."""
    from fedlr.models.adapted import adapter_paths

    adapted, exp = bench.adapted, bench.exp
    model = load_base_model(exp.model, bench.data.num_labels, exp.seed)
    with torch.no_grad():
        for path in adapter_paths(adapted):
            layer = adapted.model.get_submodule(path)
            target = model.get_submodule(path)
            target.weight.copy_(layer.base.weight + layer.delta_weight())
            if layer.base.bias is not None:
                target.bias.copy_(layer.base.bias)
        for name, _ in head_modules(model):
            getattr(model, name).load_state_dict(getattr(adapted.model, name).state_dict())
    return model


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


def _base_location(exp) -> str:
    from fedlr.config import BUNDLED_MODEL
    from fedlr.models import bundled_model_dir

    return str(bundled_model_dir()) if exp.model.name_or_path == BUNDLED_MODEL else exp.model.name_or_path
