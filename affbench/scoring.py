"""Scoring a task: the metric registry the harness reads, and :func:`evaluate`.

:func:`evaluate` is the one entry point of the benchmark harness: it scores a task declared in
:mod:`affbench.protocols` with every metric the task names and returns a flat
``{"f1": ..., "f1/au6": ...}`` dictionary. The metric functions themselves live in
:mod:`affbench.metrics`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from affbench.errors import UnknownNameError
from affbench.metrics import (
    TASK_KINDS,
    DegenerateMetricWarning,
    _pair,
    _warn,
    accuracy,
    all_active_rate,
    any_active_rate,
    ccc,
    f1,
    icc,
)

if TYPE_CHECKING:
    from affbench.protocols import TaskSpec

__all__ = ["MetricSpec", "get_metric", "list_metrics", "evaluate", "is_better"]


# ----------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    ``per_label``: the function takes ``per_label=True`` on (n, n_labels) input and :func:`evaluate`
    reports it per label (``"f1/au6"``) and as the mean (``"f1"``). ``per_class``: on class labels it
    takes ``labels=`` and ``per_label=True`` and is reported per class too.
    """

    name: str
    function: Callable[..., Any]
    higher_is_better: bool
    task_kinds: tuple[str, ...]
    description: str
    per_label: bool = True
    per_class: bool = False


_REGISTRY: dict[str, MetricSpec] = {}


def _register(spec: MetricSpec) -> None:
    unknown = set(spec.task_kinds) - set(TASK_KINDS)
    assert not unknown, f"{spec.name}: unknown task kinds {unknown}"
    _REGISTRY[spec.name] = spec


for _spec in (
    MetricSpec("accuracy", accuracy, True, ("au-detection", "expression"),
               "Fraction of correct predictions; per AU and their mean for AU detection."),
    MetricSpec("f1", f1, True, ("au-detection", "expression"),
               "AU detection: mean of per-AU binary F1 (sigmoid >= 0.5); expression: macro F1.",
               per_class=True),
    MetricSpec("icc", icc, True, ("au-intensity",),
               "ICC(3,1) of Shrout & Fleiss between truth and prediction, per AU, then the mean."),
    MetricSpec("ccc", ccc, True, ("au-intensity", "va"),
               "Lin's concordance correlation (population statistics), per target, then the mean."),
    MetricSpec("all_active_rate", all_active_rate, True, ("au-detection",),
               "Fraction of samples whose predicted AUs in the given columns are all active (AU6 and AU12).",
               per_label=False),
    MetricSpec("any_active_rate", any_active_rate, True, ("au-detection",),
               "Fraction of samples with any predicted AU of the given columns active (AU6 or AU12).",
               per_label=False),
):
    _register(_spec)


