"""Every test output kept: one Parquet file per (job, task) with each test row's labels and raw outputs.

A cell's numbers are then never final: :func:`score_outputs` recomputes its metrics and
:func:`outputs_intervals` its confidence intervals from the file alone (``affbench rescore``,
``affbench compare`` and the tables' intervals over folds all read it). The file describes itself:
its schema metadata holds the task (``TaskSpec.to_dict()``), how the model's AU output is turned
into scores, the fold, what a cluster is, the protocol version and what the fitted trivial
baselines learnt on the training rows (``baselines``), so their intervals can be drawn again too.

Columns, one row per test row of the task, in the order the cell scored them:

============== ============================================================================
``sample_id``  the shard row's id
``subject``    its subject (null where the dataset names none)
``source``     the video or image it was cut from
``frame``      its frame index (null for stills)
``cluster``    the independent unit the intervals resample (subject, video, or the row itself)
``label/<l>``  the target of label ``l`` (class tasks: one column ``label``, the class index)
``annotated/<l>`` whether that target is annotated (class tasks: ``annotated``)
``output/<o>`` the model's raw output ``o`` (logits, probabilities, intensities, class scores)
============== ============================================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from affbench.errors import AffbenchError
from affbench.runtime.files import atomic_write
from affbench.scoring.bootstrap import BootstrapSettings, Intervals, fold_intervals, partition_intervals
from affbench.scoring.cluster_statistics import ClusterSums, Fold, SeedRuns, cluster_sums
from affbench.scoring.protocols import TaskSpec
from affbench.scoring.registry import get_metric

#: Version of the outputs file's layout (schema metadata ``affbench_outputs``).
OUTPUTS_VERSION = 1
_META_KEY = b"affbench_outputs"
ROW_COLUMNS = ("sample_id", "subject", "source", "frame")


def scoring_versions(task: TaskSpec, protocol_version: str | None) -> dict[str, Any]:
    """What a record states it was scored with: the protocol's version and each metric definition's."""
    return {"protocol": protocol_version, "metrics": {name: get_metric(name).version for name in task.metrics}}


@dataclass
class KeptOutputs:
    """One (job, task)'s kept test outputs, as :func:`read_outputs` returns them."""

    task: TaskSpec
    au_output: str | None
    fold: int
    cluster_unit: str
    protocol_version: str | None
    rows: pd.DataFrame  # ROW_COLUMNS and cluster
    y: np.ndarray
    mask: np.ndarray
    raw: np.ndarray
    #: What the fitted constant baselines learnt on the training rows
    #: (:func:`affbench.scoring.baselines.fitted_constants`); None in a file made before it was kept.
    baseline_constants: dict[str, Any] | None = None

    @property
    def clusters(self) -> np.ndarray:
        return self.rows["cluster"].to_numpy(dtype=str)

    def scores(self) -> np.ndarray:
        """What score_task scores: the raw outputs after the task's activation (sigmoid, softmax...)."""
        from affbench.scoring.scorer import task_scores

        return task_scores(self.task, _AuOutput(self.au_output or "logits"), self.raw)

    def sums(self) -> ClusterSums:
        return cluster_sums(self.task, self.y, self.scores(), self.clusters, mask=self.mask)

    def baseline_sums(self) -> dict[str, ClusterSums]:
        """The constant baselines' cluster sums on these test rows: the AU detection ones always,
        the fitted ones (majority class, training mean) where the file keeps what they learnt."""
        from affbench.scoring.baselines import predictions_from_constants

        predicted = predictions_from_constants(self.task, self.y, self.mask, self.baseline_constants or {})
        return {name: cluster_sums(self.task, truth, prediction, self.clusters, mask=annotated)
                for name, (truth, prediction, annotated) in predicted.items()}


@dataclass(frozen=True)
class _AuOutput:
    """The one field of an encoder spec that task_scores reads."""

    au_output: str


def _names(task: TaskSpec) -> tuple[list[str], list[str]]:
    labels = [] if task.is_classification else list(task.label_names)
    outputs = list(task.label_names) if len(task.label_names) == task.n_outputs else [str(i) for i in range(task.n_outputs)]
    return labels, outputs


