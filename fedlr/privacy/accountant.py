"""A per-client privacy accountant whose whole state is a short, serializable history.

DP-SGD with Poisson sampling at rate q and noise multiplier σ is, per optimizer step, the
sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019, arXiv 1908.10530). A client's ε is
the composition of every step it took, over every round it took part in (reference/privacy.md
§4): the history ``[(σ, q, steps), ...]`` is all an accountant needs, so it is what a client
persists between rounds (``clients/app.py`` keeps it in ``context.state``) — the ε it reports is
cumulative, and a resumed client continues from the same history.

ε comes from Opacus's analyses:
- ``rdp``: Rényi DP of the sampled Gaussian (Mironov et al. 2019, eq. 3–4), converted to
  (ε, δ) with Balle et al. 2020's bound (``opacus.accountants.analysis.rdp.get_privacy_spent``);
- ``prv``: privacy-loss random variables (Gopi, Lee, Wutschitz 2021, arXiv 2106.02848),
  numerically tighter (``eps_error`` 0.01); where its discretization would exceed
  ``MAX_PRV_DOMAIN`` points, or it gives no finite ε, the RDP bound instead, with a warning
  (once a process).
Never GDP: it is a central-limit approximation, not a bound (reference/privacy.md §3.6).

q = 1 is the plain Gaussian mechanism, RDP α/(2σ²) per step: ``client_local`` uses it for
the noise a client adds to its own update (one entry per round it takes part in).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

ACCOUNTANTS = ("rdp", "prv")
# RDP orders: Opacus's defaults (1.1 … 10.9 by 0.1, 12 … 63) and larger ones, which small ε over
# few steps needs (Opacus warns "optimal order is the largest alpha" and gives a looser ε there).
# The bound holds for any set of orders; where the optimum is ≤ 63 this is Opacus's figure exactly.
LARGE_ORDERS = (80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 1024.0)
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]) + LARGE_ORDERS
# The integer orders alone: closed-form and fast; a subset of ORDERS, so their ε is an upper bound
# of ORDERS' — a cheap first pass when calibrating σ (``fedlr.privacy.planning``).
COARSE_ORDERS = tuple(float(a) for a in range(2, 64)) + LARGE_ORDERS
# PRV: Opacus's default accuracy, and the most discretization points it may use (≈ 1 GB and
# seconds at 4 M; the runs and references of reference/privacy.md need under 0.6 M). Beyond it,
# and where PRV gives no finite ε, the RDP bound is reported instead, with a warning.
PRV_EPS_ERROR = 0.01
MAX_PRV_DOMAIN = 1 << 22


@dataclass
class StepAccountant:
    """History of (noise multiplier σ, sample rate q, steps) with a given analysis."""

    kind: str = "rdp"
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ACCOUNTANTS:
            raise ValueError(f"accountant {self.kind!r} is not one of {ACCOUNTANTS}")

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Compose ``steps`` applications of the sampled Gaussian (σ, q). Consecutive entries
        with the same (σ, q) merge, so k rounds of s steps is one entry (σ, q, k·s)."""
        if steps < 0 or not 0 <= sample_rate <= 1 or noise_multiplier < 0:
            raise ValueError(f"bad accountant step: sigma={noise_multiplier}, q={sample_rate}, steps={steps}")
        if steps == 0:
            return
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, n = self.history[-1]
            self.history[-1] = (sigma, q, n + steps)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.history)

    def epsilon(self, delta: float) -> float:
        """ε of everything composed so far at δ (0 before any step; inf when σ = 0)."""
        return epsilon_of_history(self.history, delta, self.kind)

    def state_dict(self) -> dict:
        """Plain lists (fit a Flower ConfigRecord or JSON); ``from_state`` reverses it exactly."""
        return {
            "accountant": self.kind,
            "noise_multiplier": [h[0] for h in self.history],
            "sample_rate": [h[1] for h in self.history],
            "steps": [h[2] for h in self.history],
        }

    @classmethod
    def from_state(cls, state: dict) -> "StepAccountant":
        hist = list(zip(state["noise_multiplier"], state["sample_rate"], state["steps"]))
        return cls(str(state["accountant"]), [(float(s), float(q), int(n)) for s, q, n in hist])


def sample_rate(batch_size: int, num_examples: int) -> float:
    """Poisson sampling rate q = B / n of DP-SGD (capped at 1: a client smaller than one batch
    draws every example into every step)."""
    if num_examples <= 0:
        raise ValueError("the sampling rate batch_size / n is undefined for a client with no examples")
    return min(1.0, batch_size / num_examples)


