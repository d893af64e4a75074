"""Tokenized examples, padded per batch (not per dataset) to the longest sequence in the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenizedSet:
    input_ids: list[list[int]]
    labels: torch.Tensor
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        idx = [int(i) for i in indices]
        width = max(len(self.input_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = self.input_ids[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": self.labels[idx]}


def tokenize(texts: list[str], labels: list[int], tokenizer, max_length: int) -> TokenizedSet:
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return TokenizedSet(enc["input_ids"], torch.tensor(labels, dtype=torch.long), tokenizer.pad_token_id)
