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


def deployment_noise_refusal(privacy) -> str | None:
    """Why a real deployment must not run with these privacy settings, or None.

    Seeded noise under DP is refused: anyone who holds the experiment (the server sends it to every
    client; ``seeds.json`` publishes the recipe) regenerates each draw from (seed, purpose, round,
    client) and subtracts it, which recovers the clipped update exactly — no privacy at all. ε = ∞
    (``privacy.enabled`` false) draws no noise, so it is not refused."""
    if privacy.enabled and privacy.noise_source == "seeded":
        return (f"privacy.noise_source = 'seeded' under privacy.mode {privacy.mode!r}: seeded noise can be "
                "regenerated from the experiment's seed and subtracted by anyone who has the config (the server and "
                "every client do), so a deployment would release updates without privacy; set "
                "privacy.noise_source = 'secure' (seeded noise is for reproducible simulations)")
    return None
