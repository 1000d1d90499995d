"""CAER-S (Lee et al. 2019): layout, classes and split facts (see docs/datasets.md), and ``prepare``.

Layout: ``ROOT/train/<Class>/NNNN.png`` and ``ROOT/test/<Class>/NNNN.png``; no validation folder.
Reported quirk: the anger folder is ``Angry`` in train and ``Anger`` in test; both map to Anger.

:func:`prepare` turns every image into one row: MTCNN finds the faces, one is kept (the largest or
the most confident, ``select``), and it is aligned onto the shared 5-point template
(:class:`affbench.faces.alignment.AlignmentTemplate`) and cropped to ``size`` x ``size``. The face box and the
five landmarks are stored in source-image pixels, so that a context stream (EmotiRAM's) can cut
its own crop from the source image later without detecting again. An image without a face keeps
its row with ``face_found`` false; an image that cannot be read keeps one too and is listed, with
its reason, in the manifest's failures.

The work unit is one image folder (``train/Angry``). The validation split is not made here: the
loader holds out a seeded, stratified fraction of ``train`` (``DEFAULT_VALIDATION_FRACTION``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from affbench.errors import DataLayoutError
from affbench.faces.alignment import AlignmentTemplate
from affbench.faces.detection import SCORE_MARGIN, SIZE_MARGIN, DetectorSettings, select_face, shared_detector
from affbench.pipelines.layout import broken_link, require_root
from affbench.preparation.units import RunSummary, Tick, UnitOutcome, fingerprint, run_units, runs_here
from affbench.runtime.devices import resolve_device
from affbench.scoring.protocols import GivenSplit, Protocol, TaskSpec, Validation
from affbench.shards.codec import IMAGE_CODECS, read_image_file
from affbench.shards.manifest import DatasetWriter
from affbench.shards.rows import face_crop_columns
from affbench.shards.schema import make_schema
from affbench.shards.writer import ShardWriter

DATASET = "caer-s"
CLASSES: tuple[str, ...] = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
#: Folder name -> class index; both spellings of anger are real.
FOLDER_TO_CLASS: dict[str, int] = {**{name: i for i, name in enumerate(CLASSES)}, "Angry": 0}
SPLITS: tuple[str, ...] = ("train", "test")
#: Public EmotiRAM/CAER-Net code holds out this fraction of train, with a fixed seed, for validation.
DEFAULT_VALIDATION_FRACTION = 0.125
DEFAULT_VALIDATION_SEED = 0

DEFAULT_SIZE = 96
SELECTIONS: tuple[str, ...] = ("largest", "prob")
#: Files with these suffixes (any case) are images; CAER-S itself ships PNG only.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABEL_FIELDS: tuple[pa.Field, ...] = (pa.field("expression", pa.int8()),)

NOTES = {
    "rows": "one row per image file under train/ and test/; split = train or test",
    "expression": "class index into expression_classes; the folders Angry (train) and Anger (test) are both 0",
    "subject": "null: CAER-S names no subjects (the stills come from TV shows)",
    "validation": "not made at prepare time; the loader holds out a seeded, stratified fraction of train",
    "box_landmarks": "MTCNN box (x1, y1, x2, y2) and 5 landmarks in source-image pixels, for context crops",
    "face_found": "false for images without a detected face, for unreadable images and for images MTCNN "
    "cannot process (both listed in failures); those rows have no image, box or landmarks",
    "n_faces": "faces MTCNN found in the image (null where it could not run: unreadable images, failed "
    "detections); above 1 the choice followed the select rule, so n_faces == 1 keeps unambiguous images",
    "landmark_source": "detected where a face was found, none otherwise",
}


#: The face choice of ``--select``, as the manifest records it.
SELECTION_RULES = {
    "largest": "the largest face if its box area is at least size_margin times every other's; among faces "
    "closer in size, the one whose centre is nearest the image centre",
    "prob": "the most confident face if its score beats every other's by score_margin; among faces closer in "
    "score, the largest-face rule",
}


# ----------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ImageFolder:
    """One unit of work: the images of one class folder of one split."""

    split: str
    folder: str
    label: int
    files: tuple[str, ...]
    inputs: str | None = None  # fingerprint of its images: a new, removed or replaced one redoes it

    @property
    def key(self) -> str:
        """The unit's key: ``<split>/<class folder>``."""
        return f"{self.split}/{self.folder}"

    @property
    def size(self) -> int:
        """The number of images in the folder."""
        return len(self.files)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def find_image_folders(
    root: str | os.PathLike, exclude: str | os.PathLike | None = None
) -> tuple[list[ImageFolder], list[str]]:
    """The class folders under ``root/train`` and ``root/test``, and the files that are not images.

    ``exclude`` (the output folder) is skipped where it lies inside a split folder, so that a
    folder prepared there can be resumed. Raises :class:`~affbench.errors.DataLayoutError` where
    ``root`` lacks a split folder or holds a folder that names no CAER-S class.
    """
    root = Path(root)
    excluded = Path(exclude).resolve() if exclude is not None else None
    require_root(root, "CAER-S")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise DataLayoutError(
            f"{root} has no {' or '.join(f'{s}/' for s in missing)} folder; pass the CAER-S root that "
            "holds train/<Class>/ and test/<Class>/."
        )
    by_lower = {name.lower(): index for name, index in FOLDER_TO_CLASS.items()}
    units: list[ImageFolder] = []
    ignored: list[str] = []
    for split in SPLITS:
        for entry in sorted(os.scandir(root / split), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if problem := broken_link(entry, root):
                ignored.append(f"{split}/{entry.name} ({problem})")
                continue
            if not entry.is_dir():
                ignored.append(f"{split}/{entry.name}")
                continue
            label = by_lower.get(entry.name.lower())
            if label is None and excluded is not None and _holds(Path(entry.path).resolve(), excluded):
                continue
            if label is None:
                raise DataLayoutError(
                    f"{root / split / entry.name} is not a CAER-S class folder; expected one of "
                    f"{', '.join(sorted(FOLDER_TO_CLASS))}."
                )
            names = []
            for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if problem := broken_link(item, root):
                    ignored.append(f"{split}/{entry.name}/{item.name} ({problem})")
                elif item.is_file():
                    names.append(item.name)
            files = tuple(n for n in names if _is_image(n))
            ignored += [f"{split}/{entry.name}/{n}" for n in names if not _is_image(n) and not n.startswith(".")]
            inputs = fingerprint(root, [f"{split}/{entry.name}/{n}" for n in files])
            units.append(ImageFolder(split, entry.name, label, files, inputs))
    if not any(u.files for u in units):
        raise DataLayoutError(f"{root} holds no images under train/<Class>/ or test/<Class>/.")
    return units, ignored


def _holds(folder: Path, path: Path) -> bool:
    return folder == path or folder in path.parents


def sample_ids(unit: ImageFolder) -> list[str]:
    """Stable ids ``caer-s/train/Angry/0001``; the suffix stays only where two files share a stem."""
    stems = [os.path.splitext(name)[0] for name in unit.files]
    shared = {stem for stem, count in Counter(stems).items() if count > 1}
    return [
        f"{DATASET}/{unit.key}/{name if stem in shared else stem}" for name, stem in zip(unit.files, stems)
    ]


# ----------------------------------------------------------------------------------------- work


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that decides the content of the shards (plus where MTCNN runs)."""

    size: int = DEFAULT_SIZE
    codec: str = "png"
    quality: int = 95
    select: str = "largest"
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    template: AlignmentTemplate = field(default_factory=AlignmentTemplate)
    device: str = "auto"
    rows_per_shard: int = 1000

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ValueError(f"unknown face selection {self.select!r}; use one of {SELECTIONS}")

    @classmethod
    def from_options(cls, *, size: int = DEFAULT_SIZE, codec: str = "png", quality: int = 95, device: str = "auto",
                     rows_per_shard: int = 1000, select: str = "largest", batch_size: int = 16) -> PrepareSettings:
        """The settings from ``affbench prepare caer-s``'s options."""
        return cls(size=size, codec=codec, quality=quality, select=select,
                   detector=DetectorSettings(batch_size=batch_size), device=device, rows_per_shard=rows_per_shard)

    def parameters(self) -> dict:
        """The preprocessing parameters a manifest records (and a resumed run must repeat)."""
        return {
            "size": self.size,
            "codec": self.codec,
            "quality": self.quality if self.codec != "png" else None,
            "select": {"strategy": self.select, "size_margin": SIZE_MARGIN, "score_margin": SCORE_MARGIN,
                       "rule": SELECTION_RULES[self.select]},
            "detector": self.detector.describe(),
            "alignment": self.template.describe(self.size),
            "expression_classes": list(CLASSES),
            "folder_to_class": dict(sorted(FOLDER_TO_CLASS.items())),
        }


@dataclass(frozen=True, kw_only=True)
class Settings(PrepareSettings):
    """Everything one worker needs to process a unit (picklable, so joblib can send it)."""

    root: str
    out: str


def process_folder(settings: Settings, unit: ImageFolder, tick: Tick) -> UnitOutcome:
    """Detect, select, align and crop the face of every image of one folder; write its shards."""
    root = Path(settings.root)
    detector = shared_detector(settings.detector, settings.device)
    schema = make_schema(LABEL_FIELDS)
    suffix = IMAGE_CODECS[settings.codec]
    ids = sample_ids(unit)
    # Enough images for full batches of the common size, few enough for a lively progress bar.
    chunk = max(32, 2 * settings.detector.batch_size)
    stats = {"images": 0, "faces_found": 0, "no_face": 0, "several_faces": 0, "unreadable": 0,
             "detection_failed": 0}
    failures: list[dict[str, str]] = []
    with ShardWriter(settings.out, unit.key, schema, rows_per_shard=settings.rows_per_shard) as writer:
        for start in range(0, unit.size, chunk):
            names = unit.files[start : start + chunk]
            images: list[np.ndarray | None] = []
            for name in names:
                source = f"{unit.key}/{name}"
                try:
                    images.append(read_image_file(root / source))
                except (OSError, ValueError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    failures.append({"unit": unit.key, "item": source, "reason": f"unreadable image: {reason}"})
                    images.append(None)
            detections, errors = detector.detect_each(images)
            failures.extend({"unit": unit.key, "item": f"{unit.key}/{names[i]}", "reason": f"face detection failed: {error}"}
                            for i, error in errors.items())
            for i, name in enumerate(names):
                rgb, faces = images[i], detections.get(i, [])
                face = select_face(faces, settings.select, image_shape=None if rgb is None else rgb.shape)
                row = {
                    "sample_id": ids[start + i],
                    "dataset": DATASET,
                    "subject": None,
                    "source": f"{unit.key}/{name}",
                    "frame": None,
                    "split": unit.split,
                    "expression": unit.label,
                    **face_crop_columns(rgb, face, size=settings.size, template=settings.template,
                                        codec=settings.codec, quality=settings.quality,
                                        path=ids[start + i].split("/", 1)[1] + suffix),
                    "landmark_source": "detected" if face is not None else "none",
                    "n_faces": len(faces) if i in detections else None,
                }
                writer.write(row)
                stats["images"] += 1
                stats["unreadable"] += rgb is None
                stats["detection_failed"] += rgb is not None and i not in detections
                stats["faces_found"] += face is not None
                stats["no_face"] += i in detections and face is None
                stats["several_faces"] += len(faces) > 1
            tick(len(names))
    return UnitOutcome(unit.key, writer.shards, failures=failures, stats={**stats, "device": detector.device})


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    settings: PrepareSettings | None = None,
    *,
    workers: int | str = 1,
    progress: bool = True,
    backend: str | None = None,
    scheduler: Any = None,
) -> RunSummary:
    """Prepare CAER-S under ``root`` into ``out``; resumes a folder made with the same parameters.

    Parameters
    ----------
    root : path
        The CAER-S root holding ``train/<Class>/`` and ``test/<Class>/``.
    out : path
        Output folder (``manifest.json`` + ``shards/``).
    settings : PrepareSettings, optional
        Crop size, codec, face selection (``select``: where MTCNN finds several faces, the largest
        box or the highest probability, each only by a clear margin; near-ties go to the face
        nearest the image centre, :data:`SELECTION_RULES`), detector, template, device.
    scheduler : str or distributed.Client, optional
        Run every unit as one task on this Dask cluster (``tcp://host:8786``), see
        :func:`affbench.preparation.units.run_units`; ``workers`` is then not used.

    Returns
    -------
    RunSummary
        Counts, images/s and the failures of this run; the manifest holds those of every run.

    Examples
    --------
    >>> summary = prepare("/data/CAER-S", "prepared/caer-s", workers=4)  # doctest: +SKIP
    >>> summary.ok                                                          # doctest: +SKIP
    True
    """
    chosen = settings or PrepareSettings()
    settings = Settings(
        root=str(Path(root).resolve()),
        out=str(Path(out).resolve()),
        **{f.name: getattr(chosen, f.name) for f in dataclasses.fields(PrepareSettings)},
    )
    if runs_here(backend, scheduler):  # on a cluster each worker settles "auto" itself (its unit stats say where)
        settings = dataclasses.replace(settings, device=resolve_device(settings.device))
    units, ignored = find_image_folders(root, exclude=out)
    with DatasetWriter(
        out,
        dataset=DATASET,
        parameters=settings.parameters(),
        schema=make_schema(LABEL_FIELDS),
        protocol=PROTOCOL.to_dict(),
        info={
            "root": settings.root,
            "device": settings.device,
            "images_per_folder": {u.key: u.size for u in units},
            "ignored_files": {"count": len(ignored), "examples": ignored[:20]},
            "notes": NOTES,
        },
    ) as writer:  # holds the folder: one process at a time
        process = functools.partial(process_folder, settings)
        return run_units(writer, units, process, workers=workers, progress=progress, item="images",
                         backend=backend, scheduler=scheduler, device=settings.device)

# ----------------------------------------------------------------------------------------- protocol

PROTOCOL = Protocol(
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
            n_outputs=len(CLASSES),
            label_names=tuple(name.lower() for name in CLASSES),
            metrics=("accuracy", "f1"),
            primary_metric="accuracy",
            split_column="split",
            missing_values=(-1,),
        ),
    },
    split=GivenSplit(train=SPLITS[0], test=SPLITS[1]),
    validation=Validation(
        method="stratified", fraction=DEFAULT_VALIDATION_FRACTION, seed=DEFAULT_VALIDATION_SEED
    ),
)


def summary_notes(manifest: dict) -> list[str]:
    """CAER-S's summary needs no lines beyond the run's own."""
    return []
