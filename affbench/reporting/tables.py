"""Paper-style tables: one per (suite, dataset, task), with that task's labels only.

Each table has one row per encoder (``row = "affbench"``), per trivial baseline (``"baseline"``,
see :mod:`affbench.scoring.baselines`) and per published result of the suite (``"paper"``), and for every
metric of the task the overall value (``f1``) and one column per label (``f1_au6``), each followed
by its spread (``f1_sd``, ``f1_au6_sd``) and its confidence interval (``f1_ci_low``,
``f1_ci_high``). Values are means over the folds where the value is defined; the spread is the
sample standard deviation over folds (``ddof=1``), empty for one fold; the interval is the cluster
bootstrap of :func:`affbench.reporting.outputs.combined_intervals` (baseline rows:
:func:`~affbench.reporting.outputs.combined_baseline_intervals`; random-partition rows:
:func:`~affbench.reporting.outputs.refold_intervals`), and ``clusters`` says how many
independent clusters (subjects, videos) stand behind it. Column names hold only letters, digits
and underscores.

Rendered, a value reads ``0.631 [0.602, 0.659]`` where it has an interval, ``0.631 ± 0.015``
where it has folds but no interval, and the clusters column is marked ``†`` where there were too
few clusters for an interval, ``‡`` on a baseline whose value is an expectation (no interval by nature).

:func:`markdown` and :func:`latex` render the same tables; :func:`comparison_markdown` renders
:func:`affbench.reporting.published.comparison_table`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

TableKey = tuple[str, str, str]  # (suite, dataset, task)
ID_COLUMNS = ("row", "encoder", "name", "folds", "runs", "clusters")
STD_NOTE = "mean ± sample standard deviation (ddof=1) over folds; – = not available"
LATEX_NOTE = r"mean $\pm$ sample standard deviation (ddof=1) over folds; -- = not available"
RUNS_NOTE = ("runs = seeds x partitions behind a row, its ± then the sample standard deviation over runs; "
             "(random partitions) = the subjects dealt into the folds anew, beside the published folds")
#: A row's difference from the suite's reference row (``[suite] reference``), where it names one.
REFERENCE_COLUMNS = ("reference_diff", "reference_diff_ci_low", "reference_diff_ci_high", "reference_p",
                     "reference_p_holm")
#: Columns of a value that are not shown as columns of their own.
_VALUE_SUFFIXES = ("_sd", "_ci_low", "_ci_high")


def interval_note(level: float | None) -> str:
    """The tables' footnote on intervals."""
    shown = f"{level:.0%}" if level else "95%"
    return (f"[low, high] = {shown} cluster bootstrap percentile interval (whole subjects or videos resampled, "
            "within each fold, folds averaged); clusters = independent units behind it, † = fewer than 10, "
            "no interval")


def column_name(key: str) -> str:
    """``"f1/au6"`` -> ``"f1_au6"``: letters, digits and underscores only."""
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def table_name(key: TableKey) -> str:
    """File name (without extension) of a table: ``suite__dataset__task``."""
    return "__".join(re.sub(r"[^A-Za-z0-9._-]+", "-", part) for part in key)


def _metric_order(keys: Iterable[str]) -> list[str]:
    """Overall metrics in first-seen order, each followed by its per-label keys."""
    seen = list(dict.fromkeys(keys))
    ordered = []
    for head in (k for k in seen if "/" not in k):
        ordered.append(head)
        ordered.extend(k for k in seen if k.startswith(f"{head}/"))
    ordered.extend(k for k in seen if k not in ordered)
    return ordered


def _spread(values: Sequence[Any]) -> tuple[float, float]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    mean = float(np.mean(finite)) if finite else float("nan")
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")
    return mean, sd


#: Marks a row whose weights were tested on subjects they were trained on (allowed by ``allow_leakage``).
LEAKAGE_MARK = " (tested on training subjects)"


