"""Scores of the facial-affect literature: F1, accuracy, ICC, CCC.

Every metric follows scikit-learn's shape, ``metric(y_true, y_pred, *, options)``: numpy in, a
float out (an array with ``per_label=True``), higher is better. Two layouts are understood:

* 2-D ``(n_samples, n_labels)``: one column per action unit or per regression target. Binary
  metrics threshold probabilities at ``threshold``; every metric is computed per column and, unless
  ``per_label=True``, averaged with a plain mean over columns (the AU literature's "mean F1").
  :func:`f1` also takes scikit-learn's ``average`` (``None``, ``"micro"``, ``"weighted"``...), whose
  default here, ``"macro"``, is that plain mean.
* 1-D ``(n_samples,)``: class labels (expression) or a single regression target.

Degenerate input never yields a silent NaN and never crashes. The rule is the same everywhere:

* **empty input** gives ``nan`` (there is nothing to score);
* a statistic that is **0/0** (no positives at all for F1, no variance at all for ICC or CCC)
  gives ``0.0``, "no evidence of agreement";
* whenever the *truth* gives a metric nothing to measure (no positive in a binary column, a class
  without samples, a constant target) the value is still computed as documented.

Each of these cases emits a :class:`DegenerateMetricWarning`. Mismatched shapes raise
``ValueError`` naming both shapes.

:mod:`affbench.scoring` registers these functions by name and scores a whole task with them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # torch is imported lazily: listing metrics must not pay for it
    import torch


__all__ = [
    "TASK_KINDS",
    "ICC_KINDS",
    "F1_AVERAGES",
    "DegenerateMetricWarning",
    "accuracy",
    "f1",
    "icc",
    "icc_ratings",
    "ccc",
    "torch_ccc",
    "ccc_loss",
    "all_active_rate",
    "any_active_rate",
]

#: The kinds of task a benchmark can pose; every TaskSpec has exactly one.
TASK_KINDS: tuple[str, ...] = ("au-detection", "au-intensity", "expression", "va")
#: The six intraclass correlations of Shrout & Fleiss (1979), as "case,raters".
ICC_KINDS: tuple[str, ...] = ("1,1", "2,1", "3,1", "1,k", "2,k", "3,k")
#: The values of :func:`f1`'s ``average``: scikit-learn's, with the same meaning.
F1_AVERAGES: tuple[str | None, ...] = (None, "macro", "micro", "weighted", "samples", "binary")


class DegenerateMetricWarning(UserWarning):
    """A metric was asked to score input that makes it undefined or uninformative.

    The metric still returns its documented value (``nan`` for empty input, ``0.0`` for a 0/0
    statistic); the warning says which case occurred so that the number is not over-read.
    """


def _warn(message: str, stacklevel: int = 3) -> None:
    """Emit a DegenerateMetricWarning shown at the line that called the metric (the caller's caller
    of ``_warn``; a helper ``k`` calls below the metric passes ``3 + k``)."""
    warnings.warn(message, DegenerateMetricWarning, stacklevel=stacklevel)


# ----------------------------------------------------------------------------------------- input checks


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape; got y_true {y_true.shape} and y_pred {y_pred.shape}."
        )
    if y_true.ndim not in (1, 2):
        raise ValueError(f"expected 1-D or 2-D input; got shape {y_true.shape}.")
    return y_true, y_pred


def _binary_truth(y_true: np.ndarray) -> np.ndarray:
    values = np.unique(y_true)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(
            f"binary y_true must hold only 0 and 1; found {values[~np.isin(values, (0, 1))][:5].tolist()}."
        )
    return y_true.astype(np.int8)


def _binarize(y_pred: np.ndarray, threshold: float) -> np.ndarray:
    if y_pred.dtype.kind == "f" and np.isnan(y_pred).any():
        raise ValueError("y_pred contains NaN.")
    return (y_pred >= threshold).astype(np.int8)


def _class_labels(y: np.ndarray, name: str) -> np.ndarray:
    if y.dtype.kind == "f":
        if np.isnan(y).any() or (y != np.round(y)).any():
            raise ValueError(
                f"1-D {name} holds class labels and must be whole numbers; pass per-label "
                "probabilities as an (n_samples, n_labels) array instead."
            )
        return y.astype(np.int64)
    return y


def _float_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _pair(y_true, y_pred)
    y_true, y_pred = y_true.astype(np.float64), y_pred.astype(np.float64)
    if np.isnan(y_true).any() or np.isnan(y_pred).any():
        raise ValueError("input contains NaN; mask unannotated entries out before scoring.")
    return y_true, y_pred


def _per_column(values: list[float], per_label: bool) -> float | np.ndarray:
    """The per-label array, or its plain mean (``nan`` when there are no labels)."""
    array = np.asarray(values, dtype=np.float64)
    if per_label:
        return array
    return float(array.mean()) if array.size else float("nan")


# ----------------------------------------------------------------------------------------- accuracy


def accuracy(
    y_true: ArrayLike, y_pred: ArrayLike, *, per_label: bool = False, threshold: float = 0.5
) -> float | np.ndarray:
    """Fraction of correct predictions.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or (n_samples, n_labels)
        Class labels (1-D), or 0/1 occurrences per label (2-D).
    y_pred : array-like of the same shape
        Predicted class labels (1-D), or per-label probabilities or 0/1 decisions (2-D), which
        count as positive where ``y_pred >= threshold``.
    per_label : bool, default=False
        For 2-D input, return the accuracy of every column instead of their mean.
    threshold : float, default=0.5
        Decision threshold for 2-D input.

    Returns
    -------
    float or ndarray of shape (n_labels,)
        ``nan`` (with a :class:`DegenerateMetricWarning`) when there are no samples.

    Examples
    --------
    >>> from affbench.scoring.metrics import accuracy
    >>> accuracy([0, 2, 1, 1], [0, 2, 2, 1])
    0.75
    >>> accuracy([[1, 0], [0, 0]], [[0.9, 0.2], [0.7, 0.4]], per_label=True)
    array([0.5, 1. ])
    """
    from sklearn.metrics import accuracy_score  # where used: see _sklearn_f1

    y_true, y_pred = _pair(y_true, y_pred)
    if y_true.ndim == 1:
        if y_true.size == 0:
            _warn("accuracy of an empty input is undefined; returning nan.")
            return np.array([]) if per_label else float("nan")
        return float(accuracy_score(_class_labels(y_true, "y_true"), _class_labels(y_pred, "y_pred")))
    truth, decided = _binary_truth(y_true), _binarize(y_pred, threshold)
    if truth.shape[0] == 0:
        _warn("accuracy of an empty input is undefined; returning nan for every label.")
        return _per_column([float("nan")] * truth.shape[1], per_label)
    values = [float(accuracy_score(truth[:, j], decided[:, j])) for j in range(truth.shape[1])]
    return _per_column(values, per_label)


# ----------------------------------------------------------------------------------------- F1


def _binary_f1(truth: np.ndarray, decided: np.ndarray, zero_division: float, where: str) -> float:
    """F1 of one 0/1 column (one AU, or class 1 of binary labels), with affbench's degenerate rules.

    Called two levels below :func:`f1` (through ``_multilabel_f1`` or ``_multiclass_f1``, never
    from a comprehension), so that its warnings show at the line that called :func:`f1`.
    """
    if truth.size == 0:
        _warn(f"F1 of an empty input{where} is undefined; returning nan.", stacklevel=5)
        return float("nan")
    if not truth.any():
        if decided.any():
            _warn(f"y_true has no positive sample{where}; F1 is 0 whatever the prediction.", stacklevel=5)
        else:
            _warn(f"neither y_true nor y_pred has a positive sample{where}; F1 is 0/0, returning {zero_division}.",
                  stacklevel=5)
    return float(_sklearn_f1(truth, decided, average="binary", zero_division=zero_division))


def _sklearn_f1(truth: np.ndarray, predicted: np.ndarray, **options: Any) -> float | np.ndarray:
    """scikit-learn's ``f1_score``, without its UndefinedMetricWarning (affbench warns for itself)."""
    # imported here, not with the module: every prepare process reads the protocols (and so this
    # module) but never scores, and scikit-learn costs each of them a second to import
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import f1_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        value = f1_score(truth, predicted, **options)
    return np.asarray(value, dtype=np.float64) if options.get("average") is None else float(value)


