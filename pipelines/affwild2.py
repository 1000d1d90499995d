"""Aff-Wild2, ABAW3 release (Kollias et al.): layout, headers and label facts (see docs/datasets.md),
and ``prepare``.

Layout::

    ROOT/cropped_aligned/<video>/00001.jpg            112x112, 1-based, 5 digits
    ROOT/AU_Detection_Challenge/{Train_Set,Validation_Set}/<video>.txt
    ROOT/EXPR_Classification_Challenge/{Train_Set,Validation_Set}/<video>.txt
    ROOT/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt

An annotation file has one header line, then line N (1-based) labels image N. Frames without a
detected face have no image. Two-person videos carry ``_left``/``_right`` on the annotation name.

:func:`prepare` finds the three challenge folders anywhere under ROOT (or under ``annotations``)
and ``cropped_aligned`` (also where the archive nested it), checks every annotation file's header,
column count and values, and writes one row per (video, frame) that has a line in any task's file.
The challenge's faces are aligned already, so no detector runs: ``face_found`` says whether the
frame's image exists and can be read, and ``det_score``, ``box`` and ``landmarks`` stay null.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from affbench.errors import DataLayoutError
from affbench.pipelines import SUBJECT_VALIDATION_FRACTION, VALIDATION_SEED
from affbench.pipelines.layout import SEARCH_DEPTH, broken_link, require_root, search_folders
from affbench.preparation.units import RunSummary, Tick, UnitOutcome, fingerprint, run_units
from affbench.scoring.protocols import GivenSplit, Protocol, TaskSpec, Validation
from affbench.shards.codec import IMAGE_CODECS, decode_source, encode_image
from affbench.shards.manifest import DatasetWriter
from affbench.shards.schema import make_schema
from affbench.shards.writer import ShardWriter

DATASET = "affwild2"
IMAGE_DIR = "cropped_aligned"
IMAGE_SIZE = 112
SPLITS: tuple[str, ...] = ("Train_Set", "Validation_Set")

AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)
EXPRESSIONS: tuple[str, ...] = (
    "Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other",
)

#: task -> (challenge folder, exact header line)
CHALLENGES: dict[str, tuple[str, str]] = {
    "au": ("AU_Detection_Challenge", ",".join(f"AU{a}" for a in AUS)),
    "expr": ("EXPR_Classification_Challenge", ",".join(EXPRESSIONS)),
    "va": ("VA_Estimation_Challenge", "valence,arousal"),
}
#: Values per line: the EXPR header names 8 classes, but each line holds one class index.
VALUES_PER_LINE: dict[str, int] = {"au": len(AUS), "expr": 1, "va": 2}
AU_MISSING = -1
EXPR_MISSING = -1
VA_MISSING = -5.0
TWO_PERSON_SUFFIXES = ("_left", "_right")

#: Folders that hold images or videos by the thousand; searching inside them finds nothing.
_NOT_SEARCHED = {IMAGE_DIR, "cropped", "videos", "batch1", "batch2", *SPLITS}

AU_COLUMNS: tuple[str, ...] = tuple(f"au{a}" for a in AUS)
SPLIT_COLUMNS: dict[str, str] = {"au": "split_au", "expr": "split_expr", "va": "split_va"}
LABEL_FIELDS: tuple[pa.Field, ...] = (
    *(pa.field(c, pa.int8()) for c in AU_COLUMNS),
    pa.field("expression", pa.int8()),
    pa.field("valence", pa.float32()),
    pa.field("arousal", pa.float32()),
    *(pa.field(c, pa.string()) for c in SPLIT_COLUMNS.values()),
)

NOTES = {
    "rows": "one row per (video, frame) that has a line in any challenge's annotation file, lines that "
    "say 'not annotated' (-1 / -5) included; images without any annotation line get no row",
    "frame": "0-based: line N after the header and image N (00001.jpg is N = 1) are frame N - 1",
    "subject": "the annotation name; the two people of a _left/_right video are two subjects, each "
    "with the images of its own cropped_aligned folder",
    "labels": "au* 0/1 and expression 0-7 (expression_classes), -1 where the task's file says -1 or "
    "has no line for the frame; valence/arousal null where the file says -5 or has no line",
    "splits": "split is null; split_au / split_expr / split_va hold the challenge's Train_Set or "
    "Validation_Set where that task's file has a line for the frame, else null",
    "face_found": "true where the frame's image exists and can be read; the challenge's images are "
    "aligned already, so no detector runs and det_score, box and landmarks are null",
    "image": "with codec jpeg at the challenge's own size the original JPEG bytes are stored "
    "unchanged; otherwise the image is decoded, resized (INTER_AREA to shrink, INTER_CUBIC to "
    "enlarge) and encoded with the codec",
}


def image_name(frame: int) -> str:
    """Image file for a 0-based frame (frame 0 -> 00001.jpg)."""
    return f"{frame + 1:05d}.jpg"


# ----------------------------------------------------------------------------------------- layout


class AnnotationError(DataLayoutError):
    """An annotation file's header, column count or values are not those of the ABAW3 release."""


