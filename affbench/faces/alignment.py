"""5-point similarity alignment and the crop cut with it.

Every pipeline aligns faces the same way: the five MTCNN landmarks (eye centres, nose tip, mouth
corners) are mapped onto one fixed template by the weighted least-squares similarity transform
(rotation, uniform scale, translation; Umeyama 1991), and the crop is cut with that transform. The
eyes weigh most, so that they land on the template for every face whatever its proportions; the
nose and mouth steady rotation and scale. Because the transform is a pure function of the
landmarks, the template and the crop size (all recorded in each manifest), a crop's landmark
positions can be recomputed later without detecting again.

The crop is resampled without aliasing (a Gaussian pre-filter matched to how much the warp
shrinks the face) and the area outside the source frame is filled with one constant grey, so that
no streaks of replicated edge pixels enter the crop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

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

#: Side of the box around the ArcFace template's five points, as a fraction of its crop (the box is
#: taller than wide: eye-to-mouth height 0.365, eye distance 0.315).
_ARCFACE_BOX_SIDE = float(np.ptp(ARCFACE_TEMPLATE, axis=0).max())
_ARCFACE_BOX_CENTRE_Y = float((ARCFACE_TEMPLATE[:, 1].max() + ARCFACE_TEMPLATE[:, 1].min()) / 2)

#: JAA-Net's framing rule (Shao et al. 2018) measures the crop by the box around five points (eye
#: centres, nose tip, mouth corners, after the roll is removed): crop side = ``box_enlarge`` x the
#: box's longer side. affbench's default takes a larger factor than JAA-Net's 2.9 and raises the box
#: above the crop centre, so that the chin stays inside when a turned face (45 degrees of yaw) is
#: enlarged by the eye-weighted fit; see docs/prepare.md, "Face crops", for the measurements.
DEFAULT_BOX_ENLARGE = 3.6
#: Where the centre of that five-point box sits, as a fraction of the crop height from the top.
DEFAULT_BOX_CENTRE_Y = 0.43

#: Legacy warp settings: what a manifest written before they were recorded was cut with.
_LEGACY_WARP = {"border": "replicate", "antialias": False}
BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


def _scale_for(box_enlarge: float) -> float:
    return 1.0 / (box_enlarge * _ARCFACE_BOX_SIDE)


def _shift_for(face_scale: float, box_centre_y: float) -> float:
    return box_centre_y - (0.5 + (_ARCFACE_BOX_CENTRE_Y - 0.5) * face_scale)


@dataclass(frozen=True)
class AlignmentTemplate:
    """Where the five landmarks land in the crop, and how the crop is resampled.

    ``face_scale`` scales the ArcFace template about the crop centre and ``shift_y`` moves it down
    by a fraction of the crop; :meth:`framed` derives both from JAA-Net's box rule (the defaults:
    ``framed(DEFAULT_BOX_ENLARGE, DEFAULT_BOX_CENTRE_Y)``). With the defaults the eyes sit at 31%
    of the crop height, the brows near 21% and a frontal chin near 73% (dlib's 68 points on real
    faces), which leaves room for the chin of a turned face: the eye-weighted fit enlarges a face
    by up to 1/cos(yaw) as its eye distance shrinks.

    ``landmark_weights`` weigh the five points in the fit. With equal weights a face whose
    eye-to-mouth proportions differ from the template's has its eyes 4-5 px (in a 256 crop) off the
    template, a different offset for each person; weighting each eye 32 times a nose or mouth point
    brings every subject's eyes to within MTCNN's own landmark noise (about 1.5 px), measured by
    re-detecting the landmarks in crops of the sample subjects.

    ``border``: what fills the crop where it reaches beyond the source image, ``constant`` (the
    grey ``fill``, as JAA-Net's 128) or ``replicate`` (edge pixels, as affbench before; they draw
    streaks). ``antialias``: blur the source with a Gaussian matched to the shrink before the
    bilinear warp whenever the crop is smaller than the face in the source (plain bilinear sampling
    aliases hair and edges there).
    """

    face_scale: float = _scale_for(DEFAULT_BOX_ENLARGE)
    shift_y: float = _shift_for(_scale_for(DEFAULT_BOX_ENLARGE), DEFAULT_BOX_CENTRE_Y)
    landmark_weights: tuple[float, float, float, float, float] = (32.0, 32.0, 1.0, 1.0, 1.0)
    border: str = "constant"
    fill: int = 128
    antialias: bool = True

    @classmethod
    def framed(cls, box_enlarge: float, box_centre_y: float = 0.5, **settings: Any) -> AlignmentTemplate:
        """The template whose five-point box is ``1 / box_enlarge`` of the crop and centred at
        ``box_centre_y`` (JAA-Net: ``framed(2.9)`` on a 200 crop, then a 176 crop of it)."""
        scale = _scale_for(box_enlarge)
        return cls(face_scale=scale, shift_y=_shift_for(scale, box_centre_y), **settings)

    def __post_init__(self) -> None:
        # JSON gives lists back: keep the weights a tuple, so templates stay hashable and comparable.
        object.__setattr__(self, "landmark_weights", tuple(float(w) for w in self.landmark_weights))
        object.__setattr__(self, "fill", int(self.fill))
        if self.border not in BORDERS:
            raise ValueError(f"border must be one of {sorted(BORDERS)}, got {self.border!r}")
        if not 0 <= self.fill <= 255:
            raise ValueError(f"fill is a grey level in 0-255, got {self.fill}")

    def points(self, size: int) -> np.ndarray:
        """The template in pixel coordinates of a ``size`` x ``size`` crop, shape (5, 2)."""
        centred = (ARCFACE_TEMPLATE - 0.5) * self.face_scale + 0.5
        centred = centred + np.array([0.0, self.shift_y])
        return centred * size

    @property
    def box_enlarge(self) -> float:
        """JAA-Net's factor for this template: crop side / the five-point box's longer side."""
        return 1.0 / (self.face_scale * _ARCFACE_BOX_SIDE)

    @property
    def box_centre_y(self) -> float:
        """Where the five-point box's centre sits, as a fraction of the crop height."""
        return 0.5 + (_ARCFACE_BOX_CENTRE_Y - 0.5) * self.face_scale + self.shift_y

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> AlignmentTemplate:
        """The template a manifest's :meth:`describe` dictionary records (inverse of ``describe``).

        A description without warp settings was written before they were recorded, when crops were
        cut with replicated edges and plain bilinear sampling: those are filled in.
        """
        known = {**_LEGACY_WARP, **description}
        return cls(**{f.name: known[f.name] for f in fields(cls) if f.name in known})

    def describe(self, size: int) -> dict:
        """What a manifest records about the alignment."""
        return {
            "method": "similarity (Umeyama weighted least squares) from 5 MTCNN landmarks",
            "base_template": "arcface-112",
            "framing": "JAA-Net's five-point box rule: crop side = box_enlarge x the box's longer side",
            "box_enlarge": round(self.box_enlarge, 4),
            "box_centre_y": round(self.box_centre_y, 4),
            **asdict(self),
            "interpolation": "bilinear" + (", Gaussian pre-filter when shrinking by k > 1.2 (sigma = (k - 1) / 2 "
                                           "source pixels)" if self.antialias else ""),
            "size": size,
            "points": np.round(self.points(size), 4).tolist(),
        }


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted least-squares similarity transform mapping ``src`` points onto ``dst`` points.

    Parameters
    ----------
    src, dst : ndarray of shape (n, 2)
        Corresponding points, n >= 2.
    weights : sequence of n positive floats, optional
        How much each point's squared error counts; equal by default.

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
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),) or (w <= 0).any():
        raise ValueError(f"need {len(src)} positive weights, got {w}")
    w = w / w.sum()
    src_mean, dst_mean = w @ src, w @ dst
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = (w[:, None] * dst_c).T @ src_c
    u, singular, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0  # a reflection is not a similarity
    rotation = u @ np.diag(sign) @ vt
    src_var = w @ (src_c**2).sum(axis=1)
    scale = (singular * sign).sum() / src_var if src_var > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (n, 2) points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks: np.ndarray, size: int, template: AlignmentTemplate) -> np.ndarray:
    """The transform that puts these 5 landmarks onto the template of a ``size`` crop."""
    return similarity_transform(np.asarray(landmarks).reshape(5, 2), template.points(size), template.landmark_weights)


