"""Planning: a suite becomes content-addressed jobs in dependency order.

Each (experiment, fold) is a *job* (each (experiment, fold, seed, partition) where the suite lists
``seeds`` or asks for ``refolds``); it trains one model (multi-task when it lists several tasks) or
evaluates one, and writes one record per *cell* (suite, dataset, task, encoder, fold) through
:mod:`affbench.reporting.records`. Jobs are content-addressed: ``RUNDIR/jobs/<dataset>-<encoder>-...-<hash>``
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
from typing import TYPE_CHECKING, Any

from affbench.benchmarks.leakage import check_leakage
from affbench.benchmarks.suite import Experiment, Source, Suite, load_suite, validate_encoders
from affbench.errors import AffbenchError
from affbench.reporting.records import CellKey
from affbench.training.settings import TrainSettings

if TYPE_CHECKING:
    from affbench.data.prepared import PreparedData
    from affbench.scoring.protocols import Protocol, TaskSpec

#: Bumped when the harness changes in a way that changes results (invalidates job hashes).
HARNESS_VERSION = 2


def _hash(data: Any) -> str:
    """SHA-256 of ``data`` as canonical JSON: the content address of a job."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Job:
    """One (experiment, fold): trains (or evaluates) one model and yields one cell per task.

    Parameters
    ----------
    experiment : Experiment
        The experiment, with the plan's training overrides applied.
    fold : int
        The protocol fold it trains and tests on.
    source_fold : int, optional
        For ``init`` / ``evaluate`` experiments: the fold of the referenced job.
    depends : Job, optional
        The job it starts from or evaluates.
    config : dict
        Everything that decides its results (data, protocol, encoder, training, source job).
    config_hash : str
        :func:`_hash` of ``config``.
    requested : bool, default=True
        False: only run because another job needs it.
    """

    experiment: Experiment
    fold: int
    source_fold: int | None = None
    depends: Job | None = None
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    requested: bool = True
    seed: int | None = None
    partition: int = 0

    @property
    def key(self) -> str:
        """The job's folder name: ``[eval-]<dataset>-<encoder>-<tasks>-fold<n>[-seed<s>][-refold<p>]-<hash
        prefix>`` (a seed where the suite lists ``seeds``, a partition for its random ``refolds``)."""
        tasks = "+".join(self.experiment.tasks)
        kind = "eval-" if self.experiment.is_evaluation else ""
        run = (f"-seed{self.seed}" if self.seed is not None else "") + (f"-refold{self.partition}" if self.partition else "")
        return (f"{kind}{self.experiment.dataset}-{self.experiment.encoder}-{tasks}-fold{self.fold}{run}-"
                f"{self.config_hash[:10]}")

    def cells(self, suite: str) -> list[CellKey]:
        """The cells the job writes a record for, one per task.

        Parameters
        ----------
        suite : str
            The suite's name.

        Returns
        -------
        list of CellKey
        """
        return [CellKey(suite, self.experiment.dataset, task, self.experiment.cell_encoder, self.fold, self.seed,
                        self.partition) for task in self.experiment.tasks]


@dataclass
class Plan:
    """A suite's jobs in dependency order (a job after the one it starts from or evaluates).

    Parameters
    ----------
    suite : Suite
        The suite planned.
    jobs : list of Job
        Every job to run, the requested ones and those they need.
    skipped : list of str
        Notes on experiments that the narrowing (or missing data) left without a job.
    """

    suite: Suite
    jobs: list[Job]
    skipped: list[str]


class DataCache:
    """Prepared datasets are opened once per run (the label tables are what costs).

    Parameters
    ----------
    data_root : Path
        The ``--data`` folder.
    suite : Suite
        Its ``[datasets]`` folder names are honoured.
    verify_cache : Path, optional
        Where shard verification is remembered; given, shards are checked against their manifest's
        hashes before a run trains on them.
    """

    def __init__(self, data_root: Path, suite: Suite, verify_cache: Path | None = None) -> None:
        self.data_root, self.suite, self.verify_cache = data_root, suite, verify_cache
        self._cache: dict[str, Any] = {}

    def get(self, dataset: str) -> PreparedData:
        """The prepared ``dataset``, opened on first use.

        Parameters
        ----------
        dataset : str
            A dataset name.

        Returns
        -------
        affbench.data.prepared.PreparedData
        """
        if dataset not in self._cache:
            from affbench.data.prepared import open_prepared

            # Shards are checked against their manifest's hashes before a run trains on them.
            self._cache[dataset] = open_prepared(self.data_root, dataset, folder=self.suite.folders.get(dataset),
                                                 verify=self.verify_cache is not None, verify_cache=self.verify_cache)
        return self._cache[dataset]

    def protocol(self, dataset: str) -> Protocol:
        """The evaluation protocol stored with the prepared ``dataset``.

        Parameters
        ----------
        dataset : str
            A dataset name.

        Returns
        -------
        affbench.scoring.protocols.Protocol
        """
        from affbench.scoring.protocols import Protocol

        return Protocol.from_dict(self.get(dataset).protocol_dict)


