"""``fedlr.results.stats``: the t interval over seeds against scipy's, the Wilson interval against
its defining equation and published values, and which interval a group gets."""

import math
import statistics

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlr.results.stats import Z_95, interval, t_half_width, wilson_interval


def test_t_interval_equals_scipys_on_random_samples():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        xs = list(rng.normal(rng.uniform(0, 1), rng.uniform(0.001, 0.2), size=n))
        got = interval(xs, "balanced_accuracy")
        mean, sem = statistics.fmean(xs), scipy.stats.sem(xs)
        low, high = scipy.stats.t.interval(0.95, n - 1, loc=mean, scale=sem)
        assert got.kind == "t" and got.n == n
        assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
        assert got.ci95 == pytest.approx((high - low) / 2, rel=1e-12)


def test_t_quantiles_are_the_textbook_ones():
    # t_{0.975, ν} for ν = 1, 2, 4, 9 (any statistics table): half-width / (s / √n)
    for nu, t in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262)):
        xs = [0.0, 1.0] + [0.5] * (nu - 1)
        assert t_half_width(xs) / (statistics.stdev(xs) / math.sqrt(len(xs))) == pytest.approx(t, abs=5e-4)
    assert t_half_width([0.7]) is None and t_half_width([]) is None
    assert t_half_width([0.8, 0.8, 0.8]) == 0.0


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_bounds_solve_the_score_equation(case):
    """Wilson's interval is {p : (p̂ − p)² ≤ z²·p(1 − p)/N}: both ends solve it with equality."""
    k, n = case
    p_hat = k / n
    low, high = wilson_interval(p_hat, n)
    assert 0.0 <= low <= p_hat <= high <= 1.0
    for p in (low, high):
        assert (p_hat - p) ** 2 == pytest.approx(Z_95**2 * p * (1 - p) / n, abs=1e-12)
    inside = (low + high) / 2
    assert (p_hat - inside) ** 2 <= Z_95**2 * inside * (1 - inside) / n + 1e-15


def test_wilson_published_values():
    # 0 of 10: upper bound z²/(N + z²) = 0.2775 (the "rule of three" neighbourhood); 81 of 263 (Newcombe
    # 1998, Table I, example: 0.2553 to 0.3662)
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, Z_95**2 / (10 + Z_95**2)))
    assert wilson_interval(0.0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(81 / 263, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)


def test_one_seed_gets_wilson_for_accuracy_and_no_interval_otherwise():
    acc = interval([0.872], "accuracy", test_examples=1115)
    assert acc.kind == "wilson" and (acc.low, acc.high) == wilson_interval(0.872, 1115)
    assert acc.ci95 == pytest.approx(max(0.872 - acc.low, acc.high - 0.872))
    assert acc.ci95 > 0.872 - acc.low - 1e-15 and acc.ci95 >= acc.high - 0.872
    for metric in ("balanced_accuracy", "macro_f1", "roc_auc"):
        one = interval([0.9], metric, test_examples=1115)
        assert one.kind is None and one.ci95 is None and one.mean == 0.9 and one.n == 1
    assert interval([0.872], "accuracy").kind is None  # test-set size unknown (runs from before it was recorded)
    assert interval([None, 0.5, None], "accuracy", 100).n == 1
    assert interval([None], "accuracy").mean is None


def test_paired_difference_is_scipys_paired_t_interval():
    from fedlr.results.stats import paired_difference

    rng = np.random.default_rng(3)
    for n in (2, 3, 5):
        seeds = list(range(n))
        y = rng.normal(0.7, 0.05, n)
        x = y + rng.normal(0.02, 0.01, n)  # the shared seed-to-seed spread cancels in x - y
        got = paired_difference(dict(zip(seeds, x)), {**dict(zip(seeds, y)), 99: 0.0})  # seed 99: unpaired
        d = x - y
        low, high = scipy.stats.t.interval(0.95, n - 1, loc=d.mean(), scale=scipy.stats.sem(d))
        assert got.n == n and got.kind == "t"
        assert math.isclose(got.mean, d.mean()) and math.isclose(got.low, low) and math.isclose(got.high, high)
    one = paired_difference({0: 0.8}, {0: 0.7, 1: 0.6})
    assert one.n == 1 and one.kind is None and math.isclose(one.mean, 0.1)


def test_paired_differences_script_prints_each_group_against_the_reference(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "paired_differences.py"
    spec = importlib.util.spec_from_file_location("paired_differences", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runs = tmp_path / "runs.csv"
    runs.write_text("codec,seed,final_accuracy\nnone,0,0.70\nnone,1,0.60\ntopk,0,0.65\ntopk,1,0.56\n")
    assert script.main([str(runs), "final_accuracy", "codec", "none"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| topk")][0]
    assert "| 2 | -0.045 |" in row
    assert script.main([str(runs), "final_accuracy", "codec", "fp16"]) == 2
    assert script.main([str(runs), "nope", "codec", "none"]) == 2
