"""Dataset pipelines: one module per dataset with its layout, labels, quirks and protocol, plus sample data.

Installed as ``affbench.pipelines``. A pipeline knows where a dataset keeps its files and labels and
how the literature splits and scores it; the work (decoding, detection, alignment, shard writing) is
done by the ``affbench`` library. :data:`DATASETS` is the registry that ``affbench prepare``,
``affbench list datasets`` and the demo are driven from. It is plain data, so that the command
line can describe every dataset without importing torch; :func:`pipeline` imports the module.

Every pipeline module has the same surface:

* ``PROTOCOL``: its evaluation protocol (:class:`affbench.scoring.protocols.Protocol`), stored in
  each prepared folder's manifest;
* ``PrepareSettings``: everything that decides the content of its shards, with
  ``PrepareSettings.from_options(**options)`` taking the command line's option names;
* ``prepare(root, out, settings=None, *, workers=1, progress=True, backend=None, scheduler=None)``
  (``workers`` a number or ``"auto"``);
* ``summary_notes(manifest)``: dataset-specific lines for the end of a prepare run.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from affbench.errors import UnknownNameError

if TYPE_CHECKING:
    from affbench.preparation.report import PrepareReport
    from affbench.scoring.protocols import Protocol

#: Share of the training subjects (DISFA, BP4D) or Train_Set videos (Aff-Wild2) held out for model
#: selection; with DISFA's 18 training subjects per fold that is 3 subjects.
SUBJECT_VALIDATION_FRACTION = 0.15
VALIDATION_SEED = 0


@dataclass(frozen=True)
class OptionSpec:
    """One dataset-specific ``affbench prepare`` option, as data (the command line makes it a Click option).

    ``name`` is the ``PrepareSettings.from_options`` keyword; the flag is ``--`` + name with dashes.
    ``choices`` makes it a choice, ``integer`` an integer of at least 1, ``path`` a path; else text.
    """

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    integer: bool = False
    path: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag: ``--`` + the name with dashes."""
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset affbench can prepare: its name, pipeline module, and what its prepare command offers."""

    name: str  # the name on the command line and in manifests
    module: str  # the pipeline module, relative to this package
    description: str  # one line, for `affbench list datasets`
    help: str  # the `affbench prepare NAME --help` text
    item: str = "frames"  # what one row is, in the run summary
    size: int = 256  # the default crop side
    codec: str = "png"  # the default image codec
    codec_help: str = "Image codec of the stored crops (PNG is lossless)."
    uses_device: bool = True  # False where no detector runs
    options: tuple[OptionSpec, ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "disfa", "disfa", "DISFA: 27 subjects, 12 AU intensities per frame (left camera by default)",
            help="""DISFA: every left-camera frame, MTCNN-aligned, 256x256 crops, 12 AU intensities joined.

    ROOT holds Videos_LeftCamera/, Video_RightCamera/ and ActionUnit_Labels/ as distributed. Every
    frame becomes one row, joined to the AU label files by line order; a frame where no face is
    found gets a fallback crop from its neighbours in time (face_found=false, landmark_source
    interpolated or carried). Videos that cannot be read or are truncated are listed in manifest.json's
    failures and make the command exit non-zero once the other videos are done. Each video runs
    in one process with one PyTorch thread; --workers auto (the default) runs one per core.
    """,
            options=(
                OptionSpec("camera", "left", "Which camera's videos to prepare (right-camera sample ids carry "
                           "'/right/').", choices=("left", "right", "both")),
                OptionSpec("tracking", "on", "on: track the face with O-Net, every tracked frame verified by full "
                           "detections; off: the full MTCNN cascade on every frame (slower, the reference).",
                           choices=("on", "off")),
            ),
        ),
        DatasetSpec(
            "bp4d", "bp4d",
            "BP4D-Spontaneous: 41 subjects x 8 tasks, 12 AU occurrences per coded frame (+5 intensities)",
            help="""BP4D-Spontaneous: every coded frame, MTCNN-aligned (tracked per task), 256x256 crops.

    ROOT holds <subject>/<task>/<frame>.jpg and AUCoding/AU_OCC/<subject>_<task>.csv (found within
    a few folder levels), and, where the copy has them, the FERA 2015 intensity codes in
    AUCoding/AU_INT/AU06/<subject>_<task>_AU06.csv (AU6, 10, 12, 14, 17). One row per coded frame
    with the 12 protocol AUs (9 = unknown stored as -1); frames without codes are counted, not
    stored. A missing or unreadable coded image keeps its row without a face and is listed in the
    manifest's failures. One (subject, task) per process; --workers auto (the default) runs one per core.
    """,
        ),
        DatasetSpec(
            "caer-s", "caer_s", "CAER-S: ~70k TV-show stills, 7 emotion classes, train/test",
            item="images", size=96,
            help="""CAER-S: every image under train/ and test/, MTCNN-aligned, 96x96 face crops, 7 classes.

    ROOT holds train/<Class>/NNNN.png and test/<Class>/NNNN.png as distributed (the anger folder is
    Angry in train and Anger in test; both are class 0). Every image becomes one row; images
    without a face keep their row with face_found false, and unreadable images are listed in the
    manifest's failures (the command then exits with status 1). The face box and landmarks are
    kept in source pixels for context crops. The validation split is made at load time.
    """,
            options=(
                OptionSpec("select", "largest", "Which face to keep where MTCNN finds several: the largest box or "
                           "the most confident, each only by a clear margin; near-ties go to the face nearest the "
                           "image centre (n_faces records how many there were).", choices=("largest", "prob")),
                OptionSpec("batch_size", 16, "Images of one size per MTCNN call (recorded in the manifest); larger "
                           "batches pay off on a GPU.", integer=True),
            ),
        ),
        DatasetSpec(
            "affwild2", "affwild2", "Aff-Wild2 (ABAW3): aligned video frames with AU, EXPR and VA labels",
            size=112, codec="jpeg", uses_device=False,
            codec_help="Image codec; jpeg at --size 112 stores the challenge's JPEG bytes unchanged.",
            help="""Aff-Wild2 (ABAW3 release): the challenge's aligned 112x112 faces with AU, EXPR and VA labels.

    ROOT holds cropped_aligned/<video>/NNNNN.jpg and the three *_Challenge annotation folders (found
    anywhere under ROOT, or under --annotations). One row per annotated frame (00001.jpg is frame
    0), with per-task split columns split_au, split_expr and split_va. The faces are aligned
    already: no detector runs (--device is not used), and a frame without an image keeps its row
    with face_found false.
    """,
            options=(
                OptionSpec("annotations", None, "Folder holding the *_Challenge annotation folders, where they are "
                           "not under ROOT.", path=True),
            ),
        ),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``; an unknown name is an :class:`~affbench.errors.UnknownNameError`."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError("dataset", name, DATASETS) from None


def pipeline(name: str) -> ModuleType:
    """The pipeline module of dataset ``name`` (``pipeline("caer-s").prepare(...)``)."""
    return importlib.import_module(f"{__name__}.{dataset_spec(name).module}")


def protocols() -> Mapping[str, Protocol]:
    """Every dataset's protocol, by dataset name."""
    return {name: pipeline(name).PROTOCOL for name in DATASETS}


