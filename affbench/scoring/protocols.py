"""Evaluation protocols as data: which rows train, validate and test, which targets, which metrics.

A dataset's protocol is declared once, as a :class:`Protocol` value (the declarations live in
``affbench.pipelines.protocols``), and travels with the prepared data: the prepare pipeline stores
``protocol.to_dict()`` in ``manifest.json`` and the benchmark harness rebuilds it with
``Protocol.from_dict(manifest["protocol"])``. This module is the generic machinery and knows no
dataset.

Rows are selected on a ``meta`` table, a :class:`pandas.DataFrame` of shard columns (``subject``,
``split`` or per-task ``split_*`` columns, ``face_found`` and the label columns); every index
returned is a *position* in that table (``meta.iloc``), not its pandas index.

Rules common to every protocol:

* Rows without a crop (``face_found`` false and no fallback crop) are in no train, validation or
  test set; they are counted per role in ``split["excluded"]["no_face"]`` so that reports show them.
* Rows with a fallback crop (``landmark_source`` interpolated or carried: no face was found in the
  frame, the crop uses its neighbours' landmarks) are used like any other, as the published
  protocols score every frame; ``split["fallback_crops"]`` counts them per role. With
  ``exclude_fallback=True`` they are left out instead and counted in
  ``split["excluded"]["fallback_crop"]``.
* Rows with no annotated label for a task are left out of that task only (counted in
  ``split["excluded"]["unannotated"]``); partly annotated rows stay in and ``targets`` masks the
  missing entries.
* Model selection never sees the test rows: the validation set is drawn from training rows only,
  with a recorded fraction and seed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from affbench.errors import AffbenchError, UnknownNameError
from affbench.faces.sources import FALLBACK_SOURCES
from affbench.scoring.metrics import TASK_KINDS
from affbench.scoring.registry import get_metric

__all__ = [
    "TaskSpec",
    "CrossValidation",
    "GivenSplit",
    "Validation",
    "Protocol",
    "ROLES",
]

#: The three roles of a row in one fold; "val" is drawn from training rows.
ROLES: tuple[str, ...] = ("train", "val", "test")


# ----------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task on one dataset.

    Attributes
    ----------
    name : str
        The task's name in results, e.g. ``"au-detection"``.
    kind : str
        One of :data:`affbench.scoring.metrics.TASK_KINDS`.
    label_columns : tuple of str
        Shard columns holding the labels: ``("au1", ...)``, ``("expression",)``, ``("valence", "arousal")``.
    output_key : str
        Key of the model's output dict the predictions come from (``"au"``, ``"expression"``, ``"va"``).
    n_outputs : int
        Width of that output: one per label column, or the number of classes for expression.
    label_names : tuple of str
        One name per label column (AU tasks, VA) or per class (expression); the suffix of per-label
        metric keys such as ``"f1/au6"``.
    metrics : tuple of str
        Registered metric names (:func:`affbench.scoring.get_metric`).
    primary_metric : str
        The metric (one of ``metrics``) used for model selection and headline tables.
    split_column : str or None
        Column holding the dataset's own split for this task (``"split"``, ``"split_au"``);
        None where folds are made from subjects.
    binarize_at : float or None
        Target transform: a label value ``>= binarize_at`` is an occurrence (1), below it 0.
        None keeps the raw values (class indices, intensities, VA).
    missing_values : tuple of float
        Label values meaning "not annotated", besides null/NaN, which always mean it.
    metric_options : dict
        Extra keyword arguments per metric name, e.g. ``{"all_active_rate": {"labels": ["au6", "au12"]}}``.
    joint_annotation : bool, optional
        True: a row missing any of the task's labels counts as unannotated for all of them (the
        official Aff-Wild2 VA evaluation drops a frame whose valence or arousal is -5). Default:
        True for VA tasks, False otherwise (each label on its own annotated rows).
    """

    name: str
    kind: str
    label_columns: tuple[str, ...]
    output_key: str
    n_outputs: int
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    primary_metric: str
    split_column: str | None = "split"
    binarize_at: float | None = None
    missing_values: tuple[float, ...] = (-1,)
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    joint_annotation: bool | None = None

    def __post_init__(self) -> None:
        if self.joint_annotation is None:
            object.__setattr__(self, "joint_annotation", self.kind == "va")
        for name in ("label_columns", "label_names", "metrics", "missing_values"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "metric_options", {k: dict(v) for k, v in dict(self.metric_options).items()})
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {', '.join(TASK_KINDS)}.")
        for metric in self.metrics:
            spec = get_metric(metric)
            if self.kind not in spec.task_kinds:
                raise ValueError(f"task {self.name!r}: metric {metric!r} does not apply to {self.kind} tasks.")
        if self.primary_metric not in self.metrics:
            raise ValueError(f"task {self.name!r}: primary metric {self.primary_metric!r} is not in {self.metrics}.")
        if self.is_classification:
            if len(self.label_columns) != 1 or len(self.label_names) != self.n_outputs:
                raise ValueError(
                    f"task {self.name!r}: a class task has one label column and one label name per "
                    f"output; got {len(self.label_columns)} columns, {len(self.label_names)} names, "
                    f"{self.n_outputs} outputs."
                )
        elif not len(self.label_columns) == len(self.label_names) == self.n_outputs:
            raise ValueError(
                f"task {self.name!r}: needs one label name and one output per label column; got "
                f"{len(self.label_columns)} columns, {len(self.label_names)} names, {self.n_outputs} outputs."
            )

    @property
    def is_classification(self) -> bool:
        """True for single-label class tasks (targets are class indices)."""
        return self.kind == "expression"

    @property
    def transform(self) -> str:
        """The target transform in words, for reports."""
        if self.binarize_at is not None:
            return f"occurrence = value >= {self.binarize_at:g}"
        return "class index" if self.is_classification else "raw value"

    def to_dict(self) -> dict[str, Any]:
        """The task as JSON-native values (the inverse of :meth:`from_dict`).

        Returns
        -------
        dict
            One entry per field; ``joint_annotation`` only where it is true.
        """
        return {
            "name": self.name,
            "kind": self.kind,
            "label_columns": list(self.label_columns),
            "output_key": self.output_key,
            "n_outputs": self.n_outputs,
            "label_names": list(self.label_names),
            "metrics": list(self.metrics),
            "primary_metric": self.primary_metric,
            "split_column": self.split_column,
            "binarize_at": self.binarize_at,
            "missing_values": list(self.missing_values),
            "metric_options": {k: dict(v) for k, v in sorted(self.metric_options.items())},
            # Only where set, so that the descriptions (and job hashes) of other tasks stay as they were.
            **({"joint_annotation": True} if self.joint_annotation else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Rebuild a task from :meth:`to_dict` output.

        Parameters
        ----------
        data : mapping
            Field names and values.

        Returns
        -------
        TaskSpec
        """
        return cls(**{k: data[k] for k in data})


# ----------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class CrossValidation:
    """Subject-exclusive folds: fold ``f`` tests the subjects of ``test_parts[f]``, the others train.

    Parameters
    ----------
    parts : mapping of str to sequence of str
        Part name -> its subjects (values of ``group_column``); a subject is in one part only.
    test_parts : mapping of int to str or sequence of str
        Fold -> the part(s) it tests.
    group_column : str, default="subject"
        The ``meta`` column holding the subject of every row.

    Examples
    --------
    >>> from affbench.scoring.protocols import CrossValidation
    >>> cv = CrossValidation(parts={"a": ("s1", "s2"), "b": ("s3",)}, test_parts={1: "a", 2: "b"})
    >>> cv.folds, cv.part_of()["s3"]
    ((1, 2), 'b')
    """

    parts: Mapping[str, tuple[str, ...]]
    test_parts: Mapping[int, tuple[str, ...]]
    group_column: str = "subject"
    kind: str = field(default="cross-validation", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", {str(k): tuple(v) for k, v in dict(self.parts).items()})
        object.__setattr__(
            self, "test_parts",
            {int(k): (v,) if isinstance(v, str) else tuple(v) for k, v in dict(self.test_parts).items()},
        )
        seen: dict[str, str] = {}
        for part, subjects in self.parts.items():
            for subject in subjects:
                if subject in seen:
                    raise ValueError(f"subject {subject} is in both {seen[subject]} and {part}.")
                seen[subject] = part
        for fold, parts in self.test_parts.items():
            unknown = set(parts) - set(self.parts)
            if unknown:
                raise ValueError(f"fold {fold} tests unknown parts {sorted(unknown)}.")

    @property
    def folds(self) -> tuple[int, ...]:
        """The fold identifiers, sorted."""
        return tuple(sorted(self.test_parts))

    def part_of(self) -> dict[str, str]:
        """The part of every subject.

        Returns
        -------
        dict[str, str]
            Subject -> part name.
        """
        return {subject: part for part, subjects in self.parts.items() for subject in subjects}

    def repartitioned(self, partition: int) -> CrossValidation:
        """The same parts and folds with the subjects dealt into the parts at random, reproducibly.

        Partition 0 is this (the published) one; partition ``k`` shuffles every subject with
        ``numpy.random.default_rng(k)`` (after sorting them by name) and deals them into parts of the
        published sizes, so each part keeps its number of subjects and every subject stays in
        exactly one part.

        Parameters
        ----------
        partition : int
            0, or the number of a random partition (1, 2, ...).

        Returns
        -------
        CrossValidation

        Examples
        --------
        >>> cv = CrossValidation(parts={"a": ("s1", "s2"), "b": ("s3", "s4")}, test_parts={1: "a", 2: "b"})
        >>> cv.repartitioned(0) == cv, sorted(len(p) for p in cv.repartitioned(1).parts.values())
        (True, [2, 2])
        """
        if partition == 0:
            return self
        subjects = sorted(s for part in self.parts.values() for s in part)
        order = np.random.default_rng(int(partition)).permutation(len(subjects))
        shuffled = [subjects[i] for i in order]
        parts, start = {}, 0
        for name, members in self.parts.items():
            parts[name] = tuple(sorted(shuffled[start:start + len(members)]))
            start += len(members)
        return CrossValidation(parts=parts, test_parts=self.test_parts, group_column=self.group_column)

    def to_dict(self) -> dict[str, Any]:
        """The split as JSON-native values (the inverse of :meth:`from_dict`).

        Returns
        -------
        dict
            ``kind``, ``group_column``, ``parts`` (name and subjects) and ``folds`` (fold and test parts).
        """
        return {
            "kind": self.kind,
            "group_column": self.group_column,
            "parts": [{"name": name, "subjects": list(subjects)} for name, subjects in self.parts.items()],
            "folds": [{"fold": fold, "test_parts": list(self.test_parts[fold])} for fold in self.folds],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrossValidation:
        """Rebuild the split from :meth:`to_dict` output.

        Parameters
        ----------
        data : mapping
            As :meth:`to_dict` returns it.

        Returns
        -------
        CrossValidation
        """
        return cls(
            parts={p["name"]: p["subjects"] for p in data["parts"]},
            test_parts={f["fold"]: f["test_parts"] for f in data["folds"]},
            group_column=data["group_column"],
        )


@dataclass(frozen=True)
class GivenSplit:
    """The dataset's own train/test split, read from each task's ``split_column``; one fold.

    Parameters
    ----------
    train, test : str, default="train", "test"
        The values of the split column that mark training and test rows.
    """

    train: str = "train"
    test: str = "test"
    kind: str = field(default="given", init=False)

    @property
    def folds(self) -> tuple[int, ...]:
        """The one fold, ``(1,)``."""
        return (1,)

    def to_dict(self) -> dict[str, Any]:
        """The split as JSON-native values: ``kind``, ``train`` and ``test``.

        Returns
        -------
        dict
        """
        return {"kind": self.kind, "train": self.train, "test": self.test}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GivenSplit:
        """Rebuild the split from :meth:`to_dict` output.

        Parameters
        ----------
        data : mapping
            As :meth:`to_dict` returns it.

        Returns
        -------
        GivenSplit
        """
        return cls(train=data["train"], test=data["test"])


_SPLIT_KINDS: dict[str, type[CrossValidation] | type[GivenSplit]] = {
    "cross-validation": CrossValidation,
    "given": GivenSplit,
}


@dataclass(frozen=True)
class Validation:
    """How the validation set is drawn from the training rows of a fold.

    ``method``:

    * ``"group-holdout"``: whole groups (subjects, videos) of ``group_column`` are held out,
      ``max(1, round(fraction * n_groups))`` of them and always fewer than all. Groups are ranked by
      a hash of (seed, group), so a group's side does not depend on which other groups exist.
      ``merge_suffixes`` are stripped from the group name first, which keeps the ``_left`` and
      ``_right`` halves of a two-person video on the same side.
    * ``"stratified"``: a class-stratified random ``fraction`` of the training rows
      (scikit-learn's ``train_test_split(stratify=...)``, ``random_state=seed``).

    Parameters
    ----------
    method : {"group-holdout", "stratified"}
        As above.
    fraction : float
        Share of the training groups or rows held out, strictly between 0 and 1.
    seed : int, default=0
        Seed of the draw.
    group_column : str, default="subject"
        The ``meta`` column holding the groups (``"group-holdout"``).
    merge_suffixes : tuple of str, default=()
        Suffixes stripped from group names before drawing (see :meth:`group_key`).

    Examples
    --------
    >>> from affbench.scoring.protocols import Validation
    >>> Validation("group-holdout", 0.2, merge_suffixes=("_left", "_right")).group_key("video7_left")
    'video7'
    """

    method: str
    fraction: float
    seed: int = 0
    group_column: str = "subject"
    merge_suffixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "merge_suffixes", tuple(self.merge_suffixes))
        if self.method not in ("group-holdout", "stratified"):
            raise ValueError(f"validation method {self.method!r} is not 'group-holdout' or 'stratified'.")
        if not 0.0 < float(self.fraction) < 1.0:
            raise AffbenchError(f"The validation fraction must lie strictly between 0 and 1; got {self.fraction}.")

    def group_key(self, name: str) -> str:
        """The group that ``name`` is drawn with: ``name`` without its first matching merge suffix.

        Parameters
        ----------
        name : str
            A value of ``group_column``.

        Returns
        -------
        str
        """
        for suffix in self.merge_suffixes:
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name

    def to_dict(self) -> dict[str, Any]:
        """The validation settings as JSON-native values, one entry per field.

        Returns
        -------
        dict
        """
        return {
            "method": self.method,
            "fraction": self.fraction,
            "seed": self.seed,
            "group_column": self.group_column,
            "merge_suffixes": list(self.merge_suffixes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Validation:
        """Rebuild the settings from :meth:`to_dict` output.

        Parameters
        ----------
        data : mapping
            Field names and values.

        Returns
        -------
        Validation
        """
        return cls(**data)


def _rank_key(seed: int, group: str) -> str:
    """The rank of a group in a group-holdout draw: a hash of (seed, group), independent of the others."""
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def _excluded_counts(role: np.ndarray, rows: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``split["excluded"]``: per role, the rows left out for want of a face, of a used crop or of a label."""
    face, fallback, cropped, labelled = rows["face"], rows["fallback"], rows["cropped"], rows["labelled"]
    return {
        "no_face": {r: int(((role == r) & ~face & ~fallback).sum()) for r in ROLES},
        "fallback_crop": {r: int(((role == r) & fallback & ~cropped).sum()) for r in ROLES},
        "unannotated": {r: int(((role == r) & cropped & ~labelled).sum()) for r in ROLES},
        "no_split": int((role == "").sum()),
    }


# ----------------------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class Protocol:
    """A dataset's evaluation protocol: tasks, folds, the test split and how validation is drawn.

    Parameters
    ----------
    dataset : str
        The dataset's name.
    tasks : mapping of str to TaskSpec, or sequence of TaskSpec
        The tasks, by name.
    split : CrossValidation or GivenSplit
        Which rows train and test in each fold.
    validation : Validation
        How the validation set is drawn from the training rows.
    description : str, default=""
        The protocol in words, for reports.

    Examples
    --------
    >>> import json
    >>> import pandas as pd
    >>> from affbench.scoring.protocols import GivenSplit, Protocol, TaskSpec, Validation
    >>> task = TaskSpec(name="expression", kind="expression", label_columns=("expression",),
    ...                 output_key="expression", n_outputs=2, label_names=("calm", "happy"),
    ...                 metrics=("accuracy",), primary_metric="accuracy")
    >>> protocol = Protocol(dataset="toy", tasks={"expression": task}, split=GivenSplit("train", "test"),
    ...                     validation=Validation(method="stratified", fraction=0.25, seed=0))
    >>> meta = pd.DataFrame({"split": ["train"] * 8 + ["test"] * 2,
    ...                      "face_found": [True] * 9 + [False],
    ...                      "expression": [0, 1] * 5})
    >>> split = protocol.split_indices(meta, "expression")
    >>> len(split["train"]), len(split["val"]), split["test"].tolist(), split["excluded"]["no_face"]
    (6, 2, [8], {'train': 0, 'val': 0, 'test': 1})
    >>> y, mask = protocol.targets(meta, "expression")
    >>> y[:4].tolist(), bool(mask.all())
    ([0, 1, 0, 1], True)
    >>> Protocol.from_dict(json.loads(json.dumps(protocol.to_dict()))) == protocol
    True
    """

    dataset: str
    tasks: Mapping[str, TaskSpec]
    split: CrossValidation | GivenSplit
    validation: Validation
    description: str = ""

    def __post_init__(self) -> None:
        tasks = self.tasks if isinstance(self.tasks, Mapping) else {t.name: t for t in self.tasks}
        for key, task in tasks.items():
            if key != task.name:
                raise ValueError(f"task registered as {key!r} is named {task.name!r}.")
            if isinstance(self.split, GivenSplit) and task.split_column is None:
                raise ValueError(f"task {key!r} needs a split_column for the dataset's own split.")
        object.__setattr__(self, "tasks", dict(tasks))

    @property
    def folds(self) -> tuple[int, ...]:
        """Fold identifiers to iterate over: (1, 2, 3) for DISFA, (1,) for a given split."""
        return self.split.folds

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``.

        Parameters
        ----------
        name : str
            A task name of this protocol.

        Returns
        -------
        TaskSpec

        Raises
        ------
        UnknownNameError
            Listing the protocol's tasks, when there is none of that name.
        """
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownNameError(f"{self.dataset} task", name, self.tasks) from None

    def with_validation(self, *, fraction: float | None = None, seed: int | None = None) -> Protocol:
        """The same protocol with another validation fraction and/or seed (recorded in ``to_dict``).

        Parameters
        ----------
        fraction, seed : optional
            The new values; None keeps the protocol's.

        Returns
        -------
        Protocol
        """
        changes: dict[str, Any] = {k: v for k, v in (("fraction", fraction), ("seed", seed)) if v is not None}
        return replace(self, validation=replace(self.validation, **changes))

    # -- serialisation: JSON-native values only, so that manifest.json round-trips exactly

    def to_dict(self) -> dict[str, Any]:
        """The protocol as JSON-native values, as ``manifest.json`` stores it.

        Returns
        -------
        dict
            ``dataset``, ``description``, ``tasks``, ``split`` and ``validation``.
        """
        return {
            "dataset": self.dataset,
            "description": self.description,
            "tasks": [task.to_dict() for task in self.tasks.values()],
            "split": self.split.to_dict(),
            "validation": self.validation.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        """Rebuild a protocol from :meth:`to_dict` output (e.g. ``manifest["protocol"]``).

        Parameters
        ----------
        data : mapping
            As :meth:`to_dict` returns it.

        Returns
        -------
        Protocol

        Raises
        ------
        AffbenchError
            When ``data`` is no protocol or names an unknown split kind.
        """
        if not isinstance(data, Mapping) or "split" not in data or "tasks" not in data:
            raise AffbenchError("The manifest holds no evaluation protocol; re-run the prepare command.")
        split_kind = data["split"].get("kind")
        if split_kind not in _SPLIT_KINDS:
            raise AffbenchError(f"The manifest's protocol has an unknown split kind {split_kind!r}.")
        tasks = [TaskSpec.from_dict(t) for t in data["tasks"]]
        return cls(
            dataset=data["dataset"],
            tasks={t.name: t for t in tasks},
            split=_SPLIT_KINDS[split_kind].from_dict(data["split"]),
            validation=Validation.from_dict(data["validation"]),
            description=data.get("description", ""),
        )

    def repartitioned(self, partition: int) -> Protocol:
        """The protocol with its subjects dealt into the folds' parts at random (see
        :meth:`CrossValidation.repartitioned`); partition 0 is the published protocol itself.

        Raises
        ------
        AffbenchError
            For a protocol with a given split (CAER-S, Aff-Wild2), which has no subject folds to redraw.
        """
        if partition == 0:
            return self
        if not isinstance(self.split, CrossValidation):
            raise AffbenchError(f"{self.dataset} has a given train/test split, not subject folds, so it has no "
                                "random partitions; refolds apply to cross-validation protocols only.")
        return replace(self, split=self.split.repartitioned(partition))

    def fingerprint(self) -> str:
        """The protocol's version as result records state it: the first 12 hex digits of the SHA-256
        of :meth:`to_dict` (sorted keys), so that any change to tasks, folds, metrics or validation
        gives another version.

        Returns
        -------
        str
        """
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def cluster_ids(self, meta: pd.DataFrame) -> tuple[np.ndarray, str]:
        """The independent unit of every row, which confidence intervals resample, and its name.

        The protocol already says which rows belong together: a subject-exclusive split's group
        (``subject``), else a group hold-out's group with its merge suffixes stripped (Aff-Wild2:
        a video, its two persons together); a protocol that names no group (CAER-S, whose stills
        do not record their clip) makes every row its own unit.

        Parameters
        ----------
        meta : pandas.DataFrame
            Rows with the group column, or ``sample_id`` where there is none.

        Returns
        -------
        (ndarray of str, str)
            One cluster name per row, and what a cluster is (``"subject"``).
        """
        if isinstance(self.split, CrossValidation):
            column = self.split.group_column
            return self._column(meta, column).astype(str), column
        if self.validation.method == "group-holdout":
            column = self.validation.group_column
            names = [self.validation.group_key(str(g)) for g in self._column(meta, column)]
            suffixes = self.validation.merge_suffixes
            unit = f"{column} without {'/'.join(suffixes)}" if suffixes else column
            return np.asarray(names, dtype=str), unit
        return self._column(meta, "sample_id").astype(str), "row"

    # -- targets

    def targets(self, meta: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray]:
        """Targets and annotation mask of ``task`` for every row of ``meta``.

        Parameters
        ----------
        meta : pandas.DataFrame
            Shard columns of every row, the task's label columns among them.
        task : str
            A task name of this protocol.

        Returns
        -------
        y : ndarray
            (n, n_labels) float32 for AU and VA tasks (0/1 after ``binarize_at``), (n,) int64 class
            indices for class tasks. Unannotated entries hold 0 so that losses stay finite.
        mask : ndarray of bool, same shape as ``y``
            True where the label is annotated.
        """
        spec = self.task(task)
        missing_columns = [c for c in spec.label_columns if c not in meta.columns]
        if missing_columns:
            raise AffbenchError(
                f"The {self.dataset} data has no label column(s) {', '.join(missing_columns)} for task {task}."
            )
        values = np.column_stack(
            [pd.to_numeric(meta[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
             for c in spec.label_columns]
        ) if len(meta) else np.zeros((0, len(spec.label_columns)))
        annotated = ~np.isnan(values)
        if spec.missing_values:
            annotated &= ~np.isin(values, np.asarray(spec.missing_values, dtype=np.float64))
        if spec.joint_annotation:
            annotated &= annotated.all(axis=1, keepdims=True)
        if spec.is_classification:
            classes = values[:, 0]
            mask = annotated[:, 0]
            bad = mask & ((classes < 0) | (classes >= spec.n_outputs) | (classes != np.round(classes)))
            if bad.any():
                raise AffbenchError(
                    f"{self.dataset} column {spec.label_columns[0]} holds {classes[bad][0]:g}, which is not a "
                    f"class index 0..{spec.n_outputs - 1} nor a missing-value marker."
                )
            return np.where(mask, classes, 0).astype(np.int64), mask
        if spec.binarize_at is not None:
            y = (values >= spec.binarize_at).astype(np.float32)
        else:
            y = values.astype(np.float32)
        return np.where(annotated, y, 0).astype(np.float32), annotated

    # -- splits

    def split_indices(
        self,
        meta: pd.DataFrame,
        task: str,
        fold: int | None = None,
        *,
        seed: int | None = None,
        fraction: float | None = None,
        exclude_fallback: bool = False,
    ) -> dict[str, Any]:
        """Row positions of train, validation and test for one task and fold, with what was left out.

        Parameters
        ----------
        meta : pandas.DataFrame
            Shard columns of every row: the group column (``subject``), the task's split column,
            ``face_found`` and the task's label columns.
        task : str
            A task name of this protocol.
        fold : int, optional
            One of :attr:`folds`; may be omitted for single-fold protocols.
        seed, fraction : optional
            Override the protocol's validation seed / fraction.
        exclude_fallback : bool
            Leave out the rows with a fallback crop (see the module docstring).

        Returns
        -------
        dict
            ``"train"``, ``"val"``, ``"test"``: sorted int64 positions into ``meta``;
            ``"excluded"``: ``{"no_face": {role: n}, "fallback_crop": {role: n}, "unannotated":
            {role: n}, "no_split": n}`` (no_split counts rows outside this task's train and test
            sets); ``"fallback_crops"``: ``{role: n}`` fallback-crop rows used; ``"validation"``: the
            method, fraction, seed and held-out groups, to record with every result;
            ``"fold"`` and ``"test_groups"``.
        """
        spec = self.task(task)
        fold = self._check_fold(fold)
        changes: dict[str, Any] = {k: v for k, v in (("seed", seed), ("fraction", fraction)) if v is not None}
        validation = replace(self.validation, **changes)
        role, test_groups = self._fold_roles(meta, spec, fold)
        rows = self._row_status(meta, task, exclude_fallback)
        usable = rows["cropped"] & rows["labelled"]
        validation_info = self._draw_validation(meta, spec, validation, role, usable)  # "train" -> "val"
        result: dict[str, Any] = {r: np.flatnonzero((role == r) & usable).astype(np.int64) for r in ROLES}
        result.update(
            excluded=_excluded_counts(role, rows),
            fallback_crops={r: int(((role == r) & usable & rows["fallback"]).sum()) for r in ROLES},
            validation=validation_info,
            fold=fold,
            test_groups=test_groups,
        )
        return result

    def _fold_roles(self, meta: pd.DataFrame, spec: TaskSpec, fold: int) -> tuple[np.ndarray, list[str]]:
        """Every row's role in ``fold`` before validation is drawn ("train", "test" or "" for none),
        and the test groups of a cross-validation fold (none for a given split)."""
        role = np.full(len(meta), "", dtype=object)  # "" = in no set of this task
        if not isinstance(self.split, CrossValidation):
            split_values = self._column(meta, spec.split_column)
            role[split_values == self.split.train] = "train"
            role[split_values == self.split.test] = "test"
            return role, []
        groups = self._column(meta, self.split.group_column).astype(str)
        part_of = self.split.part_of()
        unknown = sorted(set(groups) - set(part_of))
        if unknown:
            raise AffbenchError(
                f"{self.dataset} {self.split.group_column}(s) {', '.join(unknown[:5])} belong to no part "
                f"of the {self.dataset} protocol ({', '.join(self.split.parts)})."
            )
        tested = set(self.split.test_parts[fold])
        is_test = np.array([part_of[g] in tested for g in groups], dtype=bool)
        role[is_test] = "test"
        role[~is_test] = "train"
        return role, sorted(set(groups[is_test]))

    def _row_status(self, meta: pd.DataFrame, task: str, exclude_fallback: bool) -> dict[str, np.ndarray]:
        """Per-row flags: ``face`` (detected), ``fallback`` (a fallback crop only), ``cropped`` (has a
        crop that is used) and ``labelled`` (any of the task's labels annotated)."""
        face = self._face_found(meta)
        fallback = self._fallback(meta) & ~face
        cropped = face | (fallback & (not exclude_fallback))
        _, mask = self.targets(meta, task)
        labelled = mask.any(axis=1) if mask.ndim == 2 else mask
        return {"face": face, "fallback": fallback, "cropped": cropped, "labelled": labelled}

    def _check_fold(self, fold: int | None) -> int:
        if fold is None:
            if len(self.folds) != 1:
                raise AffbenchError(f"{self.dataset} has folds {list(self.folds)}; say which one.")
            return self.folds[0]
        if fold not in self.folds:
            raise AffbenchError(f"{self.dataset} has no fold {fold!r}; its folds are {list(self.folds)}.")
        return int(fold)

    def _column(self, meta: pd.DataFrame, column: str | None) -> np.ndarray:
        if column not in meta.columns:
            raise AffbenchError(f"The {self.dataset} data has no column {column!r}, which its protocol needs.")
        return meta[column].to_numpy(dtype=object)

    @staticmethod
    def _face_found(meta: pd.DataFrame) -> np.ndarray:
        if "face_found" not in meta.columns:
            raise AffbenchError("The data has no face_found column, which every prepared dataset has.")
        return meta["face_found"].fillna(False).to_numpy(dtype=bool)

    @staticmethod
    def _fallback(meta: pd.DataFrame) -> np.ndarray:
        """Rows with a fallback crop; none in data prepared before the ``landmark_source`` column."""
        if "landmark_source" not in meta.columns:
            return np.zeros(len(meta), dtype=bool)
        return meta["landmark_source"].isin(FALLBACK_SOURCES).to_numpy(dtype=bool)

    def _draw_validation(
        self, meta: pd.DataFrame, spec: TaskSpec, validation: Validation, role: np.ndarray, usable: np.ndarray
    ) -> dict[str, Any]:
        """Move part of the training rows to "val" (in ``role``, in place) and describe what was drawn."""
        info: dict[str, Any] = validation.to_dict()
        train = role == "train"
        if validation.method == "group-holdout":
            names = self._column(meta, validation.group_column).astype(str)
            keys = np.array([validation.group_key(name) for name in names], dtype=object)
            candidates = sorted(set(keys[train & usable]))
            n_val = min(max(1, math.floor(validation.fraction * len(candidates) + 0.5)), len(candidates) - 1)
            if n_val < 1:
                info.update(groups=[], note=f"only {len(candidates)} training group(s): no validation set")
                return info
            held_out = sorted(sorted(candidates, key=lambda g: _rank_key(validation.seed, g))[:n_val])
            role[train & np.isin(keys, held_out)] = "val"
            info.update(groups=held_out)
            return info

        # "stratified": a class-stratified fraction of the usable training rows.
        from sklearn.model_selection import train_test_split

        if not spec.is_classification:
            raise ValueError(f"stratified validation needs a class task; {spec.name} is {spec.kind}.")
        y, _ = self.targets(meta, spec.name)
        pool = np.flatnonzero(train & usable)
        n_classes = len(np.unique(y[pool]))
        n_val = math.ceil(validation.fraction * len(pool))
        # Tiny data (sample datasets) still needs one validation row per class to stratify.
        n_val = max(n_val, n_classes)
        if len(pool) - n_val < n_classes:
            info.update(groups=None, note=f"only {len(pool)} training rows: no validation set")
            return info
        try:
            _, val_rows = train_test_split(
                pool, test_size=n_val, stratify=y[pool], random_state=validation.seed, shuffle=True
            )
        except ValueError as exc:
            raise AffbenchError(f"Cannot draw a stratified validation set from {self.dataset}: {exc}") from None
        role[np.sort(val_rows)] = "val"
        info.update(groups=None, n_val_rows=int(len(val_rows)))
        return info
