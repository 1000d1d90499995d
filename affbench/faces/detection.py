"""Face detection (MTCNN from facenet-pytorch), the choice among several faces, crop rows.

Every pipeline aligns the chosen face by its five MTCNN landmarks (:mod:`affbench.faces.alignment`: the
template, the eye-weighted similarity fit and the anti-aliased, constant-border warp).

MTCNN's last stage (O-Net) places the five landmarks from a 48x48 resampling of the face box, so
:meth:`FaceDetector.refine` can run it alone on boxes from elsewhere; videos use that to track a
face cheaply (:mod:`affbench.faces.tracking`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from affbench.runtime.devices import resolve_device

# ----------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Face:
    """One detection in source pixels."""

    box: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2)

    @property
    def area(self) -> float:
        """The box's area in square pixels (0 for a degenerate box)."""
        x1, y1, x2, y2 = self.box
        return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))

    @property
    def centre(self) -> np.ndarray:
        """The box's centre ``(x, y)``."""
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])

    def scaled(self, factor: float | Sequence[float], offset: Sequence[float] = (0.0, 0.0)) -> Face:
        """The same face in other coordinates: ``p * factor + offset``; ``factor`` is one number
        or one per axis, ``(x, y)`` (a crop resized to another aspect)."""
        xy = np.broadcast_to(np.asarray(factor, dtype=np.float64), (2,))
        off = np.asarray(offset, dtype=np.float64)
        return Face(
            box=self.box * np.tile(xy, 2) + np.tile(off, 2),
            score=self.score,
            landmarks=self.landmarks * xy + off,
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

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the detector: its name and every setting."""
        return {"detector": "facenet-pytorch MTCNN", **asdict(self)}


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
        if self.device == "cpu":
            import torch

            # PyTorch's CPU max-pooling of NCHW tensors is several times slower than of channels-last
            # ones: R- and O-Net on a batch of candidates 2-3x faster, the cascade around a face 1.5x,
            # the same outputs (issue 22; a lone O-Net pass on one box gains nothing)
            for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
                net.to(memory_format=torch.channels_last)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Every face MTCNN finds in each image.

        Parameters
        ----------
        images : sequence of ndarray
            RGB uint8 images (H x W x 3), of any sizes.

        Returns
        -------
        list of list of Face
            Per image, in order, its faces (in source pixels) whose score is at least
            ``settings.min_score``.

        Raises
        ------
        ValueError
            When an image is not RGB uint8.
        """
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

    def detect_each(self, images: Sequence[np.ndarray | None]) -> tuple[dict[int, list[Face]], dict[int, str]]:
        """Faces of each image that is not None, by index, and the error of each image MTCNN could
        not take. The images go in batches; where a batch fails, each image is detected alone, so
        that one image MTCNN cannot take (a 5x5 thumbnail) loses only its own faces."""
        readable = {i: rgb for i, rgb in enumerate(images) if rgb is not None}
        try:
            return dict(zip(readable, self.detect(list(readable.values())))), {}
        except Exception:  # noqa: BLE001 - narrowed to the failing image below
            pass
        found: dict[int, list[Face]] = {}
        errors: dict[int, str] = {}
        for i, rgb in readable.items():
            try:
                found[i] = self.detect([rgb])[0]
            except Exception as exc:  # noqa: BLE001 - the image keeps its row, without a face
                errors[i] = self._why_not(rgb, exc)
        return found, errors

    def _why_not(self, rgb: np.ndarray, exc: Exception) -> str:
        """Why MTCNN could not take an image, in words where the reason is known."""
        height, width = rgb.shape[:2]
        if min(height, width) < self.settings.min_face_size:
            return (f"the image is {width} x {height} pixels, smaller than the smallest face MTCNN looks for "
                    f"({self.settings.min_face_size} pixels)")
        return f"{type(exc).__name__}: {exc}"

    def detect_near(self, image: np.ndarray, box: np.ndarray, *, margin: float = 2.5, smallest: float = 0.5,
                    face_side: int = 96) -> tuple[list[Face], np.ndarray]:
        """The faces the full cascade finds in the region around ``box``, at full resolution.

        A video's face moves little between frames, so the cascade need not search the whole frame
        for faces of every size: it runs on the square of side ``margin`` times the box's longer
        side around the box's centre (clipped to the image), for faces from ``smallest`` times
        that side up. The pyramid keeps the scales the whole-image cascade would use (the same
        ``min_face_size`` and ``factor``), only those too fine for such faces are left out, so a
        face found here is found as :meth:`detect` finds it on the whole image; the cost no longer
        grows with the frame's size. A face larger than ``face_side`` pixels is searched in a copy
        of the region shrunk by a power of ``factor`` (so that the pyramid's scales stay the same),
        to no less than ``face_side`` (O-Net sees 48): every resampling of a candidate box then
        starts from a few hundred pixels, not a million.

        Returns the faces (in the image's pixels) and the region searched, ``(x1, y1, x2, y2)``;
        a face whose box reaches the region's edge inside the image may have been cut by it.
        """
        height, width = image.shape[:2]
        x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)[:4]
        side = max(x2 - x1, y2 - y1, 1.0)
        half = margin * side / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = max(0, int(cx - half)), max(0, int(cy - half))
        right, bottom = min(width, int(math.ceil(cx + half))), min(height, int(math.ceil(cy + half)))
        region = np.array([left, top, right, bottom], dtype=np.float64)
        if min(right - left, bottom - top) < 12:  # smaller than P-Net's window
            return [], region
        # the whole-image pyramid is (12 / min_face_size) * factor**k; start at its first scale that
        # is coarse enough for faces of smallest * side (faces of 12 / scale pixels fill P-Net's window)
        factor = self.settings.factor
        scale = 12.0 / self.settings.min_face_size
        while scale * factor * smallest * side >= 12.0:
            scale *= factor
        shrink = 1.0  # a power of factor, no finer than the pyramid's first scale
        while shrink * factor * side >= face_side and shrink * factor >= scale:
            shrink *= factor
        crop = image[top:bottom, left:right]
        if shrink < 1.0:
            size = (max(1, round((right - left) * shrink)), max(1, round((bottom - top) * shrink)))
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        faces = self._detect_batch(np.ascontiguousarray(crop)[None], min_face_size=12.0 * shrink / scale)[0]
        back = ((right - left) / crop.shape[1], (bottom - top) / crop.shape[0])
        return [face.scaled(back, (left, top)) for face in faces], region

    def _detect_batch(self, batch: np.ndarray, min_face_size: float | None = None) -> list[list[Face]]:
        import torch
        from facenet_pytorch.models.utils.detect_face import detect_face

        mtcnn = self._mtcnn
        with torch.inference_mode():
            found, points = detect_face(batch, min_face_size or self.settings.min_face_size, mtcnn.pnet, mtcnn.rnet,
                                        mtcnn.onet, list(self.settings.thresholds), self.settings.factor, self.device)
        out: list[list[Face]] = []
        for b, marks5 in zip(found, points):
            b = np.asarray(b, dtype=np.float64).reshape(-1, 5)
            marks5 = np.asarray(marks5, dtype=np.float64).reshape(-1, 5, 2)
            faces = [Face(box=row[:4].copy(), score=float(row[4]), landmarks=marks)
                     for row, marks in zip(b, marks5) if row[4] >= self.settings.min_score]
            out.append(sorted(faces, key=lambda face: -face.area))  # largest first, as MTCNN.detect orders them
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
            box_square = _square(np.asarray(box, dtype=np.float64))
            patch = _crop_for_onet(image, box_square)
            squared.append(box_square if patch is not None else None)
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