def protocol_for(dataset: str, *, validation_fraction: float | None = None,
                 validation_seed: int | None = None) -> Protocol:
    """The protocol of ``dataset`` with the validation fraction and seed a user chose.

    Examples
    --------
    >>> protocol_for("caer-s", validation_seed=5).validation.seed
    5
    """
    protocol: Protocol = pipeline(dataset).PROTOCOL
    return protocol.with_validation(fraction=validation_fraction, seed=validation_seed)


def prepare_dataset(name: str, root: str | os.PathLike, out: str | os.PathLike,
                    options: Mapping[str, Any] | None = None, *, workers: int | str = "auto", progress: bool = True,
                    scheduler: Any = None) -> PrepareReport:
    """Prepare dataset ``name`` from ``root`` into ``out`` with the command line's ``options``.

    What ``affbench prepare NAME`` and the demo run: the options (``size``, ``codec``, ``device``
    and the dataset's own, as :attr:`DatasetSpec.options` names them) become the pipeline's
    ``PrepareSettings``; ``scheduler`` (an address or a ``distributed.Client``) runs each unit on a
    Dask cluster instead of ``workers`` local processes.

    Examples
    --------
    >>> report = prepare_dataset("caer-s", "/data/CAER-S", "prepared/caer-s", {"select": "prob"})  # doctest: +SKIP
    >>> print("\\n".join(report.lines))                                                            # doctest: +SKIP
    """
    from affbench.preparation.report import prepare_report
    from affbench.runtime.dask_cluster import optional_session

    spec, module = dataset_spec(name), pipeline(name)
    settings = module.PrepareSettings.from_options(**dict(options or {}))
    with optional_session(scheduler) as client:
        summary = module.prepare(root, out, settings, workers=workers, progress=progress, scheduler=client)
    return prepare_report(summary, out, item=spec.item, notes=module.summary_notes)
