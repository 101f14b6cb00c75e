"""Uncertainty of accuracies and of comparisons between models — pure numpy, no Ray.

An accuracy on n items is a binomial proportion: `wilson_interval` gives its 95% interval (the
Wilson score interval stays inside [0, 1] and behaves at 0% and 100%, where the normal
approximation does not). Two models evaluated on the *same* items are compared with a paired
bootstrap: `paired_difference` resamples items (not models), so the interval of `acc(a) − acc(b)`
reflects that both models see the same easy and hard questions — far tighter, and more honest,
than two independent intervals side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Interval:
    """An estimate and its interval: `low ≤ value ≤ high`, `n` the items it rests on."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def wilson_interval(correct: Sequence[bool], confidence: float = CONFIDENCE) -> Interval:
    """The accuracy of `correct` with its Wilson score interval."""
    n = len(correct)
    if n == 0:
        return Interval(0.0, 0.0, 1.0, 0)
    k = int(np.count_nonzero(np.asarray(correct, dtype=bool)))
    p, z = k / n, _z(confidence)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def aligned(a: Mapping[str, bool], b: Mapping[str, bool]) -> tuple[np.ndarray, np.ndarray]:
    """The verdicts of two models on the items both were scored on, in one order.

    A comparison is only paired if the item sets agree; differing sets are an error rather than a
    silent intersection (a missing prediction file would otherwise shrink the comparison)."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
        raise ValueError(f"paired comparison needs the same items: only in a {only_a}…, only in b {only_b}…")
    ids = sorted(a)
    return (np.fromiter((bool(a[i]) for i in ids), dtype=bool, count=len(ids)),
            np.fromiter((bool(b[i]) for i in ids), dtype=bool, count=len(ids)))


def paired_difference(
    a: Sequence[bool] | np.ndarray,
    b: Sequence[bool] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    strata: Sequence[int] | np.ndarray | None = None,
) -> Interval:
    """acc(a) − acc(b) on the same items, with a percentile paired-bootstrap interval.

    Items are resampled with replacement and both models keep their verdicts on each drawn item.
    `strata` (e.g. the seed of a multi-seed experiment) resamples within each stratum, so every
    replicate keeps the design's composition. Deterministic for a given `seed`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired verdicts must be two equal-length vectors, got {a.shape} and {b.shape}")
    n = a.size
    if n == 0:
        return Interval(0.0, -1.0, 1.0, 0)
    diff = a - b
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(np.asarray(strata) == s) for s in np.unique(strata)]
    totals = np.zeros(resamples)
    for members in groups:
        draws = rng.integers(0, members.size, size=(resamples, members.size))
        totals += diff[members][draws].sum(axis=1)
    replicates = totals / n
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Interval(float(diff.mean()), float(low), float(high), n)


def discordant_pairs(a: Sequence[bool], b: Sequence[bool]) -> dict[str, int]:
    """Items only `a` gets right and items only `b` gets right: where a paired difference comes from."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return {"only_a": int(np.count_nonzero(a & ~b)), "only_b": int(np.count_nonzero(b & ~a))}
