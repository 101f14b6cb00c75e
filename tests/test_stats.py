"""Intervals and paired comparisons (evaluation/stats.py) against hand-computed cases."""

import numpy as np
import pytest

from advdistill.evaluation.stats import aligned, discordant_pairs, paired_difference, wilson_interval


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        # z = 1.959964: centre = (p + z²/2n) / (1 + z²/n), half = z·sqrt(p(1−p)/n + z²/4n²) / (1 + z²/n)
        # published 4-decimal values (e.g. Newcombe 1998, Table I) and the closed forms at k = 0 / n:
        # high(0/n) = (z²/n) / (1 + z²/n) = 0.38414588 / 1.38414588
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (500, 1000, 0.4691, 0.5309),
    ],
)
def test_wilson_interval_matches_the_formula_by_hand(k, n, low, high):
    interval = wilson_interval([True] * k + [False] * (n - k))
    assert interval.value == pytest.approx(k / n)
    assert interval.low == pytest.approx(low, abs=5e-5)
    assert interval.high == pytest.approx(high, abs=5e-5)
    assert interval.n == n


def test_wilson_interval_of_nothing_is_uninformative():
    assert wilson_interval([]).as_dict() == {"value": 0.0, "low": 0.0, "high": 1.0, "n": 0}


def test_paired_difference_degenerate_cases_are_exact():
    same = [True, False, True, True]
    assert paired_difference(same, same).as_dict() == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 4}
    better = paired_difference([True] * 5, [False] * 5)
    assert (better.value, better.low, better.high) == (1.0, 1.0, 1.0)


def test_paired_difference_agrees_with_the_normal_approximation_on_many_items():
    # 2,000 items: 150 only a gets right, 100 only b, the rest agree. d_i ∈ {1, −1, 0}:
    # mean 0.025, var 250/2000 − 0.025² = 0.124375, se = sqrt(var/2000) = 0.0078858,
    # normal 95% interval 0.025 ± 0.015456.
    a = np.array([1] * 150 + [0] * 100 + [1] * 900 + [0] * 850, dtype=bool)
    b = np.array([0] * 150 + [1] * 100 + [1] * 900 + [0] * 850, dtype=bool)
    interval = paired_difference(a, b, seed=3)
    assert interval.value == pytest.approx(0.025)
    assert interval.low == pytest.approx(0.025 - 0.015456, abs=0.0015)
    assert interval.high == pytest.approx(0.025 + 0.015456, abs=0.0015)
    # Pairing matters: two independent Wilson intervals would overlap almost entirely.
    assert interval.high - interval.low < 0.5 * (wilson_interval(a).high - wilson_interval(a).low) * 2
    assert discordant_pairs(a, b) == {"only_a": 150, "only_b": 100}


def test_paired_difference_is_deterministic_per_seed():
    rng = np.random.default_rng(0)
    a, b = rng.random(300) < 0.6, rng.random(300) < 0.5
    assert paired_difference(a, b, seed=1) == paired_difference(a, b, seed=1)


def test_strata_keep_each_replicate_balanced():
    # Stratum 0 always differs by one, stratum 1 never: resampling within strata keeps the mean at
    # exactly 0.5 in every replicate, while pooled resampling lets it wander.
    a = [True] * 10 + [True] * 10
    b = [False] * 10 + [True] * 10
    strata = [0] * 10 + [1] * 10
    stratified = paired_difference(a, b, strata=strata)
    assert (stratified.low, stratified.high) == (0.5, 0.5)
    pooled = paired_difference(a, b)
    assert pooled.low < 0.5 < pooled.high


def test_aligned_refuses_different_item_sets():
    x, y = aligned({"q2": True, "q1": False}, {"q1": True, "q2": True})
    assert x.tolist() == [False, True] and y.tolist() == [True, True]
    with pytest.raises(ValueError, match="same items"):
        aligned({"q1": True}, {"q1": True, "q2": False})