def task_specs(experiment: Experiment, suite: Suite, protocol: Protocol) -> list[TaskSpec]:
    """The TaskSpecs of an experiment: the protocol's (with the experiment's metrics) or derived ones.

    Parameters
    ----------
    experiment : Experiment
        Its ``tasks`` name protocol tasks or the suite's derived tasks; its ``metrics``, when given,
        replace a protocol task's (the primary metric stays where it is among them).
    suite : Suite
        Holds the derived tasks.
    protocol : affbench.scoring.protocols.Protocol
        The protocol of the experiment's dataset.

    Returns
    -------
    list of affbench.scoring.protocols.TaskSpec
        One per task of the experiment, in its order.
    """
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


def _check_encoders(suite: Suite, encoders: Sequence[str] | None) -> None:
    """Every encoder of the narrowing is one the suite uses."""
    known = sorted({e.encoder for e in suite.experiments})
    for name in encoders or ():
        if name not in known:
            raise AffbenchError(f"Suite {suite.name} has no encoder {name!r}; its encoders are: {', '.join(known)}.")


def _training_overrides(epochs: int | None, max_steps: int | None) -> dict[str, Any]:
    """The training settings that ``epochs`` / ``max_steps`` override in every training experiment."""
    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if max_steps is not None:
        overrides["max_steps"] = int(max_steps)
    return overrides