@dataclass(frozen=True)
class Layout:
    """Where one Aff-Wild2 copy keeps its images and its three challenge folders."""

    root: Path
    images: Path
    challenges: dict[str, Path]  # task -> challenge folder


def _search(top: Path, names: Iterable[str], depth: int = SEARCH_DEPTH) -> dict[str, list[Path]]:
    """The shallowest folders called ``names`` under ``top`` (see :func:`~affbench.pipelines.layout.search_folders`)."""
    return search_folders(top, names, depth=depth, skip=_NOT_SEARCHED)


def _one(name: str, hits: list[Path]) -> Path:
    if len(hits) > 1:
        raise DataLayoutError(
            f"Found {len(hits)} {name} folders ({hits[0]} and {hits[1]}); keep one, or point --annotations "
            "at the folder that holds the right one."
        )
    return hits[0]


def find_layout(root: str | os.PathLike, annotations: str | os.PathLike | None = None) -> Layout:
    """Locate ``cropped_aligned`` under ``root`` and the challenge folders under ``annotations``
    (default: ``root``); raises :class:`~affbench.errors.DataLayoutError` with what is missing."""
    root = Path(root)
    require_root(root, "Aff-Wild2")
    where = Path(annotations) if annotations is not None else root
    if not where.is_dir():
        raise DataLayoutError(f"The annotations folder {where} is not a folder.")
    challenge_names = [c for c, _ in CHALLENGES.values()]
    hits = _search(where, challenge_names)
    missing = [c for c in challenge_names if c not in hits]
    if missing:
        hint = "" if annotations is not None else "; pass --annotations DIR if they live elsewhere"
        raise DataLayoutError(
            f"Could not find {', '.join(missing)} within {SEARCH_DEPTH} folder levels under {where}{hint}."
        )
    challenges = {task: _one(c, hits[c]) for task, (c, _) in CHALLENGES.items()}

    image_hits = {IMAGE_DIR: [root]} if root.name == IMAGE_DIR else _search(root, [IMAGE_DIR])
    if IMAGE_DIR not in image_hits:
        raise DataLayoutError(f"Could not find the {IMAGE_DIR} image folder within {SEARCH_DEPTH} levels under {root}.")
    images = _one(IMAGE_DIR, image_hits[IMAGE_DIR])
    while (images / IMAGE_DIR).is_dir():  # archives often unpack to cropped_aligned/cropped_aligned/
        images = images / IMAGE_DIR
    return Layout(root=root, images=images, challenges=challenges)


# ----------------------------------------------------------------------------------------- labels


