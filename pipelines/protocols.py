"""The evaluation protocols of DISFA, BP4D, CAER-S and Aff-Wild2, declared once, as data.

Each prepare pipeline stores ``PROTOCOLS[dataset].to_dict()`` in its manifest
(``DatasetWriter(protocol=...)``); the benchmark harness reads it back with
``affbench.protocols.Protocol.from_dict(manifest["protocol"])`` and never imports this package.
The facts (AU lists, subject parts, classes, split names) come from the dataset modules; nothing
is re-typed here.
"""

from __future__ import annotations

from affbench.errors import UnknownNameError
from affbench.pipelines import affwild2, bp4d, caer_s, disfa
from affbench.protocols import CrossValidation, GivenSplit, Protocol, TaskSpec, Validation

#: Share of the training subjects (DISFA) or Train_Set videos (Aff-Wild2) held out for model
#: selection; with DISFA's 18 training subjects per fold that is 3 subjects.
SUBJECT_VALIDATION_FRACTION = 0.15
VALIDATION_SEED = 0


def _au_names(aus) -> tuple[str, ...]:
    return tuple(disfa.au_column(au) for au in aus)


DISFA = Protocol(
    dataset="disfa",
    description=(
        "3-fold subject-exclusive protocol of JAA-Net / ME-GraphAU (fold 1 tests part3, fold 2 part2, "
        "fold 3 part1); validation = seeded hold-out of training subjects; left camera."
    ),
    tasks={
        "au-detection": TaskSpec(
            name="au-detection",
            kind="au-detection",
            label_columns=_au_names(disfa.DETECTION_AUS),
            output_key="au",
            n_outputs=len(disfa.DETECTION_AUS),
            label_names=_au_names(disfa.DETECTION_AUS),
            metrics=("f1", "accuracy"),
            primary_metric="f1",
            split_column=None,
            binarize_at=disfa.OCCURRENCE_THRESHOLD,
            missing_values=(-1,),
        ),
        "au-intensity": TaskSpec(
            name="au-intensity",
            kind="au-intensity",
            label_columns=_au_names(disfa.AUS),
            output_key="au",
            n_outputs=len(disfa.AUS),
            label_names=_au_names(disfa.AUS),
            metrics=("icc",),
            primary_metric="icc",
            split_column=None,
            missing_values=(-1,),
        ),
    },
    split=CrossValidation(parts=disfa.PARTS, test_parts=disfa.FOLD_TEST_PART, group_column="subject"),
    validation=Validation(
        method="group-holdout", fraction=SUBJECT_VALIDATION_FRACTION, seed=VALIDATION_SEED, group_column="subject"
    ),
)

BP4D = Protocol(
    dataset="bp4d",
    description=(
        "3-fold subject-exclusive protocol of ME-GraphAU / JAA-Net (fold 1 tests part3, fold 2 part2, "
        "fold 3 part1); 12 AUs, occurrence as coded (9 = unknown is left out per AU); FERA 2015 intensity "
        "(5 AUs, ICC) where the copy has the codes; validation = seeded hold-out of training subjects."
    ),
    tasks={
        "au-detection": TaskSpec(
            name="au-detection",
            kind="au-detection",
            label_columns=bp4d.AU_COLUMNS,
            output_key="au",
            n_outputs=len(bp4d.AUS),
            label_names=bp4d.AU_COLUMNS,
            metrics=("f1", "accuracy"),
            primary_metric="f1",
            split_column=None,
            missing_values=(bp4d.MISSING,),
        ),
        "au-intensity": TaskSpec(
            name="au-intensity",
            kind="au-intensity",
            label_columns=bp4d.INTENSITY_COLUMNS,
            output_key="au",
            n_outputs=len(bp4d.INTENSITY_AUS),
            label_names=_au_names(bp4d.INTENSITY_AUS),
            metrics=("icc",),
            primary_metric="icc",
            split_column=None,
            missing_values=(bp4d.MISSING,),
        ),
    },
    split=CrossValidation(parts=bp4d.PARTS, test_parts=bp4d.FOLD_TEST_PART, group_column="subject"),
    validation=Validation(
        method="group-holdout", fraction=SUBJECT_VALIDATION_FRACTION, seed=VALIDATION_SEED, group_column="subject"
    ),
)

