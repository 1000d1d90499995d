"""Small, deterministic sample datasets in the exact on-disk layouts of DISFA, BP4D, CAER-S and Aff-Wild2.

The faces are real photographs shipped with scikit-image (the astronaut, Eileen Collins, and crops
from Labeled Faces in the Wild), so MTCNN has to find and align them; they are moved, rotated and
scaled frame by frame, and a few frames and images hold no face at all. Nothing is downloaded and
the same call always writes the same bytes.

Label patterns (so that a test can predict every label from the frame index alone)
-----------------------------------------------------------------------------------
DISFA
    Subjects SN001, SN010 (part1), SN006 (part2) and SN003 (part3), so each of the three folds has
    test and training subjects. Intensity of the j-th AU of ``disfa.AUS`` for the s-th subject at
    frame i: ``max(0, peak - abs((i + 3*j + 5*s) % 16 - 8))`` with ``peak = 1 + (j + s) % 5``
    (:func:`disfa_intensity`). SN010's video is one frame shorter than its label files, like the
    real SN010. Frames ``NO_FACE_FRAMES`` of every video show the empty scene.
BP4D
    Subjects F001 (part1, tasks T1 and T2), F003 (part2, T1) and F007 (part3, T1) under
    ``Sequences/`` (the pipeline finds it), 320x240 JPEG frames numbered from ``BP4D_FIRST_FRAME``.
    The first ``BP4D_UNCODED`` frames of every task have no code row. Occurrence of the j-th AU of
    the header at frame f of the s-th subject and t-th task: ``int((f + 2*j + 3*s + t) % 5 < 2)``
    (:func:`bp4d_occurrence`), except ``BP4D_UNKNOWN`` (subject, task, frame, AU) coded 9. FERA 2015
    intensity of the k-th intensity AU: ``(f + k + s) % 6``. ``BP4D_CORRUPT`` is a truncated JPEG.
CAER-S
    Four training and two test images per class; the anger folder is ``Angry`` in train and
    ``Anger`` in test. Each class has its own people (LFW identities; Happy is the smiling
    astronaut), so the class can be learnt from the face. ``train/Neutral/0005.png`` and
    ``test/Neutral/0003.png`` are scenes without a face. Images are 712x400 except every third,
    which is 640x360 (CAER-S mixes sizes).
Aff-Wild2
    Videos ``1-30-1280x720`` and ``10-60-1280x720_left``/``_right`` (one two-person video) and
    ``video7``. AU k (j-th of ``affwild2.AUS``) of video v at frame i is
    ``int((i + 3*j + v) % 10 < 3)``; EXPR is ``(i // 5 + v) % 8``; valence is
    ``round(0.8*sin(i/5 + v), 3)`` and arousal ``round(0.6*cos(i/7 + v), 3)``. Frames
    ``AFFWILD2_UNANNOTATED`` carry -1 (AU, EXPR) or -5 (VA); frames ``AFFWILD2_NO_IMAGE`` of each
    video have no image (no face was detected there). See :func:`affwild2_labels`.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypedDict

import cv2
import numpy as np

from affbench.errors import AffbenchError
from affbench.pipelines import affwild2, bp4d, caer_s, disfa

DISFA_SUBJECTS: tuple[str, ...] = ("SN001", "SN010", "SN006", "SN003")
DISFA_FRAMES = 24
NO_FACE_FRAMES: tuple[int, ...] = (5,)
CAER_TRAIN_PER_CLASS = 4
CAER_TEST_PER_CLASS = 2
CAER_NO_FACE: tuple[str, ...] = ("train/Neutral/0005.png", "test/Neutral/0003.png")
AFFWILD2_VIDEOS: tuple[str, ...] = ("1-30-1280x720", "10-60-1280x720_left", "10-60-1280x720_right", "video7")
AFFWILD2_FRAMES = 30
AFFWILD2_UNANNOTATED: tuple[int, ...] = (2, 11)
AFFWILD2_NO_IMAGE: tuple[int, ...] = (7, 8)
#: task -> {video: split}; videos a task does not annotate have no file for it.
AFFWILD2_SPLITS: dict[str, dict[str, str]] = {
    "au": {"1-30-1280x720": "Train_Set", "10-60-1280x720_left": "Train_Set", "video7": "Validation_Set"},
    "expr": {"1-30-1280x720": "Train_Set", "10-60-1280x720_right": "Train_Set", "video7": "Validation_Set"},
    # Two VA training videos (people): the validation split holds one out, so VA has validation rows.
    "va": {"1-30-1280x720": "Train_Set", "10-60-1280x720_left": "Train_Set", "10-60-1280x720_right": "Validation_Set",
           "video7": "Validation_Set"},
}
BP4D_UNITS: tuple[tuple[str, str], ...] = (("F001", "T1"), ("F001", "T2"), ("F003", "T1"), ("F007", "T1"))
BP4D_IMAGES = "Sequences"
BP4D_FIRST_FRAME = 40
BP4D_FRAMES = 8
BP4D_UNCODED = 2
BP4D_FRAME_SIZE = (320, 240)  # width, height
#: The header of the sample AU_OCC files: the frame column, then more AUs than the protocol's 12.
BP4D_HEADER_AUS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 27, 28)
BP4D_UNKNOWN: tuple[str, str, int, int] = ("F001", "T1", 44, 12)
BP4D_CORRUPT = "Sequences/F003/T1/45.jpg"
ALL_DATASETS = ("disfa", "bp4d", "caer-s", "affwild2")
#: LFW faces that MTCNN found in every frame of the sample motion (checked once, by hand, with
#: FaceDetector over eight frames of the DISFA path); 9, 21 and 30, for instance, are missed often.
RELIABLE_LFW: tuple[int, ...] = (0, 3, 6, 12, 15, 18, 24, 27, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60, 63, 66, 69, 72, 75, 78)
MARKER = ".affbench-sample"


# ----------------------------------------------------------------------------------------- faces


@dataclass(frozen=True)
class FacePatch:
    """A face photograph with a soft elliptical mask, ready to be pasted into a scene."""

    rgb: np.ndarray  # (h, w, 3) uint8
    alpha: np.ndarray  # (h, w) float32 in [0, 1]


def _soft_ellipse(height: int, width: int, feather: float = 0.12) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.sqrt(((x - (width - 1) / 2) / (width / 2)) ** 2 + ((y - (height - 1) / 2) / (height / 2)) ** 2)
    return np.clip((1.0 - r) / feather, 0.0, 1.0)


@lru_cache(maxsize=1)
def astronaut_face() -> FacePatch:
    """The astronaut's head with hair and neck, from scikit-image's 512x512 photograph."""
    from skimage import data

    head = data.astronaut()[20:250, 125:325]
    height, width = head.shape[:2]
    return FacePatch(np.ascontiguousarray(head), _soft_ellipse(height, width, feather=0.2))


@lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    from skimage import data

    return data.lfw_subset()  # (200, 25, 25): 100 faces, then 100 non-faces


def lfw_face(index: int, size: int = 200, tint: Sequence[float] = (1.0, 0.9, 0.8)) -> FacePatch:
    """LFW face ``index`` (0-99), upscaled to ``size`` pixels and tinted to a skin tone."""
    if not 0 <= index < 100:
        raise ValueError("lfw_subset holds faces 0-99")
    gray = cv2.resize((_lfw()[index] * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    rgb = np.clip(gray[..., None].astype(np.float32) * np.asarray(tint, np.float32), 0, 255).astype(np.uint8)
    return FacePatch(rgb, _soft_ellipse(size, size, feather=0.15))


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic, face-free background: a colour gradient with a few blurred blocks."""
    return _scene(height, width, seed).copy()


