"""Face detection (MTCNN from facenet-pytorch), video face tracking, crop rows.

Every pipeline aligns the chosen face by its five MTCNN landmarks (:mod:`affbench.align`: the
template, the eye-weighted similarity fit and the anti-aliased, constant-border warp).

Videos go through :class:`FaceTracker`: MTCNN's last stage (O-Net) places the five landmarks from a
48x48 resampling of the face box, so once a face is known, running O-Net alone on full-resolution
crops at the previous frame's box gives landmarks of the same quality as the full three-stage
cascade, at a small fraction of its cost. The full cascade runs (on a downscaled copy of the frame)
only where tracking has no face to start from, where O-Net rejects the tracked box, and every
``redetect_every`` frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from affbench.align import (  # noqa: F401  (the alignment API, also importable from here)
    ARCFACE_TEMPLATE,
    AlignmentTemplate,
    align_face,
    alignment_matrix,
    similarity_transform,
    transform_points,
)

# ----------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Face:
    """One detection in source pixels."""

    box: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])

    def scaled(self, factor: float, offset: Sequence[float] = (0.0, 0.0)) -> Face:
        """The same face in other coordinates: ``p * factor + offset``."""
        off = np.asarray(offset, dtype=np.float64)
        return Face(
            box=self.box * factor + np.tile(off, 2),
            score=self.score,
            landmarks=self.landmarks * factor + off,
        )


@dataclass(frozen=True)
class DetectorSettings:
    """MTCNN settings; every field is recorded in the manifest.

    ``thresholds`` are the P-, R- and O-Net cuts (facenet-pytorch's defaults); ``min_score`` is an
    extra cut on the final probability, 0 keeping whatever O-Net accepted.
    """

    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    min_score: float = 0.0
    batch_size: int = 16

    def describe(self) -> dict:
        return {"detector": "facenet-pytorch MTCNN", **asdict(self)}


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; a clear error for a missing GPU."""
    import torch

    from affbench.errors import AffbenchError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AffbenchError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine.")
    if device not in {"cpu"} and not device.startswith("cuda"):
        raise AffbenchError(f"Unknown device {device!r}; use auto, cpu or cuda.")
    return device


@dataclass
class FaceDetector:
    """Batched MTCNN. ``detect`` takes RGB uint8 images and returns every face found in each.

    Images of equal size are stacked into one batch (MTCNN's pyramid needs equal sizes);
    different sizes go in separate batches.
    """

    settings: DetectorSettings = field(default_factory=DetectorSettings)
    device: str = "cpu"

    def __post_init__(self) -> None:
        from facenet_pytorch import MTCNN

        self.device = resolve_device(self.device)
        self._mtcnn = MTCNN(
            min_face_size=self.settings.min_face_size,
            thresholds=list(self.settings.thresholds),
            factor=self.settings.factor,
            keep_all=True,
            post_process=False,
            device=self.device,
        )

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        results: list[list[Face] | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an RGB uint8 image, got {image.shape} {image.dtype}")
            by_shape.setdefault(image.shape, []).append(index)
        step = max(1, self.settings.batch_size)
        for indices in by_shape.values():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                batch = np.stack([images[i] for i in chunk])
                for i, faces in zip(chunk, self._detect_batch(batch)):
                    results[i] = faces
        return [r if r is not None else [] for r in results]

    def _detect_batch(self, batch: np.ndarray) -> list[list[Face]]:
        import torch

        with torch.inference_mode():
            boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
        out: list[list[Face]] = []
        for b, p, l in zip(boxes, probs, points):
            faces = []
            if b is not None:
                b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
                p = np.asarray(p, dtype=np.float64).reshape(-1)
                l = np.asarray(l, dtype=np.float64).reshape(-1, 5, 2)
                for box, prob, marks in zip(b, p, l):
                    if prob >= self.settings.min_score:
                        faces.append(Face(box=box, score=float(prob), landmarks=marks))
            out.append(faces)
        return out

    def refine(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[Face | None]:
        """Run MTCNN's output network (O-Net) alone on each image inside the given box.

        This is the cascade's third stage applied to boxes from elsewhere (the previous video frame,
        a detection on a downscaled copy): the box is squared, cropped from the full-resolution
        image (clipped at the borders, as facenet-pytorch does), resampled to 48x48, and O-Net
        returns the face probability, a regressed box and the five landmarks. Every box gets a
        :class:`Face` whatever its score (the caller applies the threshold); None where the box lies
        outside the image.
        """
        import torch

        if len(images) != len(boxes):
            raise ValueError("refine needs one box per image")
        squared: list[np.ndarray | None] = []
        patches: list[np.ndarray] = []
        for image, box in zip(images, boxes):
            square = _square(np.asarray(box, dtype=np.float64))
            patch = _crop_for_onet(image, square)
            squared.append(square if patch is not None else None)
            if patch is not None:
                patches.append(patch)
        results: list[Face | None] = [None] * len(images)
        if not patches:
            return results
        outputs = []
        step = max(1, self.settings.batch_size)
        with torch.inference_mode():
            for start in range(0, len(patches), step):
                batch = torch.as_tensor(np.stack(patches[start : start + step]), device=self.device)
                batch = (batch.permute(0, 3, 1, 2).float() - 127.5) * 0.0078125
                reg, points, prob = self._mtcnn.onet(batch)
                outputs.append((reg.cpu().numpy(), points.cpu().numpy(), prob[:, 1].cpu().numpy()))
        reg = np.concatenate([o[0] for o in outputs]).astype(np.float64)
        points = np.concatenate([o[1] for o in outputs]).astype(np.float64)
        prob = np.concatenate([o[2] for o in outputs]).astype(np.float64)
        k = 0
        for i, square in enumerate(squared):
            if square is None:
                continue
            # facenet-pytorch's conventions (1-based pixel boxes, +1 widths), kept so that
            # refined landmarks agree with those of MTCNN.detect.
            w = square[2] - square[0] + 1
            h = square[3] - square[1] + 1
            marks = np.stack([w * points[k, :5] + square[0] - 1, h * points[k, 5:] + square[1] - 1], axis=1)
            box = square + reg[k] * np.array([w, h, w, h])
            results[i] = Face(box=box, score=float(prob[k]), landmarks=marks)
            k += 1
        return results


def _square(box: np.ndarray) -> np.ndarray:
    """The square of side max(w, h) with the same centre (MTCNN's ``rerec``)."""
    x1, y1, x2, y2 = box[:4]
    w, h = x2 - x1, y2 - y1
    side = max(w, h)
    x1, y1 = x1 + w / 2 - side / 2, y1 + h / 2 - side / 2
    return np.array([x1, y1, x1 + side, y1 + side], dtype=np.float64)


def _crop_for_onet(image: np.ndarray, square: np.ndarray) -> np.ndarray | None:
    height, width = image.shape[:2]
    if not np.all(np.isfinite(square)):
        return None
    x1, y1, x2, y2 = (int(v) for v in np.trunc(square))
    x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, width), min(y2, height)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return cv2.resize(image[y1 - 1 : y2, x1 - 1 : x2], (48, 48), interpolation=cv2.INTER_AREA)


_SHARED: dict[tuple[DetectorSettings, str], FaceDetector] = {}


def shared_detector(settings: DetectorSettings = DetectorSettings(), device: str = "auto") -> FaceDetector:
    """One :class:`FaceDetector` per settings and device in this process (loading MTCNN takes a
    second), so that a worker process running many units loads it once."""
    resolved = resolve_device(device)
    key = (settings, resolved)
    if key not in _SHARED:
        _SHARED[key] = FaceDetector(settings=settings, device=resolved)
    return _SHARED[key]


def _moved(before: np.ndarray, after: np.ndarray) -> float:
    """How far a box's corners moved, as a fraction of its side."""
    side = max(float(before[2] - before[0]), float(before[3] - before[1]), 1e-6)
    return float(np.abs(np.asarray(after[:4]) - np.asarray(before[:4])).max()) / side


def select_face(faces: Sequence[Face], strategy: str = "largest", previous: Face | None = None) -> Face | None:
    """Pick one face: the one nearest ``previous`` when given, else the largest or most confident."""
    if not faces:
        return None
    if previous is not None:
        return min(faces, key=lambda f: float(np.linalg.norm(f.centre - previous.centre)))
    if strategy == "largest":
        return max(faces, key=lambda f: f.area)
    if strategy == "prob":
        return max(faces, key=lambda f: f.score)
    raise ValueError(f"unknown face selection {strategy!r}; use 'largest' or 'prob'")


# ----------------------------------------------------------------------------------------- tracking


@dataclass(frozen=True)
class TrackerSettings:
    """How :class:`FaceTracker` follows a face through a video; every field goes in the manifest.

    ``detect_max_side``: full detections run on a copy of the frame downscaled so that its longer
    side is at most this many pixels (0: full size); ``DetectorSettings.min_face_size`` is then
    counted in that copy's pixels. The landmarks always come from O-Net on full-resolution crops.
    ``refine_passes``: at most this many O-Net passes per frame, each starting from the box the
    pass before regressed (the first from the last frame's box); another pass runs only while the
    box still moves by more than ``refine_tolerance`` of its side. ``redetect_every``: run the full
    cascade on every N-th frame even while tracking holds (0: only when tracking is lost).
    """

    detect_max_side: int = 384
    refine_passes: int = 2
    refine_tolerance: float = 0.03
    redetect_every: int = 100

    def __post_init__(self) -> None:
        if self.detect_max_side < 0 or self.refine_passes < 1 or self.refine_tolerance < 0 or self.redetect_every < 0:
            raise ValueError(f"invalid tracker settings {self}")

    def describe(self) -> dict:
        return {
            "method": "track with MTCNN O-Net on full-resolution crops at the previous face box; "
            "full MTCNN cascade on a downscaled frame when there is no face to track, when O-Net "
            "rejects the tracked box, and every redetect_every frames",
            **asdict(self),
        }


@dataclass(frozen=True)
class TrackedFace:
    """The face chosen in one frame and how it was found: ``tracked`` (O-Net from the previous
    box), ``detected`` (full cascade, then O-Net refinement) or ``none`` (no face)."""

    face: Face | None
    method: str
    candidates: int = 0  # faces the full cascade found in this frame (0 where it did not run)


class FaceTracker:
    """Follow one face through consecutive frames of a video, a batch of frames at a time.

    Feed it the frames in order (:meth:`track`, any batch size); call :meth:`reset` before another
    video. Where the full cascade finds several faces, the one nearest the previous frame's face is
    kept (the largest one when there is no previous face).

    Examples
    --------
    >>> tracker = FaceTracker(FaceDetector())                       # doctest: +SKIP
    >>> for batch in batches_of_rgb_frames:                         # doctest: +SKIP
    ...     for result in tracker.track(batch):
    ...         crop, _ = align_face(frame, result.face.landmarks, 256, AlignmentTemplate())
    """

    def __init__(self, detector: FaceDetector, settings: TrackerSettings = TrackerSettings()):
        self.detector = detector
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        self._last: Face | None = None
        self._index = 0

    def _accept(self, face: Face | None, shape: tuple[int, ...]) -> bool:
        if face is None:
            return False
        detector = self.detector.settings
        if face.score < max(detector.thresholds[2], detector.min_score):
            return False
        x1, y1, x2, y2 = face.box
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        inside = 0 <= cx < shape[1] and 0 <= cy < shape[0]
        return inside and min(x2 - x1, y2 - y1) >= 12 and np.all(np.isfinite(face.landmarks))

    def _refine(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[Face | None]:
        """O-Net passes, each from the box the pass before regressed, until the box moves less
        than ``refine_tolerance`` of its size (the face is where O-Net was looking)."""
        faces = self.detector.refine(frames, boxes)
        starts = [np.asarray(b, dtype=np.float64) for b in boxes]
        for _ in range(self.settings.refine_passes - 1):
            again = [i for i, (f, b) in enumerate(zip(faces, starts)) if f is not None and _moved(b, f.box) > self.settings.refine_tolerance]
            if not again:
                break
            redone = self.detector.refine([frames[i] for i in again], [faces[i].box for i in again])
            for i, face in zip(again, redone):
                starts[i] = faces[i].box
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

    def follow(
        self, frames: Iterable[tuple[int, np.ndarray]], batch_size: int | None = None
    ) -> Iterator[tuple[int, np.ndarray, TrackedFace]]:
        """Track through a stream of ``(index, frame)`` (a :class:`~affbench.video.VideoReader`),
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

    def _detect_all(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        """The full cascade on downscaled copies, batched; faces in source pixels."""
        scaled = [self._downscale(frame) for frame in frames]
        found = self.detector.detect([small for small, _ in scaled])
        return [[f.scaled(1.0 / scale) for f in faces] for (_, scale), faces in zip(scaled, found)]

    def _detect_one(self, frame: np.ndarray, previous: Face | None) -> TrackedFace:
        return self._choose(frame, self._detect_all([frame])[0], previous)

    def _choose(self, frame: np.ndarray, faces: list[Face], previous: Face | None,
                fallback: TrackedFace | None = None) -> TrackedFace:
        """Keep the face nearest ``previous`` (the largest without one) and refine it at full
        resolution; ``fallback`` (the tracked result) stands where the cascade finds nothing."""
        chosen = select_face(faces, previous=previous)
        if chosen is None:
            return fallback if fallback is not None else TrackedFace(None, "none", 0)
        refined = self._refine([frame], [chosen.box])[0]
        face = refined if self._accept(refined, frame.shape) else chosen
        return TrackedFace(face, "detected", len(faces))

    def track(self, frames: Sequence[np.ndarray]) -> list[TrackedFace]:
        """The face of each of these consecutive frames, in order.

        Each frame is first tracked from the face of the frame before (O-Net alone, one small
        forward pass per refinement); the frames where that fails, or where a periodic re-detection
        is due, then go through the full cascade together, as one batch.
        """
        n = len(frames)
        results: list[TrackedFace | None] = [None] * n
        every = self.settings.redetect_every
        due = [every > 0 and (self._index + i) % every == 0 for i in range(n)]
        seed = self._last
        for i, frame in enumerate(frames):
            if seed is None:  # nothing to track from: find the face here, then track from it
                results[i] = self._detect_one(frame, None)
                seed = results[i].face
                continue
            face = self._refine([frame], [seed.box])[0]
            if self._accept(face, frame.shape):
                results[i] = TrackedFace(face, "tracked")
                seed = face
        pending = [i for i in range(n) if results[i] is None or (due[i] and results[i].method == "tracked")]
        if pending:
            found = self._detect_all([frames[i] for i in pending])
            for i, faces in zip(pending, found):
                if results[i] is not None:  # a periodic re-detection where tracking holds
                    previous = results[i].face
                else:
                    earlier = (r.face for r in reversed(results[:i]) if r is not None and r.face is not None)
                    previous = next(earlier, self._last)
                results[i] = self._choose(frames[i], faces, previous, fallback=results[i])
        final = [r if r is not None else TrackedFace(None, "none") for r in results]
        for r in reversed(final):
            if r.face is not None:
                self._last = r.face
                break
        self._index += n
        return final


def face_crop_columns(
    image: np.ndarray,
    face: Face | None,
    *,
    size: int,
    template: AlignmentTemplate,
    codec: str = "png",
    quality: int = 95,
    path: str | None = None,
) -> dict:
    """The face columns of a shard row (schema v1) for one image and its chosen face.

    ``path`` is the name stored beside the image bytes (Hugging Face ``datasets`` shows it as the
    image's file name). Without a face the row keeps ``face_found=False`` and nulls: no image, box
    or landmarks.
    """
    from affbench.shards import encode_image

    if face is None:
        return {"image": None, "width": None, "height": None, "face_found": False,
                "det_score": None, "box": None, "landmarks": None}
    crop, _ = align_face(image, face.landmarks, size, template)
    return {
        "image": {"bytes": encode_image(crop, codec, quality=quality), "path": path},
        "width": size,
        "height": size,
        "face_found": True,
        "det_score": float(face.score),
        "box": [float(v) for v in face.box[:4]],
        "landmarks": [float(v) for v in np.asarray(face.landmarks).reshape(-1)],
    }
