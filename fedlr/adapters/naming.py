"""How adapter tensors are named: the one place that spells the parameter names the adapter
layers (``fedlr.adapters.layers``) register, in PEFT's layout.

An adapted layer at path ``<layer>`` holds its frozen base weight at ``<layer>.base.weight`` and its
factors at ``<layer>.lora_A.weight`` (r×d_in), ``<layer>.lora_B.weight`` (d_out×r) and, for
LoRA-SB, ``<layer>.lora_R.weight`` (r×r); LoHa keeps its four factors under ``<layer>.hada``.
Methods name the parts they train or broadcast by these components (``MethodSpec.trains``).
"""

from __future__ import annotations

# the adapter layers' submodule names (components of a parameter's dotted name)
LORA_A, LORA_B, LORA_R, BASE, HADAMARD = "lora_A", "lora_B", "lora_R", "base", "hada"
BASE_WEIGHT = f"{BASE}.weight"  # the frozen base weight of an adapted layer, as one part

# a tensor key's ending, after the layer's path
A_KEY, B_KEY, R_KEY, BASE_KEY = (f".{part}.weight" for part in (LORA_A, LORA_B, LORA_R, BASE))


def key(layer: str, suffix: str) -> str:
    """The tensor key of ``layer``'s part ending in ``suffix`` (``key("l", A_KEY)`` = ``"l.lora_A.weight"``)."""
    return layer + suffix


def layer_of(key_: str, suffix: str) -> str:
    """The layer path of a key ending in ``suffix`` (the inverse of ``key``)."""
    if not key_.endswith(suffix):
        raise ValueError(f"{key_!r} does not end in {suffix!r}")
    return key_[: -len(suffix)]


def keys_ending(keys, suffix: str) -> list[str]:
    """The keys among ``keys`` that end in ``suffix``, in their order."""
    return [k for k in keys if k.endswith(suffix)]
