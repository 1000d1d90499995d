"""Cluster bootstrap intervals and paired tests of the metrics :func:`~affbench.scoring.scorer.score_task` reports.

Frames of one subject are not independent samples: the unit of resampling is the *cluster* (the
subject; for Aff-Wild2 the video; see :meth:`affbench.scoring.protocols.Protocol.cluster_ids`).
A bootstrap draws clusters with replacement, all rows of a drawn cluster together, and recomputes
the metric on the drawn rows.

Every resample is scored from per-cluster sums (:mod:`affbench.scoring.cluster_statistics`), so
all resamples of a cell cost one small matrix product per metric.

The interval is the bootstrap *percentile* interval (why percentile and not BCa: docs/results.md,
"Confidence intervals"). A protocol with several folds is resampled within each fold's test
clusters and the replicates are combined as the protocol combines folds (their mean).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from affbench.errors import AffbenchError
from affbench.scoring.cluster_statistics import Fold, SeedRuns, cluster_sums, mean_of

if TYPE_CHECKING:
    from affbench.scoring.protocols import TaskSpec

#: How the interval is made; the long CSV's ``ci_method``.
CI_METHOD = "cluster-bootstrap-percentile"
#: Below this many clusters no interval is given: a percentile interval from a handful of subjects
#: is far too narrow to be honest.
MIN_CLUSTERS = 10
#: The paired test :func:`paired_comparison` runs.
TEST_NAME = "paired permutation test over clusters (each cluster's outputs swapped between the cells)"


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are drawn: ``resamples`` cluster resamples at confidence ``level``, from ``seed``.

    Examples
    --------
    >>> BootstrapSettings().describe()
    {'method': 'cluster-bootstrap-percentile', 'level': 0.95, 'resamples': 2000, 'seed': 0, 'min_clusters': 10}
    """

    resamples: int = 2000
    level: float = 0.95
    seed: int = 0
    min_clusters: int = MIN_CLUSTERS

    def __post_init__(self) -> None:
        if not 0.0 < float(self.level) < 1.0:
            raise AffbenchError(f"The confidence level must lie strictly between 0 and 1, such as 0.95; got {self.level}.")
        if int(self.resamples) < 100:
            raise AffbenchError(f"An interval needs at least 100 bootstrap resamples; got {self.resamples}.")

    @classmethod
    def from_options(cls, *, resamples: int | None = None, level: float | None = None, seed: int | None = None
                     ) -> BootstrapSettings | None:
        """Settings with the options given and the defaults for the others; None when none is given
        (each record's own settings apply)."""
        if resamples is None and level is None and seed is None:
            return None
        default = cls()
        return cls(resamples=default.resamples if resamples is None else int(resamples),
                   level=default.level if level is None else float(level),
                   seed=default.seed if seed is None else int(seed))

    def describe(self) -> dict[str, Any]:
        return {"method": CI_METHOD, "level": self.level, "resamples": self.resamples, "seed": self.seed,
                "min_clusters": self.min_clusters}


# ----------------------------------------------------------------------------------------- intervals


@dataclass
class Intervals:
    """The point values and bootstrap intervals of every key score_task reports.

    ``low`` and ``high`` are empty (and ``note`` says why) when there are fewer than
    ``min_clusters`` clusters; a key whose value is undefined in some resample has no interval.
    """

    values: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    n_clusters: int
    settings: BootstrapSettings
    note: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The record's ``ci``: how the intervals were made and ``intervals``: key -> [low, high]."""
        return {**self.settings.describe(), "n_clusters": self.n_clusters, "note": self.note,
                "intervals": {k: [self.low[k], self.high[k]] for k in self.low}}


def _too_few(n_clusters: int, settings: BootstrapSettings) -> str | None:
    if n_clusters >= settings.min_clusters:
        return None
    return (f"no interval: {n_clusters} independent cluster(s) in the test set, fewer than the "
            f"{settings.min_clusters} an honest interval needs")


def _weights(rng: np.random.Generator, n_clusters: int, resamples: int) -> np.ndarray:
    """How often each cluster is drawn in each resample: (resamples, C) counts summing to C."""
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=resamples).astype(np.float64)


def _fold_rng(settings: BootstrapSettings, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([settings.seed, index]))


def _percentile(replicates: Mapping[str, np.ndarray], level: float) -> tuple[dict[str, float], dict[str, float]]:
    low, high = {}, {}
    tail = (1.0 - level) / 2 * 100
    for key, values in replicates.items():
        if values.size and np.isfinite(values).all():
            low[key], high[key] = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
    return low, high


