"""Trivial predictors scored on a cell's own test rows, so a table shows what an encoder adds.

An F1 of 0.000 or an accuracy of 0.734 means little alone: on DISFA, predicting "absent" for every
AU already reaches that accuracy. Each cell's record therefore carries the scores of predictors that
look at no image, computed with the same metric code on the same test rows (and, for the fitted
ones, the same training rows) as the encoder:

==================  ==================  ==============================================================
task kind           baseline            prediction
==================  ==================  ==============================================================
AU detection        ``all-present``     every AU present on every row
AU detection        ``all-absent``      every AU absent on every row
AU detection        ``label-frequency`` each AU present at random with its training frequency *p*;
                                        reported as the value of the expected confusion counts
                                        (F1 = 2pq / (p + q), accuracy = pq + (1 - p)(1 - q), q the
                                        test frequency); only F1 and accuracy
expression          ``majority-class``  the most frequent training class on every row
AU intensity, VA    ``training-mean``   each label's training mean on every row (CCC is then 0 and
                                        ICC(3,1) is 0 or undefined: the point of showing them)
==================  ==================  ==============================================================

The fitted baselines need training rows; a cell without any (an evaluation-only task built from
test rows) gets the unfitted ones only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from affbench.scoring.scorer import score_task

if TYPE_CHECKING:
    from affbench.scoring.protocols import TaskSpec

#: One line per baseline, for table footnotes and the README.
DESCRIPTIONS = {
    "all-present": "every AU predicted present",
    "all-absent": "every AU predicted absent",
    "label-frequency": "each AU predicted present at random with its training frequency (expected counts)",
    "majority-class": "the most frequent training class predicted for every row",
    "training-mean": "each label's training mean predicted for every row",
}

#: Metrics the label-frequency predictor is reported for (those with a closed form from counts).
LABEL_FREQUENCY_METRICS = ("f1", "accuracy")


def trivial_baselines(task_spec: TaskSpec, y: np.ndarray, mask: np.ndarray, rows: Mapping[str, ArrayLike]
                      ) -> dict[str, dict[str, float | None]]:
    """The trivial predictors' metrics on ``rows["test"]``, fitted on ``rows["train"]``.

    Parameters
    ----------
    task_spec : affbench.scoring.protocols.TaskSpec
        The task whose metrics are computed.
    y, mask : ndarray
        The task's targets and annotation mask over the whole label table (as in
        :class:`affbench.training.fit.TaskData`).
    rows : mapping
        ``"train"`` and ``"test"`` row positions.

    Returns
    -------
    dict
        ``{baseline name: {metric key: value}}`` with the keys :func:`affbench.scoring.scorer.score_task`
        gives (``"f1"``, ``"f1/au6"``...), a value that is not finite as None; empty when there are
        no test rows.

    Examples
    --------
    >>> import numpy as np
    >>> from affbench.scoring.baselines import trivial_baselines
    >>> from affbench.scoring.protocols import TaskSpec
    >>> task = TaskSpec(name="expression", kind="expression", label_columns=("expression",),
    ...                 output_key="expression", n_outputs=2, label_names=("calm", "happy"),
    ...                 metrics=("accuracy",), primary_metric="accuracy")
    >>> y = np.array([0, 0, 1, 0, 1, 1])
    >>> trivial_baselines(task, y, np.ones(6, dtype=bool), {"train": [0, 1, 2], "test": [3, 4, 5]})
    {'majority-class': {'accuracy': 0.3333333333333333}}
    """
    test = np.asarray(rows.get("test", []), dtype=np.int64)
    train = np.asarray(rows.get("train", []), dtype=np.int64)
    if len(test) == 0:
        return {}
    found: dict[str, dict[str, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate constant predictions: the values are the point
        for name, (truth, prediction, annotated) in constant_predictions(task_spec, y, mask, rows).items():
            found[name] = score_task(task_spec, truth, prediction, mask=annotated)
        if task_spec.kind == "au-detection" and len(train):
            found["label-frequency"] = _label_frequency(task_spec, y[train], mask[train], y[test], mask[test])
    return {name: {k: _finite_or_none(v) for k, v in values.items()} for name, values in found.items()}


#: Baselines whose value is an expectation over random predictions, not a prediction: no interval by nature.
EXPECTED_VALUES = ("label-frequency",)


def constant_predictions(task_spec: TaskSpec, y: np.ndarray, mask: np.ndarray, rows: Mapping[str, ArrayLike]
                         ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The baselines that predict one constant, as ``{name: (test targets, prediction, test mask)}``
    (unannotated targets zeroed), ready for score_task or a bootstrap; ``label-frequency`` is no
    prediction but an expectation, so it is not among them."""
    test = np.asarray(rows.get("test", []), dtype=np.int64)
    if len(test) == 0:
        return {}
    return predictions_from_constants(task_spec, y[test], mask[test], fitted_constants(task_spec, y, mask, rows))


