"""Result records of benchmark cells: one JSON file per finished cell, written whole or not at all.

A *cell* is one (suite, dataset, task, encoder, fold). Each finished cell is one JSON file::

    RUNDIR/results/<suite>/<dataset>__<task>__<encoder>__fold<k>.json

holding its metrics (per label too: ``"f1/au6"``), the trivial baselines' metrics on the same test
rows (:mod:`affbench.scoring.baselines`), row counts, configuration hash, seed, device, git commit,
wall time, epochs and the selected epoch. Files are written atomically, so a run killed at any
moment leaves whole records or none; the harness treats a present record with the same
configuration hash as finished.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affbench.errors import AffbenchError
from affbench.runtime.files import check_name, json_default, write_text_atomic
from affbench.runtime.run_folder import RunFolder


@dataclass(frozen=True)
class CellKey:
    """The identity of one benchmark cell: one (seed, partition) run of it where a suite asks for
    several (``seed`` None: the suite has no ``seeds`` list; ``partition`` 0: the published folds)."""

    suite: str
    dataset: str
    task: str
    encoder: str
    fold: int
    seed: int | None = None
    partition: int = 0

    @property
    def filename(self) -> str:
        run = (f"__seed{self.seed}" if self.seed is not None else "") + (
            f"__refold{self.partition}" if self.partition else "")
        return f"{self.dataset}__{self.task}__{self.encoder}__fold{self.fold}{run}.json"

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> CellKey:
        """The cell a record belongs to."""
        run = record.get("run") or {}
        return cls(record["suite"], record["dataset"], record["task"], record["encoder"], int(record["fold"]),
                   run.get("seed"), int(run.get("partition") or 0))

    def path(self, run_dir: str | os.PathLike) -> Path:
        for kind, name in (("suite", self.suite), ("dataset", self.dataset), ("task", self.task),
                           ("encoder", self.encoder)):
            check_name(f"{kind} name", name)
        return RunFolder(run_dir).results / self.suite / self.filename

    def __str__(self) -> str:
        run = (f"/seed{self.seed}" if self.seed is not None else "") + (
            f"/refold{self.partition}" if self.partition else "")
        return f"{self.suite}/{self.dataset}/{self.task}/{self.encoder}/fold{self.fold}{run}"


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
    path = CellKey.of(record).path(run_dir)
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
    results = RunFolder(root).results
    pattern = f"{suite}/*.json" if suite else "*/*.json"
    paths = sorted(results.glob(pattern)) if results.is_dir() else []
    records = [read_record(p) for p in paths]
    records.sort(key=lambda r: (r["suite"], r["dataset"], r["task"], r["encoder"], run_of(r), int(r["fold"])))
    return records


def run_of(record: Mapping[str, Any]) -> tuple[int, int]:
    """A record's run as (partition, seed): (0, -1) for the published folds of a suite without seeds."""
    run = record.get("run") or {}
    seed = run.get("seed")
    return int(run.get("partition") or 0), -1 if seed is None else int(seed)


def _require(records: Sequence[Mapping[str, Any]], run_dir: str | os.PathLike | None = None) -> None:
    if not records:
        where = f" in {run_dir}" if run_dir is not None else ""
        raise AffbenchError(f"No finished benchmark cells{where}; run `affbench run-benchmark` first.")


def baseline_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One pseudo-record per (suite, dataset, task, fold, baseline): the trivial predictors' scores.

    Every encoder of a (dataset, task, fold, partition) is scored on the same test rows, so their
    records carry the same baselines; the first record's are used.
    """
    seen: set[tuple] = set()
    found = []
    for record in records:
        for name, metrics in (record.get("baselines") or {}).items():
            key = (record["suite"], record["dataset"], record["task"], int(record["fold"]), run_of(record)[0], name)
            if key in seen:
                continue
            seen.add(key)
            found.append({**record, "encoder": "", "baseline": name, "metrics": metrics,
                          "ci": (record.get("baselines_ci") or {}).get(name)})
    return found