def fold_intervals(folds: Sequence[Fold], settings: BootstrapSettings | None = None) -> Intervals:
    """Intervals of the fold mean, resampling each fold's clusters on their own.

    With one fold this is the plain cluster bootstrap. The ``i``-th fold draws from its own stream
    (``SeedSequence([seed, i])``), independent of the others' sizes. A fold of
    several seeds' runs (:class:`SeedRuns`) resamples them with the same clusters and averages them.

    Parameters
    ----------
    folds : sequence of ClusterSums or SeedRuns
        One per fold, as :func:`~affbench.scoring.cluster_statistics.cluster_sums` makes them.
    settings : BootstrapSettings, optional

    Returns
    -------
    Intervals
    """
    settings = settings or BootstrapSettings()
    n_clusters = sum(f.n_clusters for f in folds)
    observed = mean_of([f.evaluate(np.ones((1, f.n_clusters))) for f in folds])
    values = {k: float(v[0]) for k, v in observed.items()}
    note = _too_few(n_clusters, settings)
    if note is not None:
        return Intervals(values, {}, {}, n_clusters, settings, note)
    replicates = mean_of([f.evaluate(_weights(_fold_rng(settings, i), f.n_clusters, settings.resamples))
                                   for i, f in enumerate(folds)])
    low, high = _percentile(replicates, settings.level)
    return Intervals(values, low, high, n_clusters, settings)


def partition_intervals(partitions: Sequence[Sequence[Fold]], settings: BootstrapSettings | None = None
                        ) -> Intervals:
    """Intervals of the mean over several partitions of the same clusters into folds (a suite's refolds).

    Every partition deals the same subjects into its folds, so the partitions are not independent
    samples: each resample draws the clusters *once*, with replacement from all of them, and every
    partition's folds are scored on that one draw (a fold on its own clusters' counts), averaged over
    folds within a partition and then over partitions. Drawing each partition anew would treat N
    partitions as N independent sets of subjects and narrow the interval by about sqrt(N), though
    no subject was added. A fold's clusters are then not resampled to a fixed number: a fold may
    draw more or fewer of its clusters than it has, or none; a fold whose value is undefined in a
    resample (it drew none of its clusters) is left out of that resample's mean over folds, as the
    tables leave out a fold where a value is undefined.

    Parameters
    ----------
    partitions : sequence of sequences of ClusterSums or SeedRuns
        One entry per partition: its folds, as :func:`fold_intervals` takes them.
    settings : BootstrapSettings, optional

    Returns
    -------
    Intervals
        ``n_clusters`` counts the distinct clusters over all partitions.
    """
    settings = settings or BootstrapSettings()
    names = np.unique(np.concatenate([np.asarray(f.clusters, dtype=str) for folds in partitions for f in folds]))
    columns = [[np.searchsorted(names, np.asarray(f.clusters, dtype=str)) for f in folds] for folds in partitions]

    def mean_over_partitions(weights: np.ndarray) -> dict[str, np.ndarray]:
        return mean_of([mean_of([f.evaluate(weights[:, cols]) for f, cols in zip(folds, fold_columns)],
                                defined_only=True)
                        for folds, fold_columns in zip(partitions, columns)], defined_only=True)

    observed = mean_over_partitions(np.ones((1, len(names))))
    values = {k: float(v[0]) for k, v in observed.items()}
    note = _too_few(len(names), settings)
    if note is not None:
        return Intervals(values, {}, {}, len(names), settings, note)
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 1 << 21]))
    low, high = _percentile(mean_over_partitions(_weights(rng, len(names), settings.resamples)), settings.level)
    return Intervals(values, low, high, len(names), settings)


def cluster_intervals(task: TaskSpec, y_true: ArrayLike, y_score: ArrayLike, clusters: ArrayLike, *,
                      mask: ArrayLike | None = None, settings: BootstrapSettings | None = None) -> Intervals:
    """Cluster bootstrap intervals of every metric ``score_task(task, y_true, y_score, mask=mask)`` reports.

    Parameters
    ----------
    task : TaskSpec
    y_true, y_score, mask : array-like
        As :func:`~affbench.scoring.scorer.score_task` takes them.
    clusters : array-like of shape (n_rows,)
        The independent unit of every row (subject, video).
    settings : BootstrapSettings, optional
        Resamples, level and seed (2000, 0.95, 0).

    Returns
    -------
    Intervals

    Examples
    --------
    >>> import numpy as np
    >>> from affbench.scoring.protocols import TaskSpec
    >>> task = TaskSpec(name="va", kind="va", label_columns=("valence",), output_key="va", n_outputs=1,
    ...                 label_names=("valence",), metrics=("ccc",), primary_metric="ccc")
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.normal(size=(400, 1))
    >>> found = cluster_intervals(task, truth, truth + rng.normal(size=(400, 1)), np.arange(400) // 20)
    >>> found.low["ccc"] < found.values["ccc"] < found.high["ccc"], found.n_clusters
    (True, 20)
    """
    return fold_intervals([cluster_sums(task, y_true, y_score, clusters, mask=mask)], settings)


# ----------------------------------------------------------------------------------------- paired comparison


@dataclass
class Comparison:
    """Cell A minus cell B on one metric key: the difference, its paired interval and a p-value."""

    key: str
    value_a: float
    value_b: float
    difference: float
    low: float | None
    high: float | None
    p_value: float
    permutations: int
    exact: bool
    n_clusters: int
    settings: BootstrapSettings
    note: str | None = None
    test: str = TEST_NAME


