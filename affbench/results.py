"""Result records of benchmark cells, the tables made from them, CSV export and plots.

A *cell* is one (suite, dataset, task, encoder, fold). Each finished cell is one JSON file::

    RUNDIR/results/<suite>/<dataset>__<task>__<encoder>__fold<k>.json

holding its metrics (per label too: ``"f1/au6"``), row counts, configuration hash, seed, device,
git commit, wall time, epochs and the selected epoch. Files are written atomically, so a run
killed at any moment leaves whole records or none; the harness treats a present record with the
same configuration hash as finished.

Tables follow the shape of lm-evaluation-harness reports:

* :func:`long_table`: one row per (suite, dataset, task, encoder, fold, metric) with its value;
* :func:`wide_table`: the paper-style view, one row per (suite, dataset, task, encoder) and one
  column per metric (the mean over folds) plus ``<metric> std`` (population std over folds; empty
  for a single fold);
* :func:`markdown` renders the headline metrics as Markdown for the console.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affbench.errors import AffbenchError
from affbench.files import atomic_write, check_name, json_default, write_text_atomic

RESULTS_DIR = "results"
PLOTS_DIR = "plots"
LONG_COLUMNS = ("suite", "dataset", "task", "encoder", "fold", "metric", "value")
KEY_COLUMNS = ("suite", "dataset", "task", "encoder")


@dataclass(frozen=True)
class CellKey:
    """The identity of one benchmark cell."""

    suite: str
    dataset: str
    task: str
    encoder: str
    fold: int

    @property
    def filename(self) -> str:
        return f"{self.dataset}__{self.task}__{self.encoder}__fold{self.fold}.json"

    def path(self, run_dir: str | os.PathLike) -> Path:
        for kind, name in (("suite", self.suite), ("dataset", self.dataset), ("task", self.task),
                           ("encoder", self.encoder)):
            check_name(f"{kind} name", name)
        return Path(run_dir) / RESULTS_DIR / self.suite / self.filename

    def __str__(self) -> str:
        return f"{self.suite}/{self.dataset}/{self.task}/{self.encoder}/fold{self.fold}"


def _clean(value: Any) -> Any:
    """NaN and infinities become None: JSON has no NaN, and a missing value must look missing."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON atomically, NaN and infinities as null."""
    text = json.dumps(_clean(json.loads(json.dumps(data, default=json_default))), indent=2, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def write_record(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write one cell's record (atomically) and return its path."""
    key = CellKey(record["suite"], record["dataset"], record["task"], record["encoder"], int(record["fold"]))
    path = key.path(run_dir)
    write_json_atomic(path, record)
    return path


class DamagedRecordError(AffbenchError):
    """A result record that cannot be read (not JSON, or without the keys of a record)."""


#: Keys every record has; tables and the harness rely on them.
RECORD_KEYS = ("suite", "dataset", "task", "encoder", "fold", "metrics")


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
        problem = None if isinstance(record, dict) and all(k in record for k in RECORD_KEYS) else "keys are missing"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem = getattr(exc, "msg", "not UTF-8 text")
    if problem is not None:
        raise DamagedRecordError(f"{path} is not a valid result record ({problem}); delete it to redo that cell.")
    return record


def load_records(run_dir: str | os.PathLike, *, suite: str | None = None) -> list[dict[str, Any]]:
    """Every cell record under ``run_dir`` (optionally of one suite), in a stable order."""
    root = Path(run_dir)
    if not root.is_dir():
        raise AffbenchError(f"The run folder {root} does not exist.")
    results = root / RESULTS_DIR
    pattern = f"{suite}/*.json" if suite else "*/*.json"
    paths = sorted(results.glob(pattern)) if results.is_dir() else []
    records = [read_record(p) for p in paths]
    records.sort(key=lambda r: (r["suite"], r["dataset"], r["task"], r["encoder"], int(r["fold"])))
    return records


def _require(records: Sequence[Mapping[str, Any]], run_dir: str | os.PathLike | None = None) -> None:
    if not records:
        where = f" in {run_dir}" if run_dir is not None else ""
        raise AffbenchError(f"No finished benchmark cells{where}; run `affbench run-benchmark` first.")


# ----------------------------------------------------------------------------------------- tables


def long_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (suite, dataset, task, encoder, fold, metric)."""
    rows = [
        (r["suite"], r["dataset"], r["task"], r["encoder"], int(r["fold"]), metric,
         float("nan") if value is None else float(value))
        for r in records
        for metric, value in r["metrics"].items()
    ]
    frame = pd.DataFrame(rows, columns=list(LONG_COLUMNS))
    return frame.astype({"fold": "int64", "value": "float64"})


def _metric_order(metrics: Iterable[str]) -> list[str]:
    """Headline metrics first (in first-seen order), each followed by its per-label values."""
    seen = list(dict.fromkeys(metrics))
    heads = [m for m in seen if "/" not in m]
    ordered = []
    for head in heads:
        ordered.append(head)
        ordered.extend(m for m in seen if m.startswith(f"{head}/"))
    ordered.extend(m for m in seen if m not in ordered)
    return ordered


def wide_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Paper-style: one row per (suite, dataset, task, encoder); per metric its mean over folds and
    ``<metric> std`` (population std over folds, empty when there is one fold)."""
    long = long_table(records)
    if long.empty:
        return pd.DataFrame(columns=[*KEY_COLUMNS, "folds"])
    order = _metric_order(long["metric"])
    keys = list(KEY_COLUMNS)
    grouped = long.groupby([*keys, "metric"], sort=False)["value"]
    mean = grouped.mean().unstack("metric")
    std = grouped.std(ddof=0).unstack("metric")
    folds = long.groupby(keys, sort=False)["fold"].nunique()
    std = std.where(folds.reindex(std.index) > 1)
    columns = {}
    for metric in order:
        if metric in mean.columns:
            columns[metric] = mean[metric]
            columns[f"{metric} std"] = std[metric]
    wide = pd.DataFrame(columns)
    wide.insert(0, "folds", folds.reindex(wide.index).astype("int64"))
    return wide.reset_index()


def _format(mean: float, std: float | None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{digits}f}"
    return text


def markdown(records: Sequence[Mapping[str, Any]], *, per_label: bool = False, digits: int = 3) -> str:
    """Markdown tables, one per (suite, dataset, task): encoders down, metrics across.

    Only headline metrics unless ``per_label``; values are means over folds, ``± std`` when a
    cell has more than one fold.
    """
    wide = wide_table(records)
    if wide.empty:
        return "(no results)"
    parts = []
    for (suite, dataset, task), group in wide.groupby(["suite", "dataset", "task"], sort=False):
        metrics = [c for c in group.columns if c not in (*KEY_COLUMNS, "folds") and not c.endswith(" std")]
        metrics = [m for m in metrics if group[m].notna().any() and (per_label or "/" not in m)]
        header = ["encoder", "folds", *metrics]
        lines = [f"### {suite} · {dataset} · {task}", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
        for _, row in group.iterrows():
            cells = [str(row["encoder"]), str(int(row["folds"]))]
            cells += [_format(row[m], row.get(f"{m} std"), digits) for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` as CSV atomically (a killed export never leaves half a file)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


#: How an earlier export is recognised: its header starts with the columns every export starts with.
EXPORT_HEADER = ",".join(KEY_COLUMNS) + ","


def is_earlier_export(path: str | os.PathLike) -> bool:
    """True when ``path`` is a CSV file that :func:`export` wrote (long or wide): its first line
    starts with :data:`EXPORT_HEADER` and the file is a plain one."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        first_line = handle.readline(4096)
    return first_line.startswith(EXPORT_HEADER.encode())


def check_export_target(csv_path: str | os.PathLike, *, force: bool = False) -> None:
    """One clear sentence where writing ``csv_path`` would replace a folder or a file that is not an
    earlier export (a manifest, a suite, someone's notes); ``force`` allows the latter."""
    path = Path(csv_path)
    if path.is_dir():
        raise AffbenchError(f"--csv {path} is a folder; give the name of the CSV file to write.")
    if path.exists() and not force and not is_earlier_export(path):
        raise AffbenchError(
            f"{path} exists and is not an earlier affbench export, so it is left alone; "
            "choose another file name or add --force to replace it."
        )


def export(run_dir: str | os.PathLike, csv_path: str | os.PathLike, *, wide: bool = False,
           force: bool = False) -> tuple[pd.DataFrame, str]:
    """Write the run's results as CSV (long by default) and return the table and its Markdown.

    An existing ``csv_path`` is replaced only when it is an earlier export, or with ``force``.
    """
    check_export_target(csv_path, force=force)
    records = load_records(run_dir)
    _require(records, run_dir)
    frame = wide_table(records) if wide else long_table(records)
    write_csv(frame, csv_path)
    return frame, markdown(records)


# ----------------------------------------------------------------------------------------- plots


class PlotsUnavailableError(AffbenchError):
    """Plots were asked for, but matplotlib is not installed."""


def _pyplot():
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


def plot_curves(record: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Training loss and validation primary metric per epoch of one cell, as a PNG."""
    curve = record.get("curve") or []
    if not curve:
        return None
    plt = _pyplot()
    epochs = [c["epoch"] for c in curve]
    fig, loss_axis = plt.subplots(figsize=(6, 3.6))
    losses = [c.get("train_loss") for c in curve]
    loss_axis.plot(epochs, [np.nan if v is None else v for v in losses], "o-", color="tab:blue", label="training loss")
    loss_axis.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axis.set_ylabel("training loss", color="tab:blue")
    metric_name = record.get("primary_metric") or "validation"
    values = [c.get("val") for c in curve]
    if any(v is not None for v in values):
        metric_axis = loss_axis.twinx()
        metric_axis.plot(epochs, [np.nan if v is None else v for v in values], "s--", color="tab:orange",
                         label=f"validation {metric_name}")
        metric_axis.set_ylabel(f"validation {metric_name}", color="tab:orange")
        selected = record.get("selected_epoch")
        if selected:
            metric_axis.axvline(selected, color="grey", linestyle=":", linewidth=1)
    loss_axis.set_title(f"{record['encoder']} · {record['dataset']} {record['task']} · fold {record['fold']}", fontsize=9)
    return _save_figure(fig, path)


def plot_per_label(records: Sequence[Mapping[str, Any]], metric: str, path: str | os.PathLike) -> Path | None:
    """Grouped bars: one group per label (AU), one bar per encoder, mean over folds."""
    long = long_table(records)
    long = long[long["metric"].str.startswith(f"{metric}/")]
    if long.empty:
        return None
    plt = _pyplot()
    table = long.groupby(["encoder", "metric"], sort=False)["value"].mean().unstack("metric")
    labels = [m.split("/", 1)[1] for m in table.columns]
    encoders = list(table.index)
    x = np.arange(len(labels))
    width = 0.8 / max(len(encoders), 1)
    fig, axis = plt.subplots(figsize=(max(5, 0.7 * len(labels) * max(1, len(encoders)) ** 0.5 + 2), 3.6))
    for i, encoder in enumerate(encoders):
        axis.bar(x + (i - (len(encoders) - 1) / 2) * width, table.loc[encoder].to_numpy(dtype=float), width, label=encoder)
    axis.set_xticks(x, labels)
    axis.set_ylabel(metric)
    first = records[0]
    axis.set_title(f"per-label {metric} · {first['suite']} · {first['dataset']} {first['task']}", fontsize=9)
    axis.legend(fontsize=7)
    return _save_figure(fig, path)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a figure as PNG atomically and release it."""
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _pyplot().close(fig)
    return path


#: Per-label bar charts are drawn for these metrics of AU tasks.
PER_LABEL_PLOT_METRICS = ("f1", "icc")


def plot_run(run_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
    """Training curves for every trained cell and per-AU bars, as PNGs under ``RUNDIR/plots``."""
    records = load_records(run_dir) if records is None else list(records)
    _require(records, run_dir)
    _pyplot()  # fail early with the install hint
    out = Path(run_dir) / PLOTS_DIR
    written = []
    for record in records:
        name = f"curve-{_safe(record['dataset'])}-{_safe(record['task'])}-{_safe(record['encoder'])}-fold{record['fold']}.png"
        path = plot_curves(record, out / _safe(record["suite"]) / name)
        if path:
            written.append(path)
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["suite"], record["dataset"], record["task"]), []).append(record)
    for (suite, dataset, task), group in groups.items():
        if not str(group[0].get("kind", "au")).startswith("au"):
            continue  # per-class expression scores are in the CSV; the bars are for AUs
        for metric in PER_LABEL_PLOT_METRICS:
            name = f"per-au-{metric}-{_safe(dataset)}-{_safe(task)}.png"
            path = plot_per_label(group, metric, out / _safe(suite) / name)
            if path:
                written.append(path)
    return written
