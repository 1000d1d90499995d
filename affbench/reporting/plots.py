"""Plots of a run (the ``plots`` extra, matplotlib), as PNGs under ``RUNDIR/plots/<suite>/``.

* ``curve-<dataset>-<task>-<encoder>-fold<k>.png``: training loss and validation metric per epoch,
  the selected epoch marked and named in the legend;
* ``per-label-<metric>-<dataset>-<task>.png``: one bar per encoder and label, the mean over folds
  with its cluster bootstrap interval as error bar (the sample standard deviation over folds where
  there is no interval), the best trivial baseline as a black mark;
  a value of 0 is written "0" over its (invisible) bar, a missing one "n/a";
* ``paper-vs-affbench.png``: every published value of the suite beside affbench's.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affbench.errors import AffbenchError
from affbench.reporting.export import published_for
from affbench.reporting.outputs import combined_intervals
from affbench.reporting.records import _require, baseline_records, load_records, run_of
from affbench.runtime.files import atomic_write
from affbench.runtime.run_folder import RunFolder

LEGEND_SIZE = 9
#: Bars lower than this (on a 0-1 axis) are labelled with their value, so that 0 never looks missing.
TOO_SMALL_TO_SEE = 0.02


class PlotsUnavailableError(AffbenchError):
    """Plots were asked for, but matplotlib is not installed."""


def require_pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailableError(
            "Plots need matplotlib, which is not installed; install it with pip install 'affbench[plots]'."
        ) from None
    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a figure as PNG atomically and release it."""
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")  # legends below the axes stay whole
    require_pyplot().close(fig)
    return path