def _f1_average(average: str | None, per_label: bool, ndim: int) -> str | None:
    """``average`` checked against the layout; ``per_label=True`` is the same as ``average=None``."""
    if average not in F1_AVERAGES:
        raise ValueError(f"average must be one of {', '.join(map(repr, F1_AVERAGES))}; got {average!r}.")
    if per_label:
        if average not in (None, "macro"):
            raise ValueError(
                f"per_label=True asks for one F1 per label or class (average=None); it cannot be combined "
                f"with average={average!r}."
            )
        return None
    if ndim == 2 and average == "binary":
        raise ValueError(
            "average='binary' scores 1-D 0/1 labels; 2-D (multilabel) input takes average=None, 'micro', "
            "'macro', 'weighted' or 'samples'."
        )
    if ndim == 1 and average == "samples":
        raise ValueError(
            "average='samples' needs 2-D (multilabel) input; 1-D input takes average=None, 'binary', "
            "'micro', 'macro' or 'weighted'."
        )
    return average


def _multilabel_f1(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    average: str | None,
    threshold: float,
    labels: Sequence[int] | None,
    zero_division: float,
) -> float | np.ndarray:
    """F1 of an (n_samples, n_labels) indicator matrix (the AU layout) under a checked ``average``."""
    truth, decided = _binary_truth(y_true), _binarize(y_pred, threshold)
    columns = list(range(truth.shape[1])) if labels is None else [int(j) for j in labels]
    if average in (None, "macro"):  # per column, each with its own degenerate warnings
        values = []
        for j in columns:  # a loop, not a comprehension: that would add a frame below f1 (Python < 3.12)
            values.append(_binary_f1(truth[:, j], decided[:, j], zero_division, f" in column {j}"))
        return _per_column(values, per_label=average is None)
    chosen = truth[:, columns]
    if average == "micro":  # the counts pooled over labels: binary F1 of the flattened matrices
        return _binary_f1(chosen.ravel(), decided[:, columns].ravel(), zero_division, "")
    if chosen.size == 0:
        _warn(f"{average} F1 of an empty input is undefined; returning nan.", stacklevel=4)
        return float("nan")
    if average == "weighted" and not chosen.any():
        _warn("y_true has no positive sample in any label, so no label has a weight; the weighted F1 is "
              "their unweighted mean (as in scikit-learn).", stacklevel=4)
    if average == "samples" and (n_empty := int((~chosen.any(axis=1)).sum())):
        _warn(f"{n_empty} of {chosen.shape[0]} samples have no positive label in y_true; their F1 is 0 "
              f"({zero_division} where y_pred has none either).", stacklevel=4)
    # scikit-learn reads an (n, 1) matrix as one column of binary labels, not as an indicator matrix:
    # an all-zero column, which labels= leaves out, keeps every width in the multilabel layout.
    pad = np.zeros((truth.shape[0], 1), dtype=truth.dtype)
    return _sklearn_f1(np.hstack([truth, pad]), np.hstack([decided, pad]), average=average, labels=columns,
                       zero_division=zero_division)


