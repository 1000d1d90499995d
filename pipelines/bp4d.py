"""BP4D-Spontaneous (Zhang et al. 2014): layout, label and protocol facts (see docs/datasets.md),
and ``prepare``.

Layout (as ME-GraphAU's and JAA-Net's data tools read it)::

    ROOT/.../F001/T1/2440.jpg                      frames named by frame number, per subject and task
    ROOT/.../AUCoding/AU_OCC/F001_T1.csv           occurrence codes: a header row of AU numbers after
                                                   the frame column, one row per coded frame
    ROOT/.../AUCoding/AU_INT/AU06/F001_T1_AU06.csv FERA 2015 intensity codes, "frame,intensity"
                                                   (optional; reported layout, AU6, 10, 12, 14, 17)

The frame folders and ``AU_OCC`` are found anywhere within a few folder levels under ROOT, as for
Aff-Wild2. A unit is one (subject, task): its coded frames, tracked in frame order through the
same MTCNN tracking as a DISFA video (:mod:`affbench.preparation.sequences`). Only coded frames become rows;
frames that have an image but no code are counted (``uncoded_frames``) and not stored. Codes are
joined by frame number (the number in the CSV's first column and in the image's file name); 9
(unknown) is stored as -1, and so is an intensity the intensity files do not give.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from affbench.errors import DataLayoutError
from affbench.faces.detection import shared_detector
from affbench.faces.tracking import FaceTracker
from affbench.pipelines import SUBJECT_VALIDATION_FRACTION, VALIDATION_SEED
from affbench.pipelines.disfa import SequenceSettings
from affbench.pipelines.layout import SEARCH_DEPTH, broken_link, require_inside, require_root, search_folders
from affbench.preparation.sequences import write_tracked_sequence
from affbench.preparation.units import RunSummary, Tick, UnitOutcome, fingerprint, run_units, runs_here
from affbench.runtime.devices import resolve_device
from affbench.scoring.protocols import CrossValidation, Protocol, TaskSpec, Validation
from affbench.shards.codec import read_image_file
from affbench.shards.manifest import DatasetWriter
from affbench.shards.schema import make_schema
from affbench.shards.writer import ShardWriter

DATASET = "bp4d"
SUBJECTS: tuple[str, ...] = (*(f"F{n:03d}" for n in range(1, 24)), *(f"M{n:03d}" for n in range(1, 19)))
TASKS: tuple[str, ...] = tuple(f"T{n}" for n in range(1, 9))
#: The 12 AUs of the standard detection protocol, stored as occurrence columns.
AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
#: The 5 AUs with FERA 2015 intensity codes.
INTENSITY_AUS: tuple[int, ...] = (6, 10, 12, 14, 17)
UNKNOWN = 9  # the code for "could not be coded"
MISSING = -1
MAX_INTENSITY = 5

#: The 3-fold subject-exclusive split of ME-GraphAU (tool/BP4D_image_label_process.py) and JAA-Net;
#: fold k tests FOLD_TEST_PART[k] and trains on the other two parts.
PARTS: dict[str, tuple[str, ...]] = {
    "part1": ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016", "M014",
              "F023", "M008"),
    "part2": ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020", "F011",
              "M013", "M005"),
    "part3": ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017", "M015",
              "F014"),
}
FOLD_TEST_PART: dict[int, str] = {1: "part3", 2: "part2", 3: "part1"}

CODES_DIR = "AUCoding"
OCCURRENCE_DIR = "AU_OCC"
INTENSITY_DIR = "AU_INT"
AU_COLUMNS: tuple[str, ...] = tuple(f"au{au}" for au in AUS)
INTENSITY_COLUMNS: tuple[str, ...] = tuple(f"au{au}_intensity" for au in INTENSITY_AUS)
LABEL_FIELDS: tuple[pa.Field, ...] = (
    pa.field("task", pa.string()),
    *(pa.field(c, pa.int8()) for c in AU_COLUMNS),
    *(pa.field(c, pa.int8()) for c in INTENSITY_COLUMNS),
)
_LABEL_NAME = re.compile(r"^([FM]\d{3})_(T\d+)\.csv$")

NOTES = {
    "rows": "one row per coded frame (a row of its task's AU_OCC file); frames with an image but no "
    "code are not rows (units' stats: uncoded_frames); a coded frame without a readable image keeps "
    "its row with face_found false and is listed in failures",
    "frame": "the frame number of the AU_OCC file's first column and of the image's file name",
    "labels": "au* occurrence 0/1, -1 where the code is 9 (unknown); au*_intensity 0-5, -1 where the "
    "intensity code is 9 or there is none for the frame",
    "sample_id": "bp4d/<subject>/<task>/<frame>",
}


def intensity_path(au: int, subject: str, task: str) -> str:
    """An intensity file relative to the ``AU_INT`` folder: ``AU06/F001_T1_AU06.csv``."""
    return f"AU{au:02d}/{subject}_{task}_AU{au:02d}.csv"


def sample_id(subject: str, task: str, frame: int) -> str:
    """The ``sample_id`` of a frame's row: ``bp4d/<subject>/<task>/<frame>``."""
    return f"{DATASET}/{subject}/{task}/{frame}"