def parse_annotation(text: str, task: str, name: str) -> np.ndarray:
    """Check and parse one annotation file's text; ``name`` is used in error messages.

    Returns an (n, k) array: int8 for ``au`` (k = 12) and ``expr`` (k = 1), float32 for ``va``
    (k = 2), with the file's own missing-value markers (-1, -5) kept.

    Examples
    --------
    >>> parse_annotation("valence,arousal\\n0.5,-0.25\\n-5,-5\\n", "va", "v.txt").tolist()
    [[0.5, -0.25], [-5.0, -5.0]]
    """
    challenge, header = CHALLENGES[task]
    width = VALUES_PER_LINE[task]
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise AnnotationError(f"{name} is empty; a {challenge} file starts with the header {header!r}.")
    got = ",".join(part.strip() for part in lines[0].split(","))
    if got != header:
        raise AnnotationError(f"{name} has the header {lines[0]!r}; a {challenge} file starts with {header!r}.")
    body = lines[1:]
    for number, line in enumerate(body, start=2):
        if line.count(",") != width - 1:
            count = len(line.split(",")) if line.strip() else 0
            raise AnnotationError(
                f"{name} line {number} has {count} value(s); every {challenge} line has {width}."
            )
    if not body:
        return np.empty((0, width), np.float32 if task == "va" else np.int8)
    try:
        values = np.asarray(",".join(body).split(","), dtype=np.float64).reshape(-1, width)
    except ValueError:
        number, line = next((n, text) for n, text in enumerate(body, start=2) if not _numbers(text))
        raise AnnotationError(f"{name} line {number} holds {line!r}, which is not numbers.") from None
    if task == "va":
        ok = (values == VA_MISSING) | ((values >= -1.0) & (values <= 1.0))
        rule = "values in [-1, 1] or -5"
    else:
        allowed = np.arange(-1, 2 if task == "au" else len(EXPRESSIONS))
        ok = np.isin(values, allowed)
        rule = "0 or 1 (-1 not annotated)" if task == "au" else f"0-{len(EXPRESSIONS) - 1} (-1 not annotated)"
    bad = np.flatnonzero(~ok.all(axis=1))
    if bad.size:
        raise AnnotationError(f"{name} line {bad[0] + 2} holds {body[bad[0]]!r}; {challenge} lines hold {rule}.")
    return values.astype(np.float32 if task == "va" else np.int8)


def _numbers(line: str) -> bool:
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TaskLabels:
    """One task's annotation of one video."""

    split: str
    file: str  # relative to the challenge's parent folder, for messages
    values: np.ndarray


@dataclass(frozen=True)
class Video:
    """One unit of work: one annotation name (a video, or one person of a two-person video)."""

    name: str
    tasks: Mapping[str, TaskLabels] = field(default_factory=dict)
    inputs: str | None = None  # fingerprint of its images (its labels are in annotations_sha256)

    @property
    def key(self) -> str:
        """The unit's key: the video's name."""
        return self.name

    @property
    def size(self) -> int:
        """Frames that any task has a line for."""
        return max((len(t.values) for t in self.tasks.values()), default=0)


def _annotation_files(folder: Path, root: Path) -> list[Path]:
    """The ``*.txt`` regular files of ``folder``: a FIFO or device of that name would block or
    never end when read, a folder is not an annotation, and a link out of ``root`` is not read."""
    return sorted(Path(e.path) for e in os.scandir(folder)
                  if e.name.endswith(".txt") and not broken_link(e, root) and e.is_file())


def read_annotations(layout: Layout) -> tuple[list[Video], str]:
    """Every video any challenge annotates, with its checked labels, and one hash of all files."""
    per_video: dict[str, dict[str, TaskLabels]] = {}
    digest = hashlib.sha256()
    for task, folder in layout.challenges.items():
        split_dirs = [s for s in SPLITS if (folder / s).is_dir()]
        if not split_dirs:
            raise DataLayoutError(f"{folder} has neither {SPLITS[0]}/ nor {SPLITS[1]}/.")
        for split in split_dirs:
            for path in _annotation_files(folder / split, layout.root):
                data = path.read_bytes()
                relative = f"{folder.name}/{split}/{path.name}"
                digest.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
                try:
                    text = data.decode("utf-8-sig")
                except UnicodeDecodeError:
                    raise AnnotationError(f"{path} is not a UTF-8 text file.") from None
                values = parse_annotation(text, task, str(path))
                video = path.stem
                earlier = per_video.setdefault(video, {}).get(task)
                if earlier is not None:
                    raise AnnotationError(
                        f"{video} is annotated twice for {folder.name} ({earlier.file} and {relative})."
                    )
                per_video[video][task] = TaskLabels(split, relative, values)
    if not per_video:
        raise DataLayoutError(f"No annotation files (*.txt) in the challenge folders under {layout.root}.")
    return [Video(name, tasks) for name, tasks in sorted(per_video.items())], digest.hexdigest()


