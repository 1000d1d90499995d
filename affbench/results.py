"""Result records of benchmark cells, the tidy long table made from them, and CSV export.

A *cell* is one (suite, dataset, task, encoder, fold). Each finished cell is one JSON file::

    RUNDIR/results/<suite>/<dataset>__<task>__<encoder>__fold<k>.json

holding its metrics (per label too: ``"f1/au6"``), the trivial baselines' metrics on the same test
rows (:mod:`affbench.baselines`), row counts, configuration hash, seed, device, git commit, wall
time, epochs and the selected epoch. Files are written atomically, so a run killed at any moment
leaves whole records or none; the harness treats a present record with the same configuration hash
as finished.

:func:`long_table` is the tidy view (schema :data:`SCHEMA_VERSION`, documented in the README): one
row per (suite, dataset, task, predictor, fold, metric, label) with the record's provenance.
Paper-style tables are in :mod:`affbench.tables`, plots in :mod:`affbench.plots`, published numbers
in :mod:`affbench.published`; :func:`export` writes them all.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from affbench.errors import AffbenchError
from affbench.files import atomic_write, check_name, json_default, write_text_atomic

RESULTS_DIR = "results"
PLOTS_DIR = "plots"


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




# ----------------------------------------------------------------------------------------- long table

#: Version of the long CSV's columns; bumped whenever a column changes meaning, is renamed or removed.
SCHEMA_VERSION = 2
#: The long CSV's columns, in order (see the README's "Result files").
LONG_COLUMNS = (
    "schema", "suite", "dataset", "task", "kind", "row", "encoder", "baseline", "experiment", "name", "fold",
    "metric", "label", "value", "seed", "initialisation", "n_train", "n_test", "n_excluded",
    "epochs", "epochs_planned", "selected_epoch", "job", "config_hash", "device", "world_size",
    "git_commit", "affbench_version",
)
_INTEGER_COLUMNS = ("fold", "seed", "n_train", "n_test", "n_excluded", "epochs", "epochs_planned",
                    "selected_epoch", "world_size")


def split_metric(key: str) -> tuple[str, str]:
    """``"f1/au6"`` -> ``("f1", "au6")``; an overall value has the empty label."""
    metric, _, label = key.partition("/")
    return metric, label


def _excluded_test_rows(record: Mapping[str, Any]) -> int | None:
    """Test rows left out of the cell's scores (no face found, or no label of the task)."""
    excluded = record.get("excluded")
    if not isinstance(excluded, Mapping):
        return None
    return sum(int((excluded.get(reason) or {}).get("test", 0)) for reason in ("no_face", "unannotated"))


def _provenance(record: Mapping[str, Any]) -> dict[str, Any]:
    n = record.get("n") or {}
    return {
        "seed": record.get("seed"), "initialisation": record.get("initialisation"),
        "n_train": n.get("train"), "n_test": n.get("test"), "n_excluded": _excluded_test_rows(record),
        "epochs": record.get("epochs"), "epochs_planned": record.get("epochs_planned"),
        "selected_epoch": record.get("selected_epoch"), "job": record.get("job"),
        "config_hash": record.get("config_hash"), "device": record.get("device"),
        "world_size": record.get("world_size"), "git_commit": record.get("git_commit"),
        "affbench_version": record.get("affbench_version"),
    }


def _value(value: Any) -> float:
    return float("nan") if value is None else float(value)


def baseline_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One pseudo-record per (suite, dataset, task, fold, baseline): the trivial predictors' scores.

    Every encoder of a (dataset, task, fold) is scored on the same test rows, so their records
    carry the same baselines; the first record's are used.
    """
    seen: set[tuple] = set()
    found = []
    for record in records:
        for name, metrics in (record.get("baselines") or {}).items():
            key = (record["suite"], record["dataset"], record["task"], int(record["fold"]), name)
            if key in seen:
                continue
            seen.add(key)
            found.append({**record, "encoder": "", "baseline": name, "metrics": metrics})
    return found


def long_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The tidy table: one row per (suite, dataset, task, encoder or baseline, fold, metric, label).

    ``row`` is ``"affbench"`` for an encoder's value and ``"baseline"`` for a trivial predictor's
    (``baseline`` names it, ``encoder`` is empty); ``label`` is empty for the overall value.
    Encoder-only provenance (job, configuration hash, selected epoch...) is empty on baseline rows.
    """
    rows = []
    for record in records:
        provenance = _provenance(record)
        for key, value in record["metrics"].items():
            metric, label = split_metric(key)
            rows.append({
                "schema": SCHEMA_VERSION, "suite": record["suite"], "dataset": record["dataset"],
                "task": record["task"], "kind": record.get("kind"), "row": "affbench",
                "encoder": record["encoder"], "baseline": "", "experiment": record.get("experiment"),
                "name": record.get("label"), "fold": int(record["fold"]), "metric": metric, "label": label,
                "value": _value(value), **provenance,
            })
    for record in baseline_records(records):
        provenance = {k: v if k in ("seed", "n_train", "n_test", "n_excluded", "device") else None
                      for k, v in _provenance(record).items()}
        for key, value in record["metrics"].items():
            metric, label = split_metric(key)
            rows.append({
                "schema": SCHEMA_VERSION, "suite": record["suite"], "dataset": record["dataset"],
                "task": record["task"], "kind": record.get("kind"), "row": "baseline", "encoder": "",
                "baseline": record["baseline"], "experiment": "", "name": "", "fold": int(record["fold"]),
                "metric": metric, "label": label, "value": _value(value), **provenance,
            })
    frame = pd.DataFrame(rows, columns=list(LONG_COLUMNS))
    for column in _INTEGER_COLUMNS:
        frame[column] = pd.array(frame[column], dtype="Int64")
    return frame.astype({"value": "float64", "schema": "int64"})