class _Planner:
    """The jobs of one :func:`make_plan` call, built once each and kept in dependency order."""

    def __init__(self, suite: Suite, data_root: Path, cache: DataCache, overrides: dict[str, Any],
                 weights_root: Path | None = None) -> None:
        self.suite, self.data_root, self.cache, self.overrides = suite, data_root, cache, overrides
        self.weights_root = weights_root
        self.by_id = {e.id: e for e in suite.experiments}
        self.jobs: dict[tuple[str, int, int | None, int], Job] = {}
        self.order: list[Job] = []
        self.skipped: list[str] = []

    def request(self, experiment: Experiment, folds: Sequence[int] | None) -> None:
        """Plan ``experiment`` on its folds among ``folds``, or note why it has none."""
        if experiment.when_prepared and (why := self.missing_data(experiment)):
            self.skipped.append(f"{experiment.id}: skipped, {why[0].lower()}{why[1:]}")
            return
        chosen = [f for f in self.protocol_folds(experiment) if folds is None or f in folds]
        if not chosen:
            self.skipped.append(f"{experiment.id}: no fold of {experiment.dataset} among --folds {list(folds or [])}")
        partitions = range(1 + self.suite.refolds) if self.has_subject_folds(experiment) else range(1)
        if self.suite.refolds and len(partitions) == 1:
            self.skipped.append(f"{experiment.id}: no refolds, {experiment.dataset} has a given train/test split")
        for partition in partitions:
            for seed in self.suite.seeds or (None,):
                for fold in chosen:
                    self.build(experiment, fold, requested=True, seed=seed, partition=partition)

    def has_subject_folds(self, experiment: Experiment) -> bool:
        """Whether the experiment's dataset has subject folds that refolds can deal anew."""
        from affbench.scoring.protocols import CrossValidation

        return isinstance(self.cache.protocol(experiment.dataset).split, CrossValidation)

    def protocol_folds(self, experiment: Experiment) -> tuple[int, ...]:
        """The folds ``experiment`` runs: its own ``folds`` (checked) or all of its dataset's protocol."""
        available = self.cache.protocol(experiment.dataset).folds
        if experiment.folds is None:
            return tuple(available)
        unknown = sorted(set(experiment.folds) - set(available))
        if unknown:
            raise AffbenchError(
                f"Experiment {experiment.id!r} asks for fold(s) {unknown} of {experiment.dataset}, whose folds are {list(available)}."
            )
        return experiment.folds

    def build(self, experiment: Experiment, fold: int, requested: bool, *, seed: int | None = None,
              partition: int = 0) -> Job:
        """The job of (experiment, fold, seed, partition), after the job it starts from or evaluates;
        built once. A seed replaces the experiment's training seed; a partition > 0 deals the
        subjects into the folds anew (:meth:`affbench.scoring.protocols.Protocol.repartitioned`)."""
        key = (experiment.id, fold, seed, partition)
        if key in self.jobs:
            self.jobs[key].requested = self.jobs[key].requested or requested
            return self.jobs[key]
        if experiment.is_evaluation:
            experiment = replace(experiment, training=TrainSettings())
        else:
            changes = {**self.overrides, **({"seed": seed} if seed is not None else {})}
            if changes:
                experiment = replace(experiment, training=experiment.training.merged(changes))
        source = experiment.init or experiment.evaluate
        depends, source_fold, reference = None, None, None
        if source is not None:
            depends, source_fold = self._source_job(experiment, source, fold, seed, partition)
            reference = {"job": depends.config_hash, "option": source.option}
        config = self._config(experiment, fold, reference, partition)
        if experiment.published is not None:
            config["published"] = self._released_file(experiment, fold)
        job = Job(experiment, fold, source_fold, depends, config, _hash(config), requested, seed, partition)
        # Refuses, unless the suite allows it; the subjects are dealt as in the job's partition.
        leak = check_leakage(job, lambda dataset: self.cache.protocol(dataset).repartitioned(partition))
        if leak is not None:
            job.config["leakage"] = leak.to_dict()
            job.config_hash = _hash(job.config)
        self.jobs[key] = job
        self.order.append(job)
        return job

    def _released_file(self, experiment: Experiment, fold: int) -> dict[str, Any]:
        """The released file ``experiment`` scores on ``fold``: its tag, path, name, size and modification time.

        The file is the fold's entry of ``files``, or the fold's published name in ``folder``; relative
        paths are read under ``--weights``. A file named as another fold's release is that fold's file,
        whatever entry gives it, so that the leakage check sees which subjects it was trained on.
        """
        from affbench.encoders.published import get_published, group_tags

        released = experiment.published
        assert released is not None
        folds = group_tags(released.tag)
        tag = folds.get(fold) or next(iter(folds.values()))
        if released.files:
            if fold not in released.files:
                raise AffbenchError(f"Experiment {experiment.id!r} runs fold {fold} but [experiment.published] files "
                                    f"gives none for it; add {fold} = \"...\" or narrow its folds.")
            path = Path(released.files[fold]).expanduser()
        else:
            path = Path(str(released.folder)).expanduser() / get_published(tag).file_name
        if not path.is_absolute():
            path = (self.weights_root or Path.cwd()) / path
        named_as = [t for t in folds.values() if get_published(t).file_name == path.name]
        tag = named_as[0] if named_as else tag
        if not path.is_file():
            published = get_published(tag)
            raise AffbenchError(
                f"Experiment {experiment.id!r} fold {fold} scores {tag}, whose file {path} does not exist; put "
                f"{published.file_name} there (published at {published.published_at.split(' ')[0]}; affbench "
                "downloads nothing) or give its folder with --weights."
            )
        stat = path.stat()
        return {"tag": tag, "file": str(path.resolve()), "name": path.name, "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns}

    def _source_job(self, experiment: Experiment, source: Source, fold: int, seed: int | None, partition: int
                    ) -> tuple[Job, int]:
        """The job that ``source`` refers to and its fold: the one named, the only one, or ``fold``;
        of the same seed, and of the same partition where its dataset has subject folds."""
        origin = self.by_id[source.experiment]
        origin_folds = self.protocol_folds(origin)
        source_fold = source.fold if source.fold is not None else (
            origin_folds[0] if len(origin_folds) == 1 else fold)
        if source_fold not in origin_folds:
            raise AffbenchError(
                f"Experiment {experiment.id!r} refers to fold {source_fold} of {origin.id!r}, which runs folds {list(origin_folds)}."
            )
        origin_partition = partition if self.has_subject_folds(origin) else 0
        return self.build(origin, source_fold, requested=False, seed=seed, partition=origin_partition), source_fold

    def _config(self, experiment: Experiment, fold: int, reference: dict[str, Any] | None, partition: int = 0
                ) -> dict[str, Any]:
        """Everything that decides the job's results, ``reference`` the job it starts from or evaluates
        (its hash and the encoder option that receives its weights); the hash is the job's address."""
        prepared = self.cache.get(experiment.dataset)
        protocol = self.cache.protocol(experiment.dataset).repartitioned(partition)
        specs = task_specs(experiment, self.suite, protocol)
        derived = self.suite.derived_tasks
        return {
            "harness": HARNESS_VERSION,
            "mode": "evaluate" if experiment.is_evaluation else "train",
            "dataset": experiment.dataset,
            "data": prepared.fingerprint,
            "tasks": [s.to_dict() for s in specs],
            "derived": [derived[t].to_dict() for t in experiment.tasks if t in derived],
            "split": protocol.to_dict().get("split"),
            "validation": protocol.to_dict().get("validation"),
            "fold": fold,
            "encoder": experiment.encoder,
            "options": {k: v for k, v in sorted(experiment.options.items())},
            **({"variant": experiment.variant} if experiment.variant else {}),
            "training": None if experiment.is_evaluation else experiment.training.result_dict(),
            "source": reference,
            **({"partition": partition} if partition else {}),
        }

    def missing_data(self, experiment: Experiment | None) -> str | None:
        """Why a ``when_prepared`` experiment cannot run here (its or its source's data is not prepared)."""
        from affbench.data.prepared import find_dataset_folder

        while experiment is not None:
            try:
                find_dataset_folder(self.data_root, experiment.dataset, self.suite.folders.get(experiment.dataset))
            except AffbenchError as exc:
                return str(exc)
            source = experiment.init or experiment.evaluate
            experiment = self.by_id[source.experiment] if source else None
        return None


def make_plan(
    suite: Suite,
    data_root: str | os.PathLike,
    *,
    encoders: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    data_cache: DataCache | None = None,
    weights: str | os.PathLike | None = None,
) -> Plan:
    """Expand the suite into jobs in dependency order, narrowed by ``encoders`` and ``folds``.

    Jobs that a requested job starts from (``init``) or evaluates run too, whatever the narrowing.

    Parameters
    ----------
    suite : Suite
        The suite to plan.
    data_root : path
        The ``--data`` folder holding the prepared datasets.
    encoders : sequence of str, optional
        Plan only the experiments of these encoders (each must be one of the suite's).
    folds : sequence of int, optional
        Plan only these folds; an experiment left with none is noted in :attr:`Plan.skipped`.
    epochs, max_steps : int, optional
        Override every training experiment's settings (and so change job hashes).
    data_cache : DataCache, optional
        Opened datasets to reuse; default: a new cache over ``data_root``.
    weights : path, optional
        Where the relative paths of ``[experiment.published]`` are read (default: the current folder).

    Returns
    -------
    Plan

    Raises
    ------
    AffbenchError
        For an unknown encoder or fold, a reference to a fold its source does not run, a released
        file that is missing, weights tested on subjects they were trained on (unless the suite
        allows it), or a narrowing that leaves nothing to run.
    """
    data_root = Path(data_root)
    cache = data_cache or DataCache(data_root, suite)
    _check_encoders(suite, encoders)
    planner = _Planner(suite, data_root, cache, _training_overrides(epochs, max_steps),
                       Path(weights) if weights is not None else None)
    for experiment in suite.experiments:
        if not encoders or experiment.encoder in encoders:
            planner.request(experiment, folds)
    if not planner.order:
        raise AffbenchError(f"Nothing to run: the narrowing leaves no cell of suite {suite.name}.")
    return Plan(suite, planner.order, planner.skipped)


def list_jobs(suite: Suite | str | os.PathLike, data_root: str | os.PathLike, *, encoders: Sequence[str] | None = None,
              folds: Sequence[int] | None = None, epochs: int | None = None, max_steps: int | None = None,
              weights: str | os.PathLike | None = None) -> list[str]:
    """The ids of the jobs :func:`~affbench.benchmarks.harness.run_benchmark` would run, in dependency order, without training anything.

    Parameters
    ----------
    suite : Suite, suite name or TOML path
        The suite (loaded with :func:`~affbench.benchmarks.suite.load_suite` unless a Suite).
    data_root : path
        The ``--data`` folder.
    encoders, folds, epochs, max_steps, weights : optional
        As for :func:`make_plan`.

    Returns
    -------
    list of str
        :attr:`Job.key` of every job, a job after the one it starts from.
    """
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    validate_encoders(suite)
    plan = make_plan(suite, data_root, encoders=encoders, folds=folds, epochs=epochs, max_steps=max_steps,
                     weights=weights)
    return [job.key for job in plan.jobs]