#: "largest" keeps the largest face only where its area is at least this many times the next
#: one's; closer sizes are a tie (a 1.5% difference is a coin toss between two people).
SIZE_MARGIN = 1.25
#: "prob" keeps the most confident face only where its score beats the next by this much; MTCNN's
#: scores of clear faces all lie between 0.999 and 1, so closer scores are a tie.
SCORE_MARGIN = 0.01


def select_face(
    faces: Sequence[Face],
    strategy: str = "largest",
    previous: Face | None = None,
    image_shape: Sequence[int] | None = None,
) -> Face | None:
    """Pick one face, by a rule that does not flip between near-equal faces.

    With ``previous`` (video): the face nearest it. Else ``largest``: the largest face if its area
    is at least :data:`SIZE_MARGIN` times every other's; where several are that close in size, the
    one among them whose centre is nearest the image centre (``image_shape``, (height, width, ...);
    without it the largest). ``prob``: the most confident face if its score beats every other's by
    :data:`SCORE_MARGIN`; where several are that close, the ``largest`` rule among them.
    """
    if not faces:
        return None
    if previous is not None:
        return min(faces, key=lambda f: float(np.linalg.norm(f.centre - previous.centre)))
    if strategy == "prob":
        best = max(f.score for f in faces)
        faces = [f for f in faces if f.score > best - SCORE_MARGIN]
    elif strategy != "largest":
        raise ValueError(f"unknown face selection {strategy!r}; use 'largest' or 'prob'")
    largest = max(f.area for f in faces)
    close = [f for f in faces if f.area * SIZE_MARGIN > largest]
    if len(close) == 1 or image_shape is None:
        return max(close, key=lambda f: f.area)
    centre = np.array([image_shape[1] / 2, image_shape[0] / 2])
    return min(close, key=lambda f: float(np.linalg.norm(f.centre - centre)))
