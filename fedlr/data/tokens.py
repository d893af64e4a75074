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

    def width(self, indices: list[int] | torch.Tensor) -> int:
        """The longest of these examples, in tokens."""
        return max(len(self.input_ids[int(i)]) for i in indices)

    def padded(self, indices: list[int], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, attention mask) of these examples padded (right) to ``width`` tokens, by
        default the longest of them."""
        width = width or self.width(indices)
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            seq = self.input_ids[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask

    def batch(self, indices: list[int] | torch.Tensor, width: int | None = None) -> dict[str, torch.Tensor]:
        idx = [int(i) for i in indices]
        ids, mask = self.padded(idx, width)
        return {"input_ids": ids, "attention_mask": mask, "labels": self.labels[idx]}


def tokenize(texts: list[str], labels: list[int], tokenizer, max_length: int) -> TokenizedSet:
    """Token ids of ``texts`` (none for none: a client without validation rows, data.val_fraction = 0)."""
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
    return TokenizedSet(ids, torch.tensor(labels, dtype=torch.long), tokenizer.pad_token_id)