def _multiclass_f1(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    average: str | None,
    labels: Sequence[int] | None,
    zero_division: float,
) -> float | np.ndarray:
    """F1 of 1-D class labels (the expression layout) under a checked ``average``."""
    truth, predicted = _class_labels(y_true, "y_true"), _class_labels(y_pred, "y_pred")
    if average == "binary":
        return _binary_f1(_binary_truth(truth), _binary_truth(predicted), zero_division, "")
    classes = np.asarray(labels if labels is not None else np.union1d(truth, predicted), dtype=np.int64)
    if truth.size == 0 or classes.size == 0:
        _warn(f"{average or 'macro'} F1 of an empty input is undefined; returning nan.", stacklevel=4)
        return np.full(classes.size, np.nan) if average is None else float("nan")
    if average in (None, "macro"):
        absent = np.setdiff1d(classes, truth)
        if absent.size:
            _warn(f"classes {absent.tolist()} have no sample in y_true; their F1 counts as 0 in the macro mean.",
                  stacklevel=4)
        per_class = _sklearn_f1(truth, predicted, labels=classes, average=None, zero_division=zero_division)
        return per_class if average is None else float(np.mean(per_class))
    if not np.isin(truth, classes).any():
        _warn(f"no sample of y_true is in classes {classes.tolist()}; their {average} F1 measures nothing.",
              stacklevel=4)
    return _sklearn_f1(truth, predicted, labels=classes, average=average, zero_division=zero_division)