def _finite(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else float("nan")


def _near_zero(value: float) -> str:
    if value == 0:
        return "0"
    return "0.000" if round(value, 3) == 0 else f"{value:.3f}"  # never "-0.000"


def _y_limits(values: Sequence[float]) -> tuple[float, float]:
    """Scores live in [0, 1] (ICC and CCC may dip below 0): always show 0 to 1, more when needed."""
    finite = [v for v in values if math.isfinite(v)]
    low = min([0.0, *finite])
    high = max([1.0, *finite])
    return (low - 0.05 if low < 0 else 0.0), high + 0.08


# ----------------------------------------------------------------------------------------- curves


def plot_curves(record: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Training loss and validation metric per epoch of one cell, the selected epoch marked."""
    curve = record.get("curve") or []
    if not curve:
        return None
    plt = require_pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [c["epoch"] for c in curve]
    fig, loss_axis = plt.subplots(figsize=(6.4, 4.0))
    losses = [_finite(c.get("train_loss")) for c in curve]
    handles = loss_axis.plot(epochs, losses, "o-", color="tab:blue", label=f"training loss ({record['task']})")
    loss_axis.set_xlabel("epoch")
    loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axis.set_ylabel("training loss", color="tab:blue")
    loss_axis.ticklabel_format(axis="y", useOffset=False)  # flat losses: plain ticks, not "1e-6+2.074"
    metric = record.get("primary_metric") or "metric"
    values = [_finite(c.get("val")) for c in curve]
    metric_axis = loss_axis.twinx()
    if any(math.isfinite(v) for v in values):
        handles += metric_axis.plot(epochs, values, "s--", color="tab:orange", label=f"validation {metric}")
    else:
        why = ("this task has no validation rows" if (record.get("n") or {}).get("val") == 0
               else "undefined on the validation rows")
        handles += metric_axis.plot([], [], "s--", color="tab:orange", label=f"validation {metric}: n/a ({why})")
    metric_axis.set_ylabel(f"validation {metric}", color="tab:orange")
    metric_axis.set_ylim(*_y_limits(values))
    selected = record.get("selected_epoch")
    if selected:
        handles.append(loss_axis.axvline(selected, color="black", linestyle=":", linewidth=1.5,
                                         label=f"selected epoch {selected}: {_selection_text(record)}"))
    loss_axis.set_xlim(min(epochs) - 0.3, max(epochs) + 0.3)  # a selected first or last epoch stays off the frame
    loss_axis.set_title(f"{record['encoder']} · {record['dataset']} {record['task']} · fold {record['fold']}", fontsize=10)
    loss_axis.legend(handles=handles, fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1,
                     frameon=False)
    return _save_figure(fig, path)


def _selection_text(record: Mapping[str, Any]) -> str:
    """Why the selected epoch was selected, in legend words."""
    reason = record.get("selection") or ""
    if not reason.startswith("best validation score"):
        return reason or "the model that was scored"
    tasks = record.get("job_tasks") or [record["task"]]
    if len(tasks) > 1:
        return f"best mean validation score of the model's {len(tasks)} tasks ({', '.join(tasks)})"
    return f"best validation {record.get('primary_metric') or 'score'}"


# ----------------------------------------------------------------------------------------- per label


def _per_label_values(records: Sequence[Mapping[str, Any]], metric: str,
                      intervals: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[list[str], dict[str, tuple]]:
    """Labels of ``metric`` and, per encoder, (means, sample stds over folds, folds, intervals): the
    intervals a (2, n_labels) array of lower and upper bounds, nan where a label has none."""
    labels: list[str] = []
    for record in records:
        for key in record["metrics"]:
            if key.startswith(f"{metric}/") and key.split("/", 1)[1] not in labels:
                labels.append(key.split("/", 1)[1])
    by_encoder: dict[str, list] = {}
    for record in records:
        by_encoder.setdefault(record["encoder"], []).append(record)
    values = {}
    for encoder, cells in by_encoder.items():
        means, sds = [], []
        for label in labels:
            folds = [_finite(c["metrics"].get(f"{metric}/{label}")) for c in cells]
            finite = [v for v in folds if math.isfinite(v)]
            means.append(float(np.mean(finite)) if finite else float("nan"))
            sds.append(float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0)
        found = ((intervals or {}).get(encoder) or {}).get("intervals") or {}
        bounds = np.array([found.get(f"{metric}/{label}") or (np.nan, np.nan) for label in labels], dtype=float).T
        values[encoder] = (np.array(means), np.array(sds), len({int(c["fold"]) for c in cells}),
                           bounds.reshape(2, len(labels)))
    return labels, values


def _best_baseline(records: Sequence[Mapping[str, Any]], metric: str, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Per label, the highest trivial-baseline value (mean over folds), and the baselines considered."""
    pseudo = baseline_records(records)
    names = list(dict.fromkeys(r["baseline"] for r in pseudo))
    best = np.full(len(labels), np.nan)
    for name in names:
        cells = [r for r in pseudo if r["baseline"] == name]
        for i, label in enumerate(labels):
            folds = [_finite(c["metrics"].get(f"{metric}/{label}")) for c in cells]
            finite = [v for v in folds if math.isfinite(v)]
            if finite:
                best[i] = np.nanmax([best[i], float(np.mean(finite))])
    return best, names


def _error_bars(means: np.ndarray, sds: np.ndarray, folds: int, bounds: np.ndarray) -> tuple[np.ndarray, str] | None:
    """(2, n) distances below and above each bar and what they are: the interval where the encoder
    has one, else the sample std over folds (several folds), else none."""
    if np.isfinite(bounds).any():
        below, above = np.clip(means - bounds[0], 0, None), np.clip(bounds[1] - means, 0, None)
        return np.where(np.isfinite(bounds), np.vstack([below, above]), np.nan), "interval"
    if folds > 1:
        spread = np.where(np.isfinite(means) & (sds > 0), sds, np.nan)  # no stray caps on missing or exact bars
        return np.vstack([spread, spread]), "std"
    return None


def plot_per_label(records: Sequence[Mapping[str, Any]], metric: str, path: str | os.PathLike,
                   intervals: Mapping[str, Mapping[str, Any]] | None = None) -> Path | None:
    """Grouped bars: one group per label, one bar per encoder (mean over folds); error bars are each
    encoder's cluster bootstrap interval from ``intervals`` (encoder -> a record's ``ci``) where it
    has one, else the sample std over folds."""
    labels, values = _per_label_values(records, metric, intervals)
    if not labels:
        return None
    plt = require_pyplot()
    encoders = list(values)
    x = np.arange(len(labels))
    width = 0.8 / max(len(encoders), 1)
    fig, axis = plt.subplots(figsize=(min(14.0, max(6.4, 0.3 * len(labels) * max(len(encoders), 1) + 3)), 4.4))
    all_values = []
    error_bars = {encoder: _error_bars(*values[encoder]) for encoder in encoders}
    kinds = {found[1] for found in error_bars.values() if found is not None}
    for i, encoder in enumerate(encoders):
        means, sds, folds, bounds = values[encoder]
        positions = x + (i - (len(encoders) - 1) / 2) * width
        shown = np.nan_to_num(means)
        bars_of = error_bars[encoder]
        which = f"; {bars_of[1]} bars" if bars_of is not None and len(kinds) > 1 else ""  # say which, when mixed
        if bars_of is not None:
            all_values.extend((means - np.nan_to_num(bars_of[0][0])).tolist())
            all_values.extend((means + np.nan_to_num(bars_of[0][1])).tolist())
        bars = axis.bar(positions, shown, width, yerr=None if bars_of is None else bars_of[0], capsize=3,
                        label=f"{encoder} ({folds} fold{'s' if folds != 1 else ''}{which})")
        color = bars.patches[0].get_facecolor() if bars.patches else None
        for position, mean in zip(positions, means):
            if math.isnan(mean):
                axis.text(position, 0.01, "n/a", ha="center", va="bottom", fontsize=8, color="dimgrey", rotation=90,
                          fontweight="bold")
            elif abs(mean) < TOO_SMALL_TO_SEE:
                axis.text(position, 0.01, _near_zero(mean), ha="center", va="bottom", fontsize=8, color=color,
                          fontweight="bold", rotation=90 if mean != 0 else 0)
        all_values.extend(means.tolist())
    best, names = _best_baseline(records, metric, labels)
    if np.isfinite(best).any():
        span = 0.8
        axis.hlines(best, x - span / 2, x + span / 2, colors="black", linewidth=2,
                    label=f"best trivial baseline ({', '.join(names)})")
        all_values.extend(best.tolist())
    axis.set_xticks(x, labels, rotation=45 if len(labels) > 8 else 0)
    axis.set_ylabel(f"{metric} (test)")
    axis.set_ylim(*_y_limits(all_values))
    axis.axhline(0, color="grey", linewidth=0.6)
    first = records[0]
    level = next((f"{c['level']:.0%}" for c in (intervals or {}).values() if c.get("level")), "95%")
    bars_note = {frozenset(): "no error bars: one fold, too few clusters",
                 frozenset({"interval"}): f"error bars: {level} cluster bootstrap interval",
                 frozenset({"std"}): "error bars: sample std over folds"}.get(
        frozenset(kinds), f"error bars: {level} cluster bootstrap interval, else sample std over folds")
    axis.set_title(f"per-label {metric} · {first['suite']} · {first['dataset']} {first['task']} ({bars_note})", fontsize=10)
    axis.legend(fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.14 if len(labels) <= 8 else -0.2),
                ncol=min(3, len(encoders) + 1), frameon=False)
    return _save_figure(fig, path)


# ----------------------------------------------------------------------------------------- paper


def plot_comparison(comparison, suite: str, path: str | os.PathLike) -> Path | None:
    """Horizontal bars: each published value of ``suite`` beside affbench's, with affbench's interval
    as error bar where it has one (``affbench_ci_low``, ``affbench_ci_high``), else the sample std."""
    rows = comparison[comparison["suite"] == suite]
    if rows.empty:
        return None
    plt = require_pyplot()
    names = [f"{r.experiment} · {r.task} · {r.metric}{'/' + r.label if r.label else ''}" for r in rows.itertuples()]
    y = np.arange(len(rows))[::-1]
    fig, axis = plt.subplots(figsize=(8.5, 1.2 + 0.32 * len(rows)))
    height = 0.38
    axis.barh(y + height / 2, rows["paper"], height, color="tab:grey", label="paper (published)")
    mine = rows["affbench"].to_numpy(dtype=float)
    std = np.nan_to_num(rows["affbench_std"].to_numpy(dtype=float))
    ci_low = rows["affbench_ci_low"].to_numpy(dtype=float) if "affbench_ci_low" in rows else np.full(len(rows), np.nan)
    ci_high = rows["affbench_ci_high"].to_numpy(dtype=float) if "affbench_ci_high" in rows else np.full(len(rows), np.nan)
    has_interval = np.isfinite(ci_low) & np.isfinite(ci_high)
    below = np.nan_to_num(np.where(has_interval, np.clip(mine - ci_low, 0, None), std))
    above = np.nan_to_num(np.where(has_interval, np.clip(ci_high - mine, 0, None), std))
    bars = "cluster bootstrap interval" if has_interval.all() else (
        "interval, else sample std" if has_interval.any() else "sample std")
    drawn = np.where(below + above > 0, 1.0, np.nan)  # no stray caps on bars without any spread
    axis.barh(y - height / 2, np.nan_to_num(mine), height,
              xerr=np.vstack([below, above]) * drawn if (below + above > 0).any() else None, capsize=2,
              color="tab:blue", label=f"affbench (mean over folds; error bars: {bars})")
    spread = np.maximum(below, above)
    for position, value in zip(y - height / 2, mine):
        if math.isnan(value):
            axis.text(0.01, position, "n/a (not run)", va="center", fontsize=7, color="grey")
        elif abs(value) < TOO_SMALL_TO_SEE:
            axis.text(0.01, position, _near_zero(value), va="center", fontsize=8, color="tab:blue", fontweight="bold")
    axis.set_yticks(y, names, fontsize=8)
    low, high = _y_limits([*rows["paper"].tolist(), *(mine - spread).tolist(), *(mine + spread).tolist()])
    axis.set_xlim(low, high)
    axis.set_xlabel("score")
    axis.set_title(f"{suite}: published vs affbench", fontsize=10)
    axis.legend(fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.6 / max(len(rows), 3) - 0.08),
                ncol=2, frameon=False)
    return _save_figure(fig, path)