def epsilon_of_history(history: list[tuple[float, float, int]], delta: float, kind: str = "rdp",
                       orders: tuple[float, ...] | None = None) -> float:
    """ε at δ of the composition of sampled Gaussians ``[(σ, q, steps), ...]``.

    ``rdp`` is ``opacus.accountants.RDPAccountant``'s analysis with this history at ``ORDERS``
    (or ``orders``): the per-step RDP curve of each (σ, q) is cached, so composing more steps
    or another round costs a multiplication, not a recomputation."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    history = [(s, q, n) for s, q, n in history if n > 0 and q > 0]
    if not history:
        return 0.0
    if any(s == 0 for s, _, _ in history):
        return math.inf
    if kind == "rdp":
        from opacus.accountants.analysis.rdp import get_privacy_spent

        orders = tuple(orders) if orders else orders_near_optimum(history, delta)
        rdp = sum(n * _step_rdp(float(s), float(q), orders) for s, q, n in history)
        eps, _ = get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
        return float(eps)
    if kind == "prv":
        eps = _prv_epsilon(history, delta)
        if eps is None or not math.isfinite(eps):
            _note_fallback("needs a larger discretization than" if eps is None else "gave no finite value within")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Opacus's "optimal order" notice: about orders no user picks
                return epsilon_of_history(history, delta, "rdp", orders)
        return eps
    raise ValueError(f"accountant {kind!r} is not one of {ACCOUNTANTS}")


_FALLBACKS_NOTED: set[str] = set()


def _note_fallback(why: str) -> None:
    """Warn that ε comes from RDP instead of PRV, once a process for each reason: the notice is
    about the analysis, not one history (``fedlr plan`` asks once per group of clients), and
    Python's own "default" action shows a warning again after any ``warnings.catch_warnings``,
    which every PRV evaluation enters."""
    if why in _FALLBACKS_NOTED:
        return
    _FALLBACKS_NOTED.add(why)
    warnings.warn(f"the PRV accountant {why} its bound of {MAX_PRV_DOMAIN:,} points for this history; "
                  "epsilon comes from RDP instead (a valid bound, looser than PRV's)", stacklevel=3)


def _prv_epsilon(history: list[tuple[float, float, int]], delta: float) -> float | None:
    """Opacus's PRV ε (its upper bound at ``eps_error`` 0.01), or None when the discretization
    it would build has more than ``MAX_PRV_DOMAIN`` points. Opacus sizes the domain itself
    (Gopi et al. 2021, Remark 5.6: width from an RDP tail bound, mesh ∝ eps_error/√steps), and
    nothing stops it: at small σ over many steps the width grows to thousands and the mesh
    shrinks, so the FFT composition asks for gigabytes (135 M points for σ = 0.52, q = 0.41,
    5,562 steps). The domain is computed first (milliseconds), then refused if too large."""
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

    acc = PRVAccountant()
    acc.history = list(history)
    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the RDP tail bound's "optimal order" notices
        domain = acc._get_domain(prvs=prvs, num_self_compositions=[n for _, _, n in history],
                                 eps_error=PRV_EPS_ERROR, delta_error=delta / 1000)
    if domain.size > MAX_PRV_DOMAIN:
        return None
    with np.errstate(divide="ignore"):  # PRV at q = 1 takes log(1 − q) on its way to the plain Gaussian
        return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


def orders_near_optimum(history: list[tuple[float, float, int]], delta: float) -> tuple[float, ...]:
    """The orders of ``ORDERS`` that can give the smallest ε of ``history``: every integer order,
    ``ORDERS``' first one (so Opacus's "optimal order is the smallest alpha" warning means what it
    means over ``ORDERS``), and each fractional order α (1.1 … 10.9) whose lower bound
    rdp(⌊α⌋) + c(α) is not above the best integer order's ε — RDP never decreases with the order,
    and c(α) = −(log δ + log α)/(α − 1) + log((α − 1)/α) is the conversion term of
    ``get_privacy_spent`` (Balle et al. 2020, Thm. 21). The orders left out cannot be the
    minimum, so ε over these is ε over ``ORDERS``, to the bit.

    Integer orders have a closed form; each fractional one is a series Opacus sums term by term
    (0.3–0.5 s for all 90 of one (σ, q) on this machine, against 0.04 s for the 69 integer ones)."""
    whole = tuple(a for a in ORDERS if a == int(a))
    rdp = dict(zip(whole, sum(n * _step_rdp(float(s), float(q), whole) for s, q, n in history)))
    best = min(rdp[a] + _conversion(a, delta) for a in whole)
    margin = 1e-9 * max(1.0, abs(best))  # rounding in the series: keep orders whose bound is that close
    near = tuple(a for a in ORDERS if a != int(a)
                 and (a == ORDERS[0] or rdp.get(float(math.floor(a)), 0.0) + _conversion(a, delta) <= best + margin))
    return tuple(sorted(whole + near))


def _conversion(order: float, delta: float) -> float:
    """ε(α) − RDP(α) in ``opacus.accountants.analysis.rdp.get_privacy_spent``."""
    return -(math.log(delta) + math.log(order)) / (order - 1) + math.log((order - 1) / order)


def _step_rdp(noise_multiplier: float, q: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one sampled-Gaussian step at ``orders`` (Mironov et al. 2019; Opacus's analysis,
    whose ``compute_rdp(steps=T)`` is exactly T times this), each order computed once per process."""
    return np.array([_order_rdp(noise_multiplier, q, a) for a in orders], dtype=np.float64)


@lru_cache(maxsize=1 << 16)
def _order_rdp(noise_multiplier: float, q: float, order: float) -> float:
    from opacus.accountants.analysis.rdp import compute_rdp

    return float(compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=1, orders=[order])[0])