def _summary_row(row: str, encoder: str, name: str, cells: Sequence[Mapping[str, Any]], keys: Sequence[str],
                 ci: Mapping[str, Any] | None = None) -> dict:
    """One table row: every value's mean over the cells; its spread over runs (the mean over folds
    of each seed or partition) where there are several runs, else over folds; its interval."""
    from affbench.reporting.records import run_of

    if any(c.get("leakage") for c in cells):
        encoder += LEAKAGE_MARK
    runs: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for cell in cells:
        runs.setdefault(run_of(cell), []).append(cell)
    out: dict[str, Any] = {"row": row, "encoder": encoder, "name": name,
                           "folds": len({int(c["fold"]) for c in cells}), "runs": len(runs),
                           "clusters": ci.get("n_clusters") if ci else None}
    intervals = (ci or {}).get("intervals") or {}
    for key in keys:
        mean, sd = _spread([c["metrics"].get(key) for c in cells])
        if len(runs) > 1:
            sd = _spread([_spread([c["metrics"].get(key) for c in run])[0] for run in runs.values()])[1]
        out[column_name(key)] = mean
        out[f"{column_name(key)}_sd"] = sd
        low, high = intervals.get(key) or (None, None)
        out[f"{column_name(key)}_ci_low"] = float("nan") if low is None else float(low)
        out[f"{column_name(key)}_ci_high"] = float("nan") if high is None else float(high)
    return out


def wide_tables(records: Sequence[Mapping[str, Any]], published: Mapping[str, Sequence[Any]] | None = None,
                intervals: Mapping[tuple[str, str, str, str], Mapping[str, Any]] | None = None,
                references: Mapping[tuple[str, str, str, str], Mapping[str, Any]] | None = None,
                *, baseline_intervals: Mapping[tuple[str, str, str, str], Mapping[str, Any]] | None = None,
                refold_intervals: Mapping[tuple[str, str, str, str], Mapping[str, Any]] | None = None,
                ) -> dict[TableKey, pd.DataFrame]:
    """The paper-style tables of ``records`` (and the suites' ``published`` values), in record order;
    ``intervals`` per (suite, dataset, task, encoder), as
    :func:`affbench.reporting.outputs.combined_intervals` makes them, and each row's difference from
    the reference row, as :func:`affbench.reporting.compare.reference_comparisons` makes them.
    ``baseline_intervals`` per (suite, dataset, task, baseline) and ``refold_intervals`` per (suite,
    dataset, task, encoder) are those of the baseline rows over folds and of the random-partition rows
    (:func:`~affbench.reporting.outputs.combined_baseline_intervals`,
    :func:`~affbench.reporting.outputs.refold_intervals`); a one-fold baseline row without an entry
    shows its record's own interval."""
    from affbench.reporting.records import baseline_records, run_of
    from affbench.scoring.baselines import DESCRIPTIONS

    groups: dict[TableKey, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["suite"], record["dataset"], record["task"]), []).append(record)
    tables = {}
    for key, group in groups.items():
        suite, dataset, task = key
        keys = _metric_order(k for r in group for k in r["metrics"])
        rows = []
        by_encoder: dict[str, list] = {}
        for record in group:
            by_encoder.setdefault(record["encoder"], []).append(record)
        for encoder, cells in by_encoder.items():
            published_folds = [c for c in cells if run_of(c)[0] == 0]
            refolds = [c for c in cells if run_of(c)[0] != 0]
            if published_folds:
                rows.append(_summary_row("affbench", encoder, cells[0].get("label") or encoder, published_folds, keys,
                                         (intervals or {}).get((suite, dataset, task, encoder))))
            if refolds:  # the random partitions of the subjects, beside (never instead of) the published one
                rows.append(_summary_row("affbench-refolds", encoder, cells[0].get("label") or encoder, refolds, keys,
                                         (refold_intervals or {}).get((suite, dataset, task, encoder))))
        by_baseline: dict[str, list] = {}
        for record in baseline_records(group):
            if run_of(record)[0] == 0:
                by_baseline.setdefault(record["baseline"], []).append(record)
        for name, cells in by_baseline.items():
            ci = (baseline_intervals or {}).get((suite, dataset, task, name))
            if ci is None and len(cells) == 1:
                ci = cells[0].get("ci")
            rows.append(_summary_row("baseline", name, DESCRIPTIONS.get(name, name), cells, keys, ci))
        for entry in (published or {}).get(suite, ()):
            if entry.task != task:
                continue
            cells = [r for r in group if r.get("experiment") == entry.experiment]
            if not cells:
                continue
            paper = {"row": "paper", "encoder": cells[0]["encoder"], "name": cells[0].get("label") or "",
                     "folds": pd.NA}
            for label, value in entry.values.items():
                metric_key = entry.metric if not label else f"{entry.metric}/{label}"
                if metric_key not in keys:
                    keys.append(metric_key)
                paper[column_name(metric_key)] = value
            rows.append(paper)
        compared = {e: c for (su, d, t, e), c in (references or {}).items() if (su, d, t) == key}
        for row in rows:
            if row["row"] == "affbench" and row["encoder"] in compared:
                c = compared[row["encoder"]]
                row.update(zip(REFERENCE_COLUMNS, (c.get("difference"), c.get("ci_low"), c.get("ci_high"),
                                                   c.get("p_value"), c.get("p_holm"))))
        columns = list(ID_COLUMNS) + [column_name(k) + suffix for k in keys for suffix in ("", *_VALUE_SUFFIXES)]
        if compared:
            columns += list(REFERENCE_COLUMNS)
        frame = pd.DataFrame(rows).reindex(columns=columns)
        if compared:
            first = next(iter(compared.values()))
            frame.attrs["reference"] = (first["reference"], first.get("metric"))
        for column in ("folds", "runs", "clusters"):
            frame[column] = pd.array(frame[column], dtype="Int64")
        levels = [ci.get("level") for k, ci in (intervals or {}).items() if k[:3] == key]
        frame.attrs["ci_level"] = levels[0] if levels else None
        frame.attrs["overall"] = [column_name(k) for k in keys if "/" not in k]
        tables[key] = frame
    return tables


