"""Planning: a suite becomes content-addressed jobs in dependency order.

Each (experiment, fold) is a *job*; it trains one model (multi-task when it lists several tasks) or
evaluates one, and writes one record per *cell* (suite, dataset, task, encoder, fold) through
:mod:`affbench.results`. Jobs are content-addressed: ``RUNDIR/jobs/<dataset>-<encoder>-...-<hash>``
where the hash covers the data, protocol, encoder options, training settings and the hash of the
job it starts from, so two suites run into the same RUNDIR share identical jobs, and a changed
setting never reuses a stale checkpoint. A re-run skips cells whose record has the same
configuration hash, re-enters an unfinished job at its last finished epoch, and refuses to mix
results of other settings into an existing record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from affbench.errors import AffbenchError
from affbench.results import CellKey
from affbench.settings import TrainSettings
from affbench.benchmarks.suite import Experiment, Suite, load_suite, validate_encoders


#: Bumped when the harness changes in a way that changes results (invalidates job hashes).
HARNESS_VERSION = 2



def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Job:
    """One (experiment, fold): trains (or evaluates) one model and yields one cell per task."""

    experiment: Experiment
    fold: int
    source_fold: int | None = None  # init / evaluate: the fold of the referenced job
    depends: Job | None = None
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    requested: bool = True  # False: only run because another job needs it

    @property
    def key(self) -> str:
        tasks = "+".join(self.experiment.tasks)
        kind = "eval-" if self.experiment.is_evaluation else ""
        return f"{kind}{self.experiment.dataset}-{self.experiment.encoder}-{tasks}-fold{self.fold}-{self.config_hash[:10]}"

    def cells(self, suite: str) -> list[CellKey]:
        return [CellKey(suite, self.experiment.dataset, task, self.experiment.cell_encoder, self.fold)
                for task in self.experiment.tasks]


@dataclass
class Plan:
    suite: Suite
    jobs: list[Job]
    skipped: list[str]  # notes on experiments that the narrowing left without a fold


class DataCache:
    """Prepared datasets are opened once per run (the label tables are what costs)."""

    def __init__(self, data_root: Path, suite: Suite, verify_cache: Path | None = None):
        self.data_root, self.suite, self.verify_cache = data_root, suite, verify_cache
        self._cache: dict[str, Any] = {}

    def get(self, dataset: str):
        if dataset not in self._cache:
            from affbench.data import open_prepared

            # Shards are checked against their manifest's hashes before a run trains on them.
            self._cache[dataset] = open_prepared(self.data_root, dataset, folder=self.suite.folders.get(dataset),
                                                 verify=self.verify_cache is not None, verify_cache=self.verify_cache)
        return self._cache[dataset]

    def protocol(self, dataset: str):
        from affbench.protocols import Protocol

        return Protocol.from_dict(self.get(dataset).protocol_dict)


def task_specs(experiment: Experiment, suite: Suite, protocol) -> list:
    """The TaskSpecs of an experiment: the protocol's (with the suite's metrics) or derived ones."""
    from dataclasses import replace

    specs = []
    for name in experiment.tasks:
        if name in suite.derived_tasks:
            specs.append(suite.derived_tasks[name].spec())
            continue
        spec = protocol.task(name)  # UnknownNameError lists the dataset's tasks
        if experiment.metrics is not None:
            primary = spec.primary_metric if spec.primary_metric in experiment.metrics else experiment.metrics[0]
            spec = replace(spec, metrics=tuple(experiment.metrics), primary_metric=primary)
        specs.append(spec)
    return specs


def make_plan(
    suite: Suite,
    data_root: str | os.PathLike,
    *,
    encoders: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    data_cache: DataCache | None = None,
) -> Plan:
    """Expand the suite into jobs in dependency order, narrowed by ``encoders`` and ``folds``.

    Jobs that a requested job starts from (``init``) or evaluates run too, whatever the narrowing.
    ``epochs`` / ``max_steps`` override every training experiment (and so change job hashes).
    """
    data_root = Path(data_root)
    cache = data_cache or DataCache(data_root, suite)
    known = sorted({e.encoder for e in suite.experiments})
    for name in encoders or ():
        if name not in known:
            raise AffbenchError(f"Suite {suite.name} has no encoder {name!r}; its encoders are: {', '.join(known)}.")
    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if max_steps is not None:
        overrides["max_steps"] = int(max_steps)

    by_id = {e.id: e for e in suite.experiments}
    jobs: dict[tuple[str, int], Job] = {}
    order: list[Job] = []
    skipped: list[str] = []

    def protocol_folds(experiment: Experiment) -> tuple[int, ...]:
        available = cache.protocol(experiment.dataset).folds
        if experiment.folds is None:
            return tuple(available)
        unknown = sorted(set(experiment.folds) - set(available))
        if unknown:
            raise AffbenchError(
                f"Experiment {experiment.id!r} asks for fold(s) {unknown} of {experiment.dataset}, whose folds are {list(available)}."
            )
        return experiment.folds

    def build(experiment: Experiment, fold: int, requested: bool) -> Job:
        key = (experiment.id, fold)
        if key in jobs:
            jobs[key].requested = jobs[key].requested or requested
            return jobs[key]
        if experiment.is_evaluation:
            experiment = replace(experiment, training=TrainSettings())
        elif overrides:
            experiment = replace(experiment, training=experiment.training.merged(overrides))
        source = experiment.init or experiment.evaluate
        depends, source_fold = None, None
        if source is not None:
            origin = by_id[source.experiment]
            origin_folds = protocol_folds(origin)
            source_fold = source.fold if source.fold is not None else (
                origin_folds[0] if len(origin_folds) == 1 else fold)
            if source_fold not in origin_folds:
                raise AffbenchError(
                    f"Experiment {experiment.id!r} refers to fold {source_fold} of {origin.id!r}, which runs folds {list(origin_folds)}."
                )
            depends = build(origin, source_fold, requested=False)
        prepared = cache.get(experiment.dataset)
        protocol = cache.protocol(experiment.dataset)
        specs = task_specs(experiment, suite, protocol)
        config = {
            "harness": HARNESS_VERSION,
            "mode": "evaluate" if experiment.is_evaluation else "train",
            "dataset": experiment.dataset,
            "data": prepared.fingerprint,
            "tasks": [s.to_dict() for s in specs],
            "derived": [suite.derived_tasks[t].to_dict() for t in experiment.tasks if t in suite.derived_tasks],
            "split": protocol.to_dict().get("split"),
            "validation": protocol.to_dict().get("validation"),
            "fold": fold,
            "encoder": experiment.encoder,
            "options": {k: v for k, v in sorted(experiment.options.items())},
            **({"variant": experiment.variant} if experiment.variant else {}),
            "training": None if experiment.is_evaluation else experiment.training.result_dict(),
            "source": None if depends is None else {"job": depends.config_hash, "option": source.option},
        }
        job = Job(experiment, fold, source_fold, depends, config, _hash(config), requested)
        jobs[key] = job
        order.append(job)
        return job

    def missing_data(experiment: Experiment) -> str | None:
        """Why a ``when_prepared`` experiment cannot run here (its or its source's data is not prepared)."""
        from affbench.data import find_dataset_folder

        while experiment is not None:
            try:
                find_dataset_folder(data_root, experiment.dataset, suite.folders.get(experiment.dataset))
            except AffbenchError as exc:
                return str(exc)
            source = experiment.init or experiment.evaluate
            experiment = by_id[source.experiment] if source else None
        return None

    for experiment in suite.experiments:
        if encoders and experiment.encoder not in encoders:
            continue
        if experiment.when_prepared and (why := missing_data(experiment)):
            skipped.append(f"{experiment.id}: skipped, {why[0].lower()}{why[1:]}")
            continue
        chosen = [f for f in protocol_folds(experiment) if folds is None or f in folds]
        if not chosen:
            skipped.append(f"{experiment.id}: no fold of {experiment.dataset} among --folds {list(folds or [])}")
        for fold in chosen:
            build(experiment, fold, requested=True)
    if not order:
        raise AffbenchError(f"Nothing to run: the narrowing leaves no cell of suite {suite.name}.")
    return Plan(suite, order, skipped)


def list_jobs(suite: Suite | str | os.PathLike, data_root: str | os.PathLike, *, encoders: Sequence[str] | None = None,
              folds: Sequence[int] | None = None, epochs: int | None = None, max_steps: int | None = None) -> list[str]:
    """The ids of the jobs :func:`run_benchmark` would run, in dependency order (a job after the
    one it starts from), without training anything."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    validate_encoders(suite)
    plan = make_plan(suite, data_root, encoders=encoders, folds=folds, epochs=epochs, max_steps=max_steps)
    return [job.key for job in plan.jobs]
