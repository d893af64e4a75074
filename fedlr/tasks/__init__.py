"""The task seam (design.md: "model loading, batches, loss, evaluation metrics and export differ by
task; methods, privacy, compression and the federation do not"). ``model.task`` picks one object;
the rest of fedlr asks it:

- ``auto_class``: the transformers class the base is loaded as;
- ``load_table(data)``: the rows and label names (none for a language model);
- ``tokenize(rows, tokenizer, max_length)``: a ``TokenizedSet`` whose ``batch`` feeds the model;
- ``prepare(model, pad_token_id)``: what the loaded model needs (the pad id; a language model's
  per-example loss), so that ``model(**batch).loss`` is the training objective everywhere;
- ``example_losses(logits, labels)``: the (N,) per-example losses (fused clients);
- ``evaluate(model, data, batch_size, device)``: loss and accuracy on held-out data;
- ``peft_task_type``: an exported adapter's PEFT task type.

The two tasks are ``fedlr.tasks.classification`` and ``fedlr.tasks.causal_lm``.
"""

from __future__ import annotations

TASKS = ("classification", "causal_lm")


def get_task(name: str):
    if name == "causal_lm":
        from fedlr.tasks.causal_lm import CausalLM

        return CausalLM()
    if name == "classification":
        from fedlr.tasks.classification import Classification

        return Classification()
    raise ValueError(f"model.task: unknown task {name!r}; use one of {TASKS}")