# ----------------------------------------------------------------------------------------- rendering


def _number(value: float, digits: int) -> str:
    return f"{0.0 if round(value, digits) == 0 else value:.{digits}f}"  # no "-0.000"


def _cell(mean: Any, sd: Any, digits: int, low: Any = None, high: Any = None) -> str:
    """``0.631 [0.602, 0.659]`` with an interval, else ``0.631 ± 0.015`` with a spread, else ``0.631``."""
    if mean is None or pd.isna(mean):
        return "–"
    text = _number(float(mean), digits)
    if low is not None and high is not None and not pd.isna(low) and not pd.isna(high):
        return f"{text} [{_number(float(low), digits)}, {_number(float(high), digits)}]"
    if sd is not None and not pd.isna(sd):
        text += f" ± {float(sd):.{digits}f}"
    return text


def _value_cell(row: Mapping[str, Any], column: str, digits: int) -> str:
    return _cell(row[column], row.get(f"{column}_sd"), digits, row.get(f"{column}_ci_low"),
                 row.get(f"{column}_ci_high"))


#: How a random-partition row's interval is drawn (:func:`affbench.scoring.bootstrap.partition_intervals`).
REFOLDS_INTERVAL_NOTE = ("(random partitions): the units drawn once per resample for all partitions, each "
                         "partition's folds averaged, then the partitions")
#: Marks a baseline row whose value is an expected value, with no interval by nature.
EXPECTED_MARK = "‡"
EXPECTED_NOTE = "‡ = an expected value (label-frequency), no interval by nature"


def _is_expected_value(row: Mapping[str, Any]) -> bool:
    from affbench.scoring.baselines import EXPECTED_VALUES

    return row["row"] == "baseline" and row["encoder"] in EXPECTED_VALUES


def _clusters(row: Mapping[str, Any]) -> str:
    """How many clusters stand behind the row's intervals; ``†`` where too few for one, ``‡`` for
    an expected value, which has none by nature."""
    from affbench.scoring.bootstrap import MIN_CLUSTERS

    if _is_expected_value(row):
        return EXPECTED_MARK
    if pd.isna(row.get("clusters")):
        return ""
    n = int(row["clusters"])
    return f"{n}†" if n < MIN_CLUSTERS else str(n)


