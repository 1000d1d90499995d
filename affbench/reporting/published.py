"""Numbers a paper reports, declared in a suite next to the experiments that reproduce them.

A suite TOML may hold any number of ``[[published]]`` tables::

    [[published]]
    experiment = "megraph"          # an [[experiment]] id of the same suite
    task = "au-detection"           # one of that experiment's tasks
    metric = "f1"                   # a registered metric (affbench list metrics)
    value = 63.1                    # the overall value (optional when labels are given)
    labels = { au1 = 54.6, au2 = 47.1 }   # per-label values (optional)
    scale = 0.01                    # multiply to get affbench's units (the paper gives percent)
    source = "Luo et al. 2022, IJCAI, Table 2 (DISFA), row 'Ours (ResNet-50)'"
    notes = "what differs from affbench's setting"   # optional

:func:`comparison_table` puts each published value beside affbench's mean over folds of the same
(suite, experiment, task, metric, label) and their difference (affbench - paper).

An experiment that scores released weights (``[experiment.published] tag = ...``) and has no
``[[published]]`` table of its own gets the numbers the tag's paper reports
(:mod:`affbench.encoders.published`), through :func:`released_tables`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affbench.errors import AffbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KEYS = ("experiment", "task", "metric", "value", "labels", "scale", "source", "notes")
COMPARISON_COLUMNS = ("suite", "experiment", "name", "dataset", "task", "encoder", "metric", "label",
                      "paper", "affbench", "affbench_std", "folds", "difference", "source", "notes",
                      "affbench_ci_low", "affbench_ci_high")


@dataclass(frozen=True)
class Published:
    """The values one paper reports for one (experiment, task, metric), in affbench's units."""

    experiment: str
    task: str
    metric: str
    values: Mapping[str, float]  # label -> value; "" is the overall value
    source: str
    notes: str = ""
    paper_values: Mapping[str, float] = field(default_factory=dict)  # as printed, before scale


def parse_published(tables: Sequence[Mapping[str, Any]], experiment_tasks: Mapping[str, Sequence[str]],
                    where: str) -> list[Published]:
    """Check and convert a suite's ``[[published]]`` tables; each mistake is one clear sentence.

    ``experiment_tasks`` maps the suite's experiment ids to their tasks.
    """
    from affbench.scoring.registry import get_metric

    found = []
    for index, table in enumerate(tables):
        label = f"[[published]] #{index + 1} of {where}"
        if not isinstance(table, Mapping):
            raise AffbenchError(f"{label} must be a table.")
        unknown = sorted(set(table) - set(KEYS))
        if unknown:
            raise AffbenchError(f"Unknown key {unknown[0]!r} in {label}; the keys are: {', '.join(KEYS)}.")
        for required in ("experiment", "task", "metric", "source"):
            if not table.get(required):
                raise AffbenchError(f"{label} has no {required!r}.")
        experiment = table["experiment"]
        if experiment not in experiment_tasks:
            raise AffbenchError(f"{label} names experiment {experiment!r}, which the suite does not declare; "
                                f"its experiments are: {', '.join(experiment_tasks)}.")
        if table["task"] not in experiment_tasks[experiment]:
            raise AffbenchError(f"{label}: experiment {experiment!r} has no task {table['task']!r}; its tasks are: "
                                f"{', '.join(experiment_tasks[experiment])}.")
        get_metric(table["metric"])  # UnknownNameError lists the registered ones
        printed: dict[str, float] = {}
        if "value" in table:
            printed[""] = _number(table["value"], f"{label} value")
        labels = table.get("labels", {})
        if not isinstance(labels, Mapping):
            raise AffbenchError(f"{label}: labels must be a table such as {{ au1 = 0.5 }}.")
        for name, value in labels.items():
            printed[str(name)] = _number(value, f"{label} labels.{name}")
        if not printed:
            raise AffbenchError(f"{label} gives neither a value nor labels.")
        scale = _number(table.get("scale", 1.0), f"{label} scale")
        found.append(Published(
            experiment=experiment, task=table["task"], metric=table["metric"],
            values={k: round(v * scale, 12) for k, v in printed.items()}, source=str(table["source"]),
            notes=str(table.get("notes", "")), paper_values=printed,
        ))
    return found


