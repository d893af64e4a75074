"""Calibrating the noise multiplier σ to a target ε, once, for a whole planned run.

ε(σ) of a fixed composition (steps, sampling rate, δ) is continuous and strictly decreasing in
σ, from ∞ (σ → 0) to 0. ``calibrate_noise`` brackets the target and closes in with the
Illinois variant of regula falsi on (log σ, log ε), keeping the bracket's upper end, so the σ it
returns always satisfies ε(σ) ≤ target and lands within ``rtol`` of it (default 0.1%; Opacus's
``get_noise_multiplier`` stops at an absolute 0.01 instead).
"""

from __future__ import annotations

import math
from typing import Callable

SIGMA_MIN, SIGMA_MAX = 1e-3, 1e4


class CalibrationError(ValueError):
    pass


def calibrate_noise(epsilon_of: Callable[[float], float], target_epsilon: float, *, rtol: float = 1e-3,
                    initial: float = 1.0, factor: float = 2.0, max_evaluations: int = 80) -> float:
    """The σ with target·(1 − rtol) ≤ ε(σ) ≤ target (``epsilon_of`` decreasing in σ).

    The bracket search starts at ``initial`` and steps by ``factor``: a good guess (from a
    cheaper, more conservative ε) saves most of the expensive evaluations."""
    if not target_epsilon > 0 or math.isinf(target_epsilon):
        raise CalibrationError(f"target epsilon must be positive and finite, got {target_epsilon}")
    cache: dict[float, float] = {}

    def eps(sigma: float) -> float:
        if sigma not in cache:
            cache[sigma] = float(epsilon_of(sigma))
        return cache[sigma]

    def done(sigma: float) -> bool:
        return eps(sigma) >= target_epsilon * (1 - rtol)

    # bracket: ε(lo) > target ≥ ε(hi)
    hi = initial
    while eps(hi) > target_epsilon:
        hi *= factor
        if hi > SIGMA_MAX:
            raise CalibrationError(f"no noise multiplier up to {SIGMA_MAX:g} reaches epsilon {target_epsilon}")
    lo = hi / factor
    while eps(lo) <= target_epsilon:
        hi, lo = lo, lo / factor
        if lo < SIGMA_MIN:
            return hi  # even σ = SIGMA_MIN spends less than the target: the smallest noise we offer
    if done(hi):
        return hi

    def g(sigma: float) -> float:  # > 0 at lo, ≤ 0 at hi
        e = eps(sigma)
        return math.inf if math.isinf(e) else math.log(e) - math.log(target_epsilon)

    x_lo, x_hi = math.log(lo), math.log(hi)
    g_lo, g_hi = g(lo), g(hi)
    side = 0
    for _ in range(max_evaluations):
        if math.isinf(g_lo):
            x = 0.5 * (x_lo + x_hi)
        else:
            x = x_hi - g_hi * (x_hi - x_lo) / (g_hi - g_lo)
            if not x_lo < x < x_hi:
                x = 0.5 * (x_lo + x_hi)
        gx = g(math.exp(x))
        if gx > 0:
            x_lo, g_lo = x, gx
            if side == -1:
                g_hi /= 2  # Illinois: keep the stale end from stalling the secant
            side = -1
        else:
            x_hi, g_hi = x, gx
            if done(math.exp(x_hi)):
                return math.exp(x_hi)
            if side == 1:
                g_lo /= 2
            side = 1
        if x_hi - x_lo < 1e-12:
            break
    return math.exp(x_hi)
