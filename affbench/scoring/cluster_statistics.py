"""Every metric :func:`~affbench.scoring.scorer.score_task` reports, as sums over rows summed per cluster.

A cluster bootstrap (:mod:`affbench.scoring.bootstrap`) recomputes a metric on thousands of
resamples of whole clusters (subjects, videos). Calling the metric on 130,000 frames each time
would cost more than training a small model, so every registered metric is written here as a
function of *sums over rows*: counts of true and false positives for F1, first and second moments
for CCC and ICC, hits for accuracy and the active rates. The rows' contributions are summed once
per cluster (:func:`cluster_sums`); a resample is then a vector of cluster counts ``w`` and its
sums are ``w @ sums``, so all resamples of a cell cost one small matrix product. The values follow
:mod:`affbench.scoring.metrics` exactly, degenerate cases included (the tests check them against
``score_task`` on every resample); a metric or option without such a form falls back to calling
``score_task`` on each resample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import sparse

from affbench.scoring.metrics import _binarize, _binary_truth

if TYPE_CHECKING:
    from affbench.scoring.protocols import TaskSpec


# ----------------------------------------------------------------------------------------- row statistics


@dataclass
class _Statistic:
    """One metric as sums over rows: ``rows`` is each row's (n, d) contribution, ``values`` turns
    summed (..., d) contributions into ``{key: (...) values}`` with the keys score_task reports.

    ``summed``, where given, sums the contributions per cluster itself (from the (C, n) cluster
    indicator), and ``shared`` names contributions another metric has too (ICC and CCC share
    their moments), so that they are summed once.
    """

    rows: np.ndarray | None
    values: Callable[[np.ndarray], dict[str, np.ndarray]]
    summed: Callable[[Any], np.ndarray] | None = None
    shared: str | None = None

    def cluster_sums(self, per_cluster: Any) -> np.ndarray:
        if self.summed is not None:
            return self.summed(per_cluster)
        return np.asarray(per_cluster @ self.rows)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _label_keys(name: str, labels: Sequence[str], per_label: np.ndarray) -> dict[str, np.ndarray]:
    """The mean over labels under ``name`` (nan-propagating, as score_task's ``np.mean``) and each label."""
    result = {name: per_label.mean(axis=-1)}
    result.update({f"{name}/{label}": per_label[..., j] for j, label in enumerate(labels)})
    return result


def _binary_counts(truth: np.ndarray, decided: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per row and label: (annotated, true positive, false positive, false negative), as (n, 4 L)."""
    positive, predicted = truth.astype(bool), decided.astype(bool)
    return np.concatenate([keep, keep & positive & predicted, keep & ~positive & predicted,
                           keep & positive & ~predicted], axis=1).astype(np.float64)


def _f1_labels(task: TaskSpec, truth: np.ndarray, score: np.ndarray, keep: np.ndarray, options: Mapping[str, Any]
               ) -> _Statistic | None:
    if options.get("average", "macro") != "macro" or options.get("labels") is not None:
        return None
    zero_division = float(options.get("zero_division", 0.0))
    decided = _binarize(score, float(options.get("threshold", 0.5)))
    n_labels = truth.shape[1]

    def values(sums: np.ndarray) -> dict[str, np.ndarray]:
        n, tp, fp, fn = (sums[..., i * n_labels:(i + 1) * n_labels] for i in range(4))
        denominator = 2 * tp + fp + fn
        f1 = np.where(denominator > 0, _ratio(2 * tp, denominator), zero_division)
        return _label_keys("f1", task.label_names, np.where(n > 0, f1, np.nan))

    return _Statistic(_binary_counts(truth, decided, keep), values)


def _accuracy_labels(task: TaskSpec, truth: np.ndarray, score: np.ndarray, keep: np.ndarray,
                     options: Mapping[str, Any]) -> _Statistic | None:
    decided = _binarize(score, float(options.get("threshold", 0.5)))
    n_labels = truth.shape[1]
    rows = np.concatenate([keep, keep & (truth == decided)], axis=1).astype(np.float64)

    def values(sums: np.ndarray) -> dict[str, np.ndarray]:
        return _label_keys("accuracy", task.label_names, _ratio(sums[..., n_labels:], sums[..., :n_labels]))

    return _Statistic(rows, values)


def _moments(truth: np.ndarray, score: np.ndarray, keep: np.ndarray) -> tuple[Callable[[Any], np.ndarray], np.ndarray]:
    """Per cluster and label, the sums (n, x, y, x², y², xy) of the annotated entries, x and y
    shifted by one constant per label (the mean truth) so that second moments keep their
    precision; and that shift. Summed block by block: no (n, 6 L) array is ever made."""
    truth, score = truth.astype(np.float64, copy=False), score.astype(np.float64, copy=False)
    counts = keep.sum(axis=0)
    shift = np.where(counts > 0, np.where(keep, truth, 0).sum(axis=0) / np.maximum(counts, 1), 0.0)

    def summed(per_cluster: Any) -> np.ndarray:
        x = np.where(keep, truth - shift, 0.0)
        y = np.where(keep, score - shift, 0.0)
        blocks = [per_cluster @ keep.astype(np.float64), per_cluster @ x, per_cluster @ y]
        blocks += [per_cluster @ (x * x), per_cluster @ (y * y), per_cluster @ (x * y)]
        return np.hstack([np.asarray(b) for b in blocks])

    return summed, shift


def _split_moments(sums: np.ndarray, n_labels: int) -> tuple[np.ndarray, ...]:
    return tuple(sums[..., i * n_labels:(i + 1) * n_labels] for i in range(6))


def _ccc_labels(task: TaskSpec, truth: np.ndarray, score: np.ndarray, keep: np.ndarray, options: Mapping[str, Any]
                ) -> _Statistic | None:
    summed, shift = _moments(truth, score, keep)
    n_labels = truth.shape[1]

    def values(sums: np.ndarray) -> dict[str, np.ndarray]:
        n, sx, sy, sxx, syy, sxy = _split_moments(sums, n_labels)
        with np.errstate(divide="ignore", invalid="ignore"):
            mx, my = sx / n, sy / n
            var_x, var_y = sxx / n - mx**2, syy / n - my**2
            covariance = sxy / n - mx * my
            denominator = var_x + var_y + (mx - my) ** 2
            ccc = 2 * covariance / denominator
        # The metric's 0/0 rule, on the unshifted mean of the truth.
        degenerate = denominator <= 1e-15 * (1.0 + (mx + shift) ** 2)
        return _label_keys("ccc", task.label_names, np.where(n > 0, np.where(degenerate, 0.0, ccc), np.nan))

    return _Statistic(None, values, summed, "moments")


def _icc_labels(task: TaskSpec, truth: np.ndarray, score: np.ndarray, keep: np.ndarray, options: Mapping[str, Any]
                ) -> _Statistic | None:
    from affbench.scoring.metrics import _icc_from_mean_squares

    kind = str(options.get("kind", "3,1"))
    summed, shift = _moments(truth, score, keep)
    n_labels, k = truth.shape[1], 2

    def values(sums: np.ndarray) -> dict[str, np.ndarray]:
        n, sx, sy, sxx, syy, sxy = _split_moments(sums, n_labels)
        with np.errstate(divide="ignore", invalid="ignore"):
            grand = (sx + sy) / (2 * n)
            ss_total = sxx + syy - 2 * n * grand**2
            ss_targets = (sxx + 2 * sxy + syy) / 2 - 2 * n * grand**2
            ss_raters = n * ((sx / n - grand) ** 2 + (sy / n - grand) ** 2)
            ss_error = np.maximum(ss_total - ss_targets - ss_raters, 0.0)
            bms = ss_targets / (n - 1)
            jms = ss_raters / (k - 1)
            wms = np.maximum(ss_total - ss_targets, 0.0) / (n * (k - 1))
            ems = ss_error / ((n - 1) * (k - 1))
            # The metric's own formulas, applied to arrays of resamples at once.
            numerator, denominator = _icc_from_mean_squares(kind, cast(Any, n), k, bms, wms, jms, ems)
            icc = numerator / denominator
        # The metric's 0/0 rule is relative to the mean square of the unshifted ratings.
        raw_squares = sxx + syy + 2 * shift * (sx + sy) + 2 * n * shift**2
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = raw_squares / (2 * n) + 1.0
        degenerate = np.abs(denominator) <= 1e-12 * scale
        return _label_keys("icc", task.label_names, np.where(n >= 2, np.where(degenerate, 0.0, icc), np.nan))

    return _Statistic(None, values, summed, "moments")


def _active_rate(name: str) -> Callable[..., _Statistic | None]:
    def statistic(task: TaskSpec, truth: np.ndarray, score: np.ndarray, keep: np.ndarray,
                  options: Mapping[str, Any]) -> _Statistic | None:
        columns = options.get("columns")
        chosen = list(range(score.shape[1])) if columns is None else list(columns)
        active = _binarize(score[:, chosen], float(options.get("threshold", 0.5))).astype(bool)
        hit = active.all(axis=1) if name == "all_active_rate" else active.any(axis=1)
        used = keep.all(axis=1)
        rows = np.column_stack([used, used & hit]).astype(np.float64)
        return _Statistic(rows, lambda sums: {name: _ratio(sums[..., 1], sums[..., 0])})

    return statistic


def _accuracy_classes(task: TaskSpec, truth: np.ndarray, predicted: np.ndarray, keep: np.ndarray,
                      options: Mapping[str, Any]) -> _Statistic | None:
    rows = np.column_stack([keep, keep & (truth == predicted)]).astype(np.float64)
    return _Statistic(rows, lambda sums: {"accuracy": _ratio(sums[..., 1], sums[..., 0])})


def _f1_classes(task: TaskSpec, truth: np.ndarray, predicted: np.ndarray, keep: np.ndarray,
                options: Mapping[str, Any]) -> _Statistic | None:
    if options:  # score_task's per-class F1 takes no options of its own
        return None
    classes = np.arange(task.n_outputs)
    is_true = keep[:, None] & (truth[:, None] == classes)
    is_predicted = keep[:, None] & (predicted[:, None] == classes)
    rows = np.concatenate([keep[:, None], is_true & is_predicted, ~is_true & is_predicted, is_true & ~is_predicted],
                          axis=1).astype(np.float64)
    k = task.n_outputs

    def values(sums: np.ndarray) -> dict[str, np.ndarray]:
        n = sums[..., 0]
        tp, fp, fn = (sums[..., 1 + i * k:1 + (i + 1) * k] for i in range(3))
        denominator = 2 * tp + fp + fn  # > 0 exactly for the classes present in truth or prediction
        per_class = _ratio(2 * tp, denominator)
        present = denominator > 0
        with np.errstate(invalid="ignore"):
            mean = np.where(present, per_class, 0).sum(axis=-1) / present.sum(axis=-1)
        mean = np.where(n > 0, mean, np.nan)
        per_class = np.where((n > 0)[..., None], per_class, np.nan)
        result = {"f1": mean}
        result.update({f"f1/{label}": per_class[..., j] for j, label in enumerate(task.label_names)})
        return result

    return _Statistic(rows, values)


_LABEL_STATISTICS: dict[str, Callable[..., _Statistic | None]] = {
    "f1": _f1_labels, "accuracy": _accuracy_labels, "ccc": _ccc_labels, "icc": _icc_labels,
    "all_active_rate": _active_rate("all_active_rate"), "any_active_rate": _active_rate("any_active_rate"),
}
_CLASS_STATISTICS: dict[str, Callable[..., _Statistic | None]] = {"f1": _f1_classes, "accuracy": _accuracy_classes}


# ----------------------------------------------------------------------------------------- one fold


@dataclass
class ClusterSums:
    """One fold's test rows reduced to what resampling needs: each metric's sums per cluster.

    ``generic`` holds the metrics without a sums form; for them the rows themselves are kept and
    :func:`~affbench.scoring.scorer.score_task` runs on every resample.
    """

    task: Any
    clusters: np.ndarray  # (C,) cluster names, sorted
    sums: dict[str, np.ndarray]  # metric -> (C, d)
    values: dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]]
    generic: list[str] = field(default_factory=list)
    rows_of: list[np.ndarray] = field(default_factory=list)  # per cluster, its row positions (generic only)
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (y_true, y_score, mask) for generic

    @property
    def n_clusters(self) -> int:
        return len(self.clusters)

    def evaluate(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every key score_task reports, for each row of cluster ``weights`` (R, C): ``{key: (R,)}``."""
        result: dict[str, np.ndarray] = {}
        for name, sums in self.sums.items():
            result.update(self.values[name](weights @ sums))
        if self.generic:
            result.update(self._evaluate_generic(weights))
        return result

    def _evaluate_generic(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        import warnings

        from affbench.scoring.scorer import score_task

        assert self.arrays is not None
        y_true, y_score, mask = self.arrays
        task = _only_metrics(self.task, self.generic)
        found: dict[str, list[float]] = {}
        for w in weights:
            index = np.concatenate([np.repeat(rows, int(c)) for rows, c in zip(self.rows_of, w) if c] or
                                   [np.zeros(0, np.int64)])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = score_task(task, y_true[index], y_score[index], mask=mask[index])
            for key, value in scores.items():
                found.setdefault(key, []).append(value)
        return {key: np.asarray(v, dtype=np.float64) for key, v in found.items()}


@dataclass
class SeedRuns:
    """Several runs of one fold (models trained with other seeds) scored on the same test rows:
    resampled with the same clusters, their values averaged (the fold's value is their mean)."""

    runs: list[ClusterSums]

    def __post_init__(self) -> None:
        if not self.runs or any(not np.array_equal(r.clusters, self.runs[0].clusters) for r in self.runs):
            raise ValueError("the runs of one fold must share their test clusters.")

    @property
    def clusters(self) -> np.ndarray:
        return self.runs[0].clusters

    @property
    def n_clusters(self) -> int:
        return self.runs[0].n_clusters

    def evaluate(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """The runs' values for each row of ``weights``, averaged over the runs."""
        return mean_of([run.evaluate(weights) for run in self.runs])


#: One fold of a cell: one run, or several seeds' runs on the same rows.
Fold = ClusterSums | SeedRuns


def _only_metrics(task: TaskSpec, names: Sequence[str]) -> TaskSpec:
    from dataclasses import replace

    return replace(task, metrics=tuple(names), primary_metric=names[0])


def cluster_sums(task: TaskSpec, y_true: ArrayLike, y_score: ArrayLike, clusters: ArrayLike, *,
                 mask: ArrayLike | None = None) -> ClusterSums:
    """Reduce one fold's test rows to per-cluster sums of every metric of ``task``.

    Parameters
    ----------
    task : TaskSpec
    y_true, y_score, mask : array-like
        As :func:`~affbench.scoring.scorer.score_task` takes them.
    clusters : array-like of shape (n_rows,)
        The cluster (subject, video) of every row.

    Returns
    -------
    ClusterSums
    """
    from affbench.scoring.scorer import _as_mask, _class_predictions, _metric_options

    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    codes, names = pd.factorize(np.asarray(clusters).astype(str), sort=True)
    names = np.asarray(names, dtype=str)
    n = len(codes)
    if y_true.shape[0] != n:
        raise ValueError(f"clusters must give one cluster per row ({y_true.shape[0]}); got {n}.")
    keep = _as_mask(mask, y_true.shape)
    if task.kind == "expression":
        truth, score = y_true, _class_predictions(task, y_true, y_score)
        statistics = _CLASS_STATISTICS
    else:
        truth, score = y_true, y_score
        if task.kind == "au-detection":
            truth = np.where(keep, y_true, 0)
            truth = _binary_truth(truth)
        statistics = _LABEL_STATISTICS
    per_cluster = sparse.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(len(names), n))
    sums, values, generic = {}, {}, []
    shared: dict[str, np.ndarray] = {}
    for name in task.metrics:
        options = _metric_options(task, name)
        make = statistics.get(name)
        statistic = make(task, truth, score, keep, options) if make is not None else None
        if statistic is None:
            generic.append(name)
            continue
        if statistic.shared is None:
            sums[name] = statistic.cluster_sums(per_cluster)
        else:
            if statistic.shared not in shared:
                shared[statistic.shared] = statistic.cluster_sums(per_cluster)
            sums[name] = shared[statistic.shared]
        values[name] = statistic.values
    found = ClusterSums(task, names, sums, values, generic)
    if generic:
        order = np.argsort(codes, kind="stable")
        found.rows_of = np.split(order, np.cumsum(np.bincount(codes, minlength=len(names)))[:-1])
        found.arrays = (y_true, y_score, keep)
    return found


def mean_of(per_fold: Sequence[Mapping[str, np.ndarray]], *, defined_only: bool = False) -> dict[str, np.ndarray]:
    """The element-wise mean of several ``{key: values}`` (folds, or seeds' runs), on their common keys.

    ``defined_only``: average each element over the parts where it is finite (NaN only where it is
    finite in none), instead of letting one undefined part make the mean undefined."""
    keys = [k for k in per_fold[0] if all(k in f for f in per_fold)]
    if not defined_only:
        return {k: np.mean([f[k] for f in per_fold], axis=0) for k in keys}
    found = {}
    for key in keys:
        stacked = np.array([f[key] for f in per_fold], dtype=np.float64)
        defined = np.isfinite(stacked)
        total = np.where(defined, stacked, 0.0).sum(axis=0)
        count = defined.sum(axis=0)
        found[key] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return found
