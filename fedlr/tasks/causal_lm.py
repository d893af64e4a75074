"""Causal language modelling on instruction data (``model.task = "causal_lm"``): the model learns
the response given the instruction.

An example is the prompt (the instruction in the tokenizer's chat template, ending with the
assistant's turn; without a template the instruction and a newline) followed by the response and
the end-of-sequence token. Labels are the token ids with every prompt and padding position set to
-100, so only response tokens are scored. With per-token losses ℓ_{i,t} = −log p(x_{i,t} | x_{i,<t})
over example i's response tokens R_i (shifted by one: position t predicts token t+1):

    L_i = (1/|R_i|) Σ_{t∈R_i} ℓ_{i,t}          (the per-example loss, 0 where R_i is empty)
    L   = (1/B) Σ_i L_i                          (the training objective of a batch)

Every example weighs the same whatever its length; that is what sample-level DP-SGD needs
(Opacus's per-sample gradient of a ``mean`` reduction is ∇L_i). The model's own loss is replaced
by L (``prepare``), so local training, DP-SGD, Fed-SB's init gradients and fused clients need no
task-specific code. Held-out evaluation pools the tokens instead: loss = Σ ℓ / Σ|R_i| (perplexity
exp(loss)) and accuracy = the fraction of response tokens predicted exactly (greedy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from fedlr.data.tokens import TokenizedSet
from fedlr.train import EvalResult

IGNORE = -100
SAMPLES_FILE = "generations.jsonl"


@dataclass
class InstructionSet(TokenizedSet):
    """Token ids with per-token labels (``labels[i]``: a list as long as ``input_ids[i]``)."""

    labels: list[list[int]]

    def batch(self, indices, width: int | None = None) -> dict[str, torch.Tensor]:
        idx = [int(i) for i in indices]
        ids, mask = self.padded(idx, width)
        labels = torch.full_like(ids, IGNORE)
        for row, i in enumerate(idx):
            labels[row, : len(self.labels[i])] = torch.tensor(self.labels[i])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def format_prompt(tokenizer, instruction: str) -> str:
    """The instruction as the user's turn of the chat template, ready for the assistant's answer."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
    return instruction + "\n"


def encode_example(tokenizer, instruction: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one example, at most ``max_length`` tokens. Where it is too long the
    response keeps max(room left, max_length/2) tokens and the prompt loses its beginning (its end
    opens the assistant's turn)."""
    prompt = tokenizer(format_prompt(tokenizer, instruction), add_special_tokens=not tokenizer.chat_template)["input_ids"]
    answer = tokenizer(response + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    if len(prompt) + len(answer) > max_length:
        answer = answer[:max(max_length - len(prompt), max_length // 2)]
        prompt = prompt[len(prompt) - (max_length - len(answer)):] if max_length > len(answer) else []
    return prompt + answer, [IGNORE] * len(prompt) + answer


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) L_i: the mean next-token cross-entropy over example i's response tokens (module docstring)."""
    token_nll, scored = _token_losses(logits, labels)
    return token_nll.sum(dim=1) / scored.sum(dim=1).clamp(min=1)


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T−1) ℓ_{i,t} (0 where not scored) and the mask of scored positions; position t predicts t+1."""
    target = labels[:, 1:]
    scored = target != IGNORE
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), target.masked_fill(~scored, 0), reduction="none")
    return nll * scored, scored


def _example_mean_loss(logits, labels, vocab_size=None, **kwargs) -> torch.Tensor:
    """The model's ``loss_function``: L = mean_i L_i (transformers passes its own keywords)."""
    return example_losses(logits, labels).mean()


class CausalLM:
    name = "causal_lm"
    auto_class = AutoModelForCausalLM
    architectures = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    peft_task_type = "CAUSAL_LM"

    @staticmethod
    def load_table(data_cfg):
        from fedlr.data.instructions import load_instructions

        return load_instructions(data_cfg), []

    @staticmethod
    def tokenize(rows, tokenizer, max_length: int) -> InstructionSet:
        pairs = [encode_example(tokenizer, q, a, max_length) for q, a in zip(rows["instruction"], rows["response"])]
        return InstructionSet([p[0] for p in pairs], [p[1] for p in pairs], tokenizer.pad_token_id)

    @staticmethod
    def prepare(model: nn.Module, pad_token_id: int | None) -> None:
        """The tokenizer's pad id into the model's config (never the other way round) and the loss L."""
        model.config.pad_token_id = pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad_token_id
        model.loss_function = _example_mean_loss

    example_losses = staticmethod(example_losses)

    @staticmethod
    @torch.no_grad()
    def evaluate(model: nn.Module, data: TokenizedSet, batch_size: int, device: torch.device) -> EvalResult:
        """Response-token loss Σℓ/Σ|R_i| (perplexity = exp of it) and greedy next-token accuracy."""
        model.eval()
        total, correct, count = 0.0, 0, 0
        for start in range(0, len(data), batch_size):
            batch = {k: v.to(device) for k, v in data.batch(range(start, min(start + batch_size, len(data)))).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll, scored = _token_losses(logits, batch["labels"])
            total += nll.sum().item()
            count += int(scored.sum())
            correct += int(((logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) & scored).sum())
        if count == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        return EvalResult(total / count, correct / count, len(data))

    @staticmethod
    def summary(bench, final_loss: float | None) -> dict:
        return {"majority_rate": None, "final_perplexity": math.exp(final_loss) if final_loss is not None else None}

    @staticmethod
    @torch.no_grad()
    def write_samples(bench, out_dir: Path, num_prompts: int = 4, max_new_tokens: int = 32) -> Path:
        """Greedy answers of the current model to the first ``num_prompts`` held-out instructions
        (fixed by the seed), one JSON line each, beside the reference response."""
        model, tokenizer, device = bench.adapted.model, bench.data.tokenizer, bench.device
        rows = bench.data.table.iloc[bench.data.central_test_rows[:num_prompts]]
        model.eval()
        path = Path(out_dir) / SAMPLES_FILE
        with path.open("w", encoding="utf-8") as f:
            for instruction, reference in zip(rows["instruction"], rows["response"]):
                enc = tokenizer(format_prompt(tokenizer, instruction), add_special_tokens=not tokenizer.chat_template,
                                return_tensors="pt").to(device)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
                answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                f.write(json.dumps({"instruction": instruction, "reference": reference, "generated": answer}) + "\n")
        return path