def _shown_columns(table: pd.DataFrame, per_label: bool) -> list[str]:
    values = [c for c in table.columns
              if c not in ID_COLUMNS and c not in REFERENCE_COLUMNS and not c.endswith(_VALUE_SUFFIXES)]
    if not per_label:
        overall = set(table.attrs.get("overall", values))
        values = [c for c in values if c in overall]
    return [c for c in values if table[c].notna().any()]


def _row_label(row: Mapping[str, Any]) -> str:
    if row["row"] == "affbench-refolds":
        return f"{row['encoder']} (random partitions)"
    if row["row"] == "baseline":
        return f"baseline: {row['encoder']}"
    if row["row"] == "paper":
        return f"paper: {row['name'] or row['encoder']}"
    return str(row["encoder"])


def markdown(tables: Mapping[TableKey, pd.DataFrame], *, per_label: bool = False, digits: int = 3) -> str:
    """Markdown, one table per (suite, dataset, task); overall metrics only unless ``per_label``."""
    if not tables:
        return "(no results)"
    parts = []
    for (suite, dataset, task), table in tables.items():
        shown = _shown_columns(table, per_label)
        clusters, runs = _has_clusters(table), _has_runs(table)
        reference = table.attrs.get("reference")
        extra = [f"vs {reference[0]} ({reference[1]})"] if reference else []
        header = ["predictor", "folds", *(["runs"] if runs else []), *(["clusters"] if clusters else []), *shown,
                  *extra]
        lines = [f"### {suite} · {dataset} · {task}", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
        for _, row in table.iterrows():
            folds = "" if pd.isna(row["folds"]) else str(int(row["folds"]))
            cells = [_row_label(row), folds, *([_count(row, "runs")] if runs else []),
                     *([_clusters(row)] if clusters else [])]
            cells += [_value_cell(row, c, digits) for c in shown]
            if reference:
                cells.append(_reference_cell(row, reference[0], digits))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + f"\n\n({_footnote(tables)}.)"


def _reference_cell(row: Mapping[str, Any], reference: str, digits: int) -> str:
    """``+0.021 [-0.004, 0.047], p 0.09 (Holm 0.18)``; ``reference`` on the reference row itself."""
    if row["row"] == "affbench" and row["encoder"] == reference:
        return "reference"
    difference = row.get("reference_diff")
    if difference is None or pd.isna(difference):
        return ""
    text = f"{float(difference):+.{digits}f}"
    low, high = row.get("reference_diff_ci_low"), row.get("reference_diff_ci_high")
    if low is not None and high is not None and not pd.isna(low) and not pd.isna(high):
        text += f" [{float(low):+.{digits}f}, {float(high):+.{digits}f}]"
    p, holm = row.get("reference_p"), row.get("reference_p_holm")
    if p is not None and not pd.isna(p):
        text += f", p {float(p):.2g}"
        if holm is not None and not pd.isna(holm):
            text += f" (Holm {float(holm):.2g})"
    return text


def _has_runs(table: pd.DataFrame) -> bool:
    """Whether a row stands on several runs (seeds or random partitions)."""
    return "runs" in table.columns and bool((table["runs"].fillna(1) > 1).any())


def _count(row: Mapping[str, Any], column: str) -> str:
    return "" if pd.isna(row.get(column)) else str(int(row[column]))


def _has_clusters(table: pd.DataFrame) -> bool:
    """Whether any row states its clusters (records made before intervals state none)."""
    return "clusters" in table.columns and bool(table["clusters"].notna().any())


def _footnote(tables: Mapping[TableKey, pd.DataFrame], latex: bool = False) -> str:
    spread = LATEX_NOTE if latex else STD_NOTE
    if any(_has_runs(t) for t in tables.values()):
        spread = f"{spread}; {_tex(RUNS_NOTE) if latex else RUNS_NOTE}"
    if not any(_has_clusters(t) for t in tables.values()):
        return spread
    level = next((t.attrs.get("ci_level") for t in tables.values() if t.attrs.get("ci_level")), None)
    note = interval_note(level)
    if any(any(_is_expected_value(row) for _, row in t.iterrows()) for t in tables.values()):
        note += f"; {EXPECTED_NOTE}"
    if any(((t["row"] == "affbench-refolds") & t["clusters"].notna()).any() for t in tables.values()):
        note += f"; {REFOLDS_INTERVAL_NOTE}"
    if latex:
        note = _tex(note).replace("†", r"$^\dagger$").replace(EXPECTED_MARK, r"$^\ddagger$")
    note = f"{note}; otherwise {spread}"
    if any(t.attrs.get("reference") for t in tables.values()):
        note += ("; vs = difference from the suite's reference row, its paired interval, and the p-value of a "
                 "paired permutation test over clusters with Holm's correction over the table's rows")
    return note


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: Any) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _metric_groups(table: pd.DataFrame, shown: Sequence[str]) -> list[list[str]]:
    """``shown`` split into one group per metric: its overall column, then its label columns."""
    overall = set(table.attrs.get("overall", ()))
    groups: list[list[str]] = []
    for column in shown:
        if column in overall or not groups:
            groups.append([])
        groups[-1].append(column)
    return groups