# ----------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Where one BP4D copy keeps its frames and codes."""

    root: Path
    images: Path  # holds <subject>/<task>/<frame>.jpg
    occurrence: Path  # AU_OCC
    intensity: Path | None  # AU_INT, where the copy has the FERA 2015 intensity codes


def find_layout(root: str | os.PathLike) -> Layout:
    """Locate the frame folders and the codes under ``root``; one :class:`DataLayoutError`
    sentence says what is missing where the layout does not fit."""
    root = Path(root)
    require_root(root, "BP4D")
    hits = search_folders(root, [OCCURRENCE_DIR], skip=SUBJECTS)
    if OCCURRENCE_DIR not in hits:
        raise DataLayoutError(
            f"Could not find the occurrence codes ({CODES_DIR}/{OCCURRENCE_DIR}/<subject>_<task>.csv) within "
            f"{SEARCH_DEPTH} folder levels under {root}."
        )
    if len(hits[OCCURRENCE_DIR]) > 1:
        first, second = hits[OCCURRENCE_DIR][:2]
        raise DataLayoutError(f"Found two {OCCURRENCE_DIR} folders ({first} and {second}); keep one.")
    occurrence = hits[OCCURRENCE_DIR][0]
    intensity = occurrence.parent / INTENSITY_DIR
    images = _find_images(root)
    return Layout(root=root, images=images, occurrence=occurrence,
                  intensity=intensity if intensity.is_dir() else None)


def _find_images(root: Path) -> Path:
    if any((root / s).is_dir() for s in SUBJECTS):
        return root
    hits = search_folders(root, SUBJECTS, skip=(CODES_DIR, OCCURRENCE_DIR, INTENSITY_DIR), stop_at_first=True)
    parents = sorted({p.parent for found in hits.values() for p in found})
    if not parents:
        raise DataLayoutError(
            f"Could not find the frame folders (<subject>/<task>/<frame>.jpg with subjects F001-F023 and "
            f"M001-M018) within {SEARCH_DEPTH} folder levels under {root}."
        )
    if len(parents) > 1:
        raise DataLayoutError(
            f"Found subject folders in both {parents[0]} and {parents[1]}; pass the folder that holds the "
            "frames as ROOT, or keep one copy."
        )
    return parents[0]


# ----------------------------------------------------------------------------------------- labels


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataLayoutError(f"The code file {path} is missing.") from None
    except UnicodeDecodeError as exc:
        raise DataLayoutError(f"{path} is not a UTF-8 text file (byte {exc.start} cannot be decoded).") from None


def _integer(cell: str) -> int:
    value = float(cell)  # "2440.0" and " 1" are fine; "inf", "nan" and "x" fail below
    if value != int(value):
        raise ValueError
    return int(value)


