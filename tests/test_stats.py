"""Intervals and paired comparisons (evaluation/stats.py) against hand-computed cases."""

import numpy as np
import pytest

from advdistill.evaluation.stats import (
    aligned,
    bootstrap_accuracy,
    bootstrap_replicates,
    cluster_index,
    discordant_pairs,
    paired_difference,
    seed_spread,
    wilson_interval,
)


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


def test_wilson_interval_counts_distinct_items_not_seeds_times_items():
    # A deterministic arm scored under three seeds is the same 10 items three times: 8/10 → the
    # published [0.4902, 0.9433] with n = 10, not the narrower interval of 24/30.
    verdicts = [True] * 8 + [False] * 2
    three_seeds = wilson_interval(np.array([verdicts] * 3))
    assert three_seeds == wilson_interval(verdicts)
    assert (three_seeds.n, round(three_seeds.low, 4), round(three_seeds.high, 4)) == (10, 0.4902, 0.9433)
    assert wilson_interval([True] * 24 + [False] * 6).low > three_seeds.low + 0.08


def test_wilson_interval_of_nothing_is_uninformative():
    assert wilson_interval([]).as_dict() == {"value": 0.0, "low": 0.0, "high": 1.0, "n": 0, "clusters": None,
                                             "seeds": None}


def item_bootstrap_of_before(a, b, resamples, seed):
    """The paired item bootstrap this module had before clusters (one seed), verbatim."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, diff.size, size=(resamples, diff.size))
    replicates = diff[draws].sum(axis=1) / diff.size
    return tuple(np.quantile(replicates, [0.025, 0.975]))


@pytest.mark.parametrize("n, resamples, seed", [(37, 2_500, 0), (400, 10_000, 7)])
def test_one_cluster_per_item_is_the_item_bootstrap_draw_for_draw(n, resamples, seed):
    rng = np.random.default_rng(seed + 100)
    a, b = rng.random(n) < 0.6, rng.random(n) < 0.5
    expected = item_bootstrap_of_before(a, b, resamples, seed)
    labels = [f"item-{i}" for i in range(n)]
    for clusters in (None, labels):
        interval = paired_difference(a, b, clusters, resamples=resamples, seed=seed)
        assert (interval.low, interval.high) == expected
        assert (interval.n, interval.clusters, interval.seeds) == (n, n, 1)


def test_paired_difference_degenerate_cases_are_exact():
    same = [True, False, True, True]
    assert paired_difference(same, same).as_dict() == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 4, "clusters": 4,
                                                      "seeds": 1}
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
    assert paired_difference(a, b, seed=1) != paired_difference(a, b, seed=2)


def test_perfectly_correlated_copies_do_not_narrow_the_interval():
    rng = np.random.default_rng(1)
    a, b = rng.random(120) < 0.6, rng.random(120) < 0.45
    alone = paired_difference(a, b)
    # Each item three times, the copies one cluster: the same interval, draw for draw.
    copies = np.repeat(np.arange(120), 3)
    clustered = paired_difference(a[copies], b[copies], clusters=copies.tolist())
    assert (clustered.value, clustered.low, clustered.high) == (alone.value, alone.low, alone.high)
    assert clustered.clusters == 120
    # Resampled as if independent, the copies would shrink it by about √3 — what this prevents.
    naive = paired_difference(a[copies], b[copies])
    assert naive.high - naive.low < 0.7 * (alone.high - alone.low)
    # The same for one model's accuracy.
    acc_alone, acc_copies = bootstrap_accuracy(a), bootstrap_accuracy(a[copies], copies.tolist())
    assert (acc_copies.low, acc_copies.high) == (acc_alone.low, acc_alone.high)


def test_identical_seeds_of_a_deterministic_arm_are_one_seed():
    rng = np.random.default_rng(2)
    a, b = rng.random(200) < 0.6, rng.random(200) < 0.5
    clusters = (np.arange(200) // 4).tolist()
    once = paired_difference(a, b, clusters)
    thrice = paired_difference(np.stack([a] * 3), np.stack([b] * 3), clusters)
    assert (thrice.value, thrice.low, thrice.high, thrice.n) == (once.value, once.low, once.high, 200)
    assert (thrice.clusters, thrice.seeds) == (50, 3)
    # A one-row (deterministic) arm is paired with every seed of the other, as if repeated.
    seeded = rng.random((3, 200)) < 0.55
    assert paired_difference(seeded, b, clusters) == paired_difference(seeded, np.stack([b] * 3), clusters)


def test_whole_clusters_are_resampled():
    # Cluster A: 3 items, all right; cluster B: 1 item, wrong. A resample of two clusters is AA
    # (accuracy 1), AB or BA (3/4) or BB (0), with probabilities 1/4, 1/2, 1/4.
    replicates = bootstrap_replicates([1, 1, 1, 0], ["A", "A", "A", "B"], resamples=10_000, seed=5)
    values, counts = np.unique(replicates, return_counts=True)
    assert values.tolist() == [0.0, 0.75, 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    interval = bootstrap_accuracy([1, 1, 1, 0], ["A", "A", "A", "B"])
    assert (interval.value, interval.low, interval.high, interval.n, interval.clusters) == (0.75, 0.0, 1.0, 4, 2)
    # Item by item, k of 4 right with k ~ Binomial(4, 3/4): P(k = 0) = 0.4% < 2.5%, so low = 1/4.
    assert bootstrap_accuracy([1, 1, 1, 0]).low == 0.25


def test_seeds_are_resampled_at_the_second_level():
    # Seed 0 gets all 50 items right, seed 1 none; the base none. A replicate's seeds are {0, 0},
    # {0, 1} or {1, 1}: a difference of 1, 1/2 or 0 with probabilities 1/4, 1/2, 1/4 — whatever
    # items are drawn. Resampling items within each seed (the old stratified bootstrap) gave 0.5 always.
    seeded = np.array([[True] * 50, [False] * 50])
    replicates = bootstrap_replicates(seeded, resamples=10_000, seed=0)
    values, counts = np.unique(replicates, return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    interval = paired_difference(seeded, [False] * 50)
    assert (interval.value, interval.low, interval.high, interval.n, interval.seeds) == (0.5, 0.0, 1.0, 50, 2)


def test_an_accuracy_everyone_agrees_on_gets_wilsons_bound_over_clusters():
    # 10 items in 5 clusters, all right: no resample moves, so the interval is Wilson's at n = 5
    # clusters: low = 1 / (1 + z²/5) = 1 / 1.768292 = 0.56551.
    interval = bootstrap_accuracy([True] * 10, [i // 2 for i in range(10)])
    assert (interval.value, interval.high, interval.n, interval.clusters) == (1.0, 1.0, 10, 5)
    assert interval.low == pytest.approx(0.56551, abs=1e-5)


def test_bootstrap_accuracy_of_independent_items_is_close_to_wilson():
    verdicts = np.random.default_rng(4).random(1000) < 0.3
    boot, wilson = bootstrap_accuracy(verdicts), wilson_interval(verdicts)
    assert boot.value == wilson.value
    assert boot.low == pytest.approx(wilson.low, abs=0.004) and boot.high == pytest.approx(wilson.high, abs=0.004)


def test_seed_spread_reports_each_seed_and_their_standard_deviation():
    verdicts = np.array([[1, 0, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=bool)  # 0.4, 0.6, 0.8
    spread = seed_spread(verdicts)
    assert spread["by_seed"] == pytest.approx([0.4, 0.6, 0.8])
    assert (spread["mean"], spread["seed_sd"]) == (pytest.approx(0.6), pytest.approx(0.2))
    assert seed_spread([True, False])["seed_sd"] == 0.0


def test_clusters_are_numbered_in_order_of_first_appearance_and_checked():
    index, count = cluster_index(["s2", "s1", "s2", "s3"], 4)
    assert index.tolist() == [0, 1, 0, 2] and count == 3
    with pytest.raises(ValueError, match="one cluster per item"):
        paired_difference([True, False], [False, False], clusters=["a"])
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="same items"):
        paired_difference([True, False], [True])


def test_aligned_refuses_different_item_sets():
    x, y = aligned({"q2": True, "q1": False}, {"q1": True, "q2": True})
    assert x.tolist() == [False, True] and y.tolist() == [True, True]
    with pytest.raises(ValueError, match="same items"):
        aligned({"q1": True}, {"q1": True, "q2": False})