# ----------------------------------------------------------------------------------------- run


def plot_run(run_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
    """Every plot of a run: curves of trained cells, per-label bars, the comparison with the papers."""
    from affbench.reporting.published import comparison_table

    records = load_records(run_dir) if records is None else list(records)
    _require(records, run_dir)
    require_pyplot()  # fail early with the install hint
    out = RunFolder(run_dir).plots
    written = []
    for record in records:
        name = f"curve-{_safe(record['dataset'])}-{_safe(record['task'])}-{_safe(record['encoder'])}-fold{record['fold']}.png"
        path = plot_curves(record, out / _safe(record["suite"]) / name)
        if path:
            written.append(path)
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for record in records:  # the bars show the published folds; random partitions are in the tables
        if run_of(record)[0] == 0:
            groups.setdefault((record["suite"], record["dataset"], record["task"]), []).append(record)
    intervals = combined_intervals(run_dir, records)
    for (suite, dataset, task), group in groups.items():
        metrics = list(dict.fromkeys(k.split("/", 1)[0] for r in group for k in r["metrics"] if "/" in k))
        of_group = {k[3]: v for k, v in intervals.items() if k[:3] == (suite, dataset, task)}
        for metric in metrics:
            name = f"per-label-{_safe(metric)}-{_safe(dataset)}-{_safe(task)}.png"
            path = plot_per_label(group, metric, out / _safe(suite) / name, of_group)
            if path:
                written.append(path)
    suites = list(dict.fromkeys(r["suite"] for r in records))
    comparison = comparison_table(records, published_for(run_dir, suites), intervals)
    for suite in suites:
        path = plot_comparison(comparison, suite, out / _safe(suite) / "paper-vs-affbench.png")
        if path:
            written.append(path)
    return written


def plot_run_if_wanted(run_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]],
                       plots: bool | None) -> list[str]:
    """The run's plots when asked (``plots=True``: an error without matplotlib) or by default
    (``None``: when matplotlib is installed); the lines that say what was written or skipped."""
    if plots is False or not records:  # no results, nothing to draw
        return []
    try:
        written = plot_run(run_dir, records)
    except PlotsUnavailableError:
        if plots:
            raise
        return ["plots skipped: matplotlib is not installed (pip install 'affbench[plots]')."]
    return [f"{len(written)} plot(s) in {RunFolder(run_dir).plots}"]