def f1(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    average: Literal["macro", "micro", "weighted", "samples", "binary"] | None = "macro",
    per_label: bool = False,
    threshold: float = 0.5,
    labels: Sequence[int] | None = None,
    zero_division: float = 0.0,
) -> float | np.ndarray:
    """F1 score with scikit-learn's ``average``: by default the mean per-AU F1, or macro F1 over classes.

    ``average`` means what it means for :func:`sklearn.metrics.f1_score`; only the default differs
    (``"macro"``, the score the facial-affect literature reports, where scikit-learn has ``"binary"``).
    2-D input is always a label-indicator matrix (scikit-learn's multilabel layout), even with one
    column.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels) or (n_samples,)
        2-D: 0/1 occurrence of every label (AU). 1-D: class labels.
    y_pred : array-like of the same shape
        2-D: probabilities (or 0/1 decisions), positive where ``y_pred >= threshold``; NaN is
        refused. 1-D: predicted class labels.
    average : {"macro", "micro", "weighted", "samples", "binary"} or None, default="macro"
        How the F1 of the labels (2-D) or classes (1-D) are combined:

        * ``None``: not at all; the F1 of every label or class, an array;
        * ``"macro"``: their unweighted mean (the AU literature's "mean F1", the expression
          "macro F1");
        * ``"micro"``: F1 of the true and false positives and negatives pooled over labels or
          classes (for 1-D input with every class, the accuracy);
        * ``"weighted"``: their mean weighted by support, the number of positives in ``y_true``;
        * ``"samples"``: 2-D only; the F1 of every sample (row), averaged over samples;
        * ``"binary"``: 1-D 0/1 labels only; the F1 of class 1.
    per_label : bool, default=False
        Return the per-label (2-D) or per-class (1-D) values: the same as ``average=None``, spelled
        as for every affbench metric (the metric registry and :func:`~affbench.scoring.scorer.score_task`
        use it). It combines with ``average=None`` or the default ``"macro"`` only.
    threshold : float, default=0.5
        Decision threshold for 2-D input.
    labels : sequence of int, optional
        As in scikit-learn, the labels to score and average over: column indices for 2-D input,
        classes for 1-D input (ignored with ``average="binary"``). For 1-D input give every class of
        the task so that a class nobody predicted or annotated counts (as ``zero_division``); the
        default uses the classes present in ``y_true`` or ``y_pred``.
    zero_division : float, default=0.0
        Value of F1 when a label has no positive in truth and prediction (0/0).

    Returns
    -------
    float or ndarray of shape (n_labels,) or (n_classes,)
        An array with ``average=None`` or ``per_label=True``, else a float. ``nan`` for empty input.
        A label or class without positives in ``y_true`` scores 0 (or ``zero_division``); that and
        empty input emit a :class:`DegenerateMetricWarning`.

    Examples
    --------
    >>> from affbench.scoring.metrics import f1
    >>> y_true = [[1, 0], [1, 1], [0, 1], [0, 0]]
    >>> y_prob = [[0.8, 0.1], [0.3, 0.9], [0.1, 0.6], [0.2, 0.7]]
    >>> f1(y_true, y_prob, average=None)
    array([0.66666667, 0.8       ])
    >>> round(f1(y_true, y_prob), 4)
    0.7333
    >>> round(f1(y_true, y_prob, average="micro"), 4)
    0.75
    >>> round(f1([0, 1, 2, 2], [0, 2, 2, 2]), 4)
    0.6
    >>> round(f1([0, 1, 2, 2], [0, 2, 2, 2], average="weighted"), 4)
    0.65
    """
    y_true, y_pred = _pair(y_true, y_pred)
    checked = _f1_average(average, per_label, y_true.ndim)
    if y_true.ndim == 2:
        return _multilabel_f1(y_true, y_pred, checked, threshold, labels, zero_division)
    return _multiclass_f1(y_true, y_pred, checked, labels, zero_division)