def antialias_sigma(shrink: float) -> float:
    """Gaussian sigma (source pixels) of the pre-filter for a source shrunk ``shrink`` times.

    scikit-image's anti-aliasing rule for ``rescale`` and ``resize``, (k - 1) / 2. Of the rules
    measured against a 4x-supersampled warp (zone plate and the astronaut, shrinks 1.7, 3 and 6;
    ``benchmarks/quality/antialias.py``) it came closest overall; bilinear sampling alone and an
    INTER_AREA pre-resize came out worse.
    """
    return (shrink - 1.0) / 2.0 if shrink > 1.0 else 0.0


def _source_window(matrix: np.ndarray, size: int, shape: tuple[int, ...], pad: int) -> tuple[int, int, int, int] | None:
    """The part of the source image the crop samples from (plus ``pad``), clipped to the image."""
    corners = np.array([[-1.0, -1.0], [size, -1.0], [-1.0, size], [size, size]])
    inverse = cv2.invertAffineTransform(matrix)
    seen = transform_points(inverse, corners)
    x0, y0 = np.floor(seen.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(seen.max(axis=0)).astype(int) + pad + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def warp_crop(image: np.ndarray, matrix: np.ndarray, size: int, template: AlignmentTemplate) -> np.ndarray:
    """Resample ``image`` through the affine ``matrix`` into a ``size`` x ``size`` crop with the
    template's border and anti-aliasing settings.

    Only the window of the source that the crop sees is pre-filtered (a frame is several times
    larger than a face), then the warp is moved into that window's coordinates.
    """
    source, matrix = image, np.asarray(matrix, dtype=np.float64)
    shrink = 1.0 / math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    sigma = antialias_sigma(shrink) if template.antialias else 0.0
    if sigma > 0.1:  # below that (shrinks under 1.2x) bilinear sampling already band-limits enough
        window = _source_window(matrix, size, image.shape, pad=int(math.ceil(3 * sigma)) + 1)
        if window is not None:
            x0, y0, x1, y1 = window
            source = cv2.GaussianBlur(image[y0:y1, x0:x1], (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
            matrix = matrix.copy()
            matrix[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    channels = 1 if image.ndim == 2 else image.shape[2]
    return cv2.warpAffine(
        source, matrix, (size, size), flags=cv2.INTER_LINEAR,
        borderMode=BORDERS[template.border], borderValue=(template.fill,) * max(channels, 3),
    )


def align_face(
    image: np.ndarray, landmarks: np.ndarray, size: int, template: AlignmentTemplate
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the aligned ``size`` x ``size`` crop; returns the crop and the transform used."""
    matrix = alignment_matrix(landmarks, size, template)
    return warp_crop(image, matrix, size, template), matrix
