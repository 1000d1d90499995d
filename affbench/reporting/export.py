"""The tidy long table made from a run's records, and ``affbench export``.

:func:`long_table` is the tidy view (schema :data:`SCHEMA_VERSION`, documented in
``docs/results.md``): one row per (suite, dataset, task, predictor, fold, metric, label) with the
record's provenance. Paper-style tables are in :mod:`affbench.reporting.tables`, plots in
:mod:`affbench.reporting.plots`, published numbers in :mod:`affbench.reporting.published`;
:func:`export` writes them all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from affbench.errors import AffbenchError
from affbench.reporting.outputs import combined_baseline_intervals, combined_intervals, refold_intervals
from affbench.reporting.records import _require, baseline_records, load_records, run_of
from affbench.reporting.tables import markdown, wide_tables
from affbench.runtime.files import atomic_write, write_text_atomic
from affbench.runtime.outputs import check_output, first_line_starts, writing
from affbench.runtime.run_folder import RunFolder

# ----------------------------------------------------------------------------------------- long table

#: Version of the long CSV's columns; bumped whenever a column changes meaning, is renamed or removed.
SCHEMA_VERSION = 3
#: The long CSV's columns, in order (see docs/results.md, "Result files"). Schema 3 added the
#: interval columns ``ci_low`` ... ``ci_note`` and ``partition`` (0: the published folds).
LONG_COLUMNS = (
    "schema", "suite", "dataset", "task", "kind", "row", "encoder", "baseline", "experiment", "name", "fold",
    "metric", "label", "value", "ci_low", "ci_high", "ci_level", "n_clusters", "ci_method", "ci_note", "partition",
    "seed", "initialisation", "n_train", "n_test", "n_excluded", "epochs", "epochs_planned", "selected_epoch", "job",
    "config_hash", "device", "world_size", "git_commit", "affbench_version",
)
_INTEGER_COLUMNS = ("fold", "partition", "n_clusters", "seed", "n_train", "n_test", "n_excluded", "epochs", "epochs_planned",
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


#: The long CSV's ``ci_note`` of a baseline whose value is an expectation (``label-frequency``).
EXPECTED_VALUE_NOTE = "no interval: an expected value over random predictions, not a prediction on the test rows"


def _interval(record: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The interval columns of one value: empty for a record made before intervals (or a baseline)."""
    from affbench.scoring.baselines import EXPECTED_VALUES

    ci = record.get("ci")
    if not isinstance(ci, Mapping):
        expected = record.get("baseline") in EXPECTED_VALUES
        return {"ci_low": None, "ci_high": None, "ci_level": None, "n_clusters": None, "ci_method": None,
                "ci_note": EXPECTED_VALUE_NOTE if expected else None}
    low, high = (ci.get("intervals") or {}).get(key) or (None, None)
    note = ci.get("note")
    if note is None and low is None:
        note = "no interval: the value is undefined in some resamples"
    return {"ci_low": _value(low), "ci_high": _value(high), "ci_level": ci.get("level"),
            "n_clusters": ci.get("n_clusters"), "ci_method": ci.get("method"), "ci_note": note}


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
                "name": record.get("label"), "fold": int(record["fold"]), "partition": run_of(record)[0],
                "metric": metric, "label": label,
                "value": _value(value), **_interval(record, key), **provenance,
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
                "partition": run_of(record)[0],
                "metric": metric, "label": label, "value": _value(value), **_interval(record, key), **provenance,
            })
    frame = pd.DataFrame(rows, columns=list(LONG_COLUMNS))
    for column in _INTEGER_COLUMNS:
        frame[column] = pd.array(frame[column], dtype="Int64")
    return frame.astype({"value": "float64", "ci_low": "float64", "ci_high": "float64", "ci_level": "float64",
                         "schema": "int64"})


