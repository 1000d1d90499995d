"""DISFA (Mavadati et al. 2013): layout, labels and protocol facts (see docs/datasets.md).

Layout::

    ROOT/Videos_LeftCamera/LeftVideoSN001_comp.avi
    ROOT/Video_RightCamera/RightVideoSN001_comp.avi     ("Video", singular: a real inconsistency)
    ROOT/ActionUnit_Labels/SN001/SN001_au1.txt          one "frame,intensity" line per frame

Label line i belongs to video frame i (0-based); the printed frame number's base is not trusted.

Preparing (``affbench prepare disfa``)
--------------------------------------
:func:`find_videos` checks the layout and lists one :class:`DisfaVideo` unit per video and camera;
:func:`prepare_video` turns one of them into shards, and :func:`prepare` runs it over every
unfinished video with :func:`affbench.preparation.units.run_units`. Every frame becomes one row, ``frame``
0-based, with the 12 AU intensities of the label lines at the same position (``-1`` past the end of
a label file). Faces are followed by :class:`affbench.faces.tracking.FaceTracker` (``--tracking
off``: the full cascade on every frame). A frame where no face is found keeps its row with
``face_found=False`` but still gets a crop, from the landmarks of its nearest good frames in time
(:func:`affbench.faces.tracking.fill_gaps`): ``landmark_source`` says ``interpolated`` or
``carried``, and the unit's stats count these fallback crops. Only a video without any face has
rows with no image.
``sample_id`` is ``disfa/SN001/000123`` for the left camera and ``disfa/SN001/right/000123`` for the
right one, so ``--camera both`` keeps ids unique and left-camera ids stay the same whichever cameras
were prepared.

Scaling out: :func:`prepare_video` is pure (a unit and settings in, shards on disk and a
:class:`~affbench.preparation.units.UnitOutcome` out; it reads only its own video and label files and writes
only its own shards), so each video can be one task on a Dask cluster
(``pip install "affbench[dask]"``). Where ROOT and the output folder are on a shared file system,
at the same paths on every machine::

    prepare(root, out, scheduler="tcp://scheduler:8786")    # or scheduler=a distributed.Client

(the command line: ``affbench prepare disfa ROOT --out DIR --scheduler tcp://scheduler:8786``).
This process records each video in the manifest as it arrives, so an interrupted run resumes as a
local one does. Each worker process loads MTCNN once and, with ``device="auto"``, uses its own GPU
where it has one; each unit's stats record the device it ran on.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from affbench.errors import DataLayoutError
from affbench.faces.alignment import AlignmentTemplate
from affbench.faces.detection import DetectorSettings, shared_detector
from affbench.faces.tracking import FaceTracker, TrackerSettings
from affbench.faces.video import VideoError, VideoReader, probe_video
from affbench.pipelines import SUBJECT_VALIDATION_FRACTION, VALIDATION_SEED
from affbench.pipelines.layout import broken_link, require_inside, require_root
from affbench.preparation.sequences import write_tracked_sequence
from affbench.preparation.units import RunSummary, Tick, UnitOutcome, fingerprint, run_units, runs_here
from affbench.runtime.devices import resolve_device
from affbench.scoring.protocols import CrossValidation, Protocol, TaskSpec, Validation
from affbench.shards.codec import IMAGE_CODECS
from affbench.shards.manifest import DatasetWriter
from affbench.shards.schema import make_schema
from affbench.shards.writer import ShardWriter, remove_unit_shards

#: The 12 annotated AUs, in label-column order.
AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
#: AUs of the standard detection protocol (occurrence = intensity >= 2).
DETECTION_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
OCCURRENCE_THRESHOLD = 2
MAX_INTENSITY = 5

SUBJECTS: tuple[str, ...] = tuple(
    f"SN{n:03d}" for n in (*range(1, 14), 16, 17, 18, 21, *range(23, 33))
)
FRAMES_PER_VIDEO = 4845
SHORT_SUBJECTS = {"SN010": 4844}  # reported: one frame fewer than the others
FPS = 20
FRAME_SIZE = (1024, 768)  # width, height

#: The 3-fold subject-exclusive split of JAA-Net / ME-GraphAU; fold k tests FOLD_TEST_PART[k].
PARTS: dict[str, tuple[str, ...]] = {
    "part1": ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
    "part2": ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
    "part3": ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
}
FOLD_TEST_PART: dict[int, str] = {1: "part3", 2: "part2", 3: "part1"}

LEFT_DIR = "Videos_LeftCamera"
RIGHT_DIR = "Video_RightCamera"
LABEL_DIR = "ActionUnit_Labels"
CAMERA_DIRS = {"left": LEFT_DIR, "right": RIGHT_DIR}
CAMERA_PREFIX = {"left": "Left", "right": "Right"}


def au_column(au: int) -> str:
    """The label column of an AU: ``au<number>``."""
    return f"au{au}"


def video_path(camera: str, subject: str) -> str:
    """The video of ``subject`` for ``camera``, relative to ROOT."""
    return f"{CAMERA_DIRS[camera]}/{CAMERA_PREFIX[camera]}Video{subject}_comp.avi"


def label_path(subject: str, au: int) -> str:
    """The label file of one AU of ``subject``, relative to ROOT."""
    return f"{LABEL_DIR}/{subject}/{subject}_au{au}.txt"

CAMERAS = ("left", "right")
AU_COLUMNS: tuple[str, ...] = tuple(f"au{au}" for au in AUS)
MISSING = -1  # label value of a frame that has no line in an AU's label file
DATASET = "disfa"


def label_schema() -> pa.Schema:
    """Schema v1 with the 12 AU intensity columns (int8, -1 = no label line for this frame)."""
    return make_schema([pa.field(c, pa.int8()) for c in AU_COLUMNS])


def sample_id(subject: str, camera: str, frame: int) -> str:
    """``disfa/SN001/000123`` (left camera) or ``disfa/SN001/right/000123``."""
    camera_part = "" if camera == "left" else f"/{camera}"
    return f"{DATASET}/{subject}{camera_part}/{frame:06d}"


# ----------------------------------------------------------------------------------------- labels


def read_label_file(path: str | Path) -> np.ndarray:
    """The intensities of one ``SNxxx_auN.txt`` file in line order, as int8.

    Line i is frame i; the frame number printed on the line is ignored (its base is not trusted).
    Blank lines at the end are ignored; any other line that is not ``frame,intensity`` with an
    intensity 0-5 is an error naming the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataLayoutError(f"AU label file {path} is missing.") from None
    except UnicodeDecodeError as exc:
        raise DataLayoutError(f"{path} is not a UTF-8 text file (byte {exc.start} cannot be decoded).") from None
    while lines and not lines[-1].strip():
        lines.pop()
    values = np.empty(len(lines), dtype=np.int8)
    for number, line in enumerate(lines, start=1):
        parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
        try:
            if len(parts) != 2:
                raise ValueError
            value = float(parts[1])  # "inf" and "nan" fail the range check below
            if not 0 <= value <= MAX_INTENSITY or value != int(value):
                raise ValueError
        except ValueError:
            raise DataLayoutError(
                f"{path} line {number} is {line.strip()!r}, not 'frame,intensity' with an intensity 0-{MAX_INTENSITY}."
            ) from None
        values[number - 1] = int(value)
    return values