# ----------------------------------------------------------------------------------------- work


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that decides the content of the shards, and where the annotations are."""

    annotations: str | None = None  # a folder holding the *_Challenge folders, where they are not under ROOT
    size: int = IMAGE_SIZE
    codec: str = "jpeg"
    quality: int = 95
    rows_per_shard: int = 1000

    def __post_init__(self) -> None:
        if self.codec not in IMAGE_CODECS:
            raise ValueError(f"unknown image codec {self.codec!r}; choose one of {sorted(IMAGE_CODECS)}")

    @classmethod
    def from_options(cls, *, size: int = IMAGE_SIZE, codec: str = "jpeg", quality: int = 95,
                     rows_per_shard: int = 1000, annotations: str | os.PathLike | None = None,
                     device: str | None = None) -> PrepareSettings:
        """The settings from ``affbench prepare affwild2``'s options (``device`` is not used: no detector runs)."""
        return cls(annotations=None if annotations is None else os.fspath(annotations), size=size, codec=codec,
                   quality=quality, rows_per_shard=rows_per_shard)


@dataclass(frozen=True)
class Settings:
    """Everything one worker needs to process a video (picklable, so joblib can send it)."""

    root: str
    images: str
    out: str
    size: int = IMAGE_SIZE
    codec: str = "jpeg"
    quality: int = 95
    rows_per_shard: int = 1000

    def parameters(self, annotations_sha256: str) -> dict:
        """The preprocessing parameters a manifest records (and a resumed run must repeat)."""
        return {
            "size": self.size,
            "codec": self.codec,
            "quality": self.quality if self.codec != "png" else None,
            "keep_original_jpeg": self.codec == "jpeg" and self.size == IMAGE_SIZE,
            "resize_interpolation": {"shrink": "INTER_AREA", "enlarge": "INTER_CUBIC"},
            "aus": list(AUS),
            "expression_classes": list(EXPRESSIONS),
            "markers": {"au": AU_MISSING, "expression": EXPR_MISSING, "va": VA_MISSING},
            "annotations_sha256": annotations_sha256,
        }


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _frame_labels(video: Video) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, list[str | None]]]:
    """Per-frame AU (n, 12), expression (n,), VA (n, 2; NaN = none) and split columns of a video."""
    n = video.size
    au = np.full((n, len(AUS)), AU_MISSING, np.int8)
    expr = np.full(n, EXPR_MISSING, np.int8)
    va = np.full((n, 2), np.nan, np.float32)
    splits: dict[str, list[str | None]] = {task: [None] * n for task in CHALLENGES}
    for task, labels in video.tasks.items():
        m = len(labels.values)
        if task == "au":
            au[:m] = labels.values
        elif task == "expr":
            expr[:m] = labels.values[:, 0]
        else:
            va[:m] = np.where(labels.values == VA_MISSING, np.nan, labels.values)
        splits[task][:m] = [labels.split] * m
    return au, expr, va, splits


def _image_files(video: Video) -> list[str]:
    """The images a video's rows are made from, relative to ``cropped_aligned``."""
    return [f"{video.name}/{image_name(frame)}" for frame in range(video.size)]