def latex(tables: Mapping[TableKey, pd.DataFrame], *, per_label: bool = True, digits: int = 3) -> str:
    """LaTeX (booktabs) renderings: one ``table`` environment per (suite, dataset, task, metric)."""
    parts = [f"% affbench tables: {_footnote(tables)}. Needs \\usepackage{{booktabs}}."]
    for (suite, dataset, task), table in tables.items():
        for shown in _metric_groups(table, _shown_columns(table, per_label)):
            parts.append(_latex_table(table, shown, f"{_tex(suite)}: {_tex(dataset)} {_tex(task)}, {_tex(shown[0])}",
                                      digits))
    return "\n\n".join(parts)


def _latex_table(table: pd.DataFrame, shown: Sequence[str], title: str, digits: int) -> str:
    """One booktabs table of ``shown`` columns, every row of ``table``."""
    clusters, runs = _has_clusters(table), _has_runs(table)
    header = " & ".join(["Predictor", "Folds", *(["Runs"] if runs else []), *(["Clusters"] if clusters else []),
                         *(_tex(c) for c in shown)]) + r" \\"
    body = []
    for _, row in table.iterrows():
        folds = "" if pd.isna(row["folds"]) else str(int(row["folds"]))
        cells = [_tex(_row_label(row)), folds, *([_count(row, "runs")] if runs else []),
                 *([_clusters(row).replace("†", r"$^\dagger$").replace(EXPECTED_MARK, r"$^\ddagger$")]
                   if clusters else [])]
        cells += [_value_cell(row, c, digits).replace("±", r"$\pm$").replace("–", "--") for c in shown]
        body.append(" & ".join(cells) + r" \\")
    return "\n".join([
        r"\begin{table}[ht]", r"\centering", r"\small",
        rf"\caption{{{title}; {_footnote({('', '', ''): table}, latex=True)}.}}",
        rf"\begin{{tabular}}{{l{'r' * (len(shown) + 1 + clusters + runs)}}}", r"\toprule", header, r"\midrule", *body,
        r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ])


def comparison_markdown(comparison: pd.DataFrame, digits: int = 3) -> str:
    """The published-versus-affbench rows as one Markdown table per suite."""
    parts = []
    for suite, group in comparison.groupby("suite", sort=False):
        lines = [f"### {suite}: paper vs affbench", "",
                 "| experiment | task | metric | paper | affbench | difference | source |",
                 "| --- | --- | --- | ---: | ---: | ---: | --- |"]
        for _, row in group.iterrows():
            metric = row["metric"] + (f"/{row['label']}" if row["label"] else "")
            lines.append(f"| {row['experiment']} | {row['task']} | {metric} | {row['paper']:.{digits}f} | "
                         f"{_cell(row['affbench'], row['affbench_std'], digits)} | "
                         f"{_cell(row['difference'], None, digits)} | {row['source']} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