def read_labels(paths: Sequence[str | Path]) -> tuple[np.ndarray, list[int]]:
    """All AU files of one subject (in ``AUS`` order) as a (frames, 12) int8 table padded with -1
    where a file is shorter than the longest, and each file's line count."""
    columns = [read_label_file(p) for p in paths]
    lengths = [len(c) for c in columns]
    table = np.full((max(lengths, default=0), len(columns)), MISSING, dtype=np.int8)
    for j, column in enumerate(columns):
        table[: len(column), j] = column
    return table, lengths


# ----------------------------------------------------------------------------------------- units


@dataclass(frozen=True)
class DisfaVideo:
    """One unit of work: a subject's video from one camera with its 12 label files."""

    key: str  # "SN001/left": unique across cameras, names the unit's shards (SN001-left-<hash>-00000.parquet)
    size: int  # frames the container declares (0 when unknown), for the progress bar
    subject: str
    camera: str
    root: str
    video: str  # relative to root
    labels: tuple[str, ...]  # relative to root, in AUS order
    inputs: str | None = None  # fingerprint of the video (size, time) and label files (content)


_VIDEO_NAME = re.compile(r"^(Left|Right)Video(SN\d{3})_comp\.avi$", re.IGNORECASE)


def find_videos(root: str | Path, camera: str = "left") -> list[DisfaVideo]:
    """Check that ``root`` is a DISFA distribution and list its videos for ``camera``
    (``left``, ``right`` or ``both``), with one clear :class:`DataLayoutError` where it is not."""
    root = Path(root)
    cameras = CAMERAS if camera == "both" else (camera,)
    if any(c not in CAMERAS for c in cameras):
        raise DataLayoutError(f"Unknown camera {camera!r}; use left, right or both.")
    require_root(root, "DISFA")
    needed = [CAMERA_DIRS[c] for c in cameras] + [LABEL_DIR]
    missing = [f"{d}/" for d in needed if not (root / d).is_dir()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise DataLayoutError(f"{root} is not a DISFA root: {' and '.join(missing)} {verb} missing.")
    units = []
    for cam in cameras:
        folder = root / CAMERA_DIRS[cam]
        by_subject: dict[str, list[str]] = {}
        for p in sorted(folder.iterdir()):
            if (m := _VIDEO_NAME.match(p.name)) and m.group(1).lower() == cam and not broken_link(p, root) \
                    and p.is_file():
                by_subject.setdefault(m.group(2).upper(), []).append(p.name)
        twice = next((names for names in by_subject.values() if len(names) > 1), None)
        if twice:
            raise DataLayoutError(
                f"{folder} holds {twice[0]} and {twice[1]}, two videos of one subject whose names differ "
                "only in case; keep one."
            )
        subjects = sorted(by_subject)
        if not subjects:
            raise DataLayoutError(
                f"{folder} holds no {CAMERA_PREFIX[cam]}VideoSNnnn_comp.avi videos, so {root} is not a DISFA root."
            )
        for subject in subjects:
            video = by_subject[subject][0]  # its name as on disk (the match ignores case)
            labels = tuple(label_path(subject, au) for au in AUS)
            absent = [p for p in labels if not (root / p).is_file()]
            if absent:
                more = f" (and {len(absent) - 1} more of its label files)" if len(absent) > 1 else ""
                raise DataLayoutError(f"AU label file {root / absent[0]} is missing or not a regular file{more}.")
            for label in labels:
                require_inside(root / label, root)
            try:
                size = probe_video(folder / video).frames or 0
            except VideoError:
                size = 0  # the unit fails with the reason when it is processed
            video = f"{CAMERA_DIRS[cam]}/{video}"
            units.append(DisfaVideo(
                key=f"{subject}/{cam}", size=size, subject=subject, camera=cam, root=str(root.resolve()),
                video=video, labels=labels, inputs=fingerprint(root, [video], contents=labels),
            ))
    return units


# ----------------------------------------------------------------------------------------- preparing

#: What the manifest says about the rows' face columns.
ROW_NOTES = {
    "landmark_source": "detected (full cascade), tracked (O-Net from the previous frame, confirmed by the next "
    "full detection), interpolated (between the nearest frames with a face, for a frame without one), carried "
    "(from the one side with a face), none (the video has no face at all)",
    "face_found": "true for detected and tracked rows; interpolated and carried rows have a fallback crop but "
    "face_found false and no det_score",
    "n_faces": "faces the full cascade saw in the whole frame; null where it did not search the whole frame "
    "(tracked frames, and full detections around the face followed)",
    "fallback_crops": "counted per video in units.<video>.stats (interpolated, carried)",
}


@dataclass(frozen=True)
class SequenceSettings:
    """Everything that decides the content of the shards (plus where MTCNN runs), for the pipelines
    that track a face through frame sequences: DISFA's :class:`PrepareSettings` and BP4D's, which
    differ in the command-line options they take (:meth:`PrepareSettings.from_options`)."""

    size: int = 256
    codec: str = "png"
    quality: int = 95
    device: str = "auto"
    rows_per_shard: int = 1000
    camera: str = "left"  # left, right or both
    torch_threads: int = 1  # per worker process; 0 leaves PyTorch's default
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    template: AlignmentTemplate = field(default_factory=AlignmentTemplate)

    def __post_init__(self) -> None:
        if self.codec not in IMAGE_CODECS:
            raise ValueError(f"unknown codec {self.codec!r}")

    def parameters(self) -> dict[str, Any]:
        """What the manifest records (and a resumed run must match)."""
        crop = {"size": self.size, "codec": self.codec}
        if self.codec != "png":
            crop["quality"] = self.quality
        return {
            "camera": self.camera,
            "crop": crop,
            "detector": self.detector.describe(),
            "tracker": self.tracker.describe(),
            "alignment": self.template.describe(self.size),
            "labels": {
                "columns": list(AU_COLUMNS),
                "values": f"intensity 0-{MAX_INTENSITY}, {MISSING} where the label file has no line for the frame",
                "join": "label-file line i <-> video frame i (0-based); printed frame numbers are ignored",
            },
            "sample_id": "disfa/<subject>/<frame:06d> (left camera), disfa/<subject>/right/<frame:06d>",
            "rows": ROW_NOTES,
        }


@dataclass(frozen=True)
class PrepareSettings(SequenceSettings):
    """Everything that decides the content of the DISFA shards (plus where MTCNN runs)."""

    @classmethod
    def from_options(cls, *, size: int = 256, codec: str = "png", quality: int = 95, device: str = "auto",
                     rows_per_shard: int = 1000, camera: str = "left", tracking: str = "on") -> PrepareSettings:
        """The settings from ``affbench prepare disfa``'s options (``tracking`` is ``"on"`` or ``"off"``)."""
        return cls(size=size, codec=codec, quality=quality, device=device, rows_per_shard=rows_per_shard,
                   camera=camera, tracker=TrackerSettings(tracking=tracking == "on"))


def prepare_video(unit: DisfaVideo, tick: Tick, *, out_dir: str, settings: PrepareSettings) -> UnitOutcome:
    """Turn one DISFA video into shards under ``out_dir``: one row per decoded frame.

    Pure: reads only the unit's video and label files, writes only the unit's shards, and returns
    what happened (rows, faces found, the label join, any length mismatch) as a
    :class:`~affbench.preparation.units.UnitOutcome`. A video that cannot be opened or decodes fewer frames
    than it declares is a failed unit (its shards removed): its frame indices cannot be trusted.
    """
    import torch

    root = Path(unit.root)
    labels, lengths = read_labels([root / p for p in unit.labels])
    if settings.torch_threads > 0:
        # Small O-Net passes gain nothing from more threads, and on a busy machine idle-spinning
        # threads cost a lot: parallelism comes from one process per video (--workers).
        torch.set_num_threads(settings.torch_threads)
    detector = shared_detector(settings.detector, settings.device)
    tracker = FaceTracker(detector, settings.tracker)
    base = {"dataset": DATASET, "subject": unit.subject, "source": unit.video, "split": None}

    def row_for(index: int) -> dict:
        label_row = labels[index] if index < len(labels) else None
        return {"sample_id": sample_id(unit.subject, unit.camera, index), **base, "frame": index,
                **{c: int(label_row[j]) if label_row is not None else MISSING for j, c in enumerate(AU_COLUMNS)}}

    try:
        # the tracker takes the frames a batch at a time: two batches decoded ahead keep it from waiting
        prefetch = 2 * settings.detector.batch_size
        with VideoReader(root / unit.video, prefetch=prefetch) as video, ShardWriter(
            out_dir, unit.key, label_schema(), rows_per_shard=settings.rows_per_shard
        ) as writer:
            counts = write_tracked_sequence(video, tracker, writer, row_for, size=settings.size,
                                            template=settings.template, codec=settings.codec,
                                            quality=settings.quality, tick=tick)
            video.check_complete()
    except VideoError as exc:
        remove_unit_shards(out_dir, unit.key)
        return UnitOutcome(key=unit.key, failed=True,
                           failures=[{"unit": unit.key, "item": unit.video, "reason": str(exc)}])
    counts.pop("unreadable")  # a decoded video frame is always an image
    frames = counts["frames"]
    stats: dict = {**counts, "label_lines": max(lengths), "unlabeled_frames": max(0, frames - min(lengths)),
                   "unused_label_lines": max(0, max(lengths) - frames), "device": detector.device}
    mismatch = length_mismatch(unit, frames, lengths)
    if mismatch:
        stats["length_mismatch"] = mismatch
    return UnitOutcome(key=unit.key, shards=writer.shards, stats=stats)


def length_mismatch(unit: DisfaVideo, frames: int, lengths: Sequence[int]) -> str | None:
    """A sentence when the video and its label files disagree in length, else None."""
    if all(n == frames for n in lengths):
        return None
    if len(set(lengths)) == 1:
        labels = f"its label files have {lengths[0]} lines"
    else:
        labels = "its label files have " + ", ".join(f"{c}: {n}" for c, n in zip(AU_COLUMNS, lengths)) + " lines"
    return (f"{unit.video} has {frames} frames but {labels}; labels are joined by line order, "
            f"frames without a line get {MISSING} and extra lines are unused")


def prepare(
    root: str | Path,
    out: str | Path,
    settings: PrepareSettings | None = None,
    *,
    workers: int | str = 1,
    progress: bool = True,
    backend: str | None = None,
    scheduler: Any = None,
) -> RunSummary:
    """Prepare (or resume preparing) DISFA from ``root`` into ``out``.

    Returns the run's summary; the manifest's ``units`` hold every video's stats, including the
    length mismatches of videos finished by earlier runs (:func:`length_mismatches`).
    """
    settings = settings or PrepareSettings()
    units = find_videos(root, settings.camera)
    for unit in {u.subject: u for u in units}.values():  # malformed labels stop the run before any work
        read_labels([Path(unit.root) / p for p in unit.labels])
    # Locally the device is settled here, so that a missing GPU is one clear error up front; on a
    # cluster each worker resolves it (the unit stats record where each video ran).
    device = resolve_device(settings.device) if runs_here(backend, scheduler) else settings.device
    settings = dataclasses.replace(settings, device=device)
    with DatasetWriter(
        out,
        dataset=DATASET,
        parameters=settings.parameters(),
        schema=label_schema(),
        protocol=PROTOCOL.to_dict(),
        info={"root": str(Path(root).resolve()), "device": device, "rows_per_shard": settings.rows_per_shard,
              "videos": len(units)},
    ) as writer:  # holds the folder: one process at a time
        # Absolute paths: a worker elsewhere (Dask, Ray) does not share this process's directory.
        process = functools.partial(prepare_video, out_dir=str(Path(out).resolve()), settings=settings)
        return run_units(writer, units, process, workers=workers, progress=progress, item="frames",
                         backend=backend, scheduler=scheduler, device=device)


def length_mismatches(manifest: dict) -> list[str]:
    """The video/label length mismatches a prepared folder's manifest records, one line each."""
    return [unit["stats"]["length_mismatch"] for _, unit in sorted(manifest["units"].items())
            if "length_mismatch" in unit["stats"]]


def summary_notes(manifest: dict) -> list[str]:
    """The lines ``affbench prepare disfa`` adds to its summary: every video/label length mismatch."""
    return [f"length mismatch: {line}" for line in length_mismatches(manifest)]


# ----------------------------------------------------------------------------------------- protocol

PROTOCOL = Protocol(
    dataset="disfa",
    description=(
        "3-fold subject-exclusive protocol of JAA-Net / ME-GraphAU (fold 1 tests part3, fold 2 part2, "
        "fold 3 part1); validation = seeded hold-out of training subjects; left camera."
    ),
    tasks={
        "au-detection": TaskSpec(
            name="au-detection",
            kind="au-detection",
            label_columns=tuple(au_column(au) for au in DETECTION_AUS),
            output_key="au",
            n_outputs=len(DETECTION_AUS),
            label_names=tuple(au_column(au) for au in DETECTION_AUS),
            metrics=("f1", "accuracy"),
            primary_metric="f1",
            split_column=None,
            binarize_at=OCCURRENCE_THRESHOLD,
            missing_values=(-1,),
        ),
        "au-intensity": TaskSpec(
            name="au-intensity",
            kind="au-intensity",
            label_columns=AU_COLUMNS,
            output_key="au",
            n_outputs=len(AUS),
            label_names=AU_COLUMNS,
            metrics=("icc",),
            primary_metric="icc",
            split_column=None,
            missing_values=(-1,),
        ),
    },
    split=CrossValidation(
        parts=PARTS, test_parts={fold: (part,) for fold, part in FOLD_TEST_PART.items()}, group_column="subject"
    ),
    validation=Validation(
        method="group-holdout", fraction=SUBJECT_VALIDATION_FRACTION, seed=VALIDATION_SEED, group_column="subject"
    ),
)