@lru_cache(maxsize=16)
def _scene(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top, bottom = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    canvas: np.ndarray = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1), np.float32)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width * 9 // 10)), int(rng.integers(0, height * 9 // 10))
        w, h = int(rng.integers(width // 10, width // 3)), int(rng.integers(height // 10, height // 3))
        canvas[y0 : y0 + h, x0 : x0 + w] = rng.uniform(30, 230, 3)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 3)
    canvas += rng.normal(0, 3, canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def paste_face(canvas: np.ndarray, face: FacePatch, centre: Sequence[float], angle: float, height: float) -> None:
    """Paste ``face`` into ``canvas`` (in place), centred at ``centre``, rotated by ``angle``
    degrees and scaled so that the patch is ``height`` pixels tall."""
    h, w = face.rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, height / h)
    matrix[:, 2] += np.asarray(centre, np.float64) - np.array([w / 2, h / 2])
    size = (canvas.shape[1], canvas.shape[0])
    rgb = cv2.warpAffine(face.rgb, matrix, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(face.alpha, matrix, size, flags=cv2.INTER_LINEAR)[..., None]
    canvas[:] = (canvas * (1 - alpha) + rgb * alpha).astype(np.uint8)


def _motion(i: int, n: int, seed: int) -> tuple[float, float, float, float]:
    """Smooth per-frame movement: (dx, dy) as fractions of the frame, angle (deg), scale factor."""
    t = 2 * math.pi * i / max(n, 1)
    return (
        0.12 * math.sin(t + seed),
        0.08 * math.sin(2 * t + 0.5 * seed),
        12.0 * math.sin(1.5 * t + seed),
        1.0 + 0.15 * math.sin(t + 0.7 * seed),
    )


# ----------------------------------------------------------------------------------------- DISFA


def disfa_intensity(subject_index: int, au_index: int, frame: int) -> int:
    """The sample DISFA intensity (0-5) of the ``au_index``-th AU at ``frame``."""
    peak = 1 + (au_index + subject_index) % 5
    return max(0, peak - abs((frame + 3 * au_index + 5 * subject_index) % 16 - 8))


def _disfa_face(subject_index: int) -> FacePatch:
    if subject_index == 0:
        return astronaut_face()
    if subject_index == 1:  # the same photograph mirrored and warmer: a "second subject"
        face = astronaut_face()
        warm = np.clip(face.rgb[:, ::-1] * np.array([1.05, 0.95, 0.85]), 0, 255).astype(np.uint8)
        return FacePatch(np.ascontiguousarray(warm), np.ascontiguousarray(face.alpha[:, ::-1]))
    return lfw_face(RELIABLE_LFW[subject_index], size=220)


def disfa_frame(subject_index: int, camera: str, frame: int, frames: int) -> np.ndarray:
    """One 1024x768 RGB frame of a sample DISFA video."""
    width, height = disfa.FRAME_SIZE
    canvas = scene(height, width, seed=100 + subject_index)
    if frame in NO_FACE_FRAMES:
        return canvas
    dx, dy, angle, scale = _motion(frame, frames, seed=subject_index)
    side = 1.0 if camera == "left" else -1.0  # the right camera sees the motion mirrored
    centre = (width * (0.5 + side * dx), height * (0.45 + dy))
    paste_face(canvas, _disfa_face(subject_index), centre, side * angle, 380 * scale)
    return canvas


def _write_video(path: Path, frames: Iterable[np.ndarray], fps: float, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise AffbenchError(f"OpenCV cannot write the AVI video {path}.")
    try:
        for rgb in frames:
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def write_disfa(root: Path, frames: int = DISFA_FRAMES) -> Path:
    """Write the sample DISFA distribution under ``root`` and return it."""
    for s, subject in enumerate(DISFA_SUBJECTS):
        n_video = frames - 1 if subject in disfa.SHORT_SUBJECTS else frames
        for camera in ("left", "right"):
            _write_video(
                root / disfa.video_path(camera, subject),
                (disfa_frame(s, camera, i, frames) for i in range(n_video)),
                disfa.FPS,
                disfa.FRAME_SIZE,
            )
        for j, au in enumerate(disfa.AUS):
            path = root / disfa.label_path(subject, au)
            path.parent.mkdir(parents=True, exist_ok=True)
            # DISFA prints 1-based frame numbers; the pipeline keys on line order, not on them.
            path.write_text("".join(f"{i + 1},{disfa_intensity(s, j, i)}\n" for i in range(frames)))
    return root


# ----------------------------------------------------------------------------------------- BP4D


def bp4d_occurrence(subject: str, task: str, frame: int, au: int) -> int:
    """The sample BP4D occurrence code (0, 1 or 9) of ``au`` at ``frame``."""
    if (subject, task, frame, au) == BP4D_UNKNOWN:
        return bp4d.UNKNOWN
    s, t, j = [u for u, _ in BP4D_UNITS].index(subject), int(task[1:]), BP4D_HEADER_AUS.index(au)
    return int((frame + 2 * j + 3 * s + t) % 5 < 2)


def bp4d_intensity(subject: str, frame: int, au: int) -> int:
    """The sample FACS intensity (0-5) of ``au`` in a BP4D subject's frame."""
    s = [u for u, _ in BP4D_UNITS].index(subject)
    return (frame + bp4d.INTENSITY_AUS.index(au) + s) % 6


def bp4d_frame(subject: str, task: str, frame: int) -> np.ndarray:
    """One small RGB frame of a sample BP4D task."""
    width, height = BP4D_FRAME_SIZE
    s = [u for u, _ in BP4D_UNITS].index(subject)
    canvas = scene(height, width, seed=4000 + s)
    dx, dy, angle, scale = _motion(frame - BP4D_FIRST_FRAME, BP4D_FRAMES, seed=s + int(task[1:]))
    paste_face(canvas, _disfa_face(s), (width * (0.5 + dx / 2), height * (0.5 + dy / 2)), angle / 2, 170 * scale)
    return canvas


def write_bp4d(root: Path, frames: int = BP4D_FRAMES) -> Path:
    """Write the sample BP4D distribution under ``root`` and return it."""
    occurrence = root / bp4d.CODES_DIR / bp4d.OCCURRENCE_DIR
    occurrence.mkdir(parents=True, exist_ok=True)
    for subject, task in BP4D_UNITS:
        folder = root / BP4D_IMAGES / subject / task
        folder.mkdir(parents=True, exist_ok=True)
        numbers = range(BP4D_FIRST_FRAME, BP4D_FIRST_FRAME + frames)
        for f in numbers:
            path = folder / f"{f}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(bp4d_frame(subject, task, f), cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
            if path.relative_to(root).as_posix() == BP4D_CORRUPT:
                path.write_bytes(path.read_bytes()[:200])  # a truncated file: the header survives
        coded = numbers[BP4D_UNCODED:]
        lines = [",".join(["0", *map(str, BP4D_HEADER_AUS)])]
        lines += [",".join([str(f), *(str(bp4d_occurrence(subject, task, f, au)) for au in BP4D_HEADER_AUS)])
                  for f in coded]
        (occurrence / f"{subject}_{task}.csv").write_text("\n".join(lines) + "\n")
        for au in bp4d.INTENSITY_AUS:
            path = root / bp4d.CODES_DIR / bp4d.INTENSITY_DIR / bp4d.intensity_path(au, subject, task)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{f},{bp4d_intensity(subject, f, au)}\n" for f in coded))
    return root


# ----------------------------------------------------------------------------------------- CAER-S


def _caer_identity(class_index: int, k: int) -> FacePatch:
    if caer_s.CLASSES[class_index] == "Happy":
        return astronaut_face()
    return lfw_face(RELIABLE_LFW[(3 * class_index + k % 3) % len(RELIABLE_LFW)], size=200)


def caer_image(class_index: int, number: int, split: str) -> np.ndarray:
    """One sample CAER-S still (RGB)."""
    seed = 1000 * class_index + number + (500 if split == "test" else 0)
    width, height = (640, 360) if number % 3 == 0 else (712, 400)
    canvas = scene(height, width, seed=seed)
    folder = _caer_folder(class_index, split)
    if f"{split}/{folder}/{number:04d}.png" in CAER_NO_FACE:
        return canvas
    rng = np.random.default_rng(seed)
    centre = (width * rng.uniform(0.25, 0.75), height * rng.uniform(0.35, 0.6))
    paste_face(canvas, _caer_identity(class_index, number), centre, rng.uniform(-15, 15), rng.uniform(150, 210))
    return canvas


def _caer_folder(class_index: int, split: str) -> str:
    name = caer_s.CLASSES[class_index]
    return "Angry" if (name == "Anger" and split == "train") else name


def write_caer_s(root: Path) -> Path:
    """Write the sample CAER-S distribution under ``root`` and return it."""
    for split, count in (("train", CAER_TRAIN_PER_CLASS), ("test", CAER_TEST_PER_CLASS)):
        for c in range(len(caer_s.CLASSES)):
            name = _caer_folder(c, split)
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            faceless = sum(1 for p in CAER_NO_FACE if p.startswith(f"{split}/{name}/"))
            for number in range(1, count + faceless + 1):
                rgb = caer_image(c, number, split)
                cv2.imwrite(str(folder / f"{number:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return root


# ----------------------------------------------------------------------------------------- Aff-Wild2


class Affwild2Labels(TypedDict):
    """The sample labels of one Aff-Wild2 frame (see :func:`affwild2_labels`)."""

    au: list[int]
    expr: int
    va: tuple[float, float]


def affwild2_labels(video_index: int, frame: int) -> Affwild2Labels:
    """The sample labels of one frame: ``au`` (list), ``expr`` (int), ``va`` (tuple) with the
    dataset's missing-value markers where the frame is unannotated."""
    if frame in AFFWILD2_UNANNOTATED:
        return {
            "au": [affwild2.AU_MISSING] * len(affwild2.AUS),
            "expr": affwild2.EXPR_MISSING,
            "va": (affwild2.VA_MISSING, affwild2.VA_MISSING),
        }
    return {
        "au": [int((frame + 3 * j + video_index) % 10 < 3) for j in range(len(affwild2.AUS))],
        "expr": (frame // 5 + video_index) % 8,
        "va": (round(0.8 * math.sin(frame / 5 + video_index), 3), round(0.6 * math.cos(frame / 7 + video_index), 3)),
    }


def _affwild2_face(video_index: int, frame: int, frames: int) -> np.ndarray:
    """A 112x112 aligned face, as the challenge's cropped_aligned images are."""
    size = affwild2.IMAGE_SIZE
    canvas = scene(size, size, seed=3000 + video_index)
    dx, dy, angle, scale = _motion(frame, frames, seed=video_index)
    face = astronaut_face() if video_index == 0 else lfw_face(RELIABLE_LFW[-1 - video_index], size=160)
    # Already aligned: only a little jitter is left, as in the challenge's crops.
    paste_face(canvas, face, (size * (0.5 + dx / 4), size * (0.5 + dy / 4)), angle / 4, size * 1.05 * scale)
    return canvas


def write_affwild2(root: Path, frames: int = AFFWILD2_FRAMES) -> Path:
    """Write the sample Aff-Wild2 (ABAW3) distribution under ``root`` and return it."""
    for v, video in enumerate(AFFWILD2_VIDEOS):
        folder = root / affwild2.IMAGE_DIR / video
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            if i in AFFWILD2_NO_IMAGE:
                continue
            rgb = _affwild2_face(v, i, frames)
            cv2.imwrite(str(folder / affwild2.image_name(i)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
    for task, (challenge, header) in affwild2.CHALLENGES.items():
        for video, split in AFFWILD2_SPLITS[task].items():
            v = AFFWILD2_VIDEOS.index(video)
            lines = [header]
            for i in range(frames):
                labels = affwild2_labels(v, i)
                if task == "au":
                    lines.append(",".join(str(x) for x in labels["au"]))
                elif task == "expr":
                    lines.append(str(labels["expr"]))
                else:
                    lines.append(",".join(f"{x:g}" for x in labels["va"]))
            path = root / challenge / split / f"{video}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------------------------------------- all


def write_sample_data(
    directory: str | Path, datasets: Sequence[str] = ALL_DATASETS, frames: int | None = None
) -> dict[str, Path]:
    """Write the chosen sample datasets under ``directory/<name>`` and return their roots.

    Each dataset is generated in a temporary sibling folder and renamed when complete, so an
    interrupted call never leaves a half dataset; one that exists already, made with the same
    options, is left as it is (the output is deterministic).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise AffbenchError(f"DIRECTORY {directory} is a file, not a folder; give a folder.")
    unknown = sorted(set(datasets) - set(ALL_DATASETS))
    if unknown:
        raise AffbenchError(f"No sample data for {', '.join(unknown)}; choose from {', '.join(ALL_DATASETS)}.")
    writers = {
        "disfa": lambda root: write_disfa(root, frames or DISFA_FRAMES),
        "bp4d": lambda root: write_bp4d(root, frames or BP4D_FRAMES),
        "caer-s": write_caer_s,
        "affwild2": lambda root: write_affwild2(root, frames or AFFWILD2_FRAMES),
    }
    written = {}
    for name in datasets:
        root = directory / name
        stamp = f"affbench sample data, frames={frames}\n"
        marker = root / MARKER
        if marker.is_file() and marker.read_text() == stamp:
            written[name] = root
            continue
        if root.exists() and not marker.is_file():
            raise AffbenchError(f"{root} exists and is not affbench sample data; choose another folder.")
        staging = directory / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        writers[name](staging)
        (staging / MARKER).write_text(stamp)
        shutil.rmtree(root, ignore_errors=True)  # sample data of other options, ours to replace
        os.replace(staging, root)
        written[name] = root
    return written