def _swap_patterns(n_clusters: int, permutations: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Which clusters are swapped in each permutation: all 2**C patterns when that is at most
    ``permutations`` (an exact test), else ``permutations`` random ones."""
    if 2**n_clusters <= permutations:
        return np.array(list(itertools.product((0.0, 1.0), repeat=n_clusters))), True
    return rng.integers(0, 2, size=(permutations, n_clusters)).astype(np.float64), False


def paired_comparison(folds_a: Sequence[Fold], folds_b: Sequence[Fold], key: str, *,
                      settings: BootstrapSettings | None = None, permutations: int = 10000) -> Comparison:
    """Compare two cells scored on the same test rows: A - B on ``key``, interval and p-value.

    The interval is a paired cluster bootstrap (both cells resampled with the same clusters); the
    p-value is two-sided, from a permutation test over clusters: under the hypothesis that the
    cells are exchangeable, each cluster's outputs may be swapped between them. Every swap pattern
    is enumerated when there are at most ``permutations`` (an exact test; 13 clusters or fewer by
    default), otherwise ``permutations`` random patterns give ``(1 + hits) / (1 + permutations)``.
    Folds are resampled and permuted within themselves and combined as their mean.

    Parameters
    ----------
    folds_a, folds_b : sequence of ClusterSums or SeedRuns
        The two cells' folds, in the same order, with the same clusters (and, for seeds, as many
        runs in each; run ``s`` of A is swapped with run ``s`` of B).
    key : str
        A key score_task reports (``"f1"``, ``"f1/au6"``).
    settings : BootstrapSettings, optional
    permutations : int, default=10000

    Returns
    -------
    Comparison
    """
    settings = settings or BootstrapSettings()
    n_clusters = sum(f.n_clusters for f in folds_a)

    def difference(weights_a: Sequence[np.ndarray], weights_b: Sequence[np.ndarray]) -> np.ndarray:
        a = np.mean([f.evaluate(w)[key] for f, w in zip(folds_a, weights_a)], axis=0)
        b = np.mean([f.evaluate(w)[key] for f, w in zip(folds_b, weights_b)], axis=0)
        return a - b

    ones = [np.ones((1, f.n_clusters)) for f in folds_a]
    value_a = float(np.mean([f.evaluate(w)[key][0] for f, w in zip(folds_a, ones)]))
    value_b = float(np.mean([f.evaluate(w)[key][0] for f, w in zip(folds_b, ones)]))
    observed = value_a - value_b
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 1 << 20]))
    swaps, exact = _swap_patterns(n_clusters, permutations, rng)
    # Swapping cluster c moves its sums from one cell to the other: A' = A + s (B_c - A_c).
    sizes = np.cumsum([0] + [f.n_clusters for f in folds_a])
    permuted_a, permuted_b = [], []
    for i, (fa, fb) in enumerate(zip(folds_a, folds_b)):
        part = swaps[:, sizes[i]:sizes[i + 1]]
        permuted_a.append(_swapped(fa, fb, key, part))
        permuted_b.append(_swapped(fb, fa, key, part))
    null = np.mean(permuted_a, axis=0) - np.mean(permuted_b, axis=0)
    tolerance = 1e-12 * max(1.0, abs(observed))
    hits = int(np.sum(np.abs(null) >= abs(observed) - tolerance))
    p_value = hits / len(null) if exact else (1 + hits) / (1 + len(null))
    low = high = None
    note = _too_few(n_clusters, settings)
    if note is None:
        weights = [_weights(_fold_rng(settings, i), f.n_clusters, settings.resamples) for i, f in enumerate(folds_a)]
        found_low, found_high = _percentile({key: difference(weights, weights)}, settings.level)
        low, high = found_low.get(key), found_high.get(key)
    return Comparison(key, value_a, value_b, observed, low, high, float(p_value), len(null), exact, n_clusters,
                      settings, note)


def _swapped(own: Fold, other: Fold, key: str, swaps: np.ndarray) -> np.ndarray:
    """``key`` of ``own`` after taking ``other``'s outputs in the clusters where ``swaps`` (R, C) is 1."""
    if isinstance(own, SeedRuns) or isinstance(other, SeedRuns):
        runs_a = own.runs if isinstance(own, SeedRuns) else [own]
        runs_b = other.runs if isinstance(other, SeedRuns) else [other]
        if len(runs_a) != len(runs_b):
            raise ValueError(f"the cells have {len(runs_a)} and {len(runs_b)} seeds' runs of a fold; a paired "
                             "test over clusters needs as many in each.")
        return np.mean([_swapped(a, b, key, swaps) for a, b in zip(runs_a, runs_b)], axis=0)
    metric = key.partition("/")[0]
    if metric not in own.sums:
        raise ValueError(f"metric {metric!r} has no per-cluster sums form under these options, so it cannot "
                         "be permuted over clusters.")
    totals = own.sums[metric].sum(axis=0) + swaps @ (other.sums[metric] - own.sums[metric])
    return own.values[metric](totals)[key]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given.

    Examples
    --------
    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return [float(v) if math.isfinite(v) else float("nan") for v in adjusted]