def fitted_constants(task_spec: TaskSpec, y: np.ndarray, mask: np.ndarray, rows: Mapping[str, ArrayLike]
                     ) -> dict[str, Any]:
    """What the fitted constant baselines learn from ``rows["train"]``: ``{"majority-class": class}``
    or ``{"training-mean": [mean per label]}`` (empty without training rows or where none is defined).

    Kept beside a cell's test outputs, these let its baselines be scored again without the training rows.
    """
    train = np.asarray(rows.get("train", []), dtype=np.int64)
    if not len(train):
        return {}
    if task_spec.kind == "expression":
        classes = y[train][mask[train]].astype(np.int64)
        if classes.size:
            return {"majority-class": int(np.bincount(classes, minlength=task_spec.n_outputs).argmax())}
    elif task_spec.kind in ("au-intensity", "va"):
        means = _masked_means(y[train], mask[train])
        if not np.isnan(means).any():
            return {"training-mean": [float(m) for m in np.atleast_1d(means)]}
    return {}


def predictions_from_constants(task_spec: TaskSpec, y_test: np.ndarray, mask_test: np.ndarray,
                               constants: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The constant baselines' ``{name: (targets, prediction, mask)}`` on test targets ``y_test``,
    with the fitted values of :func:`fitted_constants` (the AU detection ones need none)."""
    if len(y_test) == 0:
        return {}
    found: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if task_spec.kind == "au-detection":
        clean = np.where(mask_test, y_test, 0)
        for name, value in (("all-present", 1.0), ("all-absent", 0.0)):
            found[name] = (clean, np.full(clean.shape, value), mask_test)
    elif task_spec.kind == "expression" and "majority-class" in constants:
        clean = np.where(mask_test, y_test, 0).astype(np.int64)
        found["majority-class"] = (clean, np.full(clean.shape, int(constants["majority-class"])), mask_test)
    elif task_spec.kind in ("au-intensity", "va") and "training-mean" in constants:
        clean = np.where(mask_test, y_test, 0.0)
        means = np.asarray(constants["training-mean"], dtype=np.float64)
        found["training-mean"] = (clean, np.broadcast_to(means, clean.shape).copy(), mask_test)
    return found


def _label_frequency(task_spec: TaskSpec, y_train: np.ndarray, mask_train: np.ndarray, y_test: np.ndarray,
                     mask_test: np.ndarray) -> dict[str, float]:
    """Expected-count F1 and accuracy of predicting each label present with its training frequency."""
    metrics = [m for m in task_spec.metrics if m in LABEL_FREQUENCY_METRICS]
    p = _masked_means(y_train, mask_train)
    q = _masked_means(y_test, mask_test)
    result: dict[str, float] = {}
    for metric in metrics:
        if metric == "f1":
            values = np.where(p + q > 0, 2 * p * q / np.where(p + q > 0, p + q, 1.0), 0.0)
        else:
            values = p * q + (1 - p) * (1 - q)
        values = np.where(np.isnan(p) | np.isnan(q), np.nan, values)
        result[metric] = float(np.mean(values)) if values.size else float("nan")  # as score_task: NaN stays NaN
        result.update({f"{metric}/{label}": float(v) for label, v in zip(task_spec.label_names, values)})
    return result


def _masked_means(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-column mean over annotated entries (NaN for a column with none)."""
    y = np.where(mask, np.nan_to_num(np.asarray(y, dtype=np.float64)), 0.0)
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, y.sum(axis=0) / np.maximum(counts, 1), np.nan)


def _finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None where it is nan or infinite (JSON has no nan)."""
    value = float(value)
    return value if np.isfinite(value) else None
