"""The Pareto frontier and mean ± std on hand-made points (pure; no Flower, no Ray)."""

import math
import statistics

import pytest

from fedlr.results.pareto import dominates, pareto_front
from fedlr.results.stats import mean_std


def test_frontier_of_cost_accuracy_points():
    # (MiB sent, accuracy): minimize the first, maximize the second
    points = [
        (1.0, 0.60),  # 0: cheapest -> on the frontier
        (2.0, 0.70),  # 1: on
        (3.0, 0.65),  # 2: dominated by 1 (costlier, worse)
        (4.0, 0.80),  # 3: on
        (4.0, 0.75),  # 4: dominated by 3 (same cost, worse)
        (5.0, 0.80),  # 5: dominated by 3 (costlier, same accuracy)
        (10.0, 0.85),  # 6: most accurate -> on
        (0.5, 0.40),  # 7: cheapest of all -> on
    ]
    assert pareto_front(points) == [7, 0, 1, 3, 6]


def test_frontier_is_ordered_by_cost_and_accuracy_rises_along_it():
    points = [(8.0, 0.9), (1.0, 0.5), (4.0, 0.7), (2.0, 0.6), (3.0, 0.55)]
    front = pareto_front(points)
    assert front == [1, 3, 2, 0]
    accs = [points[i][1] for i in front]
    assert accs == sorted(accs)


def test_identical_points_both_stay_and_missing_values_take_no_part():
    points = [(1.0, 0.5), (1.0, 0.5), (None, 0.99), (2.0, math.nan), (0.1, math.inf), (3.0, 0.4)]
    assert pareto_front(points) == [0, 1]  # (3.0, 0.4) is dominated; the rest are unusable


def test_single_point_and_empty():
    assert pareto_front([(3.0, 0.1)]) == [0]
    assert pareto_front([]) == []


def test_senses_can_be_changed_and_extended():
    # maximize both: only the point best in both survives together with the trade-offs
    points = [(1, 1), (2, 0), (0, 2), (0.5, 0.5)]
    assert pareto_front(points, senses=("max", "max")) == [1, 0, 2]
    # three objectives: ε (min), MiB (min), accuracy (max)
    pts3 = [(1.0, 1.0, 0.7), (2.0, 1.0, 0.7), (1.0, 0.5, 0.6), (8.0, 5.0, 0.9)]
    assert pareto_front(pts3, senses=("min", "min", "max")) == [2, 0, 3]


def test_dominates():
    assert dominates((1, 0.8), (2, 0.7))
    assert dominates((1, 0.8), (1, 0.7))
    assert not dominates((1, 0.8), (1, 0.8))  # equal: no strict improvement
    assert not dominates((1, 0.6), (2, 0.7))  # a trade-off
    with pytest.raises(ValueError):
        dominates((1, 2), (1, 2), senses=("min", "up"))
    with pytest.raises(ValueError):
        dominates((1, 2), (1, 2, 3))


def test_mean_std_is_the_sample_std_over_present_values():
    assert mean_std([]) == (None, None, 0)
    assert mean_std([None, None]) == (None, None, 0)
    assert mean_std([0.5, None]) == (0.5, None, 1)
    mean, std, n = mean_std([0.5, 0.7, None, 0.9])
    assert n == 3
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert std == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / (3 - 1))
