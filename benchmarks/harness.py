"""The benchmark harness: suites (declarative TOML) -> jobs -> trained and scored cells -> records.

A suite (``benchmarks/suites/<name>.toml``, or any TOML file) declares:

``[suite]``
    ``name``, ``description``, ``reproduces`` (the paper table it reproduces).
``[datasets]``
    Optional sub-folder names under ``--data`` (default: the dataset's name).
``[training]`` (with ``[training.augmentation]``)
    Default :class:`affbench.train.TrainSettings`; ``guessed`` lists what the papers leave open.
``[tasks.<name>]``
    Derived evaluation tasks that no protocol declares, e.g. the thesis' "AU6 and AU12 on CAER-S
    Happy images" (rows of one class of a source task, AUs assumed active, the AU co-activation
    metrics).
``[[published]]``
    The numbers the reproduced paper reports, with their source (see :mod:`affbench.published`);
    ``affbench export`` shows them beside affbench's.
``[[experiment]]``
    ``id``, ``dataset``, ``tasks``, ``encoder``, ``options`` (encoder options), ``folds``
    (default: all of the protocol), ``label`` (the paper's name), ``metrics`` (replace the task's
    metrics), ``variant`` (names the cells ``<encoder>-<variant>`` so that two experiments of one
    encoder, e.g. ME-GraphAU's stage 1 and stage 2, each keep a record), ``[experiment.training]``
    (overrides), and one of

    * ``[experiment.init]``: ``experiment``, ``fold``, ``option``: start from the selected weights of
      another experiment of the suite, passed as encoder option ``option`` (``au_checkpoint``,
      ``stage1_checkpoint`` for ME-GraphAU's stage 2 from stage 1, or ``pretrained`` to continue the
      same encoder with the same structure);
    * ``[experiment.evaluate]``: ``experiment``, ``fold``: no training; score that experiment's
      selected model on this experiment's dataset and tasks (test rows).

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

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from affbench import __version__
from affbench.encoders.registry import WEIGHT_OPTIONS  # options that carry weights, not architecture
from affbench.errors import AffbenchError, UnknownNameError
from affbench.files import check_name, write_text_atomic
from affbench.results import CellKey, DamagedRecordError, read_record, write_json_atomic, write_record
from affbench.settings import TrainSettings
from affbench.tracking import open_tracker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SUITES_DIR = Path(__file__).with_name("suites")
#: Bumped when the harness changes in a way that changes results (invalidates job hashes).
HARNESS_VERSION = 2
DATASET_NAMES = ("disfa", "bp4d", "caer-s", "affwild2")
#: In the run folder: which shards were verified against their manifest (see affbench.integrity).
VERIFIED_SHARDS = "verified-shards.json"


# ----------------------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class Source:
    """A reference to another experiment's selected model."""

    experiment: str
    fold: int | None = None
    option: str | None = None  # for [experiment.init]: the encoder option that receives the path


