"""Uncertainty of accuracies and of comparisons between models — pure numpy, no Ray.

Every interval here follows how the items were drawn:
- **Distinct items.** An accuracy rests on the n distinct items evaluated. The same items scored
  under several seeds (a seeds × items array) are still n items, not n × seeds: repeating an item
  adds no information about items not drawn. `wilson_interval` counts n that way.
- **Clusters.** Items are drawn in clusters of related items — a synthetic split takes several
  items from one arithmetic skeleton, GSM-PLUS perturbs each GSM8K question eight ways
  (`advdistill.tasks.record_cluster` names each record's cluster). Related items tend to be right
  or wrong together, so resampling them one by one makes an interval too narrow. The bootstrap here
  resamples whole clusters: `bootstrap_accuracy` for one model, `paired_difference` for
  acc(a) − acc(b) on the same items (both models keep their verdicts on every drawn item: a paired
  comparison, far tighter and more honest than two intervals side by side).
- **Seeds.** Every seed evaluates the same items, so one replicate draws its clusters once and
  keeps them for every seed; where there are several seeds they are resampled too, at a second
  level (seed s of one arm stays paired with seed s of the other: the same curated groups). A
  deterministic arm (greedy decoding of a fixed model) is one row, whatever the seeds. Seed-to-seed
  variation is also reported on its own (`seed_spread`).

With one cluster per item and one seed, the bootstrap is the plain paired item bootstrap, draw for
draw (the same random stream), so results of the two designs are comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Hashable, Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
# Replicates drawn per batch: bounds memory at a batch × clusters array. Even, so that every batch
# consumes whole 64-bit words of numpy's bounded-integer stream and batching leaves the draws
# identical to one large call.
_BATCH = 1_000

Verdicts = Sequence[bool] | Sequence[Sequence[bool]] | np.ndarray


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Interval:
    """An estimate and its interval: `low ≤ value ≤ high`; `n` the distinct items it rests on,
    `clusters` the resampled units (a cluster bootstrap) and `seeds` the seeds averaged over."""

    value: float
    low: float
    high: float
    n: int
    clusters: int | None = None
    seeds: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def seeds_by_items(verdicts: Verdicts) -> np.ndarray:
    """Verdicts (or per-item values) as a float seeds × items array: one vector is one seed."""
    values = np.asarray(verdicts, dtype=np.float64)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2:
        raise ValueError(f"verdicts must be items or seeds × items, got shape {values.shape}")
    return values


def wilson_interval(correct: Verdicts, confidence: float = CONFIDENCE) -> Interval:
    """The accuracy of `correct` with its Wilson score interval (it stays inside [0, 1] and
    behaves at 0% and 100%, where the normal approximation does not). A seeds × items array is
    averaged over seeds and counts its distinct items only. It treats items as independent: where
    they cluster, `bootstrap_accuracy` is the honest interval."""
    values = seeds_by_items(correct)
    n = values.shape[1]
    if n == 0:
        return Interval(0.0, 0.0, 1.0, 0)
    return _wilson(float(values.mean()), n, confidence)


def _wilson(p: float, n: int, confidence: float) -> Interval:
    z = _z(confidence)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(p, max(0.0, float(centre - half)), min(1.0, float(centre + half)), n)


def cluster_index(clusters: Sequence[Hashable] | None, n: int) -> tuple[np.ndarray, int]:
    """Each item's cluster as 0 … C − 1, numbered in order of first appearance (so one cluster per
    item numbers the items in their own order), and C. None: every item is its own cluster."""
    if clusters is None:
        return np.arange(n), n
    if len(clusters) != n:
        raise ValueError(f"one cluster per item: {len(clusters)} clusters for {n} items")
    numbers: dict[Hashable, int] = {}
    index = np.fromiter((numbers.setdefault(c, len(numbers)) for c in clusters), dtype=np.intp, count=n)
    return index, len(numbers)


def _multiplicities(rng: np.random.Generator, units: int, rows: int) -> np.ndarray:
    """How often each of `units` is drawn in each of `rows` resamples of `units` draws with
    replacement (rows × units counts)."""
    picks = rng.integers(0, units, size=(rows, units))
    flat = (picks + units * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * units).reshape(rows, units).astype(np.float64)


def bootstrap_replicates(values: Verdicts, clusters: Sequence[Hashable] | None = None, *,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """The mean of `values` (seeds × items, or items) over `resamples` two-level resamples.

    Each replicate draws C clusters with replacement, every drawn cluster with all its items, the
    same clusters for every seed; then, where there are S > 1 seeds, S seeds with replacement. Its
    mean is over every (seed, item) drawn — clusters weighted by their size. Deterministic for a
    given `seed`."""
    values = seeds_by_items(values)
    n_seeds, n = values.shape
    index, n_clusters = cluster_index(clusters, n)
    sums = np.stack([np.bincount(index, weights=row, minlength=n_clusters) for row in values])  # seeds × clusters
    sizes = np.bincount(index, minlength=n_clusters).astype(np.float64)
    # Two streams: the clusters drawn do not depend on how many seeds there are (the first stream
    # is the item bootstrap's own), and the seeds are drawn from a child stream of the same seed.
    cluster_rng = np.random.default_rng(seed)
    seed_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    replicates = []
    for start in range(0, resamples, _BATCH):
        rows = min(_BATCH, resamples - start)
        counts = _multiplicities(cluster_rng, n_clusters, rows)
        if n_seeds == 1:
            totals = counts @ sums[0]
        else:
            seed_counts = _multiplicities(seed_rng, n_seeds, rows)
            totals = ((seed_counts @ sums) * counts).sum(axis=1)
        replicates.append(totals / (n_seeds * (counts @ sizes)))
    return np.concatenate(replicates) if replicates else np.empty(0)


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    _z(confidence)  # validates it
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_accuracy(correct: Verdicts, clusters: Sequence[Hashable] | None = None, *,
                       confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> Interval:
    """One model's accuracy (mean over seeds and items) with a percentile cluster-bootstrap
    interval. Where every verdict is the same no resample can move it; the interval is then
    Wilson's with each cluster counted as one observation (all of a cluster's items could be one
    outcome), not a zero-width one."""
    values = seeds_by_items(correct)
    n_seeds, n = values.shape
    if n == 0:
        return Interval(0.0, 0.0, 1.0, 0, 0, n_seeds)
    n_clusters = cluster_index(clusters, n)[1]
    p = float(values.mean())
    if p in (0.0, 1.0):
        bound = _wilson(p, n_clusters, confidence)
        return Interval(p, bound.low, bound.high, n, n_clusters, n_seeds)
    low, high = _percentiles(bootstrap_replicates(values, clusters, resamples=resamples, seed=seed), confidence)
    return Interval(p, low, high, n, n_clusters, n_seeds)


def paired_difference(a: Verdicts, b: Verdicts, clusters: Sequence[Hashable] | None = None, *,
                      confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> Interval:
    """acc(a) − acc(b) on the same items, with a percentile paired cluster-bootstrap interval.

    `a` and `b` are items or seeds × items, the items in one order (`aligned`); a one-row arm (a
    deterministic one) is compared with every seed of the other. Each replicate resamples the
    per-item differences by cluster, then seeds (`bootstrap_replicates`). Deterministic for a
    given `seed`."""
    x, y = seeds_by_items(a), seeds_by_items(b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"paired verdicts must be on the same items, got {x.shape[1]} and {y.shape[1]}")
    if x.shape[0] != y.shape[0] and 1 not in (x.shape[0], y.shape[0]):
        raise ValueError(f"paired arms need the same seeds (or one deterministic row), got {x.shape[0]} and {y.shape[0]}")
    diff = x - y
    n_seeds, n = diff.shape
    if n == 0:
        return Interval(0.0, -1.0, 1.0, 0, 0, n_seeds)
    n_clusters = cluster_index(clusters, n)[1]
    low, high = _percentiles(bootstrap_replicates(diff, clusters, resamples=resamples, seed=seed), confidence)
    return Interval(float(diff.mean()), low, high, n, n_clusters, n_seeds)


def seed_spread(verdicts: Verdicts) -> dict[str, float | list[float]]:
    """Accuracy per seed, their mean and their sample standard deviation (0 for one seed): the
    seed-to-seed variation, shown beside an interval rather than folded into its n."""
    by_seed = seeds_by_items(verdicts).mean(axis=1)
    return {"by_seed": by_seed.tolist(), "mean": float(by_seed.mean()),
            "seed_sd": float(by_seed.std(ddof=1)) if by_seed.size > 1 else 0.0}


def aligned(a: Mapping[str, bool], b: Mapping[str, bool]) -> tuple[np.ndarray, np.ndarray]:
    """The verdicts of two models on the items both were scored on, in one order (sorted ids).

    A comparison is only paired if the item sets agree; differing sets are an error rather than a
    silent intersection (a missing prediction file would otherwise shrink the comparison)."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
        raise ValueError(f"paired comparison needs the same items: only in a {only_a}…, only in b {only_b}…")
    ids = sorted(a)
    return (np.fromiter((bool(a[i]) for i in ids), dtype=bool, count=len(ids)),
            np.fromiter((bool(b[i]) for i in ids), dtype=bool, count=len(ids)))


def discordant_pairs(a: Verdicts, b: Verdicts) -> dict[str, int]:
    """Items only `a` gets right and items only `b` gets right (summed over seeds): where a paired
    difference comes from."""
    x, y = seeds_by_items(a).astype(bool), seeds_by_items(b).astype(bool)
    return {"only_a": int(np.count_nonzero(x & ~y)), "only_b": int(np.count_nonzero(y & ~x))}
