"""Follow one face through a video without silent drift, and give faceless frames a fallback crop.

:class:`FaceTracker` keeps the speed of tracking (MTCNN's O-Net alone on full-resolution crops at
the previous frame's box, a small fraction of the full cascade's cost) but never lets a tracked
frame through unchecked. O-Net re-run on a stale box can keep a confident score while its landmarks
slide onto the brows or shrink onto a hand over the mouth (issue 10), so every tracked frame must
pass two checks:

* **geometry**: its eye distance and eye-to-mouth distance stay within ``max_size_change`` of the
  last full detection's, and its roll within ``max_roll_change`` degrees; a frame that fails goes
  through the full cascade at once, and the detection becomes the new reference;
* **anchors, both ways**: the full cascade runs every ``redetect_every`` frames and on the last
  frame of every batch (an anchor). Where the track fails there or differs from the cascade's
  landmarks by more than ``anchor_tolerance`` of the eye distance (the same for a frame that
  failed the geometry check), every frame tracked since the previous full detection goes through
  the full cascade (all such frames as one batch): iterated O-Net settles on
  landmarks of its own (on laughing faces about 10% wider apart than the cascade's) and drifts
  slowly. Where the anchor agrees, O-Net tracks backwards from it through those frames, and a frame
  where the forward and backward landmarks differ by more than ``anchor_tolerance`` (or where the
  backward track is lost) goes through the cascade too. An anchor that agrees keeps the tracked
  landmarks for its own frame and as the next seed (the detection only becomes the geometry
  reference): switching to the cascade's landmarks there would jump the crop every
  ``redetect_every`` frames by the small offset between the two estimates, which is frame-to-frame
  jitter on steady footage. So no tracked frame leaves the tracker
  unless the next full detection agrees with the track, and a track from it agrees with the frame.

``tracking=False`` runs the full cascade (batched) on every frame instead: the reference behaviour.
Each result says how its landmarks were obtained (``detected``, ``tracked``, ``none``) and how
many faces the full cascade saw in that frame (``n_faces``), counted only where it searched the
whole frame: the first frame of a video, and wherever the region around the face followed held no
face (None elsewhere: tracked frames, and detections around the face followed).

:func:`fill_gaps` then gives every frame without a face the landmarks of its nearest good
neighbours in time (``interpolated`` between the two sides, ``carried`` from the one side there is),
so that every frame of a video keeps a crop; the row says which.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeGuard, TypeVar

import cv2
import numpy as np

from affbench.faces.detection import Face, FaceDetector, select_face
from affbench.faces.sources import FALLBACK_SOURCES, LANDMARK_SOURCES

__all__ = ["FALLBACK_SOURCES", "LANDMARK_SOURCES", "FaceTracker", "TrackedFace", "TrackerSettings", "fill_gaps"]

#: A stream's frame: an image, or None where a frame could not be read.
FrameT = TypeVar("FrameT", bound="np.ndarray | None")


@dataclass(frozen=True)
class TrackerSettings:
    """How :class:`FaceTracker` follows a face through a video; every field goes in the manifest.

    ``tracking``: False runs the full cascade on every frame (batched) instead of tracking.
    ``detect_max_side``: full detections run on a copy of the frame downscaled so that its longer
    side is at most this many pixels (0: full size); ``DetectorSettings.min_face_size`` is then
    counted in that copy's pixels. A detected frame keeps the cascade's own landmarks (scaled back);
    a tracked frame's come from O-Net on a full-resolution crop at the previous frame's box.
    ``refine_passes``: at most this many O-Net passes per frame, each starting from the box the
    pass before regressed; another pass runs only while the box still moves by more than
    ``refine_tolerance`` of its side. ``redetect_every``: an anchor (full cascade) at least every N
    frames (0: only at the end of each batch). ``anchor_tolerance``: the largest distance between a
    frame's forward and backward landmarks, as a fraction of the eye distance, that confirms them.
    ``detection_tolerance``: a detected frame takes the landmarks of O-Net re-run on the cascade's
    box (the kind a tracked frame has) only where they lie within this fraction of the eye distance
    of the cascade's own; else it keeps the cascade's own.
    ``max_size_change`` and ``max_roll_change``: the geometry check of every tracked frame against
    the last full detection (0 switches a check off).
    ``local_margin``, ``local_smallest`` and ``local_face_side``: where the face of a nearby frame
    is known (anchors, frames that failed a check), the full cascade searches only the square of
    ``local_margin`` times that face's box around it, at full resolution (a face larger than
    ``local_face_side`` pixels shrunk to about that), for faces of at least ``local_smallest`` times
    its side (:meth:`~affbench.faces.detection.FaceDetector.detect_near`); the whole frame
    (downscaled) only where there is no such face, or the region holds none or cuts it
    (``local_margin`` 0: always the whole frame).
    """

    tracking: bool = True
    detect_max_side: int = 640
    refine_passes: int = 2
    refine_tolerance: float = 0.03
    redetect_every: int = 16
    anchor_tolerance: float = 0.1
    detection_tolerance: float = 0.1
    max_size_change: float = 0.2
    max_roll_change: float = 12.0
    local_margin: float = 2.5
    local_smallest: float = 0.5
    local_face_side: int = 96

    def __post_init__(self) -> None:
        numbers = (self.detect_max_side, self.refine_tolerance, self.redetect_every, self.anchor_tolerance,
                   self.detection_tolerance, self.max_size_change, self.max_roll_change, self.local_margin,
                   self.local_smallest, self.local_face_side)
        if self.refine_passes < 1 or any(v < 0 for v in numbers):
            raise ValueError(f"invalid tracker settings {self}")

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the tracker: the method in words and every setting."""
        if not self.tracking:
            method = "full MTCNN cascade (on a downscaled frame) on every frame, its own landmarks"
        else:
            method = ("track with MTCNN O-Net on full-resolution crops at the previous face box; each tracked "
                      "frame is checked against the last full detection (eye distance, eye-mouth distance, "
                      "roll) and confirmed by tracking backwards from the next full detection (every "
                      "redetect_every frames and at each batch end); frames that fail get the full cascade, "
                      "whose own landmarks they keep; full detections search the region around the face "
                      "followed at full resolution (local_margin), the whole downscaled frame where there is "
                      "none or it holds no face")
        return {"method": method, **asdict(self)}


