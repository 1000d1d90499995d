"""Suites: declarative TOML files of experiments, parsed and checked into :class:`Suite`.

A suite (``benchmarks/suites/<name>.toml``, or any TOML file) declares:

``[suite]``
    ``name``, ``description``, ``reproduces`` (the paper table it reproduces).
``[datasets]``
    Optional sub-folder names under ``--data`` (default: the dataset's name).
``[training]`` (with ``[training.augmentation]``)
    Default :class:`affbench.training.fit.TrainSettings`; ``guessed`` lists what the papers leave open.
``[tasks.<name>]``
    Derived evaluation tasks that no protocol declares, e.g. the thesis' "AU6 and AU12 on CAER-S
    Happy images" (rows of one class of a source task, AUs assumed active, the AU co-activation
    metrics).
``[[published]]``
    The numbers the reproduced paper reports, with their source (see :mod:`affbench.reporting.published`);
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
      selected model on this experiment's dataset and tasks (test rows);
    * ``[experiment.published]``: ``tag`` (a release of ``affbench list models``, e.g.
      ``megraph-au/resnet50-disfa``, or one fold's tag), and ``folder`` (holding the files under
      their published names) or ``files`` (``{ 1 = "...fold1.pth", ... }``): no training; each fold
      scores its own released file on its test rows. Relative paths are read under ``--weights``.

    ``[experiment.init]``, ``[experiment.evaluate]`` and ``[experiment.published]`` take
    ``allow_leakage = true`` to score weights on subjects they were trained on anyway; without it
    such a cell is refused (see :mod:`affbench.benchmarks.leakage`). ``allow_leakage`` in the
    ``[[experiment]]`` itself does the same for a released file started from through an encoder option.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affbench.encoders.registry import WEIGHT_OPTIONS  # options that carry weights, not architecture
from affbench.errors import AffbenchError, UnknownNameError
from affbench.runtime.files import check_name
from affbench.runtime.numbers import Range, check_number
from affbench.scoring.bootstrap import BootstrapSettings
from affbench.training.settings import TrainSettings

if TYPE_CHECKING:
    from affbench.scoring.protocols import TaskSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


SUITES_DIR = Path(__file__).with_name("suites")
DATASET_NAMES = ("disfa", "bp4d", "caer-s", "affwild2")


@dataclass(frozen=True)
class Source:
    """A reference to another experiment's selected model.

    Parameters
    ----------
    experiment : str
        The referenced experiment's id.
    fold : int, optional
        Its fold; default: its only fold, or the referring job's own fold.
    option : str, optional
        For ``[experiment.init]``: the encoder option that receives the checkpoint path.
    """

    experiment: str
    fold: int | None = None
    option: str | None = None  # for [experiment.init]: the encoder option that receives the path
    allow_leakage: bool = False


@dataclass(frozen=True)
class Released:
    """Released weights scored per fold (``[experiment.published]``).

    Parameters
    ----------
    tag : str
        A release (the fold files of ``affbench list models`` that share a group, e.g.
        ``megraph-au/resnet50-disfa``) or one tag, used for every fold the experiment runs.
    folder : str, optional
        The folder holding the files under their published names.
    files : mapping of int to str
        Fold -> file, where the files are not under their published names.
    allow_leakage : bool, default=False
        Score a file on subjects it was trained on anyway (recorded and shown in the tables).
    """

    tag: str
    folder: str | None = None
    files: Mapping[int, str] = field(default_factory=dict)
    allow_leakage: bool = False


@dataclass(frozen=True)
class DerivedTask:
    """An evaluation task built from a source task's rows (``[tasks.<name>]`` in a suite).

    Parameters
    ----------
    name : str
        The task's name.
    dataset : str
        The dataset whose rows it takes.
    source_task : str
        The protocol task whose rows of ``classes`` it takes.
    classes : tuple of str
        Class names of the source task.
    kind : str
        The task kind (a :data:`~affbench.scoring.metrics.TASK_KINDS` value).
    output_key : str
        The model output scored.
    label_names : tuple of str
        One name per output column.
    assume_active : tuple of str
        The labels assumed active on every row (the co-activation metrics' columns).
    metrics : tuple of str
        Registered metric names; the first is the primary one.
    role : str, default="test"
        The rows of the source task's split used.
    description : str, default=""
        The task in words.
    """

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

    def spec(self) -> TaskSpec:
        """The task as a :class:`~affbench.scoring.protocols.TaskSpec` (no split column of its own).

        Returns
        -------
        affbench.scoring.protocols.TaskSpec
            The co-activation metrics get ``assume_active`` as their ``labels`` option.
        """
        from affbench.scoring.protocols import TaskSpec

        options = {m: {"labels": list(self.assume_active)} for m in self.metrics
                   if m in ("all_active_rate", "any_active_rate")}
        return TaskSpec(
            name=self.name, kind=self.kind, label_columns=self.label_names, output_key=self.output_key,
            n_outputs=len(self.label_names), label_names=self.label_names, metrics=self.metrics,
            primary_metric=self.metrics[0], split_column=None, metric_options=options,
        )

    def to_dict(self) -> dict[str, Any]:
        """The task as JSON-native values (tuples as lists), for job configurations.

        Returns
        -------
        dict
        """
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Experiment:
    """One ``[[experiment]]`` of a suite: an encoder trained (or evaluated) on a dataset's tasks.

    Parameters
    ----------
    id : str
        Unique within the suite.
    dataset : str
        One of :data:`DATASET_NAMES`.
    tasks : tuple of str
        Protocol tasks or the suite's derived tasks (those for evaluation only).
    encoder : str
        A registered encoder name.
    options : mapping, default={}
        Encoder options.
    folds : tuple of int, optional
        The protocol folds it runs; default: all.
    training : TrainSettings
        The suite's training defaults with the experiment's overrides.
    init, evaluate : Source, optional
        Start from another experiment's selected weights, or only score that experiment's model.
    published : Released, optional
        Only score released weights, each fold's file on its own fold.
    allow_leakage : bool, default=False
        Test a model started from a released file (an encoder option naming it) on subjects that
        file was trained on anyway.
    label : str, default=""
        The paper's name for it.
    metrics : tuple of str, optional
        Replace the tasks' metrics.
    notes : str, default=""
        Free text.
    variant : str, default=""
        Names the cells ``<encoder>-<variant>``.
    when_prepared : bool, default=False
        Run only where its data (and its source's) is prepared; else skipped with a note.
    """

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
    when_prepared: bool = False
    published: Released | None = None
    allow_leakage: bool = False

    @property
    def is_evaluation(self) -> bool:
        """True when the experiment trains nothing: it scores another experiment's model
        (``[experiment.evaluate]``) or released weights (``[experiment.published]``)."""
        return self.evaluate is not None or self.published is not None

    @property
    def cell_encoder(self) -> str:
        """The encoder column of this experiment's cells: the encoder, or ``<encoder>-<variant>``."""
        return f"{self.encoder}-{self.variant}" if self.variant else self.encoder


@dataclass
class Suite:
    """A parsed and checked suite (see the module docstring for its TOML tables).

    Parameters
    ----------
    name, description, reproduces : str
        From ``[suite]``.
    experiments : list of Experiment
        In file order, references resolved (an evaluation takes its source's encoder and options).
    derived_tasks : dict of str to DerivedTask
        From ``[tasks.<name>]``.
    folders : dict of str to str
        From ``[datasets]``: dataset -> sub-folder of ``--data``.
    training : TrainSettings
        From ``[training]``: every experiment's defaults.
    path : Path, optional
        The TOML file.
    text : str, default=""
        Its text.
    published : list of affbench.reporting.published.Published
        From ``[[published]]``.
    reference : str, optional
        From ``[suite] reference``: the experiment id every other row of its tables is compared
        with (paired test over clusters, Holm's correction).
    seeds : tuple of int, optional
        From ``[suite] seeds``: every training experiment is trained once per seed (its
        ``training.seed`` replaced), each its own job; None trains once with ``training.seed``.
    refolds : int, default=0
        From ``[suite] refolds``: the number of reproducible random subject-exclusive partitions run
        beside the published one (partition 0), on datasets whose protocol has subject folds.
    ci : affbench.scoring.bootstrap.BootstrapSettings, optional
        From ``[suite] ci = { resamples = 2000, level = 0.95, seed = 0 }``: how the cells' intervals
        are drawn (each key optional); None draws them with the defaults.
    """

    name: str
    description: str
    reproduces: str
    experiments: list[Experiment]
    derived_tasks: dict[str, DerivedTask]
    folders: dict[str, str]
    training: TrainSettings
    path: Path | None = None
    text: str = ""
    published: list = field(default_factory=list)
    reference: str | None = None
    seeds: tuple[int, ...] | None = None
    refolds: int = 0
    ci: BootstrapSettings | None = None

    def experiment(self, experiment_id: str) -> Experiment:
        """The experiment with id ``experiment_id``.

        Parameters
        ----------
        experiment_id : str
            An experiment id of the suite.

        Returns
        -------
        Experiment

        Raises
        ------
        AffbenchError
            Listing the suite's experiments, when none has that id.
        """
        for experiment in self.experiments:
            if experiment.id == experiment_id:
                return experiment
        raise AffbenchError(f"Suite {self.name} has no experiment {experiment_id!r}; its experiments are: "
                            f"{', '.join(e.id for e in self.experiments)}.")


def list_suites() -> list[tuple[str, str, Path]]:
    """Every suite shipped with affbench (``benchmarks/suites/*.toml``), by file name.

    Returns
    -------
    list of (str, str, Path)
        ``(name, description, path)`` of each suite.

    Examples
    --------
    >>> from affbench.benchmarks.suite import list_suites
    >>> "demo" in [name for name, _, _ in list_suites()]
    True
    """
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
    """Every key of ``table`` is ``allowed``; the message names ``where`` and the allowed keys."""
    allowed = sorted(allowed)
    for key in table:
        if key not in allowed:
            raise AffbenchError(f"Unknown key {key!r} in {where}; the keys are: {', '.join(allowed)}.")


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """A shipped suite by name, or a suite TOML file by path; every mistake is one clear sentence.

    Parameters
    ----------
    name_or_path : str or path
        A name from :func:`list_suites`, or the path of a TOML file (one ending in ``.toml`` or
        an existing file).

    Returns
    -------
    Suite
        As :func:`parse_suite` builds it.

    Raises
    ------
    AffbenchError
        For a missing file, invalid TOML or an invalid suite; UnknownNameError (listing the
        shipped suites) for an unknown name.

    Examples
    --------
    >>> from affbench.benchmarks.suite import load_suite
    >>> suite = load_suite("demo")
    >>> suite.name, suite.experiment("disfa-fan").encoder
    ('demo', 'fan-au')
    """
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
    """Check a parsed suite TOML and build its :class:`Suite`; every mistake is one clear sentence.

    Parameters
    ----------
    data : mapping
        The TOML document, as :mod:`tomllib` parses it (tables described in the module docstring).
    path : Path, optional
        The file it was read from: names it in messages and gives the default suite name.
    text : str, default=""
        The file's text, kept with the suite for its records.

    Returns
    -------
    Suite
        With every ``[experiment.init]`` / ``[experiment.evaluate]`` reference resolved.

    Raises
    ------
    AffbenchError
        For an unknown key, a missing or invalid value, a duplicate experiment, a dangling or
        looping reference or two experiments giving the same cell.

    Examples
    --------
    >>> from affbench.benchmarks.suite import parse_suite
    >>> suite = parse_suite({"suite": {"name": "mini"}, "experiment": [
    ...     {"id": "caer-f", "dataset": "caer-s", "tasks": ["expression"], "encoder": "emotiram-f"}]})
    >>> suite.name, [(e.id, e.cell_encoder, e.tasks) for e in suite.experiments]
    ('mini', [('caer-f', 'emotiram-f', ('expression',))])
    """
    where = path.name if path else "the suite"
    _check_keys(data, ("suite", "datasets", "training", "tasks", "experiment", "published"), where)
    meta = data.get("suite", {})
    name = _suite_name(meta, path, where)
    folders = _dataset_folders(data.get("datasets", {}))
    defaults = TrainSettings.from_dict(data.get("training", {}))
    derived = {task_name: _derived_task(task_name, table, where)
               for task_name, table in data.get("tasks", {}).items()}
    experiments = [_experiment(table, f"[[experiment]] #{index + 1} of {where}", defaults)
                   for index, table in enumerate(data.get("experiment", []))]
    _check_experiment_ids(experiments, where)
    from affbench.reporting.published import parse_published, released_tables

    declared = data.get("published", [])
    published = parse_published(declared + released_tables(data.get("experiment", []), declared),
                                {e.id: e.tasks for e in experiments}, where)
    suite = Suite(name, meta.get("description", ""), meta.get("reproduces", ""), experiments, derived, folders,
                  defaults, path, text, published, meta.get("reference"), *_replicates(meta, where),
                  ci=_interval_settings(meta, where))
    if suite.reference is not None:
        suite.experiment(str(suite.reference))  # one sentence listing the experiments when it names none
    _resolve_references(suite)
    return suite


def _suite_name(meta: Mapping[str, Any], path: Path | None, where: str) -> str:
    """The ``[suite]`` table's name (default: the file's stem), checked as a file name."""
    _check_keys(meta, ("name", "description", "reproduces", "reference", "seeds", "refolds", "ci"),
                f"[suite] of {where}")
    name = meta.get("name") or (path.stem if path else "")
    if not name:
        raise AffbenchError(f"{where} has no [suite] name.")
    check_name("suite name", name)
    return name


#: The keys of ``[suite] ci``.
CI_KEYS = ("resamples", "level", "seed")


def _interval_settings(meta: Mapping[str, Any], where: str) -> BootstrapSettings | None:
    """``[suite] ci`` (resamples: a whole number >= 100; level: a finite number in (0, 1); seed: a
    whole number >= 0), checked; None where the suite sets none."""
    ci = meta.get("ci")
    if ci is None:
        return None
    example = "such as ci = { resamples = 2000, level = 0.95, seed = 0 }"
    if not isinstance(ci, Mapping) or not set(ci) <= set(CI_KEYS):
        raise AffbenchError(f"[suite] ci of {where} must be a table of {', '.join(CI_KEYS)}, {example}; got {ci!r}.")

    resamples = check_number(f"[suite] ci resamples of {where}", ci.get("resamples", 2000), Range(100, integer=True))
    level = check_number(f"[suite] ci level of {where}", ci.get("level", 0.95), Range(0, 1, open_low=True, open_high=True))
    seed = check_number(f"[suite] ci seed of {where}", ci.get("seed", 0), Range(0, integer=True))
    return BootstrapSettings(resamples=int(resamples), level=float(level), seed=int(seed))


def _replicates(meta: Mapping[str, Any], where: str) -> tuple[tuple[int, ...] | None, int]:
    """``[suite] seeds`` (distinct integers) and ``refolds`` (a count, 0 or more), checked."""
    seeds = meta.get("seeds")
    if seeds is not None:
        if (not isinstance(seeds, list) or not seeds or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in seeds) or len(set(seeds)) != len(seeds)):
            raise AffbenchError(f"[suite] seeds of {where} must be a list of distinct integers such as [0, 1, 2]; "
                                f"got {seeds!r}.")
        seeds = tuple(seeds)
    refolds = meta.get("refolds", 0)
    if not isinstance(refolds, int) or isinstance(refolds, bool) or refolds < 0:
        raise AffbenchError(f"[suite] refolds of {where} must be a whole number of random partitions (0 or more); "
                            f"got {refolds!r}.")
    return seeds, refolds


def _dataset_folders(table: Mapping[str, Any]) -> dict[str, str]:
    """The ``[datasets]`` table: a known dataset's sub-folder name under ``--data``."""
    folders = dict(table)
    for dataset, folder in folders.items():
        if dataset not in DATASET_NAMES:
            raise UnknownNameError("dataset", dataset, DATASET_NAMES)
        check_name(f"[datasets] folder of {dataset}", folder)
    return folders


def _derived_task(task_name: str, table: Mapping[str, Any], where: str) -> DerivedTask:
    """One ``[tasks.<name>]`` table, whose assumed-active labels must be among its label names."""
    check_name("task name", task_name)
    _check_keys(table, ("dataset", "source_task", "classes", "kind", "output_key", "label_names",
                        "assume_active", "metrics", "role", "description"), f"[tasks.{task_name}] of {where}")
    try:
        task = DerivedTask(
            name=task_name, dataset=table["dataset"], source_task=table["source_task"],
            classes=tuple(table["classes"]), kind=table["kind"], output_key=table.get("output_key", "au"),
            label_names=tuple(table["label_names"]), assume_active=tuple(table["assume_active"]),
            metrics=tuple(table["metrics"]), role=table.get("role", "test"),
            description=table.get("description", ""),
        )
    except KeyError as exc:
        raise AffbenchError(f"[tasks.{task_name}] of {where} has no {exc.args[0]!r}.") from None
    unknown = set(task.assume_active) - set(task.label_names)
    if unknown:
        raise AffbenchError(f"[tasks.{task_name}] assumes {sorted(unknown)} active, which are not in its label_names.")
    return task


def _experiment(table: Mapping[str, Any], label: str, defaults: TrainSettings) -> Experiment:
    """One ``[[experiment]]`` table (``label`` names it in messages), its training over ``defaults``."""
    _check_experiment_table(table, label)
    init, evaluate = _sources(table)
    released = _released(table, label)
    folds = table.get("folds")
    metrics = table.get("metrics")
    if metrics is not None:
        from affbench.scoring.registry import get_metric

        for metric in metrics:
            get_metric(metric)  # UnknownNameError lists the registered ones
    encoder, options = table.get("encoder", ""), dict(table.get("options", {}))
    if released is not None:
        encoder, options = _released_encoder(released, table, label)
    return Experiment(
        id=table["id"], dataset=table["dataset"], tasks=tuple(table["tasks"]), encoder=encoder,
        options=options, folds=_folds(folds, label),
        training=defaults.merged(table.get("training", {})), init=init, evaluate=evaluate,
        label=table.get("label", ""), metrics=tuple(metrics) if metrics is not None else None,
        notes=table.get("notes", ""), variant=str(table.get("variant", "")),
        when_prepared=bool(table.get("when_prepared", False)), published=released,
        allow_leakage=_flag(table, "allow_leakage", label),
    )


def _folds(folds: Any, label: str) -> tuple[int, ...] | None:
    """An experiment's ``folds``: a list of fold numbers, or None for every fold."""
    if folds is None:
        return None
    if not isinstance(folds, list):
        raise AffbenchError(f"folds of {label} must be a list of fold numbers such as [1, 2]; got {folds!r}.")
    return tuple(int(check_number(f"folds of {label}", f, Range(1, integer=True))) for f in folds)


def _check_experiment_table(table: Mapping[str, Any], label: str) -> None:
    """An experiment's keys, required values, dataset and names (ids, tasks and encoder become file names)."""
    _check_keys(table, ("id", "dataset", "tasks", "encoder", "options", "folds", "training", "init",
                        "evaluate", "published", "label", "metrics", "notes", "variant", "when_prepared",
                        "allow_leakage"), label)
    for required in ("id", "dataset", "tasks"):
        if required not in table:
            raise AffbenchError(f"{label} has no {required!r}.")
    if table["dataset"] not in DATASET_NAMES:
        raise UnknownNameError("dataset", table["dataset"], DATASET_NAMES)
    if "encoder" not in table and "evaluate" not in table and "published" not in table:
        raise AffbenchError(f"{label} ({table['id']}) has no 'encoder'.")
    check_name("experiment id", table["id"])
    if not isinstance(table["tasks"], list):
        raise AffbenchError(f"{label} ({table['id']}): 'tasks' must be a list of task names.")
    for task in table["tasks"]:
        check_name(f"task name of experiment {table['id']!r}", task)
    if "encoder" in table:
        check_name(f"encoder name of experiment {table['id']!r}", table["encoder"])


def _sources(table: Mapping[str, Any]) -> tuple[Source | None, Source | None]:
    """An experiment's ``[experiment.init]`` and ``[experiment.evaluate]`` references; one at most."""
    init = evaluate = None
    if "init" in table:
        _check_keys(table["init"], ("experiment", "fold", "option", "allow_leakage"), f"[experiment.init] of {table['id']}")
        init = Source(table["init"]["experiment"], table["init"].get("fold"), table["init"].get("option", "au_checkpoint"),
                      _flag(table["init"], "allow_leakage", f"[experiment.init] of {table['id']}"))
    if "evaluate" in table:
        _check_keys(table["evaluate"], ("experiment", "fold", "allow_leakage"), f"[experiment.evaluate] of {table['id']}")
        evaluate = Source(table["evaluate"]["experiment"], table["evaluate"].get("fold"), None,
                          _flag(table["evaluate"], "allow_leakage", f"[experiment.evaluate] of {table['id']}"))
    if init and evaluate:
        raise AffbenchError(f"Experiment {table['id']!r} has both [init] and [evaluate]; it trains or it evaluates.")
    if evaluate and "training" in table:
        raise AffbenchError(f"Experiment {table['id']!r} only evaluates, so it takes no [training] settings.")
    return init, evaluate


def _flag(table: Mapping[str, Any], key: str, where: str) -> bool:
    """A true/false value of ``table`` (default false)."""
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise AffbenchError(f"{key} in {where} must be true or false, got {value!r}.")
    return value


def _released(table: Mapping[str, Any], label: str) -> Released | None:
    """An experiment's ``[experiment.published]`` table: a known release, a folder or per-fold files."""
    if "published" not in table:
        return None
    from affbench.encoders.published import get_published, group_tags

    where = f"[experiment.published] of {table['id']}"
    spec = table["published"]
    if not isinstance(spec, Mapping):
        raise AffbenchError(f"{where} must be a table with a tag and a folder or files.")
    _check_keys(spec, ("tag", "folder", "files", "allow_leakage"), where)
    for other in ("init", "evaluate", "training"):
        if other in table:
            raise AffbenchError(f"Experiment {table['id']!r} scores released weights, so it takes no [{other}].")
    if "tag" not in spec:
        raise AffbenchError(f"{where} has no 'tag' (see affbench list models).")
    folds = group_tags(str(spec["tag"]))  # UnknownNameError lists the releases
    files = spec.get("files", {})
    if not isinstance(files, Mapping) or ("folder" in spec) == bool(files):
        raise AffbenchError(f"{where} needs either folder = \"...\" (the files under their published names) or "
                            "files = { 1 = \"...\", ... } (a file per fold), not both.")
    if "folder" in spec and not all(get_published(tag).file_name_published for tag in folds.values()):
        raise AffbenchError(f"{where}: {spec['tag']} has no published file name to find in a folder; "
                            "give files = { 1 = \"...\" } instead.")
    try:
        by_fold = {int(fold): str(path) for fold, path in files.items()}
    except ValueError:
        raise AffbenchError(f"{where}: the keys of files are fold numbers, e.g. files = {{ 1 = \"a.pth\" }}.") from None
    if len(folds) > 1 and by_fold and not set(by_fold) <= set(folds):
        raise AffbenchError(f"{where} gives files for fold(s) {sorted(set(by_fold) - set(folds))}, which "
                            f"{spec['tag']} has no file for; its folds are {sorted(folds)}.")
    return Released(str(spec["tag"]), spec.get("folder"), by_fold, _flag(spec, "allow_leakage", where))


def _released_encoder(released: Released, table: Mapping[str, Any], label: str) -> tuple[str, dict[str, Any]]:
    """The encoder and options of a release: the tag's, which the experiment may not contradict."""
    from affbench.encoders.published import get_published, group_tags

    published = get_published(next(iter(group_tags(released.tag).values())))
    if table.get("encoder", published.encoder) != published.encoder or table.get("options"):
        raise AffbenchError(f"{label} ({table['id']}) scores {released.tag}, a {published.encoder} model with the "
                            "tag's options; leave encoder and options out.")
    return published.encoder, dict(published.options)


def _check_experiment_ids(experiments: list[Experiment], where: str) -> None:
    """At least one experiment, and no id twice."""
    if not experiments:
        raise AffbenchError(f"{where} declares no [[experiment]].")
    ids = [e.id for e in experiments]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AffbenchError(f"{where} declares experiment {duplicates[0]!r} twice.")


def _resolve_references(suite: Suite) -> None:
    """Check the experiments' references (known, acyclic, on their own dataset's derived tasks) and cells
    (one experiment each); an evaluation takes its source's encoder and options, in place."""
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
            suite.experiments[i] = experiment = replace(experiment, encoder=origin.encoder, options=dict(origin.options))
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
        while (source := current.init or current.evaluate) is not None:
            current = by_id[source.experiment]
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


def validate_encoders(suite: Suite) -> None:
    """Check that every encoder name and option of the suite exists.

    Parameters
    ----------
    suite : Suite
        Its experiments' encoders and options (weight options, which carry paths, excepted).

    Raises
    ------
    UnknownNameError
        Listing the valid names, for an unknown encoder or option.
    """
    from affbench.encoders.registry import get_encoder_spec

    for experiment in suite.experiments:
        options = {k: v for k, v in experiment.options.items() if k not in WEIGHT_OPTIONS}
        get_encoder_spec(experiment.encoder, **options)


