"""Scoring one task's predictions: :func:`score_task` returns every metric the task names.

The benchmark harness scores every cell through :func:`score_task`; it returns a flat
``{"f1": ..., "f1/au6": ...}`` dictionary, the mean and, where the metric has them, each label's
or class's value, on the rows that task annotates.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from affbench.scoring.metrics import DegenerateMetricWarning, _pair
from affbench.scoring.registry import get_metric

if TYPE_CHECKING:
    from affbench.scoring.protocols import TaskSpec


# ----------------------------------------------------------------------------------------- model outputs


def task_scores(task_spec: Any, encoder_spec: Any, output: ArrayLike) -> np.ndarray:
    """Turn a model output into what :func:`score_task` scores for a task.

    ``task_spec`` is a :class:`~affbench.scoring.protocols.TaskSpec` or anything with its ``kind``,
    ``output_key`` and ``binarize_at``; ``encoder_spec`` is read for its ``au_output`` only.

    AU detection gets probabilities (a sigmoid of logits; intensities map to ``I / (2 t)`` clipped
    to [0, 1], so that 0.5 falls at the occurrence threshold ``t``); expression gets softmax
    probabilities; intensities and VA stay as they are.
    """
    output = np.asarray(output, dtype=np.float64)
    if task_spec.kind == "au-detection":
        kind = encoder_spec.au_output if task_spec.output_key == "au" else "logits"
        if kind == "logits":
            return 1.0 / (1.0 + np.exp(-np.clip(output, -60, 60)))
        if kind == "intensities":
            threshold = task_spec.binarize_at or 1.0
            return np.clip(output / (2.0 * threshold), 0.0, 1.0)
        return np.clip(output, 0.0, 1.0)
    if task_spec.kind == "expression":
        shifted = output - output.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)
    return output


# ----------------------------------------------------------------------------------------- score_task


def _as_mask(mask: ArrayLike | None, shape: tuple[int, ...]) -> np.ndarray:
    """The annotation mask at the shape of ``y_true`` (one flag per row is broadcast over its labels)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == shape:
        return mask
    if mask.shape == shape[:1]:
        return np.broadcast_to(mask[:, None], shape) if len(shape) == 2 else mask
    raise ValueError(f"mask must have shape {shape} or ({shape[0]},); got {mask.shape}.")


def _metric_options(task: TaskSpec, name: str) -> dict[str, Any]:
    """The task's keyword arguments for metric ``name``, with label names turned into column positions."""
    options = dict(task.metric_options.get(name, {}))
    # Option "labels" on multi-label tasks names columns; the functions take their positions.
    if "labels" in options and name in ("all_active_rate", "any_active_rate"):
        options["columns"] = [task.label_names.index(label) for label in options.pop("labels")]
    return options