def outputs_table(task: TaskSpec, rows: pd.DataFrame, clusters: np.ndarray, y: np.ndarray, mask: np.ndarray,
                  raw: np.ndarray, *, fold: int, cluster_unit: str, au_output: str | None,
                  protocol_version: str | None, baseline_constants: Mapping[str, Any] | None = None) -> pa.Table:
    """The outputs file's table for one task's test rows (see the module docstring for its columns).

    Parameters
    ----------
    task : TaskSpec
    rows : pandas.DataFrame
        The test rows' ``sample_id``, ``subject``, ``source`` and ``frame`` (missing columns are null).
    clusters : ndarray of str
        Each row's cluster.
    y, mask : ndarray
        The task's targets and annotation mask on those rows.
    raw : ndarray of shape (n_rows, n_outputs)
        The model's raw outputs on them.
    fold, cluster_unit, au_output, protocol_version
        Stored in the schema metadata.
    baseline_constants : mapping, optional
        What the fitted baselines learnt (:func:`affbench.scoring.baselines.fitted_constants`), stored
        in the schema metadata so that their intervals can be drawn again from this file alone.

    Returns
    -------
    pyarrow.Table
    """
    labels, outputs = _names(task)
    n = len(rows)
    columns: dict[str, Any] = {}
    for name in ROW_COLUMNS:
        columns[name] = rows[name].to_numpy(dtype=object) if name in rows.columns else np.full(n, None, dtype=object)
    columns["cluster"] = np.asarray(clusters, dtype=str)
    if task.is_classification:
        columns["label"], columns["annotated"] = np.asarray(y), np.asarray(mask, dtype=bool)
    else:
        for j, label in enumerate(labels):
            columns[f"label/{label}"] = np.asarray(y)[:, j]
            columns[f"annotated/{label}"] = np.asarray(mask, dtype=bool)[:, j]
    raw = np.asarray(raw).reshape(n, -1)
    for j, name in enumerate(outputs):
        columns[f"output/{name}"] = raw[:, j]
    types = {"sample_id": pa.string(), "subject": pa.string(), "source": pa.string(), "frame": pa.int32()}
    arrays = {k: pa.array(v, type=types.get(k), from_pandas=True) for k, v in columns.items()}
    table = pa.table(arrays)
    described = {"version": OUTPUTS_VERSION, "task": task.to_dict(), "au_output": au_output, "fold": int(fold),
                 "cluster_unit": cluster_unit, "protocol_version": protocol_version,
                 "baselines": dict(baseline_constants or {})}
    return table.replace_schema_metadata({_META_KEY: json.dumps(described).encode()})