def released_tables(experiments: Sequence[Any], declared: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """``[[published]]`` tables for the experiments that score a released tag and declare none.

    Parameters
    ----------
    experiments : sequence of mapping
        The suite's ``[[experiment]]`` tables as parsed from TOML.
    declared : sequence of mapping
        The suite's own ``[[published]]`` tables: an experiment named there keeps only those.

    Returns
    -------
    list of dict
        One table per number the tag's paper reports, in the form :func:`parse_published` checks.
    """
    from affbench.encoders.published import get_published, group_tags

    named = {t.get("experiment") for t in declared if isinstance(t, Mapping)}
    tables: list[dict[str, Any]] = []
    for experiment in experiments:
        released = experiment.get("published") if isinstance(experiment, Mapping) else None
        if not isinstance(released, Mapping) or experiment.get("id") in named or "tag" not in released:
            continue
        published = get_published(next(iter(group_tags(str(released["tag"])).values())))
        for number in published.reported:
            if number.task not in experiment.get("tasks", ()):
                continue
            table: dict[str, Any] = {"experiment": experiment["id"], "task": number.task, "metric": number.metric,
                                     "scale": number.scale, "source": number.source, "notes": number.notes}
            if number.value is not None:
                table["value"] = number.value
            if number.labels:
                table["labels"] = dict(number.labels)
            tables.append(table)
    return tables


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AffbenchError(f"{where} must be a number; got {value!r}.")
    return float(value)


def load_published(path: str | os.PathLike) -> list[Published]:
    """The published values a suite TOML file declares (none when it declares none)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise AffbenchError(f"The suite file {path} is not valid TOML: {exc}.") from None
    # experiment id -> its tasks, as the TOML gives them (parse_published checks what it uses)
    tasks: dict[Any, list[str]] = {
        e.get("id"): list(e.get("tasks", [])) for e in data.get("experiment", []) if isinstance(e, Mapping)
    }
    declared = data.get("published", [])
    return parse_published(declared + released_tables(data.get("experiment", []), declared), tasks, path.name)


def load_reference(path: str | os.PathLike) -> str | None:
    """The experiment a suite TOML file names as its tables' reference row (``[suite] reference``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise AffbenchError(f"The suite file {path} is not valid TOML: {exc}.") from None
    meta = data.get("suite")
    reference = meta.get("reference") if isinstance(meta, Mapping) else None
    return str(reference) if reference else None


def comparison_table(records: Sequence[Mapping[str, Any]], published: Mapping[str, Sequence[Published]],
                     intervals: Mapping[tuple[str, str, str, str], Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """One row per published value: ``paper``, ``affbench`` (mean over folds), ``difference``, and
    affbench's interval (``affbench_ci_low``, ``affbench_ci_high``) from ``intervals`` (per (suite,
    dataset, task, encoder), as :func:`affbench.reporting.outputs.combined_intervals` makes them).

    ``published`` maps suite names to their declarations. A published value with no finished cell
    keeps its row with ``affbench`` empty, so a reader sees what has not been run.
    """
    rows = []
    for suite, entries in published.items():
        for entry in entries:
            cells = [r for r in records if r["suite"] == suite and r.get("experiment") == entry.experiment
                     and r["task"] == entry.task and not (r.get("run") or {}).get("partition")]
            dataset = cells[0]["dataset"] if cells else ""
            encoder = cells[0]["encoder"] if cells else ""
            name = cells[0].get("label", "") if cells else ""
            for label, paper in entry.values.items():
                key = entry.metric if not label else f"{entry.metric}/{label}"
                values = [r["metrics"].get(key) for r in cells]
                values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
                mean = float(np.mean(values)) if values else float("nan")
                std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
                ci = ((intervals or {}).get((suite, dataset, entry.task, encoder)) or {}).get("intervals") or {}
                low, high = ci.get(key) or (float("nan"), float("nan"))
                rows.append((suite, entry.experiment, name, dataset, entry.task, encoder, entry.metric, label,
                             paper, mean, std, len(values), mean - paper, entry.source, entry.notes, low, high))
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS)).astype(
        {"folds": "int64", "affbench_ci_low": "float64", "affbench_ci_high": "float64"})