# ----------------------------------------------------------------------------------------- export


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` as CSV atomically (a killed export never leaves half a file)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


#: How an earlier export is recognised: the first columns of each file export writes (the long
#: table, schema 2 and the schema-1 long and wide tables; the comparison; a paper-style table).
EXPORT_HEADERS = ("schema,suite,dataset,task,", "suite,dataset,task,encoder,", "suite,experiment,name,dataset,",
                  "row,encoder,name,folds,")


def is_earlier_export(path: str | os.PathLike) -> bool:
    """True when ``path`` is a plain file that :func:`export` wrote: its first line starts with
    one of :data:`EXPORT_HEADERS`."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        first_line = handle.readline(4096)
    return first_line.startswith(tuple(h.encode() for h in EXPORT_HEADERS))


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


def published_for(run_dir: str | os.PathLike, suites: Iterable[str]) -> dict[str, list]:
    """The published values of each suite, from the copy of its TOML that run-benchmark keeps."""
    from affbench.published import load_published

    found = {}
    for suite in suites:
        path = Path(run_dir) / "suites" / f"{suite}.toml"
        if path.is_file():
            found[suite] = load_published(path)
    return found


@dataclass
class Export:
    """What :func:`export` wrote and what the console shows."""

    long: pd.DataFrame
    tables: dict
    comparison: pd.DataFrame
    markdown: str
    written: list[Path]


def export(run_dir: str | os.PathLike, csv_path: str | os.PathLike, *, wide: bool = False,
           latex: bool = False, force: bool = False) -> Export:
    """Write a run's results; return them with the Markdown the console shows.

    Always the tidy long CSV at ``csv_path`` and, when the run's suites declare published values,
    ``<stem>-vs-paper.csv`` beside it. With ``wide`` (or ``latex``), ``<stem>-tables/``: one CSV per
    (suite, dataset, task) table, ``tables.md`` and, with ``latex``, ``tables.tex``.

    An existing ``csv_path`` (or comparison CSV) is replaced only when it is an earlier export, or
    with ``force``; the tables folder must be a folder where it exists.
    """
    from affbench import tables as paper_tables
    from affbench.published import comparison_table

    csv_path = Path(csv_path)
    comparison_path = csv_path.with_name(f"{csv_path.stem}-vs-paper.csv")
    folder = csv_path.with_name(f"{csv_path.stem}-tables")
    check_export_target(csv_path, force=force)
    check_export_target(comparison_path, force=force)
    if (wide or latex) and folder.exists() and not folder.is_dir():
        raise AffbenchError(f"{folder} is a file; the paper-style tables go into a folder of that name.")
    records = load_records(run_dir)
    _require(records, run_dir)
    long = long_table(records)
    written = [write_csv(long, csv_path)]
    published = published_for(run_dir, dict.fromkeys(r["suite"] for r in records))
    comparison = comparison_table(records, published)
    if not comparison.empty:
        written.append(write_csv(comparison, comparison_path))
    tables = paper_tables.wide_tables(records, published)
    if wide or latex:
        for key, table in tables.items():
            written.append(write_csv(table, folder / f"{paper_tables.table_name(key)}.csv"))
        write_text_atomic(folder / "tables.md", paper_tables.markdown(tables, per_label=True) + "\n")
        written.append(folder / "tables.md")
        if latex:
            write_text_atomic(folder / "tables.tex", paper_tables.latex(tables) + "\n")
            written.append(folder / "tables.tex")
    text = paper_tables.markdown(tables)
    if not comparison.empty:
        text += "\n\n" + paper_tables.comparison_markdown(comparison)
    return Export(long, tables, comparison, text, written)
