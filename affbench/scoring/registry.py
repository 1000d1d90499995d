"""The metric registry: every metric by name, with its direction, task kinds and reporting options.

``affbench list metrics`` prints it; a suite names metrics from it; a task's protocol
(:mod:`affbench.scoring.protocols`) checks its metric names against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from affbench.errors import UnknownNameError
from affbench.scoring.metrics import (
    TASK_KINDS,
    accuracy,
    all_active_rate,
    any_active_rate,
    ccc,
    f1,
    icc,
)

# ----------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    Parameters
    ----------
    name : str
        The name suites, tasks and result keys use.
    function : callable
        ``function(y_true, y_pred, **options)``, as in :mod:`affbench.scoring.metrics`.
    higher_is_better : bool
        The direction, for model selection (:func:`is_better`).
    task_kinds : tuple of str
        The :data:`~affbench.scoring.metrics.TASK_KINDS` it applies to.
    description : str
        One line for ``affbench list metrics``.
    per_label : bool, default=True
        The function takes ``per_label=True`` on (n, n_labels) input and
        :func:`~affbench.scoring.scorer.score_task` reports it per label (``"f1/au6"``) and as the
        mean (``"f1"``).
    per_class : bool, default=False
        On class labels the function takes ``labels=`` and ``per_label=True`` (the per-class values,
        ``average=None`` for :func:`~affbench.scoring.metrics.f1`) and is reported per class too.
    version : int, default=1
        The version of the metric's definition (its conventions: thresholds, averaging, degenerate
        cases). Bumped whenever a change could move a score; every result record states the
        versions it was scored with, and ``affbench rescore`` recomputes records made with others.
    """

    name: str
    function: Callable[..., Any]
    higher_is_better: bool
    task_kinds: tuple[str, ...]
    description: str
    per_label: bool = True
    per_class: bool = False
    version: int = 1


_REGISTRY: dict[str, MetricSpec] = {}


def _register(spec: MetricSpec) -> None:
    """Add ``spec`` to the registry (its task kinds must be known)."""
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
    """The registered metric called ``name``.

    Parameters
    ----------
    name : str
        A registered metric name (``"f1"``, ``"icc"``...), without a ``"/label"`` suffix.

    Returns
    -------
    MetricSpec

    Raises
    ------
    affbench.errors.UnknownNameError
        Listing the registered names, when there is no metric of that name.

    Examples
    --------
    >>> from affbench.scoring.registry import get_metric
    >>> spec = get_metric("f1")
    >>> spec.higher_is_better, spec.task_kinds
    (True, ('au-detection', 'expression'))
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("metric", name, _REGISTRY) from None


def list_metrics(task_kind: str | None = None) -> list[MetricSpec]:
    """Every registered metric, or those applying to ``task_kind``, sorted by name.

    Parameters
    ----------
    task_kind : str, optional
        One of :data:`~affbench.scoring.metrics.TASK_KINDS`.

    Returns
    -------
    list of MetricSpec

    Examples
    --------
    >>> from affbench.scoring.registry import list_metrics
    >>> [spec.name for spec in list_metrics("au-intensity")]
    ['ccc', 'icc']
    """
    if task_kind is not None and task_kind not in TASK_KINDS:
        raise UnknownNameError("task kind", task_kind, TASK_KINDS)
    return [s for _, s in sorted(_REGISTRY.items()) if task_kind is None or task_kind in s.task_kinds]


def is_better(name: str, candidate: float | None, incumbent: float | None) -> bool:
    """Whether ``candidate`` beats ``incumbent`` on metric ``name``; for model selection.

    Parameters
    ----------
    name : str
        A metric name, optionally with a label suffix (``"f1/au6"``).
    candidate, incumbent : float or None
        The new and the best value so far; None or nan is no value. A missing candidate never wins,
        any candidate beats a missing incumbent.

    Returns
    -------
    bool

    Examples
    --------
    >>> from affbench.scoring.registry import is_better
    >>> is_better("ccc", 0.4, 0.3), is_better("f1/au6", float("nan"), 0.1), is_better("icc", 0.1, None)
    (True, False, True)
    """
    if candidate is None or math.isnan(candidate):
        return False
    if incumbent is None or math.isnan(incumbent):
        return True
    spec = get_metric(name.split("/", 1)[0])
    return candidate > incumbent if spec.higher_is_better else candidate < incumbent