@dataclass(frozen=True)
class DerivedTask:
    """An evaluation task built from a source task's rows (``[tasks.<name>]`` in a suite)."""

    name: str
    dataset: str
    source_task: str
    classes: tuple[str, ...]
    kind: str
    output_key: str
    label_names: tuple[str, ...]
    assume_active: tuple[str, ...]
    metrics: tuple[str, ...]
    role: str = "test"
    description: str = ""

    def spec(self):
        from affbench.protocols import TaskSpec

        options = {m: {"labels": list(self.assume_active)} for m in self.metrics
                   if m in ("all_active_rate", "any_active_rate")}
        return TaskSpec(
            name=self.name, kind=self.kind, label_columns=self.label_names, output_key=self.output_key,
            n_outputs=len(self.label_names), label_names=self.label_names, metrics=self.metrics,
            primary_metric=self.metrics[0], split_column=None, metric_options=options,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Experiment:
    id: str
    dataset: str
    tasks: tuple[str, ...]
    encoder: str
    options: Mapping[str, Any] = field(default_factory=dict)
    folds: tuple[int, ...] | None = None
    training: TrainSettings = field(default_factory=TrainSettings)
    init: Source | None = None
    evaluate: Source | None = None
    label: str = ""
    metrics: tuple[str, ...] | None = None
    notes: str = ""
    variant: str = ""
    when_prepared: bool = False  # run only where its data (and its source's) is prepared; else skipped with a note

    @property
    def is_evaluation(self) -> bool:
        return self.evaluate is not None

    @property
    def cell_encoder(self) -> str:
        """The encoder column of this experiment's cells: the encoder, or ``<encoder>-<variant>``."""
        return f"{self.encoder}-{self.variant}" if self.variant else self.encoder


@dataclass
class Suite:
    name: str
    description: str
    reproduces: str
    experiments: list[Experiment]
    derived_tasks: dict[str, DerivedTask]
    folders: dict[str, str]
    training: TrainSettings
    path: Path | None = None
    text: str = ""
    published: list = field(default_factory=list)  # affbench.published.Published

    def experiment(self, experiment_id: str) -> Experiment:
        for experiment in self.experiments:
            if experiment.id == experiment_id:
                return experiment
        raise AffbenchError(f"Suite {self.name} has no experiment {experiment_id!r}; its experiments are: "
                            f"{', '.join(e.id for e in self.experiments)}.")


def list_suites() -> list[tuple[str, str, Path]]:
    """``(name, description, path)`` of every suite shipped with affbench."""
    found = []
    for path in sorted(SUITES_DIR.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:  # a broken shipped suite is a bug, but say which
            raise AffbenchError(f"The suite file {path} is not valid TOML: {exc}.") from None
        meta = data.get("suite", {})
        found.append((meta.get("name", path.stem), meta.get("description", ""), path))
    return found


def _check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = sorted(allowed)
    for key in table:
        if key not in allowed:
            raise AffbenchError(f"Unknown key {key!r} in {where}; the keys are: {', '.join(allowed)}.")


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """A shipped suite by name, or a suite TOML file by path; every mistake is one clear sentence."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.is_file():
        if not candidate.is_file():
            raise AffbenchError(f"The suite file {candidate} does not exist.")
        path = candidate
    else:
        shipped = {name: p for name, _, p in list_suites()}
        if str(name_or_path) not in shipped:
            raise UnknownNameError("suite", str(name_or_path), shipped)
        path = shipped[str(name_or_path)]
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AffbenchError(f"The suite file {path} is not valid TOML: {exc}.") from None
    return parse_suite(data, path=path, text=text)


def parse_suite(data: Mapping[str, Any], *, path: Path | None = None, text: str = "") -> Suite:
    where = path.name if path else "the suite"
    _check_keys(data, ("suite", "datasets", "training", "tasks", "experiment", "published"), where)
    meta = data.get("suite", {})
    _check_keys(meta, ("name", "description", "reproduces"), f"[suite] of {where}")
    name = meta.get("name") or (path.stem if path else "")
    if not name:
        raise AffbenchError(f"{where} has no [suite] name.")
    check_name("suite name", name)
    folders = dict(data.get("datasets", {}))
    for dataset, folder in folders.items():
        if dataset not in DATASET_NAMES:
            raise UnknownNameError("dataset", dataset, DATASET_NAMES)
        check_name(f"[datasets] folder of {dataset}", folder)
    defaults = TrainSettings.from_dict(data.get("training", {}))

    derived: dict[str, DerivedTask] = {}
    for task_name, table in data.get("tasks", {}).items():
        check_name("task name", task_name)
        _check_keys(table, ("dataset", "source_task", "classes", "kind", "output_key", "label_names",
                            "assume_active", "metrics", "role", "description"), f"[tasks.{task_name}] of {where}")
        try:
            derived[task_name] = DerivedTask(
                name=task_name, dataset=table["dataset"], source_task=table["source_task"],
                classes=tuple(table["classes"]), kind=table["kind"], output_key=table.get("output_key", "au"),
                label_names=tuple(table["label_names"]), assume_active=tuple(table["assume_active"]),
                metrics=tuple(table["metrics"]), role=table.get("role", "test"),
                description=table.get("description", ""),
            )
        except KeyError as exc:
            raise AffbenchError(f"[tasks.{task_name}] of {where} has no {exc.args[0]!r}.") from None
        unknown = set(derived[task_name].assume_active) - set(derived[task_name].label_names)
        if unknown:
            raise AffbenchError(f"[tasks.{task_name}] assumes {sorted(unknown)} active, which are not in its label_names.")

    experiments: list[Experiment] = []
    for index, table in enumerate(data.get("experiment", [])):
        label = f"[[experiment]] #{index + 1} of {where}"
        _check_keys(table, ("id", "dataset", "tasks", "encoder", "options", "folds", "training", "init",
                            "evaluate", "label", "metrics", "notes", "variant", "when_prepared"), label)
        for required in ("id", "dataset", "tasks"):
            if required not in table:
                raise AffbenchError(f"{label} has no {required!r}.")
        if table["dataset"] not in DATASET_NAMES:
            raise UnknownNameError("dataset", table["dataset"], DATASET_NAMES)
        if "encoder" not in table and "evaluate" not in table:
            raise AffbenchError(f"{label} ({table['id']}) has no 'encoder'.")
        check_name("experiment id", table["id"])
        if not isinstance(table["tasks"], list):
            raise AffbenchError(f"{label} ({table['id']}): 'tasks' must be a list of task names.")
        for task in table["tasks"]:
            check_name(f"task name of experiment {table['id']!r}", task)
        if "encoder" in table:
            check_name(f"encoder name of experiment {table['id']!r}", table["encoder"])
        init = evaluate = None
        if "init" in table:
            _check_keys(table["init"], ("experiment", "fold", "option"), f"[experiment.init] of {table['id']}")
            init = Source(table["init"]["experiment"], table["init"].get("fold"), table["init"].get("option", "au_checkpoint"))
        if "evaluate" in table:
            _check_keys(table["evaluate"], ("experiment", "fold"), f"[experiment.evaluate] of {table['id']}")
            evaluate = Source(table["evaluate"]["experiment"], table["evaluate"].get("fold"))
        if init and evaluate:
            raise AffbenchError(f"Experiment {table['id']!r} has both [init] and [evaluate]; it trains or it evaluates.")
        if evaluate and "training" in table:
            raise AffbenchError(f"Experiment {table['id']!r} only evaluates, so it takes no [training] settings.")
        folds = table.get("folds")
        metrics = table.get("metrics")
        if metrics is not None:
            from affbench.scoring import get_metric

            for metric in metrics:
                get_metric(metric)  # UnknownNameError lists the registered ones
        experiments.append(Experiment(
            id=table["id"], dataset=table["dataset"], tasks=tuple(table["tasks"]), encoder=table.get("encoder", ""),
            options=dict(table.get("options", {})), folds=tuple(int(f) for f in folds) if folds is not None else None,
            training=defaults.merged(table.get("training", {})), init=init, evaluate=evaluate,
            label=table.get("label", ""), metrics=tuple(metrics) if metrics is not None else None,
            notes=table.get("notes", ""), variant=str(table.get("variant", "")),
            when_prepared=bool(table.get("when_prepared", False)),
        ))
    if not experiments:
        raise AffbenchError(f"{where} declares no [[experiment]].")
    ids = [e.id for e in experiments]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AffbenchError(f"{where} declares experiment {duplicates[0]!r} twice.")
    from affbench.published import parse_published

    published = parse_published(data.get("published", []), {e.id: e.tasks for e in experiments}, where)
    suite = Suite(name, meta.get("description", ""), meta.get("reproduces", ""), experiments, derived, folders,
                  defaults, path, text, published)
    _resolve_references(suite)
    return suite


def _resolve_references(suite: Suite) -> None:
    by_id = {e.id: e for e in suite.experiments}
    for i, experiment in enumerate(suite.experiments):
        source = experiment.init or experiment.evaluate
        if source is not None and source.experiment not in by_id:
            raise AffbenchError(f"Experiment {experiment.id!r} refers to {source.experiment!r}, which suite "
                                f"{suite.name} does not declare; its experiments are: {', '.join(by_id)}.")
        if experiment.evaluate is not None:
            origin = by_id[experiment.evaluate.experiment]
            if origin.is_evaluation:
                raise AffbenchError(f"Experiment {experiment.id!r} evaluates {origin.id!r}, which trains nothing.")
            if experiment.encoder and experiment.encoder != origin.encoder:
                raise AffbenchError(
                    f"Experiment {experiment.id!r} evaluates {origin.id!r}, a {origin.encoder} model, "
                    f"but names encoder {experiment.encoder!r}."
                )
            suite.experiments[i] = experiment = _with(experiment, encoder=origin.encoder, options=dict(origin.options))
        for task in experiment.tasks:
            if task in suite.derived_tasks:
                if not experiment.is_evaluation:
                    raise AffbenchError(
                        f"Task {task!r} is derived for evaluation only; experiment {experiment.id!r} cannot train on it."
                    )
                if suite.derived_tasks[task].dataset != experiment.dataset:
                    raise AffbenchError(f"Task {task!r} is defined on {suite.derived_tasks[task].dataset}, "
                                        f"not on {experiment.dataset} (experiment {experiment.id!r}).")
    # Dependencies must not loop.
    for experiment in suite.experiments:
        seen, current = {experiment.id}, experiment
        while (current.init or current.evaluate) is not None:
            current = by_id[(current.init or current.evaluate).experiment]
            if current.id in seen:
                raise AffbenchError(f"Experiments of suite {suite.name} depend on each other in a loop ({current.id}).")
            seen.add(current.id)
    # One record per cell: (dataset, task, encoder) may appear in one experiment only.
    owners: dict[tuple[str, str, str], str] = {}
    for experiment in suite.experiments:
        for task in experiment.tasks:
            key = (experiment.dataset, task, experiment.cell_encoder)
            if key in owners:
                raise AffbenchError(
                    f"Experiments {owners[key]!r} and {experiment.id!r} both give {experiment.cell_encoder} on "
                    f"{experiment.dataset} {task}; a suite has one cell per dataset, task and encoder "
                    "(give one of them a 'variant')."
                )
            owners[key] = experiment.id


def _with(experiment: Experiment, **changes) -> Experiment:
    from dataclasses import replace

    return replace(experiment, **changes)


def validate_encoders(suite: Suite) -> None:
    """Every encoder name and option of the suite exists (UnknownNameError lists the valid names)."""
    from affbench.encoders import get_encoder_spec

    for experiment in suite.experiments:
        options = {k: v for k, v in experiment.options.items() if k not in WEIGHT_OPTIONS}
        get_encoder_spec(experiment.encoder, **options)


# ----------------------------------------------------------------------------------------- planning


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


class _DataCache:
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


def _task_specs(experiment: Experiment, suite: Suite, protocol) -> list:
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
    data_cache: _DataCache | None = None,
) -> Plan:
    """Expand the suite into jobs in dependency order, narrowed by ``encoders`` and ``folds``.

    Jobs that a requested job starts from (``init``) or evaluates run too, whatever the narrowing.
    ``epochs`` / ``max_steps`` override every training experiment (and so change job hashes).
    """
    data_root = Path(data_root)
    cache = data_cache or _DataCache(data_root, suite)
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
            experiment = _with(experiment, training=TrainSettings())
        elif overrides:
            experiment = _with(experiment, training=experiment.training.merged(overrides))
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
        specs = _task_specs(experiment, suite, protocol)
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


# ----------------------------------------------------------------------------------------- running


def git_commit() -> str | None:
    """The commit of the affbench source tree, with ``+dirty`` for uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass
class RunReport:
    """What :func:`run_benchmark` did."""

    suite: str
    run_dir: Path
    cells_total: int = 0
    cells_skipped: int = 0
    cells_written: int = 0
    jobs_trained: int = 0
    jobs_resumed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class _Runner:
    def __init__(self, plan: Plan, data: _DataCache, run_dir: Path, device: str, *, num_workers: int | None,
                 progress: bool, log: Callable[[str], None], on_epoch_end):
        self.plan, self.data, self.run_dir = plan, data, run_dir
        self.suite = plan.suite
        self.device, self.num_workers = device, num_workers
        self.progress, self.log, self.on_epoch_end = progress, log, on_epoch_end
        self.commit = git_commit()
        self.device_text = describe_device(device)

    # -- bookkeeping

    def job_dir(self, job: Job) -> Path:
        return self.run_dir / "jobs" / job.key

    def done_path(self, job: Job) -> Path:
        return self.job_dir(job) / "done.json"

    def cells_finished(self, job: Job) -> bool:
        """True when every cell of ``job`` has a record made with the same configuration."""
        finished = True
        for cell in job.cells(self.suite.name):
            path = cell.path(self.run_dir)
            if not path.is_file():
                finished = False
                continue
            try:
                record = read_record(path)
            except DamagedRecordError:
                from affbench.checkpoints import set_aside

                # The job's done.json (or its training) rewrites it; the damaged file is kept.
                self.log(f"warning: {path} is not a valid result record; moved it to {set_aside(path).name} "
                         "and writing that cell again.")
                finished = False
                continue
            if record.get("config_hash") != job.config_hash:
                raise AffbenchError(
                    f"{path} holds a result of cell {cell} made with other settings "
                    f"(configuration {str(record.get('config_hash'))[:10]}, now {job.config_hash[:10]}); "
                    "use another --out folder, or delete that file to redo the cell."
                )
        return finished

    # -- tasks

    def task_data(self, job: Job):
        from affbench.protocols import Protocol
        from affbench.train import TaskData, apply_selection

        experiment = job.experiment
        prepared = self.data.get(experiment.dataset)
        protocol = Protocol.from_dict(prepared.protocol_dict)
        specs = _task_specs(experiment, self.suite, protocol)
        meta = prepared.meta
        tasks, splits = [], {}
        for spec in specs:
            derived = self.suite.derived_tasks.get(spec.name)
            if derived is None:
                self._require_columns(prepared, spec, protocol)
                split = protocol.split_indices(meta, spec.name, job.fold,
                                               exclude_fallback=experiment.training.exclude_fallback_crops)
                y, mask = protocol.targets(meta, spec.name)
                rows = {r: np.asarray(split[r], dtype=np.int64) for r in ("train", "val", "test")}
            else:
                split, rows, y, mask = self._derived_rows(derived, protocol, prepared, job.fold,
                                                          experiment.training.exclude_fallback_crops)
            splits[spec.name] = split
            tasks.append(TaskData(spec, y, mask, rows))
        if not experiment.is_evaluation:
            tasks = apply_selection(tasks, experiment.training)
        return prepared, tasks, splits

    def _require_columns(self, prepared, spec, protocol) -> None:
        needed = list(spec.label_columns)
        if spec.split_column:
            needed.append(spec.split_column)
        group = getattr(protocol.split, "group_column", None)
        if group:
            needed.append(group)
        missing = [c for c in needed if c not in prepared.meta.columns]
        if not missing:
            return
        available = [c for c in missing if c in prepared.reader.columns]
        if available:  # present in the shards, not loaded yet: load them now
            extra = prepared.reader.table(available).to_pandas()
            for column in available:
                prepared.meta[column] = extra[column].to_numpy()
            missing = [c for c in missing if c not in available]
        if missing:
            raise AffbenchError(
                f"The {prepared.dataset} shards in {prepared.folder} have no column(s) {', '.join(missing)}, "
                f"which task {spec.name!r} needs; its labels are absent from these shards."
            )

    def _derived_rows(self, derived: DerivedTask, protocol, prepared, fold: int, exclude_fallback: bool):
        source = protocol.task(derived.source_task)
        self._require_columns(prepared, source, protocol)
        split = protocol.split_indices(prepared.meta, derived.source_task, fold,
                                       exclude_fallback=exclude_fallback)
        y_source, mask_source = protocol.targets(prepared.meta, derived.source_task)
        if not source.is_classification:
            raise AffbenchError(f"Derived task {derived.name!r} selects classes of {derived.source_task!r}, which has none.")
        names = [n.lower() for n in source.label_names]
        wanted = []
        for cls in derived.classes:
            if cls.lower() not in names:
                raise AffbenchError(f"{prepared.dataset} {derived.source_task} has no class {cls!r}; its classes are: "
                                    f"{', '.join(source.label_names)}.")
            wanted.append(names.index(cls.lower()))
        candidates = np.asarray(split[derived.role], dtype=np.int64)
        keep = candidates[np.isin(y_source[candidates], wanted) & mask_source[candidates]]
        n = len(prepared.meta)
        y = np.zeros((n, len(derived.label_names)), np.float32)
        for label in derived.assume_active:
            y[:, derived.label_names.index(label)] = 1.0
        mask = np.ones_like(y, dtype=bool)
        rows = {"train": np.zeros(0, np.int64), "val": np.zeros(0, np.int64), "test": np.zeros(0, np.int64)}
        rows["test"] = keep
        split = dict(split, derived={"source_task": derived.source_task, "classes": list(derived.classes),
                                     "rows": int(len(keep))})
        return split, rows, y, mask

    # -- models

    def source_weights(self, job: Job) -> Path:
        """The selected weights of the job ``job`` starts from or evaluates."""
        path = self.job_dir(job.depends) / "best.pt"
        if not path.is_file():
            raise AffbenchError(f"{job.key} needs the weights of {job.depends.key}, which are missing: {path}.")
        return path

    def encoder_options(self, job: Job) -> dict[str, Any]:
        options = dict(job.experiment.options)
        if job.experiment.init is not None:
            options[job.experiment.init.option] = str(self.source_weights(job))
        return options

    def images_for(self, prepared, encoder_spec, augmentation):
        from affbench.data import ShardImages, crop_landmarks

        points = crop_landmarks(prepared) if "heatmaps" in encoder_spec.heads else None
        return ShardImages(prepared.folder, encoder_spec.input_size, augmentation, points=points)

    # -- jobs

    def read_done(self, job: Job) -> dict[str, Any] | None:
        """A finished job's summary; None when it has none, or a damaged one (moved aside, with a warning)."""
        from affbench.checkpoints import set_aside

        path = self.done_path(job)
        if not path.is_file():
            return None
        try:
            summary = json.loads(path.read_text())
            if isinstance(summary, dict) and summary.get("config_hash") == job.config_hash:
                return summary
            problem = "it is not this job's summary"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problem = f"not valid JSON: {getattr(exc, 'msg', exc)}"
        moved = set_aside(path)
        self.log(f"warning: {path} is damaged ({problem}); moved it to {moved.name} and running job {job.key} again.")
        return None

    def ensure_source_weights(self, job: Job, report: RunReport) -> None:
        """The job ``job`` starts from or evaluates has readable selected weights (and summary).

        Weights that are damaged (moved aside) or were not kept (``keep_weights = false`` in an
        earlier run) are made again by training that job again, so that no file blocks the run.
        """
        from affbench.checkpoints import DamagedCheckpointError, set_aside
        from affbench.train import load_model_state

        source = job.depends
        path = self.job_dir(source) / "best.pt"
        problem = None
        if not path.is_file():
            problem = f"the selected weights of {source.key} were not kept"
        else:
            try:
                load_model_state(path)
            except DamagedCheckpointError as exc:
                problem = f"{path} is damaged ({exc.reason}); moved it to {set_aside(path).name}"
        if problem is None and job.experiment.is_evaluation and self.read_done(source) is None:
            problem = f"the summary of {source.key} is missing"
        if problem is None:
            return
        self.log(f"warning: {problem}; training job {source.key} again, which {job.key} needs.")
        self.train_job(source, report, again=True)

    def run_job(self, job: Job, report: RunReport) -> None:
        if job.depends is not None:
            self.ensure_source_weights(job, report)
        if job.experiment.is_evaluation:
            self.evaluate_job(job, report)
        else:
            self.train_job(job, report)

    def train_job(self, job: Job, report: RunReport, *, again: bool = False) -> None:
        """Train ``job`` (or only write its records from its summary, unless ``again``) and score it."""
        from affbench.encoders import create_encoder, get_encoder_spec
        from affbench.train import (check_compatible, evaluate_tasks, fit, load_model_state, seed_everything)

        experiment, settings = job.experiment, job.experiment.training
        workdir = self.job_dir(job)
        done = self.done_path(job)
        summary = None if again else self.read_done(job)
        if summary is not None:
            self.write_records(job, summary, report)
            return
        started = time.perf_counter()
        prepared, tasks, splits = self.task_data(job)
        options = self.encoder_options(job)
        spec = get_encoder_spec(experiment.encoder, **options)  # checkpoints given may imply the structure
        for task in tasks:
            check_compatible(task.spec, spec)
        seed_everything(settings.seed)
        with _warnings_to(self.log):
            model = create_encoder(experiment.encoder, **options)
        images = self.images_for(prepared, model.spec, settings.augmentation)
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / "job.json", {"key": job.key, "config": job.config, "suite": self.suite.name,
                                                 "experiment": experiment.id})
        resumed = (workdir / "last.pt").is_file()
        self.log(f"{'resume' if resumed else 'train'} {job.key}: {experiment.encoder} on {experiment.dataset} "
                 f"{'+'.join(experiment.tasks)}, fold {job.fold}, {len(tasks[0].rows['train'])} training rows")
        tracker = open_tracker(self.run_dir, job.key)

        def epoch_end(epoch: int, entry: dict[str, Any]) -> None:
            if tracker is not None:
                tracker.log_epoch(entry)
            if self.on_epoch_end is not None:
                self.on_epoch_end(job, epoch, entry)

        notes: dict[str, list[str]] = {}
        try:
            result = fit(model, tasks, images, settings, workdir=workdir, device=self.device, progress=self.progress,
                         log=lambda m: self.log(f"  {m}"), on_epoch_end=epoch_end)
            model.load_state_dict(load_model_state(workdir / "best.pt"))
            test = evaluate_tasks(model, tasks, images, role="test", device=self.device,
                                  batch_size=settings.eval_batch_size or 2 * settings.batch_size,
                                  num_workers=settings.num_workers if self.num_workers is None else self.num_workers,
                                  progress=self.progress, notes=notes)
            if tracker is not None:
                tracker.log_test(test, result.best_epoch or 0)
        finally:
            if tracker is not None:
                tracker.close()
        selected = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
        summary = {
            "job": job.key, "config_hash": job.config_hash, "mode": "train",
            "metrics": test, "validation_metrics": selected.get("val", {}), "baselines": _baselines(tasks),
            "n": {t.name: {r: int(len(t.rows[r])) for r in ("train", "val", "test")} for t in tasks},
            "excluded": {t.name: splits[t.name].get("excluded") for t in tasks},
            "fallback_crops": {t.name: splits[t.name].get("fallback_crops") for t in tasks},
            "validation_split": {t.name: splits[t.name].get("validation") for t in tasks},
            "test_groups": {t.name: splits[t.name].get("test_groups") for t in tasks},
            "primary_metric": {t.name: t.spec.primary_metric for t in tasks},
            "kind": {t.name: t.spec.kind for t in tasks},
            "epochs": result.epochs_run, "epochs_planned": settings.epochs, "selected_epoch": result.best_epoch,
            "selection": result.selection, "selection_protocol": settings.selection,
            "metric_warnings": notes, "steps": result.steps, "resumed_from": result.resumed_from,
            "train_seconds": result.train_seconds, "loss": result.losses,
            "curve": {t.name: [
                {"epoch": h["epoch"], "train_loss": h["train_loss"].get(t.name), "lr": h["lr"],
                 "val": (h.get("val") or {}).get(t.name, {}).get(t.spec.primary_metric)}
                for h in result.history] for t in tasks},
            "initialisation": model.spec.init, "fresh_parameters": list(model.spec.fresh),
            "init_from": None if job.depends is None else {"job": job.depends.key, "experiment": job.depends.experiment.id,
                                                           "fold": job.depends.fold},
            "seed": settings.seed, "training": settings.to_dict(), "encoder_options": dict(experiment.options),
            "encoder_spec": {"input_size": model.spec.input_size, "heads": dict(model.spec.heads),
                             "au_output": model.spec.au_output, "family": model.spec.family},
            "device": self.device_text, "git_commit": self.commit, "affbench_version": __version__,
            "data": {"folder": str(prepared.folder), "fingerprint": prepared.fingerprint},
            # This process's time plus that of the epochs an earlier, interrupted run finished.
            "wall_seconds": round(time.perf_counter() - started
                                  + sum(h.get("seconds", 0.0) for h in result.history[: result.resumed_from or 0]), 3),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.describe_model(job, model, tasks, prepared, settings, test)  # before done.json: a kill in between redoes it
        write_json_atomic(done, summary)
        report.jobs_trained += 1
        report.jobs_resumed += bool(result.resumed_from)
        self.write_records(job, summary, report)
        (workdir / "last.pt").unlink(missing_ok=True)  # the optimiser state is not needed once done
        if not settings.keep_weights and not any(other.depends is job for other in self.plan.jobs):
            (workdir / "best.pt").unlink(missing_ok=True)

    def describe_model(self, job: Job, model, tasks, prepared, settings, metrics) -> None:
        """``model.json`` beside ``best.pt``: what ``affbench export-model`` and ``predict`` need."""
        from affbench.bundle import describe_trained_model, write_job_description

        trained_on = {"job": job.key, "suite": self.suite.name, "experiment": job.experiment.id,
                      "dataset": job.experiment.dataset, "fold": job.fold, "data_fingerprint": prepared.fingerprint,
                      "git_commit": self.commit, "affbench_version": __version__}
        description = describe_trained_model(job.key, model.spec, [t.spec for t in tasks],
                                             prepared.manifest.get("parameters", {}),
                                             eval_crop=settings.augmentation.eval_crop, metrics=metrics,
                                             trained_on=trained_on)
        write_job_description(self.job_dir(job), description)

    def evaluate_job(self, job: Job, report: RunReport) -> None:
        from affbench.encoders import create_encoder
        from affbench.train import check_compatible, evaluate_tasks, load_model_state

        started = time.perf_counter()
        experiment = job.experiment
        source = self.read_done(job.depends)
        if source is None:
            raise AffbenchError(f"Job {job.depends.key} has not finished; it must run before {job.key}.")
        prepared, tasks, splits = self.task_data(job)
        architecture = {k: v for k, v in experiment.options.items() if k not in WEIGHT_OPTIONS}
        with _warnings_to(self.log):
            model = create_encoder(experiment.encoder, **architecture)
        for task in tasks:
            check_compatible(task.spec, model.spec)
        model.load_state_dict(load_model_state(self.source_weights(job)))
        images = self.images_for(prepared, model.spec, job.depends.experiment.training.augmentation)
        self.log(f"evaluate {job.depends.key} on {experiment.dataset} {'+'.join(experiment.tasks)}, fold {job.fold}")
        notes: dict[str, list[str]] = {}
        test = evaluate_tasks(model, tasks, images, role="test", device=self.device,
                              num_workers=self.num_workers, progress=self.progress, notes=notes)
        tracker = open_tracker(self.run_dir, job.key)
        if tracker is not None:
            tracker.log_test(test, source.get("selected_epoch") or 0)
            tracker.close()
        summary = {
            "job": job.key, "config_hash": job.config_hash, "mode": "evaluate",
            "metrics": test, "validation_metrics": {}, "baselines": _baselines(tasks),
            # Nothing was trained here: the model's own training rows are in the source job's records.
            "n": {t.name: {"train": 0, "val": 0, "test": int(len(t.rows["test"]))} for t in tasks},
            "excluded": {t.name: splits[t.name].get("excluded") for t in tasks},
            "fallback_crops": {t.name: splits[t.name].get("fallback_crops") for t in tasks},
            "validation_split": {t.name: splits[t.name].get("derived") for t in tasks},
            "test_groups": {t.name: splits[t.name].get("test_groups") for t in tasks},
            "primary_metric": {t.name: t.spec.primary_metric for t in tasks},
            "kind": {t.name: t.spec.kind for t in tasks},
            "epochs": source.get("epochs"), "epochs_planned": source.get("epochs_planned"),
            "selected_epoch": source.get("selected_epoch"), "selection": f"the model of {job.depends.key}",
            "selection_protocol": source.get("selection_protocol", "validation"), "metric_warnings": notes,
            "steps": source.get("steps"), "resumed_from": None, "train_seconds": 0.0, "loss": {},
            "curve": {t.name: [] for t in tasks},
            "initialisation": f"evaluation only: selected weights of {job.depends.key} "
                              f"({source.get('initialisation')})",
            "fresh_parameters": source.get("fresh_parameters", []),
            "init_from": {"job": job.depends.key, "experiment": job.depends.experiment.id, "fold": job.depends.fold},
            "seed": source.get("seed"), "training": None, "encoder_options": dict(experiment.options),
            "encoder_spec": {"input_size": model.spec.input_size, "heads": dict(model.spec.heads),
                             "au_output": model.spec.au_output, "family": model.spec.family},
            "device": self.device_text, "git_commit": self.commit, "affbench_version": __version__,
            "data": {"folder": str(prepared.folder), "fingerprint": prepared.fingerprint},
            "wall_seconds": round(time.perf_counter() - started, 3),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.job_dir(job).mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.done_path(job), summary)
        self.write_records(job, summary, report)

    def write_records(self, job: Job, summary: Mapping[str, Any], report: RunReport) -> None:
        experiment = job.experiment
        for cell in job.cells(self.suite.name):
            task = cell.task
            record = {
                "suite": cell.suite, "dataset": cell.dataset, "task": task, "encoder": cell.encoder, "fold": cell.fold,
                "experiment": experiment.id, "label": experiment.label or experiment.encoder,
                "job_tasks": list(experiment.tasks),
                "variant": experiment.variant or None,
                "kind": summary["kind"][task], "mode": summary["mode"],
                "metrics": summary["metrics"].get(task, {}),
                "baselines": (summary.get("baselines") or {}).get(task, {}),
                "validation_metrics": summary["validation_metrics"].get(task, {}),
                "primary_metric": summary["primary_metric"][task],
                "n": summary["n"][task], "excluded": summary["excluded"][task],
                "fallback_crops": summary.get("fallback_crops", {}).get(task),
                "validation_split": summary["validation_split"][task],
                "test_groups": summary["test_groups"][task],
                "config_hash": job.config_hash, "job": job.key,
                "seed": summary["seed"], "device": summary["device"], "world_size": summary.get("world_size"),
                "git_commit": summary["git_commit"],
                "affbench_version": summary["affbench_version"], "wall_seconds": summary["wall_seconds"],
                "train_seconds": summary["train_seconds"], "epochs": summary["epochs"],
                "epochs_planned": summary["epochs_planned"], "selected_epoch": summary["selected_epoch"],
                "selection": summary["selection"],
                # "validation", or "reference-last-epoch": trained on the validation subjects too and
                # kept the last epoch (ME-GraphAU's protocol): not comparable with held-out selection.
                "selection_protocol": summary.get("selection_protocol", "validation"),
                "metric_warnings": (summary.get("metric_warnings") or {}).get(task, []),
                "steps": summary["steps"], "resumed_from": summary["resumed_from"],
                "initialisation": summary["initialisation"], "init_from": summary["init_from"],
                "fresh_parameters": summary.get("fresh_parameters", []),
                "loss": summary["loss"].get(task), "training": summary["training"],
                "encoder_options": summary["encoder_options"], "encoder_spec": summary["encoder_spec"],
                "data": summary["data"], "curve": summary["curve"].get(task, []),
                "finished_at": summary["finished_at"], "notes": experiment.notes,
            }
            write_record(self.run_dir, record)
            report.cells_written += 1


def _baselines(tasks) -> dict[str, dict[str, dict[str, float]]]:
    """Each task's trivial predictors on the job's test rows (see affbench.baselines)."""
    from affbench.baselines import trivial_baselines

    return {t.name: trivial_baselines(t.spec, t.y, t.mask, t.rows) for t in tasks}


@contextlib.contextmanager
def _warnings_to(log: Callable[[str], None]):
    """Show warnings raised while building a model (e.g. weights that did not fit) as log lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        log(f"  note: {warning.message}")


def _check_weights(plan: Plan, runner: _Runner) -> None:
    """Every pretrained file the unfinished jobs need is there: a missing ImageNet file stops the run
    before the first job trains, not hours later when its job comes."""
    from affbench.encoders import check_weights_available

    for job in plan.jobs:
        if not job.experiment.is_evaluation and not runner.cells_finished(job):
            check_weights_available(job.experiment.encoder, **job.experiment.options)


def _check_output_folder(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise AffbenchError(f"--out {run_dir} is a file, not a folder; give a folder for the run.")


def run_benchmark(
    suite: Suite | str | os.PathLike,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    encoders: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[Job, int, dict[str, Any]], None] | None = None,
) -> RunReport:
    """Run (or resume) a suite: every unfinished job in dependency order, one record per cell.

    Parameters
    ----------
    suite : Suite, suite name or TOML path
    data_root : path
        Folder with one prepared dataset per sub-folder (``disfa``, ``caer-s``, ``affwild2``).
    run_dir : path
        Results, checkpoints and plots; re-use it to resume.
    encoders, folds, epochs, max_steps : optional
        Narrow the run (see :func:`make_plan`).
    device : {"auto", "cpu", "cuda", "cuda:N"}
    num_workers : int, optional
        DataLoader workers for every job (default: the suite's, else chosen by device).
    on_epoch_end : callable, optional
        ``(job, epoch, history_entry)`` after each epoch's checkpoint (tests interrupt here).
    """
    from affbench.faces import resolve_device

    started = time.perf_counter()
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    validate_encoders(suite)
    device = resolve_device(device)
    run_dir = Path(run_dir)
    _check_output_folder(run_dir)
    data = _DataCache(Path(data_root), suite, verify_cache=run_dir / VERIFIED_SHARDS)
    plan = make_plan(suite, data_root, encoders=encoders, folds=folds, epochs=epochs, max_steps=max_steps, data_cache=data)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "suites").mkdir(exist_ok=True)
    if suite.text:
        write_text_atomic(run_dir / "suites" / f"{suite.name}.toml", suite.text)
    if num_workers is not None:
        for job in plan.jobs:
            job.experiment = _with(job.experiment, training=job.experiment.training.merged({"num_workers": num_workers}))
    runner = _Runner(plan, data, run_dir, device, num_workers=num_workers, progress=progress, log=log,
                     on_epoch_end=on_epoch_end)
    report = RunReport(suite.name, run_dir, notes=list(plan.skipped))
    _check_weights(plan, runner)
    for job in plan.jobs:
        cells = job.cells(suite.name)
        report.cells_total += len(cells)
        if runner.cells_finished(job):
            report.cells_skipped += len(cells)
            log(f"skip {job.key}: {len(cells)} cell(s) already finished")
            continue
        runner.run_job(job, report)
    report.seconds = round(time.perf_counter() - started, 3)
    _write_run_summary(run_dir, suite, report, device, log)
    return report


def _write_run_summary(run_dir: Path, suite: Suite, report: RunReport, device: str, log: Callable[[str], None]) -> None:
    path = run_dir / "run.json"
    try:
        runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
        from affbench.checkpoints import set_aside

        runs = []
        log(f"warning: {path} was damaged; moved it to {set_aside(path).name} and started a new one.")
    runs.append({
        "suite": suite.name, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device, "cells": report.cells_total, "skipped": report.cells_skipped,
        "written": report.cells_written, "seconds": report.seconds, "affbench_version": __version__,
    })
    write_json_atomic(path, {"runs": runs})