@dataclass(frozen=True)
class TrackedFace:
    """The face chosen in one frame and how its landmarks were obtained (``method``, one of
    :data:`LANDMARK_SOURCES`); ``n_faces``: faces the full cascade saw in this whole frame, None
    where it did not search the whole frame."""

    face: Face | None
    method: str
    n_faces: int | None = None


@dataclass(frozen=True)
class FaceGeometry:
    """What a face's five landmarks say about its size and roll."""

    eye_distance: float
    eye_mouth: float  # from the eyes' midpoint to the mouth corners' midpoint
    roll: float  # degrees, of the line from the left to the right eye

    @classmethod
    def of(cls, landmarks: np.ndarray) -> FaceGeometry:
        """The geometry of five landmarks, (5, 2) or (10,) in pixels."""
        marks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        eyes = marks[1] - marks[0]
        mid_eye, mid_mouth = marks[:2].mean(axis=0), marks[3:].mean(axis=0)
        return cls(float(np.hypot(*eyes)), float(np.linalg.norm(mid_mouth - mid_eye)),
                   math.degrees(math.atan2(eyes[1], eyes[0])))


def landmark_disagreement(a: Face, b: Face) -> float:
    """The largest distance between two faces' corresponding landmarks, as a fraction of ``b``'s
    eye distance."""
    scale = max(FaceGeometry.of(b.landmarks).eye_distance, 1e-6)
    return float(np.linalg.norm(np.asarray(a.landmarks) - np.asarray(b.landmarks), axis=1).max()) / scale