def read_occurrence(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Frame numbers (int64, in file order) and the (n, 12) int8 occurrence codes of ``AUS``
    (-1 where the file says 9) of one ``AU_OCC`` file, checked: the header names every AU of
    ``AUS``, every row has the header's width, a frame number once, and codes 0, 1 or 9."""
    path = Path(path)
    rows = [r for r in csv.reader(io.StringIO(_text(path))) if any(c.strip() for c in r)]
    if not rows:
        raise DataLayoutError(f"{path} is empty; an {OCCURRENCE_DIR} file starts with a header row of AU numbers.")
    header = [c.strip().upper().removeprefix("AU") for c in rows[0]]
    try:
        numbers = [int(c) for c in header[1:]]
    except ValueError:
        raise DataLayoutError(
            f"{path} has the header {','.join(rows[0])!r}, not the frame column followed by AU numbers."
        ) from None
    absent = [au for au in AUS if au not in numbers]
    if absent:
        raise DataLayoutError(f"{path} has no column for AU{absent[0]}; its header lists AUs {numbers}.")
    columns = [1 + numbers.index(au) for au in AUS]
    frames = np.empty(len(rows) - 1, np.int64)
    codes = np.empty((len(rows) - 1, len(AUS)), np.int8)
    seen: dict[int, int] = {}
    for i, row in enumerate(rows[1:]):
        line = i + 2
        if len(row) != len(header):
            raise DataLayoutError(f"{path} line {line} has {len(row)} values; its header has {len(header)}.")
        try:
            frame = _integer(row[0])
            values = [_integer(row[c]) for c in columns]
        except ValueError:
            raise DataLayoutError(f"{path} line {line} holds {','.join(row)!r}, which is not whole numbers.") from None
        bad = next((au for au, v in zip(AUS, values) if v not in (0, 1, UNKNOWN)), None)
        if bad is not None:
            raise DataLayoutError(
                f"{path} line {line} gives AU{bad} the code {values[AUS.index(bad)]}; occurrence codes are 0, 1 "
                f"or {UNKNOWN} (unknown)."
            )
        if frame in seen:
            raise DataLayoutError(f"{path} codes frame {frame} twice (lines {seen[frame]} and {line}).")
        seen[frame] = line
        frames[i] = frame
        codes[i] = [MISSING if v == UNKNOWN else v for v in values]
    return frames, codes


def read_intensity(path: str | os.PathLike) -> dict[int, int]:
    """Frame number -> intensity 0-5 (-1 where the code is 9) of one FERA 2015 intensity file
    (``frame,intensity`` lines; a header line is skipped)."""
    path = Path(path)
    codes: dict[int, int] = {}
    for line, row in enumerate(csv.reader(io.StringIO(_text(path))), start=1):
        if not any(c.strip() for c in row):
            continue
        try:
            if len(row) != 2:
                raise ValueError
            frame, value = _integer(row[0]), _integer(row[1])
        except ValueError:
            if line == 1:
                continue  # a header
            raise DataLayoutError(f"{path} line {line} is {','.join(row)!r}, not 'frame,intensity'.") from None
        if not (0 <= value <= MAX_INTENSITY or value == UNKNOWN):
            raise DataLayoutError(
                f"{path} line {line} gives the intensity {value}; codes are 0-{MAX_INTENSITY} or {UNKNOWN} (unknown)."
            )
        if frame in codes:
            raise DataLayoutError(f"{path} codes frame {frame} twice.")
        codes[frame] = MISSING if value == UNKNOWN else value
    return codes


# ----------------------------------------------------------------------------------------- units


@dataclass(frozen=True)
class TaskSequence:
    """One unit of work: the coded frames of one subject's task."""

    key: str  # "F001/T1"
    size: int  # coded frames, for the progress bar
    subject: str
    task: str
    root: str  # the dataset root; every path below is relative to it
    folder: str  # the task's frame folder
    frames: tuple[tuple[int, str], ...]  # (frame number, file name) of every numbered JPEG, sorted
    occurrence: str  # the AU_OCC file
    intensity: tuple[str | None, ...]  # one file per INTENSITY_AUS (None where the copy has none)
    inputs: str | None = None  # fingerprint of its images (size, time) and code files (content)


def _numbered_jpegs(folder: Path, root: Path) -> tuple[tuple[int, str], ...]:
    by_number: dict[int, str] = {}
    for entry in os.scandir(folder):
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() not in (".jpg", ".jpeg") or not stem.isdigit() or broken_link(entry, root) \
                or not entry.is_file():
            continue
        if int(stem) in by_number:
            raise DataLayoutError(
                f"{folder} holds {by_number[int(stem)]} and {entry.name}, two images of frame {int(stem)}; keep one."
            )
        by_number[int(stem)] = entry.name
    return tuple(sorted(by_number.items()))


def find_units(layout: Layout) -> list[TaskSequence]:
    """One unit per (subject, task) with occurrence codes; a code file without its frame folder,
    or a frame folder without its code file, is one :class:`DataLayoutError` naming it."""
    root = layout.root
    coded: dict[tuple[str, str], Path] = {}
    for entry in sorted(os.scandir(layout.occurrence), key=lambda e: e.name):
        if (m := _LABEL_NAME.match(entry.name)) and not broken_link(entry, root) and entry.is_file():
            require_inside(Path(entry.path), root)  # the occurrence folder itself may be a link out
            if m.group(1) not in SUBJECTS:
                raise DataLayoutError(f"{entry.path} names {m.group(1)}, which is not one of BP4D's 41 subjects.")
            coded[(m.group(1), m.group(2))] = Path(entry.path)
    if not coded:
        raise DataLayoutError(f"{layout.occurrence} holds no <subject>_<task>.csv occurrence code files.")
    for subject in SUBJECTS:
        subject_dir = layout.images / subject
        for task_dir in sorted(subject_dir.iterdir()) if subject_dir.is_dir() else ():
            if task_dir.is_dir() and task_dir.name in TASKS and (subject, task_dir.name) not in coded:
                raise DataLayoutError(
                    f"The occurrence code file {layout.occurrence / f'{subject}_{task_dir.name}.csv'} for the frames "
                    f"in {task_dir} is missing."
                )
    units = []
    for (subject, task), codes in sorted(coded.items()):
        folder = layout.images / subject / task
        if not folder.is_dir():
            raise DataLayoutError(f"The frame folder {folder} for the occurrence codes {codes} is missing.")
        intensity = tuple(
            (str((layout.intensity / intensity_path(au, subject, task)).relative_to(root))
             if layout.intensity is not None and (layout.intensity / intensity_path(au, subject, task)).is_file()
             else None)
            for au in INTENSITY_AUS
        )
        frames = _numbered_jpegs(folder, root)
        folder_rel = str(folder.relative_to(root))
        code_files = [str(codes.relative_to(root)), *(p for p in intensity if p)]
        units.append(TaskSequence(
            key=f"{subject}/{task}", size=0, subject=subject, task=task, root=str(root.resolve()),
            folder=folder_rel, frames=frames, occurrence=code_files[0], intensity=intensity,
            inputs=fingerprint(root, [f"{folder_rel}/{name}" for _, name in frames], contents=code_files),
        ))
    return units


def read_codes(unit: TaskSequence) -> tuple[np.ndarray, np.ndarray, list[dict[int, int] | None]]:
    """A unit's occurrence frames and codes and its intensity codes per ``INTENSITY_AUS``."""
    root = Path(unit.root)
    frames, codes = read_occurrence(root / unit.occurrence)
    intensity = [read_intensity(root / p) if p else None for p in unit.intensity]
    return frames, codes, intensity


# ----------------------------------------------------------------------------------------- preparing


@dataclass(frozen=True)
class PrepareSettings(SequenceSettings):
    """The DISFA pipeline's crop, detector, tracker and alignment settings (256x256 by default)."""

    @classmethod
    def from_options(cls, *, size: int = 256, codec: str = "png", quality: int = 95, device: str = "auto",
                     rows_per_shard: int = 1000) -> PrepareSettings:
        """The settings from ``affbench prepare bp4d``'s options."""
        return cls(size=size, codec=codec, quality=quality, device=device, rows_per_shard=rows_per_shard)

    def parameters(self) -> dict[str, Any]:
        """What the manifest records (and a resumed run must match): DISFA's, less the camera, with BP4D's labels."""
        parameters = super().parameters()
        del parameters["camera"]
        parameters["labels"] = {
            "occurrence": list(AU_COLUMNS),
            "intensity": list(INTENSITY_COLUMNS),
            "unknown": f"code {UNKNOWN} -> {MISSING}",
            "join": "by frame number (AU_OCC first column, image file name)",
        }
        parameters["sample_id"] = "bp4d/<subject>/<task>/<frame>"
        return parameters


def prepare_task(unit: TaskSequence, tick: Tick, *, out_dir: str, settings: PrepareSettings) -> UnitOutcome:
    """Turn the coded frames of one (subject, task) into shards: one row per coded frame.

    Pure: reads only the unit's frames and code files and writes only the unit's shards. A coded
    frame whose image is missing or unreadable keeps its row without a face and is listed in the
    outcome's failures; the face is tracked through the readable frames in frame order.
    """
    import torch

    root = Path(unit.root)
    frames, codes, intensity = read_codes(unit)
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)  # parallelism comes from one process per task
    tracker = FaceTracker(shared_detector(settings.detector, settings.device), settings.tracker)
    images = dict(unit.frames)
    order = np.argsort(frames, kind="stable")
    code_of = {int(frames[i]): codes[i] for i in order}
    failures: list[dict[str, str]] = []

    def source(frame: int) -> str:
        return f"{unit.folder}/{images.get(frame, f'{frame}.jpg')}"

    def stream() -> Iterator[tuple[int, np.ndarray | None]]:
        for frame in code_of:
            if frame not in images:
                failures.append({"unit": unit.key, "item": source(frame), "reason": "a coded frame without an image"})
                yield frame, None
                continue
            try:
                yield frame, read_image_file(root / source(frame))
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                failures.append({"unit": unit.key, "item": source(frame), "reason": f"unreadable image: {reason}"})
                yield frame, None

    def row_for(frame: int) -> dict:
        row = {"sample_id": sample_id(unit.subject, unit.task, frame), "dataset": DATASET, "subject": unit.subject,
               "source": source(frame), "frame": frame, "split": None, "task": unit.task}
        row.update((c, int(v)) for c, v in zip(AU_COLUMNS, code_of[frame]))
        row.update((c, MISSING if codes_ is None else codes_.get(frame, MISSING))
                   for c, codes_ in zip(INTENSITY_COLUMNS, intensity))
        return row

    with ShardWriter(out_dir, unit.key, make_schema(LABEL_FIELDS), rows_per_shard=settings.rows_per_shard) as writer:
        counts = write_tracked_sequence(stream(), tracker, writer, row_for, size=settings.size,
                                        template=settings.template, codec=settings.codec,
                                        quality=settings.quality, tick=tick)
    coded = set(code_of)
    stats = {
        **counts,
        "coded_frames": len(coded),
        "uncoded_frames": len(set(images) - coded),
        "coded_without_image": len(coded - set(images)),
        "unknown_codes": int((codes == MISSING).sum()),
        "intensity_files": sum(c is not None for c in intensity),
        "intensity_codes_without_occurrence": sum(len(set(c) - coded) for c in intensity if c is not None),
        "device": tracker.detector.device,
    }
    return UnitOutcome(key=unit.key, shards=writer.shards, failures=failures, stats=stats)


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
    """Prepare (or resume preparing) BP4D from ``root`` into ``out``; every code file is checked
    before any work starts."""
    settings = settings or PrepareSettings()
    layout = find_layout(root)
    units = find_units(layout)
    sized = []
    for unit in units:
        frames, _, _ = read_codes(unit)
        sized.append(dataclasses.replace(unit, size=len(frames)))
    device = resolve_device(settings.device) if runs_here(backend, scheduler) else settings.device
    settings = dataclasses.replace(settings, device=device)
    protocol = PROTOCOL
    if layout.intensity is None:  # no FERA 2015 intensity codes in this copy: detection only
        protocol = dataclasses.replace(protocol, tasks={k: t for k, t in protocol.tasks.items() if t.kind != "au-intensity"})
    with DatasetWriter(
        out,
        dataset=DATASET,
        parameters=settings.parameters(),
        schema=make_schema(LABEL_FIELDS),
        protocol=protocol.to_dict(),
        info={"root": str(Path(root).resolve()), "images": str(layout.images), "occurrence": str(layout.occurrence),
              "intensity": str(layout.intensity) if layout.intensity else None, "device": device,
              "rows_per_shard": settings.rows_per_shard, "tasks": len(units), "notes": NOTES},
    ) as writer:  # holds the folder: one process at a time
        process = functools.partial(prepare_task, out_dir=str(Path(out).resolve()), settings=settings)
        return run_units(writer, sized, process, workers=workers, progress=progress, item="frames",
                         backend=backend, scheduler=scheduler, device=device)