def _stored_image(data: bytes, settings: Settings) -> tuple[bytes, bool]:
    """The bytes to store for one source image and whether they were re-encoded."""
    rgb = decode_source(data)  # ValueError where it cannot be decoded or is above the pixel limit
    same_size = rgb.shape[:2] == (settings.size, settings.size)
    if settings.codec == "jpeg" and same_size and data[:3] == b"\xff\xd8\xff":
        return data, False
    if not same_size:
        shrink = max(rgb.shape[:2]) > settings.size
        rgb = cv2.resize(rgb, (settings.size, settings.size),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return encode_image(rgb, settings.codec, quality=settings.quality), True


def process_video(settings: Settings, unit: Video, tick: Tick) -> UnitOutcome:
    """Join one video's labels with its images and write its shards."""
    root, images = Path(settings.root), Path(settings.images)
    folder = images / unit.name
    folder_rel = _relative(folder, root) if folder.name == unit.name else f"{_relative(images, root)}/{unit.name}"
    # An annotation named "..txt" names the video "."; no folder below cropped_aligned can be it.
    if unit.name in (".", "..") or not folder.is_dir():
        reason = f"no image folder {folder_rel} for the annotated video {unit.name}"
        return UnitOutcome(unit.key, failures=[{"unit": unit.key, "item": folder_rel, "reason": reason}], failed=True)
    present = {e.name for e in os.scandir(folder)
               if not e.name.startswith(".") and not broken_link(e, images) and e.is_file()}
    names = [image_name(frame) for frame in range(unit.size)]
    if present and names and not present & set(names):
        reason = f"none of the {len(present)} files in {folder_rel} is named like {image_name(0)}"
        return UnitOutcome(unit.key, failures=[{"unit": unit.key, "item": folder_rel, "reason": reason}], failed=True)

    au, expr, va, splits = _frame_labels(unit)
    suffix = IMAGE_CODECS[settings.codec]
    stats = {"frames": 0, "images_found": 0, "images_missing": 0, "images_reencoded": 0, "unreadable": 0,
             "frames_unlabelled": 0, "images_unannotated": len({n for n in present if n.endswith(".jpg")} - set(names))}
    failures: list[dict[str, str]] = []
    with ShardWriter(settings.out, unit.key, make_schema(LABEL_FIELDS), rows_per_shard=settings.rows_per_shard) as writer:
        for frame, name in enumerate(names):
            source = f"{folder_rel}/{name}"
            row: dict[str, Any] = {
                "sample_id": f"{DATASET}/{unit.name}/{frame:06d}",
                "dataset": DATASET,
                "subject": unit.name,
                "source": source,
                "frame": frame,
                "split": None,
                "face_found": False,
                **{column: int(au[frame, j]) for j, column in enumerate(AU_COLUMNS)},
                "expression": int(expr[frame]),
                "valence": None if np.isnan(va[frame, 0]) else float(va[frame, 0]),
                "arousal": None if np.isnan(va[frame, 1]) else float(va[frame, 1]),
                **{SPLIT_COLUMNS[task]: splits[task][frame] for task in CHALLENGES},
            }
            if name in present:
                try:
                    data, reencoded = _stored_image((folder / name).read_bytes(), settings)
                except (OSError, ValueError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    failures.append({"unit": unit.key, "item": source, "reason": f"unreadable image: {reason}"})
                    stats["unreadable"] += 1
                else:
                    stored_name = name if not reencoded else os.path.splitext(name)[0] + suffix
                    row |= {
                        "image": {"bytes": data, "path": f"{unit.name}/{stored_name}"},
                        "width": settings.size,
                        "height": settings.size,
                        "face_found": True,
                    }
                    stats["images_found"] += 1
                    stats["images_reencoded"] += reencoded
            else:
                stats["images_missing"] += 1
            stats["frames"] += 1
            stats["frames_unlabelled"] += bool(
                (au[frame] == AU_MISSING).all() and expr[frame] == EXPR_MISSING and np.isnan(va[frame]).all()
            )
            writer.write(row)
            if frame % 256 == 255:
                tick(256)
        tick(unit.size % 256)
    return UnitOutcome(unit.key, writer.shards, failures=failures, stats=stats)


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
    """Prepare the ABAW3 release of Aff-Wild2 under ``root`` into ``out``; resumes where it stopped.

    Parameters
    ----------
    root : path
        Holds ``cropped_aligned/`` (searched for if nested) and, unless ``annotations`` is given,
        the three ``*_Challenge`` folders (searched for up to ``SEARCH_DEPTH`` levels down).
    settings : PrepareSettings, optional
        ``annotations``: a folder holding the challenge folders, where they are not under ``root``.
        ``size``, ``codec``, ``quality``: the stored image; with ``codec="jpeg"`` at the
        challenge's 112 the original JPEG bytes are kept unchanged, otherwise images are resized
        to ``size`` and encoded with ``codec``.
    scheduler : str or distributed.Client, optional
        Run every unit as one task on this Dask cluster (``tcp://host:8786``), see
        :func:`affbench.preparation.units.run_units`; ``workers`` is then not used.

    Returns
    -------
    RunSummary
        Counts, frames/s and the failures of this run; the manifest holds those of every run.

    Examples
    --------
    >>> summary = prepare("/data/ABAW3", "prepared/affwild2", workers=8)  # doctest: +SKIP
    """
    chosen = settings or PrepareSettings()
    layout = find_layout(root, chosen.annotations)
    videos, annotations_sha256 = read_annotations(layout)
    resolved = Settings(
        root=str(layout.root.resolve()),
        images=str(layout.images.resolve()),
        out=str(Path(out).resolve()),
        size=chosen.size,
        codec=chosen.codec,
        quality=chosen.quality,
        rows_per_shard=chosen.rows_per_shard,
    )
    info = {
        "root": resolved.root,
        "images": resolved.images,
        "challenges": {task: str(path.resolve()) for task, path in layout.challenges.items()},
        "videos": {
            task: {split: sum(1 for v in videos if task in v.tasks and v.tasks[task].split == split) for split in SPLITS}
            for task in CHALLENGES
        },
        "notes": NOTES,
    }
    with DatasetWriter(
        out,
        dataset=DATASET,
        parameters=resolved.parameters(annotations_sha256),
        schema=make_schema(LABEL_FIELDS),
        protocol=PROTOCOL.to_dict(),
        info=info,
    ) as writer:  # holds the folder: one process at a time
        # What each video is made from, so that a replaced, added or removed image gets it redone.
        videos = [dataclasses.replace(v, inputs=fingerprint(layout.images, _image_files(v))) for v in videos]
        process = functools.partial(process_video, resolved)
        return run_units(writer, videos, process, workers=workers, progress=progress, item="frames",
                         backend=backend, scheduler=scheduler)

# ----------------------------------------------------------------------------------------- protocol

_AFFWILD2_TRAIN, _AFFWILD2_OFFICIAL_VALIDATION = SPLITS

PROTOCOL = Protocol(
    dataset="affwild2",
    description=(
        "ABAW3 per-task splits: the official Validation_Set plays test (what papers report); model "
        "selection uses a seeded hold-out of Train_Set videos, both halves of a two-person video together."
    ),
    tasks={
        "au-detection": TaskSpec(
            name="au-detection",
            kind="au-detection",
            label_columns=AU_COLUMNS,
            output_key="au",
            n_outputs=len(AUS),
            label_names=AU_COLUMNS,
            metrics=("f1", "accuracy"),
            primary_metric="f1",
            split_column="split_au",
            missing_values=(AU_MISSING,),
        ),
        "expression": TaskSpec(
            name="expression",
            kind="expression",
            label_columns=("expression",),
            output_key="expression",
            n_outputs=len(EXPRESSIONS),
            label_names=tuple(name.lower() for name in EXPRESSIONS),
            metrics=("f1", "accuracy"),
            primary_metric="f1",
            split_column="split_expr",
            missing_values=(EXPR_MISSING,),
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
            missing_values=(VA_MISSING,),
        ),
    },
    split=GivenSplit(train=_AFFWILD2_TRAIN, test=_AFFWILD2_OFFICIAL_VALIDATION),
    validation=Validation(
        method="group-holdout",
        fraction=SUBJECT_VALIDATION_FRACTION,
        seed=VALIDATION_SEED,
        group_column="subject",
        merge_suffixes=TWO_PERSON_SUFFIXES,
    ),
)


def summary_notes(manifest: dict) -> list[str]:
    """Aff-Wild2's summary needs no lines beyond the run's own."""
    return []