def write_outputs(path: str | os.PathLike, table: pa.Table) -> Path:
    """Write an outputs table atomically (a killed run never leaves half a file)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_outputs(path: str | os.PathLike) -> KeptOutputs:
    """Read an outputs file back; one sentence when it is missing or not one."""
    path = Path(path)
    try:
        table = pq.read_table(path)
        described = json.loads((table.schema.metadata or {})[_META_KEY])
    except FileNotFoundError:
        raise AffbenchError(f"The test outputs {path} are missing; run the cell again to make them.") from None
    except (OSError, KeyError, ValueError, pa.ArrowInvalid):
        raise AffbenchError(f"{path} is not an affbench test-outputs file; run the cell again to make it.") from None
    task = TaskSpec.from_dict(described["task"])
    labels, outputs = _names(task)
    frame = table.to_pandas()
    if task.is_classification:
        y, mask = frame["label"].to_numpy(), frame["annotated"].to_numpy(dtype=bool)
    else:
        y = np.column_stack([frame[f"label/{label}"].to_numpy() for label in labels])
        mask = np.column_stack([frame[f"annotated/{label}"].to_numpy(dtype=bool) for label in labels])
    raw = np.column_stack([frame[f"output/{name}"].to_numpy() for name in outputs])
    return KeptOutputs(task, described.get("au_output"), int(described["fold"]), described["cluster_unit"],
                       described.get("protocol_version"), frame[[*ROW_COLUMNS, "cluster"]], y, mask, raw,
                       described.get("baselines"))


def score_outputs(outputs: KeptOutputs) -> tuple[dict[str, float], list[str]]:
    """The metrics score_task gives on kept outputs, and its warnings (as the record's notes)."""
    import warnings

    from affbench.scoring.scorer import score_task

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = score_task(outputs.task, outputs.y, outputs.scores(), mask=outputs.mask)
    return metrics, list(dict.fromkeys(str(w.message) for w in caught))


def fold_runs(runs: Sequence[KeptOutputs]) -> list[Fold]:
    """One entry per fold, in fold order: the fold's cluster sums, or its seeds' runs together."""
    by_fold: dict[int, list[KeptOutputs]] = {}
    for outputs in runs:
        by_fold.setdefault(outputs.fold, []).append(outputs)
    folds: list[Fold] = []
    for fold in sorted(by_fold):
        sums = [o.sums() for o in by_fold[fold]]
        folds.append(sums[0] if len(sums) == 1 else SeedRuns(sums))
    return folds


def outputs_intervals(runs: Sequence[KeptOutputs], settings: BootstrapSettings | None = None) -> Intervals:
    """Cluster bootstrap intervals over kept outputs: one or more folds, combined as the fold mean,
    and within a fold one or more seeds' runs on the same rows, averaged."""
    return fold_intervals(fold_runs(runs), settings)


def baseline_intervals(outputs: KeptOutputs, settings: BootstrapSettings | None = None
                       ) -> dict[str, dict[str, Any]] | None:
    """A record's ``baselines_ci``: each constant baseline's interval on one cell's kept test rows;
    None for a file made before the fitted baselines' constants were kept (its intervals cannot be
    drawn again from it)."""
    if outputs.baseline_constants is None:
        return None
    return {name: interval_record(fold_intervals([sums], settings), outputs.cluster_unit)
            for name, sums in outputs.baseline_sums().items()}


def interval_record(intervals: Intervals, cluster_unit: str) -> dict[str, Any]:
    """A record's ``ci`` entry."""
    return {**intervals.to_record(), "cluster_unit": cluster_unit}


def settings_of(ci: Mapping[str, Any] | None) -> BootstrapSettings:
    """The bootstrap settings a record's ``ci`` states (the defaults for a record without one)."""
    if not ci:
        return BootstrapSettings()
    return BootstrapSettings(resamples=int(ci["resamples"]), level=float(ci["level"]), seed=int(ci["seed"]),
                             min_clusters=int(ci.get("min_clusters", BootstrapSettings.min_clusters)))


GroupKey = tuple[str, str, str, str]  # (suite, dataset, task, encoder or baseline)


def _groups(records: Sequence[Mapping[str, Any]], *, published: bool) -> dict[GroupKey, list[Mapping[str, Any]]]:
    """Records by (suite, dataset, task, encoder): of the published partition, or of the random ones."""
    from affbench.reporting.records import run_of

    groups: dict[GroupKey, list[Mapping[str, Any]]] = {}
    for record in records:
        if (run_of(record)[0] == 0) == published:
            groups.setdefault((record["suite"], record["dataset"], record["task"], record["encoder"]), []).append(record)
    return groups


def _kept(cells: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every cell has its interval settings and its kept outputs."""
    return all(isinstance(c.get("ci"), Mapping) and c.get("test_outputs") for c in cells)


def combined_intervals(run_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]]
                       ) -> dict[GroupKey, dict[str, Any]]:
    """The interval of every (suite, dataset, task, encoder) over its folds, as the tables show them.

    One record: its own ``ci``. Several (folds, seeds): each fold's clusters resampled within the
    fold from its kept outputs, a fold's seeds with the same clusters, the replicates averaged as the
    tables average them. This is the published partition of subjects; :func:`refold_intervals`
    gives the random ones. A group with a record made before outputs were kept has no entry.
    """
    found = {}
    for key, cells in _groups(records, published=True).items():
        if not all(isinstance(c.get("ci"), Mapping) for c in cells):
            continue
        if len(cells) == 1:
            found[key] = dict(cells[0]["ci"])
            continue
        if not _kept(cells):
            continue
        folds = [read_outputs(Path(run_dir) / c["test_outputs"]) for c in cells]
        found[key] = interval_record(outputs_intervals(folds, settings_of(cells[0]["ci"])), folds[0].cluster_unit)
    return found


def refold_intervals(run_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]]
                     ) -> dict[GroupKey, dict[str, Any]]:
    """The interval of every (suite, dataset, task, encoder)'s random partitions (a suite's refolds),
    as the tables' "(random partitions)" rows show them: the mean over partitions of each
    partition's fold mean, the subjects drawn once per resample for all partitions
    (:func:`affbench.scoring.bootstrap.partition_intervals`). A group with a record made before
    outputs were kept has no entry."""
    from affbench.reporting.records import run_of

    found = {}
    for key, cells in _groups(records, published=False).items():
        if not _kept(cells):
            continue
        by_partition: dict[int, list[KeptOutputs]] = {}
        for cell in cells:
            by_partition.setdefault(run_of(cell)[0], []).append(read_outputs(Path(run_dir) / cell["test_outputs"]))
        partitions = [fold_runs(by_partition[p]) for p in sorted(by_partition)]
        intervals = partition_intervals(partitions, settings_of(cells[0]["ci"]))
        found[key] = interval_record(intervals, next(iter(by_partition.values()))[0].cluster_unit)
    return found


def combined_baseline_intervals(run_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]]
                                ) -> dict[GroupKey, dict[str, Any]]:
    """The interval of every constant baseline over the folds of the published partition, keyed
    (suite, dataset, task, baseline): each fold's test clusters resampled within the fold, the
    folds averaged, as :func:`combined_intervals` does for an encoder. A baseline's folds are those
    of the first record kept for each fold (every encoder of a fold is tested on the same rows). One
    fold: its record's own ``baselines_ci``. A fitted baseline (majority class, training mean) of
    outputs kept before their constants were has no entry; ``label-frequency`` never has one."""
    from affbench.reporting.records import baseline_records

    found: dict[GroupKey, dict[str, Any]] = {}
    tables: dict[tuple[str, str, str], dict[int, Mapping[str, Any]]] = {}
    for (suite, dataset, task, _), cells in _groups(records, published=True).items():
        for cell in cells:
            tables.setdefault((suite, dataset, task), {}).setdefault(int(cell["fold"]), cell)
    for table, by_fold in tables.items():
        cells = [by_fold[f] for f in sorted(by_fold)]
        if len(cells) == 1:
            found.update({table + (b["baseline"],): dict(b["ci"]) for b in baseline_records(cells)
                          if isinstance(b.get("ci"), Mapping)})
            continue
        if not _kept(cells):
            continue
        settings = settings_of(cells[0]["ci"])
        kept = [read_outputs(Path(run_dir) / c["test_outputs"]) for c in cells]
        sums = [k.baseline_sums() for k in kept]
        units = kept[0].cluster_unit
        for name in [n for n in sums[0] if all(n in s for s in sums)]:
            found[table + (name,)] = interval_record(fold_intervals([s[name] for s in sums], settings), units)
    return found
