"""Fold leakage: weights must never be tested on the subjects they were trained on.

A cell that starts from or scores weights trained under a subject-exclusive protocol (a released
fold file -- scored through ``[experiment.published]``, or started from through an encoder option
such as ``pretrained`` that names the file by its published name -- or another experiment's job in
a chained suite) is tested on its own fold's subjects.
When those weights saw any of them in training -- the fold-1 ME-GraphAU file scored on fold 2, a
stage-2 cell started from another fold's stage 1 -- the score rises silently. The planner asks
:func:`check_leakage` for every such job and refuses it in one sentence naming the subjects and the
fold to use, unless the suite sets ``allow_leakage = true``; then the subjects are recorded with the
job and shown in the tables.

Subjects are compared as (dataset, subject) pairs, so weights trained on BP4D are never "leaked"
to DISFA. Given-split protocols (CAER-S, Aff-Wild2) name no subjects: their test split is disjoint
from their training split by construction, so nothing is checked there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from affbench.errors import AffbenchError

if TYPE_CHECKING:
    from affbench.benchmarks.plan import Job
    from affbench.scoring.protocols import Protocol

#: (dataset, subject)
Subject = tuple[str, str]


@dataclass(frozen=True)
class Leak:
    """Weights a job uses that were trained on some of the subjects it tests.

    Attributes
    ----------
    weights : str
        The weights, in words (a tag and file, or another experiment's job).
    subjects : tuple of str
        The subjects both trained on and tested, sorted.
    use_fold : int or None
        A fold of the job's dataset whose test subjects the weights never saw.
    """

    weights: str
    subjects: tuple[str, ...]
    use_fold: int | None

    def to_dict(self) -> dict[str, object]:
        """The leak as JSON-native values, for job configurations and records."""
        return {"weights": self.weights, "subjects": list(self.subjects), "use_fold": self.use_fold}


def tested_subjects(protocol: Protocol, dataset: str, fold: int) -> set[Subject]:
    """The subjects a fold tests; empty for protocols that name no subjects (given splits)."""
    from affbench.scoring.protocols import CrossValidation

    split = protocol.split
    if not isinstance(split, CrossValidation):
        return set()
    return {(dataset, s) for part in split.test_parts[fold] for s in split.parts[part]}


def training_subjects(protocol: Protocol, dataset: str, fold: int) -> set[Subject]:
    """The subjects a fold trains and validates on: every subject of the protocol but its test subjects."""
    from affbench.scoring.protocols import CrossValidation

    split = protocol.split
    if not isinstance(split, CrossValidation):
        return set()
    every = {(dataset, s) for subjects in split.parts.values() for s in subjects}
    return every - tested_subjects(protocol, dataset, fold)


#: Encoder options that start a model from a checkpoint file.
CHECKPOINT_OPTIONS = ("pretrained", "au_checkpoint", "stage1_checkpoint")


def released_starts(job: Job) -> list[tuple[str, str]]:
    """The released files ``job`` starts from through its encoder options, as (tag, file name): a file
    is known by its published name (``options = { pretrained = ".../MEFARG_resnet50_DISFA_fold1.pth" }``)."""
    from affbench.encoders.published import tag_of_file

    found = []
    for option in CHECKPOINT_OPTIONS:
        value = job.experiment.options.get(option)
        if isinstance(value, str) and (tag := tag_of_file(Path(value).name)) is not None:
            found.append((tag, Path(value).name))
    return found


def _tag_subjects(tag: str) -> set[Subject]:
    from affbench.encoders.published import get_published

    published = get_published(tag)
    return {(str(published.dataset), s) for s in published.trained_subjects}


def weights_subjects(job: Job, protocol_of: Callable[[str], Protocol]) -> set[Subject]:
    """Every subject the weights ``job`` ends with were trained on: its own training, the released
    file it scores or starts from, and (through the chain) the weights it started from."""
    subjects: set[Subject] = set()
    experiment = job.experiment
    if experiment.published is not None:
        subjects |= _tag_subjects(job.config["published"]["tag"])
    elif not experiment.is_evaluation:
        subjects |= training_subjects(protocol_of(experiment.dataset), experiment.dataset, job.fold)
    for tag, _ in released_starts(job):
        subjects |= _tag_subjects(tag)
    if job.depends is not None:
        subjects |= weights_subjects(job.depends, protocol_of)
    return subjects


def find_leak(job: Job, protocol_of: Callable[[str], Protocol]) -> Leak | None:
    """The leak of ``job`` (weights it starts from or scores, trained on subjects it tests), or None."""
    experiment = job.experiment
    used: set[Subject] = set()
    what = []
    if experiment.published is not None:
        used |= _tag_subjects(job.config["published"]["tag"])
        what.append(f"{job.config['published']['tag']} ({job.config['published']['name']})")
    for tag, name in released_starts(job):
        used |= _tag_subjects(tag)
        what.append(f"{tag} ({name})")
    if job.depends is not None:
        used |= weights_subjects(job.depends, protocol_of)
        what.append(f"the model of experiment {job.depends.experiment.id!r}, fold {job.depends.fold}")
    if not what:
        return None
    protocol = protocol_of(experiment.dataset)
    leaked = used & tested_subjects(protocol, experiment.dataset, job.fold)
    if not leaked:
        return None
    free = [f for f in protocol.folds if not used & tested_subjects(protocol, experiment.dataset, f)]
    return Leak(" and ".join(what), tuple(sorted(s for _, s in leaked)), free[0] if free else None)


def check_leakage(job: Job, protocol_of: Callable[[str], Protocol]) -> Leak | None:
    """Refuse ``job`` when its weights were trained on subjects it tests, unless the suite allows it.

    Parameters
    ----------
    job : Job
        A planned job (its source job planned before it).
    protocol_of : callable
        Dataset name -> the protocol stored with its prepared folder.

    Returns
    -------
    Leak or None
        The leak the suite allowed (``allow_leakage = true``), to be recorded; None when there is none.

    Raises
    ------
    AffbenchError
        One sentence naming the subjects, the fold to use and the option that allows it.
    """
    leak = find_leak(job, protocol_of)
    if leak is None:
        return None
    experiment = job.experiment
    source = experiment.published or experiment.init or experiment.evaluate
    if (source is not None and source.allow_leakage) or experiment.allow_leakage:
        return leak
    table = "published" if experiment.published else ("init" if experiment.init else "evaluate")
    where = f"[experiment.{table}]" if source is not None else "the [[experiment]]"
    shown = ", ".join(leak.subjects[:12]) + (f" and {len(leak.subjects) - 12} more" if len(leak.subjects) > 12 else "")
    instead = (f"score it on fold {leak.use_fold}, whose test subjects it never saw" if leak.use_fold is not None
               else f"no fold of {experiment.dataset} avoids them")
    if source is None and leak.use_fold is not None:
        instead = f"run this experiment on fold {leak.use_fold} only (folds = [{leak.use_fold}])"
    elif experiment.published is None and source is not None and leak.use_fold is not None:
        instead = f"start from fold {job.fold} of that experiment instead (leave fold out of {where})"
    raise AffbenchError(
        f"Experiment {experiment.id!r}, fold {job.fold}, would test {leak.weights} on {len(leak.subjects)} subjects it "
        f"was trained on ({shown}); {instead}, or set allow_leakage = true in {where} to score it "
        "anyway (the records and tables then say so)."
    )