# ----------------------------------------------------------------------------------------- export


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` as CSV atomically (a killed export never leaves half a file)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


#: How an earlier export is recognised: the first columns of each file export writes (the long
#: table, schema 2 and the schema-1 long and wide tables; the comparison; a paper-style table; a
#: compare CSV).
EXPORT_HEADERS = ("schema,suite,dataset,task,", "suite,dataset,task,encoder,", "suite,experiment,name,dataset,",
                  "row,encoder,name,folds,", "cell_a,cell_b,metric,")


def is_earlier_export(path: str | os.PathLike) -> bool:
    """True when ``path`` is a plain file that :func:`export` wrote: its first line starts with
    one of :data:`EXPORT_HEADERS`."""
    path = Path(path)
    return path.is_file() and first_line_starts(path, EXPORT_HEADERS)


#: The first line of the ``tables.md`` and ``tables.tex`` that :func:`export` writes.
MARKDOWN_MARK = "<!-- affbench export: paper-style tables -->"
LATEX_MARK = "% affbench tables:"


def _is_earlier_table_file(path: Path) -> bool:
    if first_line_starts(path, (*EXPORT_HEADERS, MARKDOWN_MARK, LATEX_MARK)):
        return True
    # A tables.md written before it carried MARKDOWN_MARK starts with its first table's heading.
    with open(path, "rb") as handle:
        first = handle.readline(4096).decode("utf-8", "replace").rstrip("\n")
    return path.name == "tables.md" and re.fullmatch(r"### [^·]+ · [^·]+ · [^·]+", first) is not None


def check_export_target(csv_path: str | os.PathLike, *, force: bool = False) -> None:
    """One clear sentence where writing ``csv_path`` would replace a folder or a file that is not an
    earlier export (a manifest, a suite, someone's notes); ``force`` allows the latter."""
    check_output(csv_path, _is_earlier_table_file, what="affbench export", option="--csv", force=force)


def published_for(run_dir: str | os.PathLike, suites: Iterable[str]) -> dict[str, list]:
    """The published values of each suite, from the copy of its TOML that run-benchmark keeps."""
    from affbench.reporting.published import load_published

    found = {}
    for suite in suites:
        path = RunFolder(run_dir).suite_copy(suite)
        if path.is_file():
            found[suite] = load_published(path)
    return found


def references_for(run_dir: str | os.PathLike, suites: Iterable[str]) -> dict[str, str]:
    """The reference experiment each suite names (``[suite] reference``), from its kept copy."""
    from affbench.reporting.published import load_reference

    found = {}
    for suite in suites:
        path = RunFolder(run_dir).suite_copy(suite)
        reference = load_reference(path) if path.is_file() else None
        if reference:
            found[suite] = reference
    return found


def paper_tables_of(run_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]],
                    published: Mapping[str, Sequence[Any]]) -> dict:
    """The paper-style tables of a run's records: intervals over folds from the kept test outputs,
    and each row's difference from its suite's reference row where the suite names one."""
    from affbench.reporting.compare import reference_comparisons

    references = references_for(run_dir, dict.fromkeys(r["suite"] for r in records))
    compared = reference_comparisons(run_dir, records, references) if references else {}
    return wide_tables(records, published, combined_intervals(run_dir, records), compared,
                       baseline_intervals=combined_baseline_intervals(run_dir, records),
                       refold_intervals=refold_intervals(run_dir, records))


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
    from affbench.reporting import tables as paper_tables
    from affbench.reporting.published import comparison_table

    csv_path = Path(csv_path)
    comparison_path = csv_path.with_name(f"{csv_path.stem}-vs-paper.csv")
    folder = csv_path.with_name(f"{csv_path.stem}-tables")
    if (wide or latex) and folder.exists() and not folder.is_dir():
        raise AffbenchError(f"{folder} is a file; the paper-style tables go into a folder of that name.")
    with writing(csv_path):
        # Everything is read and made before the first file is written, so that a damaged input
        # (a record, a suite copy) leaves no partial export behind.
        records = load_records(run_dir)
        _require(records, run_dir)
        long = long_table(records)
        published = published_for(run_dir, dict.fromkeys(r["suite"] for r in records))
        comparison = comparison_table(records, published, combined_intervals(run_dir, records))
        tables = paper_tables_of(run_dir, records, published)
        files: dict[Path, pd.DataFrame | str] = {csv_path: long}
        if not comparison.empty:
            files[comparison_path] = comparison
        if wide or latex:
            for key, table in tables.items():
                files[folder / f"{paper_tables.table_name(key)}.csv"] = table
            files[folder / "tables.md"] = f"{MARKDOWN_MARK}\n\n{paper_tables.markdown(tables, per_label=True)}\n"
            if latex:
                files[folder / "tables.tex"] = paper_tables.latex(tables) + "\n"
        for path in files:
            check_output(path, _is_earlier_table_file, what="affbench export", option="--csv", force=force)
        written = []
        for path, content in files.items():
            if isinstance(content, str):
                write_text_atomic(path, content)
                written.append(path)
            else:
                written.append(write_csv(content, path))
    text = paper_tables.markdown(tables)
    if not comparison.empty:
        text += "\n\n" + paper_tables.comparison_markdown(comparison)
    return Export(long, tables, comparison, text, written)


def suite_markdown(run_dir: str | os.PathLike, suite: str) -> tuple[str, list[dict[str, Any]]]:
    """The paper-style tables of one suite's records in ``run_dir`` as Markdown, and those records."""
    records = load_records(run_dir, suite=suite)
    return markdown(paper_tables_of(run_dir, records, published_for(run_dir, [suite]))), records