# ----------------------------------------------------------------------------------------- ICC


def _icc_from_mean_squares(
    kind: str, n: int, k: int, bms: float, wms: float, jms: float, ems: float
) -> tuple[float, float]:
    """Numerator and denominator of one Shrout-Fleiss form (Shrout & Fleiss 1979, Table 2)."""
    if kind == "1,1":
        return bms - wms, bms + (k - 1) * wms
    if kind == "2,1":
        return bms - ems, bms + (k - 1) * ems + k * (jms - ems) / n
    if kind == "3,1":
        return bms - ems, bms + (k - 1) * ems
    if kind == "1,k":
        return bms - wms, bms
    if kind == "2,k":
        return bms - ems, bms + (jms - ems) / n
    return bms - ems, bms  # "3,k"


def icc_ratings(ratings: ArrayLike, *, kind: str = "3,1") -> float:
    """Intraclass correlation of an (n_targets, k_raters) table, any of the six Shrout-Fleiss forms.

    With ``BMS`` the between-targets, ``JMS`` the between-raters, ``WMS`` the within-target and
    ``EMS`` the residual mean square of the two-way ANOVA:

    ====== ==================================================== ====================================
    kind   formula                                              model
    ====== ==================================================== ====================================
    "1,1"  (BMS - WMS) / (BMS + (k-1) WMS)                      one-way random, single rater
    "2,1"  (BMS - EMS) / (BMS + (k-1) EMS + k (JMS - EMS) / n)  two-way random, absolute agreement
    "3,1"  (BMS - EMS) / (BMS + (k-1) EMS)                      two-way mixed, consistency
    "1,k"  (BMS - WMS) / BMS                                    mean of k raters
    "2,k"  (BMS - EMS) / (BMS + (JMS - EMS) / n)                mean of k raters
    "3,k"  (BMS - EMS) / BMS                                    mean of k raters (Cronbach's alpha)
    ====== ==================================================== ====================================

    Parameters
    ----------
    ratings : array-like of shape (n_targets, k_raters)
        One rating per target and rater; no missing values.
    kind : {"1,1", "2,1", "3,1", "1,k", "2,k", "3,k"}, default="3,1"
        The form; "3,1" is the one used for AU intensity.

    Returns
    -------
    float
        ``nan`` with fewer than two targets, ``0.0`` when the denominator is zero (no variance
        left to explain); both with a :class:`DegenerateMetricWarning`.

    Examples
    --------
    The worked example of Shrout & Fleiss (1979): 6 targets rated by 4 judges.

    >>> from affbench.scoring.metrics import icc_ratings
    >>> table = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    >>> round(icc_ratings(table, kind="3,1"), 2)
    0.71
    >>> round(icc_ratings(table, kind="2,1"), 2)
    0.29
    """
    if kind not in ICC_KINDS:
        raise ValueError(f"unknown ICC kind {kind!r}; valid kinds are {', '.join(ICC_KINDS)}.")
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"ratings must be a 2-D (n_targets, k_raters) table; got shape {x.shape}.")
    n, k = x.shape
    if k < 2:
        raise ValueError(f"ICC needs at least two raters (columns); got shape {x.shape}.")
    if np.isnan(x).any():
        raise ValueError("ratings contain NaN; mask unannotated entries out before scoring.")
    if n == 0:
        _warn("ICC of an empty input is undefined; returning nan.")
        return float("nan")
    if n < 2:
        _warn(f"ICC needs at least two targets; got {n}; returning nan.")
        return float("nan")
    grand = x.mean()
    ss_total = float(((x - grand) ** 2).sum())
    ss_targets = k * float(((x.mean(axis=1) - grand) ** 2).sum())
    ss_raters = n * float(((x.mean(axis=0) - grand) ** 2).sum())
    ss_error = max(ss_total - ss_targets - ss_raters, 0.0)  # rounding can make it a hair negative
    bms = ss_targets / (n - 1)
    jms = ss_raters / (k - 1)
    wms = max(ss_total - ss_targets, 0.0) / (n * (k - 1))
    ems = ss_error / ((n - 1) * (k - 1))
    numerator, denominator = _icc_from_mean_squares(kind, n, k, bms, wms, jms, ems)
    # Relative to the data's own scale, so that a constant table at 1e6 is as degenerate as one at 0.
    scale = float((x**2).mean()) + 1.0
    if abs(denominator) <= 1e-12 * scale:
        _warn(f"ICC({kind}) is 0/0 (no variance between or within targets); returning 0.0.")
        return 0.0
    return float(numerator / denominator)


