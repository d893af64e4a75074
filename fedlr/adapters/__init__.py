"""Adapter parameterizations injected into Hugging Face models, built from ``nn.Linear`` pieces so
Opacus computes their per-sample gradients with its standard Linear sampler.

- ``LoRALinear``:   y = W0 x + s·B(A x)            (Hu et al. 2021), A (r×d_in), B (d_out×r)
- ``LoRASBLinear``: y = W0 x + s·B(R(A x))         (LoRA-SB / Fed-SB), only R (r×r) trainable
- ``LoHaLinear``:   y = W0 x + s·((W1a W1b) ⊙ (W2a W2b)) x   (FedPara / PEFT LoHa), four factors

Weights follow PEFT's orientation: ``lora_A.weight`` is (r, d_in), ``lora_B.weight`` (d_out, r).
"""

from fedlr.adapters.inject import ADAPTER_KINDS, adapter_layers, inject_adapters, resize_adapters
from fedlr.adapters.layers import LoHaLinear, LoRALinear, LoRASBLinear

__all__ = ["ADAPTER_KINDS", "LoHaLinear", "LoRALinear", "LoRASBLinear", "adapter_layers", "inject_adapters",
           "resize_adapters"]