CAER_S = Protocol(
    dataset="caer-s",
    description=(
        "train/test as distributed; validation = seeded, class-stratified fraction of train "
        "(12.5% by default, as the public CAER-Net code)."
    ),
    tasks={
        "expression": TaskSpec(
            name="expression",
            kind="expression",
            label_columns=("expression",),
            output_key="expression",
            n_outputs=len(caer_s.CLASSES),
            label_names=tuple(name.lower() for name in caer_s.CLASSES),
            metrics=("accuracy", "f1"),
            primary_metric="accuracy",
            split_column="split",
            missing_values=(-1,),
        ),
    },
    split=GivenSplit(train=caer_s.SPLITS[0], test=caer_s.SPLITS[1]),
    validation=Validation(
        method="stratified", fraction=caer_s.DEFAULT_VALIDATION_FRACTION, seed=caer_s.DEFAULT_VALIDATION_SEED
    ),
)

_AFFWILD2_TRAIN, _AFFWILD2_OFFICIAL_VALIDATION = affwild2.SPLITS

AFFWILD2 = Protocol(
    dataset="affwild2",
    description=(
        "ABAW3 per-task splits: the official Validation_Set plays test (what papers report); model "
        "selection uses a seeded hold-out of Train_Set videos, both halves of a two-person video together."
    ),
    tasks={
        "au-detection": TaskSpec(
            name="au-detection",
            kind="au-detection",
            label_columns=_au_names(affwild2.AUS),
            output_key="au",
            n_outputs=len(affwild2.AUS),
            label_names=_au_names(affwild2.AUS),
            metrics=("f1", "accuracy"),
            primary_metric="f1",
            split_column="split_au",
            missing_values=(affwild2.AU_MISSING,),
        ),
        "expression": TaskSpec(
            name="expression",
            kind="expression",
            label_columns=("expression",),
            output_key="expression",
            n_outputs=len(affwild2.EXPRESSIONS),
            label_names=tuple(name.lower() for name in affwild2.EXPRESSIONS),
            metrics=("f1", "accuracy"),
            primary_metric="f1",
            split_column="split_expr",
            missing_values=(affwild2.EXPR_MISSING,),
        ),
        "va": TaskSpec(
            name="va",
            kind="va",
            label_columns=("valence", "arousal"),
            output_key="va",
            n_outputs=2,
            label_names=("valence", "arousal"),
            metrics=("ccc",),
            primary_metric="ccc",
            split_column="split_va",
            # Shards store unannotated VA as null; the raw marker is accepted too.
            missing_values=(affwild2.VA_MISSING,),
        ),
    },
    split=GivenSplit(train=_AFFWILD2_TRAIN, test=_AFFWILD2_OFFICIAL_VALIDATION),
    validation=Validation(
        method="group-holdout",
        fraction=SUBJECT_VALIDATION_FRACTION,
        seed=VALIDATION_SEED,
        group_column="subject",
        merge_suffixes=affwild2.TWO_PERSON_SUFFIXES,
    ),
)

#: Dataset name (as in ``affbench.pipelines.DATASETS``) -> protocol.
PROTOCOLS: dict[str, Protocol] = {p.dataset: p for p in (DISFA, BP4D, CAER_S, AFFWILD2)}


def protocol_for(dataset: str, *, validation_fraction: float | None = None, validation_seed: int | None = None) -> Protocol:
    """The protocol of ``dataset``, with the validation fraction/seed a user chose, ready for the manifest."""
    try:
        protocol = PROTOCOLS[dataset]
    except KeyError:
        raise UnknownNameError("dataset", dataset, PROTOCOLS) from None
    return protocol.with_validation(fraction=validation_fraction, seed=validation_seed)
