"""Sequence classification (``model.task = "classification"``, the default): a labelled text
table, one label per example, cross-entropy on the head's logits, accuracy."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from fedlr.data.tokens import TokenizedSet, tokenize
from fedlr.metrics import classification_metrics
from fedlr.train import EvalResult


class Classification:
    name = "classification"
    auto_class = AutoModelForSequenceClassification
    architectures = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    peft_task_type = "SEQ_CLS"

    @staticmethod
    def load_table(data_cfg):
        from fedlr.data.corpora import load_table

        return load_table(data_cfg)

    @staticmethod
    def tokenize(rows, tokenizer, max_length: int) -> TokenizedSet:
        return tokenize(rows["text"].tolist(), rows["label"].tolist(), tokenizer, max_length)

    @staticmethod
    def prepare(model: nn.Module, pad_token_id: int | None) -> None:
        """The config's pad id is the tokenizer's: a decoder's classifier pools the last non-pad token."""
        if pad_token_id is not None:
            model.config.pad_token_id = pad_token_id

    @staticmethod
    def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="none")

    @staticmethod
    @torch.no_grad()
    def evaluate(model: nn.Module, data: TokenizedSet, batch_size: int, device: torch.device) -> EvalResult:
        """Mean cross-entropy, accuracy (argmax = label) and the other metrics of ``fedlr.metrics``
        (balanced accuracy, macro-F1, ROC AUC, per-class counts) from the same logits over ``data``."""
        model.eval()
        if len(data) == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        total_loss, logits, labels = 0.0, [], []
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            batch = {k: v.to(device) for k, v in data.batch(idx).items()}
            out = model(**batch)
            total_loss += out.loss.item() * len(idx)
            logits.append(out.logits.detach().float().cpu())
            labels.append(batch["labels"].cpu())
        metrics = classification_metrics(torch.cat(labels).numpy(), torch.cat(logits).numpy())
        return EvalResult(total_loss / len(data), metrics.accuracy, len(data), metrics)

    @staticmethod
    def summary(bench, final_loss: float | None) -> dict:
        return {"majority_rate": bench.data.majority_rate()}

    @staticmethod
    def write_samples(bench, out_dir) -> None:
        """Nothing to show beyond the accuracy."""
        return None