def _cut(box: np.ndarray, region: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether a face box reaches an edge of the searched region that is not the image's edge
    (the region may have cut the face there)."""
    height, width = shape[:2]
    x1, y1, x2, y2 = np.asarray(box)[:4]
    left, top, right, bottom = region
    return bool((left > 0 and x1 <= left) or (top > 0 and y1 <= top)
                or (right < width and x2 >= right) or (bottom < height and y2 >= bottom))


def _moved(before: np.ndarray, after: np.ndarray) -> float:
    """How far a box's corners moved, as a fraction of its side."""
    side = max(float(before[2] - before[0]), float(before[3] - before[1]), 1e-6)
    return float(np.abs(np.asarray(after[:4]) - np.asarray(before[:4])).max()) / side


class FaceTracker:
    """Follow one face through consecutive frames of a video, a batch of frames at a time.

    Feed it the frames in order (:meth:`track`, any batch size, or :meth:`follow` on a stream);
    call :meth:`reset` before another video. Where the full cascade finds several faces, the one
    nearest the previous frame's face is kept (:func:`~affbench.faces.select_face` without one).

    Examples
    --------
    >>> tracker = FaceTracker(FaceDetector())                       # doctest: +SKIP
    >>> for index, frame, result in fill_gaps(tracker.follow(video)):  # doctest: +SKIP
    ...     crop, _ = align_face(frame, result.face.landmarks, 256, AlignmentTemplate())
    """

    def __init__(self, detector: FaceDetector, settings: TrackerSettings = TrackerSettings()):
        self.detector = detector
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        """Forget the face followed so far (call before another video)."""
        self._last: Face | None = None  # the face of the latest frame that had one: the next seed
        self._reference: Face | None = None  # the latest full detection: the geometry check's reference
        self._since_detection = 0

    # -- building blocks

    def _accept(self, face: Face | None, shape: tuple[int, ...]) -> TypeGuard[Face]:
        """Whether ``face`` is a face to keep (never None): confident, centred in the frame, large
        enough and with finite landmarks."""
        if face is None:
            return False
        detector = self.detector.settings
        if face.score < max(detector.thresholds[2], detector.min_score):
            return False
        x1, y1, x2, y2 = face.box
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        inside = 0 <= cx < shape[1] and 0 <= cy < shape[0]
        return inside and min(x2 - x1, y2 - y1) >= 12 and bool(np.all(np.isfinite(face.landmarks)))

    def _consistent(self, face: Face) -> bool:
        """The geometry check: does this tracked face keep the last full detection's proportions?"""
        if self._reference is None:
            return True
        now, then = FaceGeometry.of(face.landmarks), FaceGeometry.of(self._reference.landmarks)
        limit = self.settings.max_size_change
        if limit > 0:
            for current, before in ((now.eye_distance, then.eye_distance), (now.eye_mouth, then.eye_mouth)):
                ratio = current / max(before, 1e-6)
                if not 1 / (1 + limit) <= ratio <= 1 + limit:
                    return False
        if self.settings.max_roll_change > 0:
            turned = abs((now.roll - then.roll + 180.0) % 360.0 - 180.0)
            if turned > self.settings.max_roll_change:
                return False
        return True

    def _refine(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[Face | None]:
        """O-Net passes, each from the box the pass before regressed, until the box moves less
        than ``refine_tolerance`` of its size (the face is where O-Net was looking)."""
        faces = self.detector.refine(frames, boxes)
        starts = [np.asarray(b, dtype=np.float64) for b in boxes]
        for _ in range(self.settings.refine_passes - 1):
            again = [(i, f) for i, (f, b) in enumerate(zip(faces, starts))
                     if f is not None and _moved(b, f.box) > self.settings.refine_tolerance]
            if not again:
                break
            redone = self.detector.refine([frames[i] for i, _ in again], [f.box for _, f in again])
            for (i, before), face in zip(again, redone):
                starts[i] = before.box
                faces[i] = face
        return faces

    def _downscale(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        longest = max(frame.shape[:2])
        limit = self.settings.detect_max_side
        if limit <= 0 or longest <= limit:
            return frame, 1.0
        scale = limit / longest
        size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
        small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        # the exact per-axis factors differ from `scale` by rounding; use the horizontal one
        return small, small.shape[1] / frame.shape[1]

    def _detect(self, frames: Sequence[np.ndarray], previous: Sequence[Face | None],
                consecutive: bool = False) -> list[TrackedFace]:
        """The full cascade, the face nearest ``previous[i]`` chosen in each frame (the largest
        without one), with the cascade's own landmarks. Where ``previous[i]`` is known and the
        frames are not ``consecutive``, the cascade searches only the region around it, at full
        resolution (:meth:`~affbench.faces.detection.FaceDetector.detect_near`); elsewhere, and
        where the region holds no face or cuts the one it holds, the whole frame, downscaled (one
        batch; ``n_faces`` is counted only there). ``consecutive``: the frames follow each other, so
        each one's choice follows the frame before's (``previous[0]`` for the first)."""
        if not frames:
            return []
        found: list[list[Face]] = [[] for _ in frames]
        whole_frame = [consecutive or before is None or self.settings.local_margin <= 0 for before in previous]
        for i, (frame, before) in enumerate(zip(frames, previous)):
            if not whole_frame[i]:
                assert before is not None  # whole_frame otherwise
                found[i], region = self.detector.detect_near(frame, before.box, margin=self.settings.local_margin,
                                                             smallest=self.settings.local_smallest,
                                                             face_side=self.settings.local_face_side)
                nearest = select_face(found[i], previous=before)
                whole_frame[i] = nearest is None or _cut(nearest.box, region, frame.shape)
        searched = [i for i, whole in enumerate(whole_frame) if whole]
        scaled = [self._downscale(frames[i]) for i in searched]
        for i, (_, scale), faces in zip(searched, scaled, self.detector.detect([small for small, _ in scaled])):
            found[i] = [f.scaled(1.0 / scale) for f in faces]
        chosen: list[Face | None] = []
        for faces, before in zip(found, previous):
            if consecutive and chosen:
                before = next((c for c in reversed(chosen) if c is not None), previous[0])
            chosen.append(select_face(faces, previous=before, image_shape=frames[len(chosen)].shape))
        # O-Net re-run on the cascade's own output box gives landmarks of the same kind as a tracked
        # frame's (so the crop does not jump where tracking and detection take turns), but O-Net
        # learned from R-Net's looser proposals: on its own tight box it can move the landmarks of
        # an occluded face by a fifth of the eye distance (issue 22). So the re-run is kept only
        # where it agrees with the cascade's own landmarks within detection_tolerance.
        which = [(i, face) for i, face in enumerate(chosen) if face is not None]
        refined = self._refine([frames[i] for i, _ in which], [face.box for _, face in which])
        for (i, own), again in zip(which, refined):
            if (self._accept(again, frames[i].shape)
                    and landmark_disagreement(again, own) <= self.settings.detection_tolerance):
                chosen[i] = again
        return [TrackedFace(face, "detected" if face is not None else "none", len(faces) if whole else None)
                for face, faces, whole in zip(chosen, found, whole_frame)]

    def _adopt(self, result: TrackedFace) -> None:
        """Make a full detection the seed and the geometry reference."""
        if result.face is not None:
            self._last = self._reference = result.face
        self._since_detection = 0

    # -- tracking

    def track(self, frames: Sequence[np.ndarray]) -> list[TrackedFace]:
        """The face of each of these consecutive frames, in order (see the module docstring)."""
        if not self.settings.tracking:
            return self._detect_every_frame(frames)
        n = len(frames)
        results = [TrackedFace(None, "none")] * n  # every entry is replaced in the loop below
        unconfirmed: list[int] = []  # tracked frames since the last anchor
        suspect: list[int] = []  # tracked frames an anchor did not confirm
        every = self.settings.redetect_every
        for i, frame in enumerate(frames):
            if self._last is None:  # nothing to track from: find the face here
                results[i] = self._detect([frame], [None])[0]
                self._adopt(results[i])
                unconfirmed = []
                continue
            tracked = self._refine([frame], [self._last.box])[0]
            # the tracked face where it passes both checks, else None
            kept = tracked if self._accept(tracked, frame.shape) and self._consistent(tracked) else None
            anchor = i == n - 1 or (every > 0 and self._since_detection + 1 >= every)
            if kept is not None and not anchor:
                results[i] = TrackedFace(kept, "tracked")
                self._last = kept
                self._since_detection += 1
                unconfirmed.append(i)
                continue
            detected = self._detect([frame], [kept if kept is not None else self._last])[0]
            if kept is None or detected.face is None or self._disagrees(kept, detected.face):
                suspect += unconfirmed  # the track failed, or drifted from what the cascade sees here
                results[i] = detected
                self._adopt(detected)
            else:  # confirmed: the track goes on from its own landmarks (see the module docstring)
                suspect += self._confirm(frames, results, unconfirmed, detected.face)
                results[i] = TrackedFace(kept, "tracked", detected.n_faces)
                self._last, self._reference, self._since_detection = kept, detected.face, 0
            unconfirmed = []
        if suspect:
            redone = self._detect([frames[i] for i in suspect], [results[i].face for i in suspect])
            for i, result in zip(suspect, redone):
                results[i] = result
        return results

    def _disagrees(self, tracked: Face, detected: Face) -> bool:
        return landmark_disagreement(tracked, detected) > self.settings.anchor_tolerance

    def _confirm(self, frames: Sequence[np.ndarray], results: list[TrackedFace], unconfirmed: list[int],
                 anchor: Face) -> list[int]:
        """Track backwards from a full detection through the frames tracked since the previous
        one; return those where the two directions disagree (or the backward track is lost)."""
        suspect: list[int] = []
        seed = anchor
        for k in range(len(unconfirmed) - 1, -1, -1):
            i = unconfirmed[k]
            back = self._refine([frames[i]], [seed.box])[0]
            if back is None or not self._accept(back, frames[i].shape):
                return suspect + unconfirmed[: k + 1]
            forward = results[i].face
            assert forward is not None  # a tracked frame: it kept the face it was tracked to
            if self._disagrees(forward, back):
                suspect.append(i)
            seed = back
        return suspect

    def _detect_every_frame(self, frames: Sequence[np.ndarray]) -> list[TrackedFace]:
        results = self._detect(frames, [self._last] * len(frames), consecutive=True)
        for result in results:
            self._adopt(result)
        return results

    def follow(
        self, frames: Iterable[tuple[int, np.ndarray]], batch_size: int | None = None
    ) -> Iterator[tuple[int, np.ndarray, TrackedFace]]:
        """Track through a stream of ``(index, frame)`` (a :class:`~affbench.faces.video.VideoReader`),
        yielding ``(index, frame, TrackedFace)`` in order; only one batch is held at a time."""
        size = max(1, batch_size or self.detector.settings.batch_size)
        batch: list[tuple[int, np.ndarray]] = []
        for item in frames:
            batch.append(item)
            if len(batch) == size:
                yield from self._follow_batch(batch)
                batch = []
        if batch:
            yield from self._follow_batch(batch)

    def _follow_batch(self, batch: list[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray, TrackedFace]]:
        results = self.track([frame for _, frame in batch])
        for (index, frame), result in zip(batch, results):
            yield index, frame, result


# ----------------------------------------------------------------------------------------- gaps


def fill_gaps(
    stream: Iterable[tuple[int, FrameT, TrackedFace]], max_hold: int = 100
) -> Iterator[tuple[int, FrameT, TrackedFace]]:
    """Give every faceless frame of a tracked stream the landmarks of its nearest good frames.

    A run of frames without a face between two frames with one gets landmarks (and box)
    interpolated linearly in time between them (``interpolated``); a run with a face on one side
    only (the start or end of the video) gets that side's landmarks (``carried``). Frames are held
    until the run ends, at most ``max_hold`` of them (memory: one decoded frame each): past that the
    held frames are carried from the face before the run, or, at the start of a video, stay
    ``none``. ``n_faces`` is kept. A stream without any face passes through unchanged.
    """
    held: deque[tuple[int, FrameT, TrackedFace]] = deque()
    before: Face | None = None
    for item in stream:
        face = item[2].face
        if face is None:
            held.append(item)
            if len(held) > max_hold:
                yield _fallback(held.popleft(), before, None, 0.0)
            continue
        total = len(held) + 1
        for k, waiting in enumerate(held, start=1):
            yield _fallback(waiting, before, face, k / total)
        held.clear()
        before = face
        yield item
    while held:
        yield _fallback(held.popleft(), before, None, 0.0)


def _fallback(item: tuple[int, FrameT, TrackedFace], before: Face | None, after: Face | None,
              t: float) -> tuple[int, FrameT, TrackedFace]:
    index, frame, result = item
    if frame is None:  # an unreadable frame: nothing to crop
        return item
    if before is not None and after is not None:
        face = Face(box=(1 - t) * before.box + t * after.box, score=float("nan"),
                    landmarks=(1 - t) * before.landmarks + t * after.landmarks)
        return index, frame, replace(result, face=face, method="interpolated")
    side = before if before is not None else after
    if side is None:
        return item
    face = Face(box=side.box, score=float("nan"), landmarks=side.landmarks)
    return index, frame, replace(result, face=face, method="carried")