def icc(y_true: ArrayLike, y_pred: ArrayLike, *, kind: str = "3,1", per_label: bool = False) -> float | np.ndarray:
    """Intraclass correlation between truth and prediction, taken as two raters of every sample.

    The AU-intensity convention (docs/datasets.md: ICC(3,1) with k = 2 raters, per AU over all test
    frames, then the mean): for 2-D input every column is scored on its own.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,) or (n_samples, n_labels)
        Truth and prediction; for 2-D input every column is scored on its own. NaN is refused.
    kind : str, default="3,1"
        Any form accepted by :func:`icc_ratings`.
    per_label : bool, default=False
        For 2-D input, return the ICC of every column instead of their mean.

    Returns
    -------
    float or ndarray of shape (n_labels,)
        See :func:`icc_ratings` for degenerate input; a constant ``y_true`` also warns.

    Examples
    --------
    >>> from affbench.scoring.metrics import icc
    >>> round(icc([0, 1, 2, 3, 4], [0, 1, 2, 3, 5]), 4)
    0.9677
    >>> icc([[0, 1], [1, 2], [2, 2]], [[0, 1], [1, 2], [2, 2]], per_label=True)
    array([1., 1.])
    """
    y_true, y_pred = _float_pair(y_true, y_pred)
    if y_true.ndim == 1:
        return _icc_pair(y_true, y_pred, kind, "")
    values = [_icc_pair(y_true[:, j], y_pred[:, j], kind, f" in column {j}") for j in range(y_true.shape[1])]
    return _per_column(values, per_label)


def _icc_pair(truth: np.ndarray, predicted: np.ndarray, kind: str, where: str) -> float:
    if truth.size and np.ptp(truth) == 0:
        _warn(f"y_true is constant{where}; the ICC measures nothing about the prediction's ranking.")
    return icc_ratings(np.column_stack([truth, predicted]), kind=kind)


# ----------------------------------------------------------------------------------------- CCC


def _ccc_1d(x: np.ndarray, y: np.ndarray, where: str) -> float:
    if x.size == 0:
        _warn(f"CCC of an empty input{where} is undefined; returning nan.")
        return float("nan")
    mean_x, mean_y = x.mean(), y.mean()
    var_x, var_y = x.var(), y.var()  # population statistics (ddof=0), as in the ABAW code
    covariance = ((x - mean_x) * (y - mean_y)).mean()
    denominator = var_x + var_y + (mean_x - mean_y) ** 2
    if denominator <= 1e-15 * (1.0 + mean_x**2):
        _warn(f"CCC is 0/0{where} (truth and prediction are the same constant); returning 0.0.")
        return 0.0
    if var_x == 0:
        _warn(f"y_true is constant{where}; CCC can only be 0 or undefined.")
    return float(2.0 * covariance / denominator)