def score_task(task: TaskSpec, y_true: ArrayLike, y_score: ArrayLike, *, mask: ArrayLike | None = None
               ) -> dict[str, float]:
    """Score one task's predictions with every metric the task declares, as one flat dictionary.

    Parameters
    ----------
    task : affbench.scoring.protocols.TaskSpec
        The task: its kind, labels and metric names (see :mod:`affbench.scoring.protocols`).
    y_true : array-like
        Targets as returned by ``Protocol.targets``: (n, n_labels) for AU and VA tasks, (n,) class
        indices for expression.
    y_score : array-like
        The model output for the task, after the task's activation: probabilities (sigmoid) for
        AU detection, raw values for AU intensity and VA, class scores (n, n_classes) or class
        indices (n,) for expression.
    mask : array-like of bool, optional
        True where ``y_true`` is annotated: the shape of ``y_true`` or one flag per row. Entries
        outside the mask are left out of that label's metric only.

    Returns
    -------
    dict[str, float]
        The mean over labels under the metric's name (``"f1"``, ``"icc"``, ``"ccc"``) and, for
        per-label metrics, one value per label (``"f1/au6"``, ``"ccc/valence"``); per class for
        macro F1 of expression tasks (``"f1/happy"``).

    Examples
    --------
    >>> import numpy as np
    >>> from affbench.scoring.protocols import TaskSpec
    >>> from affbench.scoring.scorer import score_task
    >>> task = TaskSpec(name="va", kind="va", label_columns=("valence", "arousal"), output_key="va",
    ...                 n_outputs=2, label_names=("valence", "arousal"), metrics=("ccc",),
    ...                 primary_metric="ccc")
    >>> truth = np.array([[0.1, 0.2], [0.4, -0.1], [-0.3, 0.5], [0.8, 0.0]])
    >>> scores = score_task(task, truth, truth)
    >>> sorted(scores), scores["ccc"]
    (['ccc', 'ccc/arousal', 'ccc/valence'], 1.0)
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    if task.kind == "expression":
        return _score_classes(task, y_true, y_score, mask)
    return _score_labels(task, y_true, y_score, mask)


# -- class tasks (expression): one class index per row


def _class_predictions(task: TaskSpec, y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """The predicted class of every row: ``y_score`` itself, or the argmax of (n, n_classes) scores."""
    if y_true.ndim != 1:
        raise ValueError(f"expression targets must be 1-D class indices; got shape {y_true.shape}.")
    if y_score.ndim == 2:
        if y_score.shape != (y_true.shape[0], task.n_outputs):
            raise ValueError(
                f"class scores must have shape ({y_true.shape[0]}, {task.n_outputs}); got {y_score.shape}."
            )
        y_score = y_score.argmax(axis=1)
    _pair(y_true, y_score)
    return y_score


def _score_classes(task: TaskSpec, y_true: np.ndarray, y_score: np.ndarray, mask: ArrayLike | None
                   ) -> dict[str, float]:
    """:func:`score_task` for a class task, on the annotated rows."""
    predicted = _class_predictions(task, y_true, y_score)
    keep = _as_mask(mask, y_true.shape)
    truth, predicted = y_true[keep], predicted[keep]
    results: dict[str, float] = {}
    for name in task.metrics:
        spec = get_metric(name)
        options = _metric_options(task, name)
        if spec.per_class:
            results.update(_per_class_scores(task, name, spec.function, options, truth, predicted))
        else:
            results[name] = float(spec.function(truth, predicted, **options))
    return results


def _per_class_scores(task: TaskSpec, name: str, function: Callable[..., Any], options: dict[str, Any],
                      truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """A per-class metric's mean over the classes present and its value for every class (nan if absent)."""
    # The official ABAW evaluation (scikit-learn's f1_score(average="macro") without labels=, as
    # the ABAW3 code calls it) averages over the classes present in truth or prediction: a class
    # absent from both has no F1 and leaves the mean; it is reported as nan.
    present = np.union1d(truth, predicted).astype(np.int64)
    absent = [task.label_names[c] for c in range(task.n_outputs) if c not in present]
    if absent and truth.size:  # shown at the line that called score_task, as _label_score's
        warnings.warn(f"{task.name} {name}: classes {', '.join(absent)} are in neither the truth nor the "
                      "prediction; they are left out of the macro mean (ABAW / scikit-learn convention).",
                      DegenerateMetricWarning, stacklevel=4)
    values = np.full(task.n_outputs, np.nan)
    if truth.size:
        values[present] = function(truth, predicted, labels=present, per_label=True, **options)
    results = {name: float(np.mean(values[present])) if truth.size else float("nan")}
    results.update({f"{name}/{label}": float(v) for label, v in zip(task.label_names, values)})
    return results


# -- label tasks (AU detection, AU intensity, VA): one column per label


def _check_label_scores(task: TaskSpec, y_true: np.ndarray, y_score: np.ndarray) -> None:
    """(n, n_labels) targets and scores of the same shape; probabilities for AU detection."""
    if y_true.ndim != 2 or y_true.shape[1] != len(task.label_names):
        raise ValueError(
            f"{task.name} targets must have shape (n, {len(task.label_names)}); got {y_true.shape}."
        )
    _pair(y_true, y_score)
    if task.kind == "au-detection" and y_score.size and (y_score.min() < 0 or y_score.max() > 1):
        raise ValueError(
            f"{task.name} scores must be probabilities in [0, 1] (apply the sigmoid to logits); "
            f"got values in [{y_score.min():.3g}, {y_score.max():.3g}]."
        )


def _score_labels(task: TaskSpec, y_true: np.ndarray, y_score: np.ndarray, mask: ArrayLike | None
                  ) -> dict[str, float]:
    """:func:`score_task` for a label task: per-label metrics on each label's annotated rows, the
    others on the rows annotated for every label."""
    _check_label_scores(task, y_true, y_score)
    keep = _as_mask(mask, y_true.shape)
    results: dict[str, float] = {}
    for name in task.metrics:
        spec = get_metric(name)
        options = _metric_options(task, name)
        if spec.per_label:
            values = []
            for j, label in enumerate(task.label_names):  # a loop, not a comprehension: see stacklevel
                values.append(_label_score(task, name, spec.function, options, y_true[keep[:, j], j:j + 1],
                                           y_score[keep[:, j], j:j + 1], label))
            results[name] = float(np.mean(values)) if values else float("nan")
            results.update({f"{name}/{label}": v for label, v in zip(task.label_names, values)})
        else:
            rows = keep.all(axis=1)
            results[name] = float(spec.function(y_true[rows], y_score[rows], **options))
    return results


def _label_score(task: TaskSpec, name: str, function: Callable[..., Any], options: dict[str, Any],
                 truth: np.ndarray, score: np.ndarray, label: str) -> float:
    """A per-label metric on one (n, 1) label column, its warnings naming the label."""
    # Kept 2-D so that the function sees a label column, not class labels.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateMetricWarning)
        value = float(function(truth, score, per_label=True, **options)[0])
    for warning in caught:  # name the label instead of "column 0" of the one-column slice
        text = str(warning.message).replace(" in column 0", "")
        # Shown at the line that called score_task (here, _score_labels, score_task, its caller).
        warnings.warn(f"{task.name} {name}/{label}: {text}", warning.category, stacklevel=4)
    return value
