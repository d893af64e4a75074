"""Where DP noise comes from (``privacy.noise_source``).

- ``seeded`` (default): every draw from a generator seeded by (experiment seed, purpose, round,
  client) — reproducible, so two runs of one config and a resumed run are bit-identical. Right
  for simulation and research: whoever knows the seed can remove the noise, so the guarantee
  holds only against parties that do not know it.
- ``secure``: every generator is seeded with 63 bits from the operating system's CSPRNG
  (``secrets`` / ``os.urandom``), and Opacus samples in ``secure_mode`` (each Gaussian the sum of
  four draws, robust to the floating-point attacks of arXiv 2107.10138 / 2112.05307). For
  deployments. Not reproducible; the stream within one draw is PyTorch's generator (MT19937 on CPU,
  Philox on CUDA), not itself a CSPRNG — its seed is the secret.
"""

from __future__ import annotations

import secrets

import torch

from fedlr.seeding import derive_seed

SOURCES = ("seeded", "secure")


def noise_generator(source: str, seed: int, *purpose: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` (Opacus draws the noise where the gradients live; a CPU generator
    cannot feed ``torch.normal`` on a GPU) for one noise draw of ``purpose``."""
    if source not in SOURCES:
        raise ValueError(f"privacy.noise_source {source!r} is not one of {SOURCES}")
    gen = torch.Generator(device=device)
    return gen.manual_seed(secrets.randbits(63) if source == "secure" else derive_seed(seed, *purpose))