def ccc(y_true: ArrayLike, y_pred: ArrayLike, *, per_label: bool = False) -> float | np.ndarray:
    """Lin's (1989) concordance correlation coefficient, with population statistics.

    ``CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))**2)`` with ``ddof=0``. It is
    Pearson's correlation shrunk by any difference in location or scale, so 1 means exact agreement.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,) or (n_samples, n_labels)
        For 2-D input (e.g. valence and arousal) every column is scored on its own.
    per_label : bool, default=False
        For 2-D input, return the CCC of every column instead of their mean (the ABAW VA score).

    Returns
    -------
    float or ndarray of shape (n_labels,)
        ``nan`` for empty input; ``0.0`` when truth and prediction are the same constant (0/0);
        both, and a constant ``y_true``, emit a :class:`DegenerateMetricWarning`.

    Examples
    --------
    >>> from affbench.scoring.metrics import ccc
    >>> ccc([0.1, 0.4, -0.3, 0.8], [0.1, 0.4, -0.3, 0.8])
    1.0
    >>> round(ccc([0.1, 0.4, -0.3, 0.8], [0.2, 0.5, -0.2, 0.9]), 4)
    0.9701
    """
    y_true, y_pred = _float_pair(y_true, y_pred)
    if y_true.ndim == 1:
        return _ccc_1d(y_true, y_pred, "")
    values = [_ccc_1d(y_true[:, j], y_pred[:, j], f" in column {j}") for j in range(y_true.shape[1])]
    return _per_column(values, per_label)


def torch_ccc(y_true: torch.Tensor, y_pred: torch.Tensor, *, eps: float = 1e-8, ddof: int = 0) -> torch.Tensor:
    """Differentiable CCC over the batch dimension (dim 0), one value per column.

    Same definition as :func:`ccc` (population statistics); ``eps`` in the denominator keeps the
    gradient finite for a constant batch. CCC is symmetric, so the argument order does not matter.

    Parameters
    ----------
    y_true, y_pred : torch.Tensor of shape (batch,) or (batch, n_targets)
        Truth and prediction.
    eps : float, default=1e-8
        Added to the denominator.
    ddof : {0, 1}, default=0
        Variances and covariance divide by ``n - ddof``. The metric uses 0; the ABAW3 reference's
        training loss uses ``torch.std`` (1), which weighs the squared mean difference slightly less.

    Returns
    -------
    torch.Tensor of shape () or (n_targets,)

    Examples
    --------
    >>> import torch
    >>> from affbench.scoring.metrics import torch_ccc
    >>> x = torch.tensor([0.1, 0.4, -0.3, 0.8])
    >>> round(float(torch_ccc(x, x + 0.1)), 4)
    0.9701
    """
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape; got y_true {tuple(y_true.shape)} "
            f"and y_pred {tuple(y_pred.shape)}."
        )
    mean_true, mean_pred = y_true.mean(dim=0), y_pred.mean(dim=0)
    n = y_true.shape[0] - ddof
    var_true = ((y_true - mean_true) ** 2).sum(dim=0) / n
    var_pred = ((y_pred - mean_pred) ** 2).sum(dim=0) / n
    covariance = ((y_true - mean_true) * (y_pred - mean_pred)).sum(dim=0) / n
    return 2.0 * covariance / (var_true + var_pred + (mean_true - mean_pred) ** 2 + eps)