def uncoded_frames(manifest: dict) -> int:
    """Frames with an image but no occurrence code, over every prepared unit (they are not rows)."""
    return sum(unit["stats"].get("uncoded_frames", 0) for unit in manifest["units"].values())


def summary_notes(manifest: dict) -> list[str]:
    """The line ``affbench prepare bp4d`` adds to its summary: the frames without codes."""
    return [f"frames without codes (not stored): {uncoded_frames(manifest)}"]


# ----------------------------------------------------------------------------------------- protocol

PROTOCOL = Protocol(
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
            label_columns=AU_COLUMNS,
            output_key="au",
            n_outputs=len(AUS),
            label_names=AU_COLUMNS,
            metrics=("f1", "accuracy"),
            primary_metric="f1",
            split_column=None,
            missing_values=(MISSING,),
        ),
        "au-intensity": TaskSpec(
            name="au-intensity",
            kind="au-intensity",
            label_columns=INTENSITY_COLUMNS,
            output_key="au",
            n_outputs=len(INTENSITY_AUS),
            label_names=tuple(f"au{au}" for au in INTENSITY_AUS),
            metrics=("icc",),
            primary_metric="icc",
            split_column=None,
            missing_values=(MISSING,),
        ),
    },
    split=CrossValidation(
        parts=PARTS, test_parts={fold: (part,) for fold, part in FOLD_TEST_PART.items()}, group_column="subject"
    ),
    validation=Validation(
        method="group-holdout", fraction=SUBJECT_VALIDATION_FRACTION, seed=VALIDATION_SEED, group_column="subject"
    ),
)
