"""Face detection (MTCNN from facenet-pytorch), 5-point similarity alignment and cropping.

Every pipeline aligns faces the same way: the five MTCNN landmarks (eye centres, nose tip, mouth
corners) are mapped onto one fixed template by the least-squares similarity transform (rotation,
uniform scale, translation; Umeyama 1991), and the crop is cut with that transform. Because the
transform is a pure function of the landmarks, the template and the crop size (all recorded in each
manifest), a crop's landmark positions can be recomputed later without detecting again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

#: The five-point template of the ArcFace/InsightFace 112x112 crop, divided by 112: left eye,
#: right eye, nose tip, left mouth corner, right mouth corner, as (x, y) fractions of the crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
) / 112.0


@dataclass(frozen=True)
class AlignmentTemplate:
    """Where the five landmarks land in the crop.

    ``face_scale`` shrinks the ArcFace template about the crop centre so that more of the forehead
    and chin stays in view (AU1/AU2 live above the brows, AU17/AU26 at the chin); ``shift_y`` moves
    it down by a fraction of the crop.
    """

    face_scale: float = 0.8
    shift_y: float = 0.0

    def points(self, size: int) -> np.ndarray:
        """The template in pixel coordinates of a ``size`` x ``size`` crop, shape (5, 2)."""
        centred = (ARCFACE_TEMPLATE - 0.5) * self.face_scale + 0.5
        centred = centred + np.array([0.0, self.shift_y])
        return centred * size

    def describe(self, size: int) -> dict:
        """What a manifest records about the alignment."""
        return {
            "method": "similarity (Umeyama least squares) from 5 MTCNN landmarks",
            "base_template": "arcface-112",
            **asdict(self),
            "size": size,
            "points": np.round(self.points(size), 4).tolist(),
        }


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` points.

    Parameters
    ----------
    src, dst : ndarray of shape (n, 2)
        Corresponding points, n >= 2.

    Returns
    -------
    ndarray of shape (2, 3)
        The affine matrix ``[s*R | t]`` as used by :func:`cv2.warpAffine`.

    Examples
    --------
    >>> src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> m = similarity_transform(src, 2 * src + 5)
    >>> np.round(m, 6).tolist()
    [[2.0, 0.0, 5.0], [0.0, 2.0, 5.0]]
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching (n, 2) point sets with n >= 2, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0  # a reflection is not a similarity
    rotation = u @ np.diag(sign) @ vt
    src_var = (src_c**2).sum() / len(src)
    scale = (singular * sign).sum() / src_var if src_var > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (n, 2) points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks: np.ndarray, size: int, template: AlignmentTemplate) -> np.ndarray:
    """The transform that puts these 5 landmarks onto the template of a ``size`` crop."""
    return similarity_transform(np.asarray(landmarks).reshape(5, 2), template.points(size))


def align_face(
    image: np.ndarray, landmarks: np.ndarray, size: int, template: AlignmentTemplate
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the aligned ``size`` x ``size`` crop; returns the crop and the transform used."""
    matrix = alignment_matrix(landmarks, size, template)
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return crop, matrix


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
