"""Mean ± std, confidence intervals and the majority-class baseline: the small pure statistics
behind the report.

**Over seeds** (n ≥ 2 runs that differ only in their seed, values x_1 … x_n of a metric): the
95 % confidence interval of the mean by Student's t,

    x̄ ± t_{0.975, n−1} · s / √n,   s the sample standard deviation (n − 1 in the denominator).

**One seed, accuracy**: the only randomness left to quantify is the test set's. Accuracy is a
proportion p̂ = k / N of N test examples, and its Wilson score interval (95 %, z = Φ⁻¹(0.975)) is

    (p̂ + z²/2N ± z·√(p̂(1 − p̂)/N + z²/4N²)) / (1 + z²/N),

the set of p for which (p̂ − p)² ≤ z²·p(1 − p)/N. Balanced accuracy, macro-F1 and ROC AUC are
not a single proportion; with one seed they get no interval (none is invented).

**Paired by seed** (two groups run on the same seeds: a seed fixes the data split, the test set
and the draws, so most of the seed-to-seed spread is common to both): the differences
d_s = x_s − y_s over the shared seeds, and their mean's t interval as above (a paired t interval).

**Majority-class baseline**: a classifier that always answers the majority class m (share
p_max = n_m / N of the test set, L classes present in it) scores

    accuracy = p_max;   balanced accuracy = 1/L (recall 1 on m, 0 elsewhere);
    macro-F1 = (2·p_max / (1 + p_max)) / L (F1_m = 2·n_m / (n_m + N), 0 for the others);
    ROC AUC = 0.5 (every score tied).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
CONFIDENCE = 0.95
Z_95 = statistics.NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.95996…


@dataclass(frozen=True)
class Interval:
    """A group's value of one metric: the mean over its n seeds and its 95 % interval.

    ``kind`` is ``"t"`` (Student t over seeds), ``"wilson"`` (one seed, accuracy: the test set's
    interval) or None (no interval). ``ci95`` is the half-width: for the t interval the exact one;
    for the asymmetric Wilson interval the larger side, max(mean − low, high − mean), so that
    mean ± ci95 contains [low, high]."""

    mean: float | None
    n: int
    low: float | None = None
    high: float | None = None
    kind: str | None = None

    @property
    def ci95(self) -> float | None:
        if self.kind is None:
            return None
        return max(self.mean - self.low, self.high - self.mean)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation, n) of the values that are not None.

    The standard deviation is the sample one (n − 1 in the denominator), the usual error bar over
    seeds; it is None for fewer than two values, and mean is None for none.
    """
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None, 0
    if len(xs) == 1:
        return xs[0], None, 1
    return statistics.fmean(xs), statistics.stdev(xs), len(xs)


def t_half_width(values: Sequence[float], confidence: float = CONFIDENCE) -> float | None:
    """t_{(1+confidence)/2, n−1} · s / √n for n ≥ 2 values; None for fewer."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t  # (scipy comes with Opacus; imported here: the report's tables need it only here)

    return float(t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of a proportion ``p`` observed on ``n`` ≥ 1 trials."""
    if n < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"a proportion in [0, 1] on n >= 1 trials, got p = {p}, n = {n}")
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    return max(0.0, min(p, center - half)), min(1.0, max(p, center + half))  # p̂ inside, despite rounding


def interval(values: Sequence[float | None], metric: str, test_examples: int | None = None) -> Interval:
    """The mean of ``values`` (None left out) with its interval: Student t over n ≥ 2 values; for
    one value of ``accuracy`` measured on ``test_examples`` examples, the Wilson interval; else none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return Interval(mean=None, n=0)
    mean = statistics.fmean(xs)
    if len(xs) >= 2:
        half = t_half_width(xs)
        return Interval(mean=mean, n=len(xs), low=mean - half, high=mean + half, kind="t")
    if metric == "accuracy" and test_examples:
        low, high = wilson_interval(mean, test_examples)
        return Interval(mean=mean, n=1, low=low, high=high, kind="wilson")
    return Interval(mean=mean, n=1)


def majority_share(support: Sequence[int]) -> float:
    """p_max = max_c n_c / N of the per-class test counts ``support``."""
    total = sum(support)
    if total <= 0:
        raise ValueError(f"class support {list(support)} has no examples")
    return max(support) / total


def majority_baseline(support: Sequence[int]) -> dict[str, float | None]:
    """Every metric of a classifier that always predicts the majority class, from the per-class
    test counts ``support`` (formulas in the module docstring); ROC AUC is None with fewer than
    two classes present (undefined, as ``fedlr.metrics`` has it)."""
    p_max = majority_share(support)
    classes = sum(1 for c in support if c > 0)
    return {"accuracy": p_max, "balanced_accuracy": 1 / classes, "macro_f1": 2 * p_max / (1 + p_max) / classes,
            "roc_auc": 0.5 if classes >= 2 else None}


def paired_difference(x: dict, y: dict) -> Interval:
    """Mean of x_s − y_s over the seeds s both have, with its paired t interval (module docstring);
    no interval for a single shared seed."""
    diffs = [float(x[s]) - float(y[s]) for s in sorted(set(x) & set(y), key=str)]
    if not diffs:
        return Interval(None, 0)
    mean, h = statistics.fmean(diffs), t_half_width(diffs)
    if h is None:
        return Interval(mean, len(diffs))
    return Interval(mean, len(diffs), mean - h, mean + h, "t")