def ccc_loss(y_true: torch.Tensor, y_pred: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Training loss ``1 - CCC``, averaged over columns: (1 - CCC_V + 1 - CCC_A) / 2 for VA.

    Parameters
    ----------
    y_true, y_pred : torch.Tensor of shape (batch,) or (batch, n_targets)
        Truth and prediction.
    eps : float, default=1e-8
        Passed to :func:`torch_ccc`.

    Returns
    -------
    torch.Tensor of shape ()
        Differentiable; 0 for exact agreement, up to 2 for perfect disagreement.

    Examples
    --------
    >>> import torch
    >>> from affbench.scoring.metrics import ccc_loss
    >>> target = torch.tensor([[0.1, -0.2], [0.5, 0.3], [-0.4, 0.0]])
    >>> float(ccc_loss(target, target.clone())) < 1e-6
    True
    """
    return (1.0 - torch_ccc(y_true, y_pred, eps=eps)).mean()


# ----------------------------------------------------------------------------------------- AU co-activation


def _active_rows(
    y_true: ArrayLike | None, y_pred: ArrayLike, columns: Sequence[int] | None, threshold: float
) -> np.ndarray:
    y_pred = np.asarray(y_pred)
    if y_true is not None and np.asarray(y_true).shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape; got y_true {np.asarray(y_true).shape} "
            f"and y_pred {y_pred.shape}."
        )
    if y_pred.ndim != 2:
        raise ValueError(f"y_pred must be (n_samples, n_labels); got shape {y_pred.shape}.")
    chosen = list(range(y_pred.shape[1])) if columns is None else list(columns)
    return _binarize(y_pred[:, chosen], threshold)


def all_active_rate(
    y_true: ArrayLike | None, y_pred: ArrayLike, *, columns: Sequence[int] | None = None, threshold: float = 0.5
) -> float:
    """Fraction of samples whose predicted AUs in ``columns`` are all active.

    The thesis' Table 6 ("AU6 and AU12" on CAER-S Happy images, whose AUs are assumed to be 6+12):
    a sample counts as right when every listed AU is predicted. ``y_true`` is only checked for
    shape (it may be ``None``): the expected AUs are the ``columns`` themselves.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels) or None
        Only checked for shape.
    y_pred : array-like of shape (n_samples, n_labels)
        Per-label probabilities or 0/1 decisions, active where ``y_pred >= threshold``.
    columns : sequence of int, optional
        The label columns that must all be active; default: every column.
    threshold : float, default=0.5
        Decision threshold.

    Returns
    -------
    float
        ``nan`` (with a :class:`DegenerateMetricWarning`) when there are no samples.

    Examples
    --------
    >>> from affbench.scoring.metrics import all_active_rate
    >>> probs = [[0.9, 0.8, 0.1], [0.9, 0.2, 0.1], [0.6, 0.7, 0.9]]
    >>> round(all_active_rate(None, probs, columns=[0, 1]), 4)
    0.6667
    """
    active = _active_rows(y_true, y_pred, columns, threshold)
    if active.shape[0] == 0:
        _warn("all_active_rate of an empty input is undefined; returning nan.")
        return float("nan")
    return float(active.all(axis=1).mean())


def any_active_rate(
    y_true: ArrayLike | None, y_pred: ArrayLike, *, columns: Sequence[int] | None = None, threshold: float = 0.5
) -> float:
    """Fraction of samples with at least one predicted AU of ``columns`` active (Table 6, "AU6 or AU12").

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels) or None
        Only checked for shape.
    y_pred : array-like of shape (n_samples, n_labels)
        Per-label probabilities or 0/1 decisions, active where ``y_pred >= threshold``.
    columns : sequence of int, optional
        The label columns of which one must be active; default: every column.
    threshold : float, default=0.5
        Decision threshold.

    Returns
    -------
    float
        ``nan`` (with a :class:`DegenerateMetricWarning`) when there are no samples.

    Examples
    --------
    >>> from affbench.scoring.metrics import any_active_rate
    >>> probs = [[0.9, 0.8, 0.1], [0.1, 0.2, 0.9], [0.6, 0.2, 0.9]]
    >>> round(any_active_rate(None, probs, columns=[0, 1]), 4)
    0.6667
    """
    active = _active_rows(y_true, y_pred, columns, threshold)
    if active.shape[0] == 0:
        _warn("any_active_rate of an empty input is undefined; returning nan.")
        return float("nan")
    return float(active.any(axis=1).mean())
