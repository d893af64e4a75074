"""The transformer blocks of a model: the stack (BERT's ``encoder.layer``, Llama's ``layers``,
GPT-2's ``h``), the block a module path sits in, and the modules that run before the stack (the
embeddings). ``model.layers`` (PEFT's ``layers_to_transform``) selects blocks by these indices."""

from __future__ import annotations

from torch import nn

from fedlr.errors import ConfigError

STACK_NAMES = ("layer", "layers", "h", "blocks", "block")  # PEFT's COMMON_LAYERS_PATTERN


def block_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, modules) of the model's transformer blocks: the ``nn.ModuleList`` named as in
    ``STACK_NAMES`` with ``config.num_hidden_layers`` entries."""
    count = getattr(model.config, "num_hidden_layers", None)
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and path.rsplit(".", 1)[-1] in STACK_NAMES and len(module) == count:
            return path, module
    raise ConfigError(f"model.layers: cannot find the transformer blocks of this {type(model).__name__} "
                      f"(a module list named one of {STACK_NAMES} with {count} entries)")


def block_of(path: str, stack_path: str) -> int | None:
    """The index of the block a module (or parameter) path lies in; None outside the blocks."""
    prefix = stack_path + "."
    if not path.startswith(prefix):
        return None
    return int(path[len(prefix):].split(".", 1)[0])


def check_layers(layers: list[int] | None, num_blocks: int) -> None:
    """``model.layers`` must name blocks of this model (0 … num_blocks−1)."""
    bad = [i for i in layers or [] if not 0 <= i < num_blocks]
    if bad:
        raise ConfigError(f"model.layers: {bad} out of range; this model has {num_blocks} transformer blocks "
                          f"(0 to {num_blocks - 1})")


def modules_before_stack(model: nn.Module, stack_path: str) -> list[nn.Module]:
    """The modules that run before the first block: the siblings registered before the stack's
    branch in the module holding it (BERT's ``embeddings``, Llama's ``embed_tokens``, GPT-2's
    ``wte``, ``wpe`` and ``drop``)."""
    parts = stack_path.split(".")
    for depth in range(len(parts), 0, -1):  # from the stack's parent up to the top
        holder = model.get_submodule(".".join(parts[:depth - 1]))
        names = [n for n, _ in holder.named_children()]
        branch = parts[depth - 1]
        before = [holder.get_submodule(n) for n in names[:names.index(branch)]]
        if before:
            return before
    return []
