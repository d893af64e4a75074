"""Every random stream in a run derives from the experiment seed and a purpose, never from
process state: client sampling, partitioning, initialization, data order and noise."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed from the experiment seed and a purpose path, e.g. ("train", round, client)."""
    text = ":".join([str(seed), *map(str, purpose)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def torch_generator(seed: int, *purpose: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *purpose))


def numpy_rng(seed: int, *purpose: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *purpose))