def get_metric(name: str) -> MetricSpec:
    """The registered metric called ``name``; :class:`~affbench.errors.UnknownNameError` otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("metric", name, _REGISTRY) from None


def list_metrics(task_kind: str | None = None) -> list[MetricSpec]:
    """Every registered metric (those applying to ``task_kind`` when given), by name."""
    if task_kind is not None and task_kind not in TASK_KINDS:
        raise UnknownNameError("task kind", task_kind, TASK_KINDS)
    return [s for _, s in sorted(_REGISTRY.items()) if task_kind is None or task_kind in s.task_kinds]


# ----------------------------------------------------------------------------------------- evaluate


def _as_mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == shape:
        return mask
    if mask.shape == shape[:1]:
        return np.broadcast_to(mask[:, None], shape) if len(shape) == 2 else mask
    raise ValueError(f"mask must have shape {shape} or ({shape[0]},); got {mask.shape}.")


def _metric_options(task: TaskSpec, name: str) -> dict[str, Any]:
    options = dict(task.metric_options.get(name, {}))
    # Option "labels" on multi-label tasks names columns; the functions take their positions.
    if "labels" in options and name in ("all_active_rate", "any_active_rate"):
        options["columns"] = [task.label_names.index(label) for label in options.pop("labels")]
    return options


def evaluate(task: TaskSpec, y_true, y_score, *, mask=None) -> dict[str, float]:
    """Score one task's predictions with every metric the task declares, as one flat dictionary.

    Parameters
    ----------
    task : affbench.protocols.TaskSpec
        The task: its kind, labels and metric names (see :mod:`affbench.protocols`).
    y_true : ndarray
        Targets as returned by ``Protocol.targets``: (n, n_labels) for AU and VA tasks, (n,) class
        indices for expression.
    y_score : ndarray
        The model output for the task, after the task's activation: probabilities (sigmoid) for
        AU detection, raw values for AU intensity and VA, class scores (n, n_classes) or class
        indices (n,) for expression.
    mask : ndarray of bool, optional
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
    >>> from affbench.protocols import TaskSpec
    >>> from affbench.scoring import evaluate
    >>> task = TaskSpec(name="va", kind="va", label_columns=("valence", "arousal"), output_key="va",
    ...                 n_outputs=2, label_names=("valence", "arousal"), metrics=("ccc",),
    ...                 primary_metric="ccc")
    >>> truth = np.array([[0.1, 0.2], [0.4, -0.1], [-0.3, 0.5], [0.8, 0.0]])
    >>> scores = evaluate(task, truth, truth)
    >>> sorted(scores), scores["ccc"]
    (['ccc', 'ccc/arousal', 'ccc/valence'], 1.0)
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    results: dict[str, float] = {}
    if task.kind == "expression":
        if y_true.ndim != 1:
            raise ValueError(f"expression targets must be 1-D class indices; got shape {y_true.shape}.")
        if y_score.ndim == 2:
            if y_score.shape != (y_true.shape[0], task.n_outputs):
                raise ValueError(
                    f"class scores must have shape ({y_true.shape[0]}, {task.n_outputs}); got {y_score.shape}."
                )
            y_score = y_score.argmax(axis=1)
        _pair(y_true, y_score)
        keep = _as_mask(mask, y_true.shape)
        truth, predicted = y_true[keep], y_score[keep]
        # The official ABAW evaluation (scikit-learn's f1_score(average="macro") without labels=, as
        # the ABAW3 code calls it) averages over the classes present in truth or prediction: a class
        # absent from both has no F1 and leaves the mean; it is reported as nan.
        present = np.union1d(truth, predicted).astype(np.int64)
        absent = [task.label_names[c] for c in range(task.n_outputs) if c not in present]
        for name in task.metrics:
            spec = get_metric(name)
            options = _metric_options(task, name)
            if spec.per_class:
                if absent and truth.size:
                    _warn(f"{task.name} {name}: classes {', '.join(absent)} are in neither the truth nor the "
                          "prediction; they are left out of the macro mean (ABAW / scikit-learn convention).")
                values = np.full(task.n_outputs, np.nan)
                if truth.size:
                    values[present] = spec.function(truth, predicted, labels=present, per_label=True, **options)
                results[name] = float(np.mean(values[present])) if truth.size else float("nan")
                results.update({f"{name}/{label}": float(v) for label, v in zip(task.label_names, values)})
            else:
                results[name] = float(spec.function(truth, predicted, **options))
        return results

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
    keep = _as_mask(mask, y_true.shape)
    for name in task.metrics:
        spec = get_metric(name)
        options = _metric_options(task, name)
        if spec.per_label:
            # Each column on its own annotated rows, kept 2-D so that the function sees a label column.
            values = []
            for j, label in enumerate(task.label_names):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", DegenerateMetricWarning)
                    values.append(float(spec.function(y_true[keep[:, j], j:j + 1], y_score[keep[:, j], j:j + 1],
                                                      per_label=True, **options)[0]))
                for warning in caught:  # name the label instead of "column 0" of the one-column slice
                    text = str(warning.message).replace(" in column 0", "")
                    warnings.warn(f"{task.name} {name}/{label}: {text}", warning.category, stacklevel=2)
            results[name] = float(np.mean(values)) if values else float("nan")
            results.update({f"{name}/{label}": v for label, v in zip(task.label_names, values)})
        else:
            rows = keep.all(axis=1)
            results[name] = float(spec.function(y_true[rows], y_score[rows], **options))
    return results


def is_better(name: str, candidate: float, incumbent: float | None) -> bool:
    """Whether ``candidate`` beats ``incumbent`` on metric ``name`` (nan never wins); for model selection."""
    if candidate is None or math.isnan(candidate):
        return False
    if incumbent is None or math.isnan(incumbent):
        return True
    spec = get_metric(name.split("/", 1)[0])
    return candidate > incumbent if spec.higher_is_better else candidate < incumbent
