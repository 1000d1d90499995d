"""``affbench compare RUNDIR CELL_A CELL_B``: is the difference between two cells real?

Two cells scored on the same test rows are compared on one metric from their kept test outputs
(:mod:`affbench.reporting.outputs`): the difference A - B, its paired cluster-bootstrap interval
and the p-value of a paired permutation test over clusters
(:func:`affbench.scoring.bootstrap.paired_comparison`). A cell is named
``SUITE/DATASET/TASK/ENCODER`` (every fold, combined as the protocol combines them) or
``SUITE/DATASET/TASK/ENCODER/foldK`` (one fold); where a suite has seeds, the seeds' runs of a
fold are averaged (``/seedS`` picks one), and ``/refoldP`` picks a random partition of the
subjects instead of the published one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affbench.errors import AffbenchError
from affbench.reporting.outputs import KeptOutputs, fold_runs, read_outputs, settings_of
from affbench.reporting.records import _require, load_records
from affbench.scoring.bootstrap import BootstrapSettings, Comparison, paired_comparison

#: The comparison CSV's columns (one row per comparison).
COMPARISON_COLUMNS = (
    "cell_a", "cell_b", "metric", "value_a", "value_b", "difference", "ci_low", "ci_high", "ci_level", "ci_method",
    "n_clusters", "cluster_unit", "folds", "p_value", "test", "permutations", "exact", "resamples", "seed", "note",
)


def _cell_name(record: Mapping[str, Any]) -> str:
    return f"{record['suite']}/{record['dataset']}/{record['task']}/{record['encoder']}"


def select_cell(records: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """The records that ``SUITE/DATASET/TASK/ENCODER[/foldK][/seedS][/refoldP]`` names: every fold and
    seed of the published partition unless narrowed; one sentence if none."""
    from affbench.reporting.records import run_of

    parts = name.rstrip("/").split("/")
    narrowing: dict[str, int] = {}
    while parts and re.fullmatch(r"(fold|seed|refold)\d+", parts[-1]):
        word = re.match(r"[a-z]+", parts[-1])
        assert word is not None
        narrowing[word.group()] = int(parts.pop()[len(word.group()):])
    cell = "/".join(parts)
    partition = narrowing.get("refold", 0)
    found = [r for r in records if _cell_name(r) == cell and run_of(r)[0] == partition
             and ("fold" not in narrowing or int(r["fold"]) == narrowing["fold"])
             and ("seed" not in narrowing or run_of(r)[1] == narrowing["seed"])]
    if not found:
        known = sorted(dict.fromkeys(_cell_name(r) for r in records))
        raise AffbenchError(f"No cell {name!r} in this run; its cells are: {', '.join(known)} (optionally with "
                            "/foldK, /seedS or /refoldP).")
    return sorted(found, key=lambda r: (int(r["fold"]), run_of(r)))


def _outputs_of(run_dir: Path, cells: Sequence[Mapping[str, Any]], name: str) -> list[KeptOutputs]:
    missing = [f"fold {r['fold']}" for r in cells if not r.get("test_outputs")]
    if missing:
        raise AffbenchError(f"{name} kept no test outputs ({', '.join(missing)}: made by an affbench before they "
                            "were kept), so it cannot be compared; run it again into a new folder.")
    return [read_outputs(run_dir / r["test_outputs"]) for r in cells]


def _rows_differ(a: Sequence[KeptOutputs], b: Sequence[KeptOutputs]) -> str | None:
    """Why two cells' test rows are not the same, or None when they are (seeds' runs of one fold
    must be as many in each cell)."""
    folds_a, folds_b = [o.fold for o in a], [o.fold for o in b]
    if sorted(set(folds_a)) != sorted(set(folds_b)):
        return f"folds {sorted(set(folds_a))} against {sorted(set(folds_b))}"
    if folds_a != folds_b:
        return "they have different numbers of seeds' runs per fold"
    for x, y in zip(a, b):
        if len(x.rows) != len(y.rows):
            return f"fold {x.fold} has {len(x.rows)} test rows against {len(y.rows)}"
        if not np.array_equal(x.rows["sample_id"].to_numpy(), y.rows["sample_id"].to_numpy()):
            return f"fold {x.fold} tests other samples"
        if x.task.label_names != y.task.label_names or not (np.array_equal(x.y, y.y) and np.array_equal(x.mask, y.mask)):
            return f"fold {x.fold} has other labels"
        if not np.array_equal(x.clusters, y.clusters):
            return f"fold {x.fold} groups its rows into other clusters"
    return None


@dataclass
class CellComparison:
    """What :func:`compare_cells` found, and the one-row table ``--csv`` writes."""

    cell_a: str
    cell_b: str
    result: Comparison
    folds: list[int]
    cluster_unit: str
    runs_per_fold: int = 1

    def table(self) -> pd.DataFrame:
        r = self.result
        row = {"cell_a": self.cell_a, "cell_b": self.cell_b, "metric": r.key, "value_a": r.value_a,
               "value_b": r.value_b, "difference": r.difference, "ci_low": r.low, "ci_high": r.high,
               "ci_level": r.settings.level, "ci_method": "paired " + r.settings.describe()["method"],
               "n_clusters": r.n_clusters, "cluster_unit": self.cluster_unit,
               "folds": " ".join(map(str, self.folds)), "p_value": r.p_value, "test": r.test,
               "permutations": r.permutations, "exact": r.exact, "resamples": r.settings.resamples,
               "seed": r.settings.seed, "note": r.note or ""}
        return pd.DataFrame([row], columns=list(COMPARISON_COLUMNS))

    def lines(self) -> list[str]:
        r = self.result
        folds = f"fold {self.folds[0]}" if len(self.folds) == 1 else f"folds {', '.join(map(str, self.folds))} (mean)"
        if self.runs_per_fold > 1:
            folds += f", {self.runs_per_fold} seeds per fold (mean)"
        if r.low is not None and r.high is not None:
            interval = (f" [{r.low:+.3f}, {r.high:+.3f}] ({r.settings.level:.0%} paired cluster bootstrap, "
                        f"{r.settings.resamples} resamples, seed {r.settings.seed})")
        else:
            interval = f" ({r.note})"
        how = "all" if r.exact else "random"
        return [
            f"A = {self.cell_a}", f"B = {self.cell_b}",
            f"{r.key} on {folds}, {r.n_clusters} clusters ({self.cluster_unit}): A {r.value_a:.4f}, B {r.value_b:.4f}",
            f"difference A - B {r.difference:+.4f}{interval}",
            f"p = {r.p_value:.4g}, two-sided, {r.test}; {how} {r.permutations} swap patterns",
        ]


def compare_cells(run_dir: str | os.PathLike, cell_a: str, cell_b: str, *, metric: str | None = None,
                  csv_path: str | os.PathLike | None = None, settings: BootstrapSettings | None = None,
                  permutations: int = 10000, force: bool = False) -> CellComparison:
    """Compare two cells of a run on the same test rows (see the module docstring).

    Parameters
    ----------
    run_dir : path
    cell_a, cell_b : str
        ``SUITE/DATASET/TASK/ENCODER[/foldK][/seedS][/refoldP]``.
    metric : str, optional
        A key the cells report (``"f1"``, ``"f1/au6"``); default: the task's primary metric.
    csv_path : path, optional
        Also write the comparison as a one-row CSV there.
    settings : BootstrapSettings, optional
        Default: the settings cell A's intervals were drawn with.
    permutations : int, default=10000
        The most swap patterns the permutation test tries (all of them when there are fewer).
    force : bool
        Replace ``csv_path`` even when it is not an earlier affbench export.

    Returns
    -------
    CellComparison

    Examples
    --------
    ``affbench compare runs/thesis thesis-caer/caer-s/expression/emotiram-fau
    thesis-caer/caer-s/expression/emotiram-f --metric accuracy``
    """
    from affbench.reporting.export import check_export_target, write_csv

    if csv_path is not None:
        check_export_target(csv_path, force=force)
    run_dir = Path(run_dir)
    records = load_records(run_dir)
    _require(records, run_dir)
    cells_a, cells_b = select_cell(records, cell_a), select_cell(records, cell_b)
    key = metric or str(cells_a[0].get("primary_metric"))
    for name, cells in ((cell_a, cells_a), (cell_b, cells_b)):
        if key not in cells[0]["metrics"]:
            raise AffbenchError(f"{name} reports no metric {key!r}; it reports: {', '.join(cells[0]['metrics'])}.")
    outputs_a, outputs_b = _outputs_of(run_dir, cells_a, cell_a), _outputs_of(run_dir, cells_b, cell_b)
    reason = _rows_differ(outputs_a, outputs_b)
    if reason is not None:
        raise AffbenchError(f"{cell_a} and {cell_b} were not scored on the same test rows ({reason}), so they "
                            "cannot be compared pair by pair.")
    settings = settings or settings_of(cells_a[0].get("ci"))
    try:
        result = paired_comparison(fold_runs(outputs_a), fold_runs(outputs_b), key,
                                   settings=settings, permutations=permutations)
    except ValueError as exc:
        raise AffbenchError(f"{key} cannot be compared: {exc}") from None
    found = CellComparison(cell_a, cell_b, result, sorted({o.fold for o in outputs_a}), outputs_a[0].cluster_unit,
                           len(outputs_a) // len({o.fold for o in outputs_a}))
    if csv_path is not None:
        write_csv(found.table(), csv_path)
    return found


def reference_comparisons(run_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]],
                          references: Mapping[str, str]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Each table row's difference from its suite's reference row, with Holm-adjusted p-values.

    For every (suite, dataset, task) where the suite names a reference experiment (``references``:
    suite -> experiment id) that has cells there, every other encoder of the table is compared
    with it on the task's primary metric over all folds (:func:`compare_cells`'s test), and the
    p-values of one table are adjusted together with Holm's step-down method. A row scored on
    other test rows, or without kept outputs, gets a ``note`` instead.

    Returns
    -------
    dict
        (suite, dataset, task, encoder) -> ``reference`` (its encoder), ``metric``,
        ``difference``, ``ci_low``, ``ci_high``, ``p_value``, ``p_holm``, ``note``.
    """
    from affbench.scoring.bootstrap import holm

    run_dir = Path(run_dir)
    tables: dict[tuple[str, str, str], dict[str, list[Mapping[str, Any]]]] = {}
    for record in records:
        key = (record["suite"], record["dataset"], record["task"])
        tables.setdefault(key, {}).setdefault(record["encoder"], []).append(record)
    found: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for (suite, dataset, task), by_encoder in tables.items():
        reference = references.get(suite)
        base = next((e for e, cells in by_encoder.items() if cells[0].get("experiment") == reference), None)
        if base is None:
            continue
        rows: dict[str, dict[str, Any]] = {}
        for encoder in by_encoder:
            if encoder == base:
                continue
            try:
                result = compare_cells(run_dir, f"{suite}/{dataset}/{task}/{encoder}", f"{suite}/{dataset}/{task}/{base}")
            except AffbenchError as exc:
                rows[encoder] = {"reference": base, "note": str(exc)}
                continue
            r = result.result
            rows[encoder] = {"reference": base, "metric": r.key, "difference": r.difference, "ci_low": r.low,
                             "ci_high": r.high, "p_value": r.p_value, "note": r.note}
        tested = [e for e, row in rows.items() if "p_value" in row]
        for encoder, adjusted in zip(tested, holm([rows[e]["p_value"] for e in tested])):
            rows[encoder]["p_holm"] = adjusted
        found.update({(suite, dataset, task, encoder): row for encoder, row in rows.items()})
    return found
