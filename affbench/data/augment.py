"""Training augmentation and evaluation framing of one aligned crop: one affine warp per crop.

:class:`Augmentation` is the per-suite recipe (flip, crop, zoom, rotation, colour jitter);
:func:`transform_crop` applies it. The geometric part is a single warp that also moves landmark
points (for the heatmap models), mirroring their order under a flip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from affbench.errors import AffbenchError
from affbench.faces.alignment import transform_points

#: The five aligned landmarks, and their mirror images under a horizontal flip:
#: left eye <-> right eye, nose stays, left mouth corner <-> right mouth corner.
FLIP_POINT_ORDER = (1, 0, 2, 4, 3)


@dataclass(frozen=True)
class Augmentation:
    """How training crops are perturbed, and how evaluation crops are framed.

    Attributes
    ----------
    hflip : float
        Probability of a horizontal flip (landmark points are mirrored with it).
    crop : float
        Training: side of a square crop at a random position, as a fraction of the stored crop
        (ME-GraphAU: 224 of 256 = 0.875). 1.0 keeps the whole crop.
    eval_crop : float
        Evaluation: side of the centred crop (ME-GraphAU's centre crop: 0.875; most: 1.0).
    scale : float
        Random zoom: the crop side is multiplied by a factor in [1 - scale, 1 + scale].
    rotate : float
        Random rotation in degrees, in [-rotate, rotate].
    brightness, contrast, saturation : float
        Colour jitter strengths as torchvision's ColorJitter: factors in [1 - s, 1 + s].
    hue : float
        Hue shift as a fraction of the colour circle, in [-hue, hue] (at most 0.5).
    jitter_p : float
        Probability that the colour jitter is applied at all (SMM-EmotionNet: 0.8).
    """

    hflip: float = 0.0
    crop: float = 1.0
    eval_crop: float = 1.0
    scale: float = 0.0
    rotate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    jitter_p: float = 1.0

    def __post_init__(self) -> None:
        for name in ("hflip", "jitter_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AffbenchError(f"augmentation.{name} is a probability in [0, 1]; got {getattr(self, name)}.")
        for name in ("crop", "eval_crop"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise AffbenchError(f"augmentation.{name} is a fraction in (0, 1]; got {getattr(self, name)}.")
        for name in ("scale", "brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise AffbenchError(f"augmentation.{name} must lie in [0, 1); got {getattr(self, name)}.")
        if not 0.0 <= self.hue <= 0.5:
            raise AffbenchError(f"augmentation.hue must lie in [0, 0.5]; got {self.hue}.")
        if not 0.0 <= self.rotate <= 180.0:
            raise AffbenchError(f"augmentation.rotate is in degrees, 0 to 180; got {self.rotate}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Augmentation:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AffbenchError(
                f"Unknown augmentation setting {unknown[0]!r}; the settings are: {', '.join(sorted(known))}."
            )
        try:
            return cls(**{k: float(v) for k, v in data.items()})
        except (TypeError, ValueError):
            raise AffbenchError(f"Augmentation settings must be numbers; got {data}.") from None

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def has_colour(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))


def _geometry(
    size: int, out: int, augmentation: Augmentation, train: bool, rng: np.random.Generator | None
) -> tuple[np.ndarray, bool]:
    """The affine matrix (2x3, pixel-index coordinates) from a ``size`` crop to an ``out`` input."""
    if train:
        assert rng is not None
        side = augmentation.crop * size
        if augmentation.scale:
            side *= 1.0 + rng.uniform(-augmentation.scale, augmentation.scale)
        slack = max(size - side, 0.0) / 2
        centre = np.array([size / 2 + rng.uniform(-slack, slack), size / 2 + rng.uniform(-slack, slack)])
        angle = math.radians(rng.uniform(-augmentation.rotate, augmentation.rotate)) if augmentation.rotate else 0.0
        flip = bool(augmentation.hflip and rng.random() < augmentation.hflip)
    else:
        side = augmentation.eval_crop * size
        centre = np.array([size / 2, size / 2])
        angle, flip = 0.0, False
    scale = out / side
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    linear = np.array([[cos, -sin], [sin, cos]])
    if flip:
        linear = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ linear
    # In continuous coordinates (pixel i covers [i, i+1)): out_c = L (src_c - centre) + out/2.
    # Pixel-index coordinates are continuous ones minus one half, on both sides.
    offset = linear @ (np.array([0.5, 0.5]) - centre) + out / 2 - 0.5
    return np.hstack([linear, offset[:, None]]), flip


def _warp(image: np.ndarray, matrix: np.ndarray, out: int) -> np.ndarray:
    """Apply ``matrix`` with area-style prefiltering when it shrinks a lot (no aliasing)."""
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 0.75:
        # Shrink with INTER_AREA first, then let the warp do the rest at about unit scale.
        factor = min(1.0, scale * 1.25)
        h, w = image.shape[:2]
        small_w, small_h = max(1, round(w * factor)), max(1, round(h * factor))
        image = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
        fx, fy = small_w / w, small_h / h
        # p_small_c = p_c * f  ->  in pixel-index coordinates: p_small = (p + 0.5) f - 0.5
        to_small = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])
        matrix = np.vstack([matrix, [0, 0, 1.0]]) @ np.linalg.inv(to_small)
        matrix = matrix[:2]
    if np.allclose(matrix, [[1, 0, 0], [0, 1, 0]]) and image.shape[:2] == (out, out):
        return image
    return cv2.warpAffine(image, matrix, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _colour(image: np.ndarray, augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    if not augmentation.has_colour or rng.random() >= augmentation.jitter_p:
        return image
    img: np.ndarray = image.astype(np.float32)
    if augmentation.brightness:
        img *= rng.uniform(1 - augmentation.brightness, 1 + augmentation.brightness)
    if augmentation.contrast:
        grey_mean = float((img @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
        factor = rng.uniform(1 - augmentation.contrast, 1 + augmentation.contrast)
        img = (img - grey_mean) * factor + grey_mean
    if augmentation.saturation:
        grey = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        factor = rng.uniform(1 - augmentation.saturation, 1 + augmentation.saturation)
        img = (img - grey) * factor + grey
    img = np.clip(img, 0, 255).astype(np.uint8)
    if augmentation.hue:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # OpenCV hue runs 0..179
        shift = int(round(rng.uniform(-augmentation.hue, augmentation.hue) * 180))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return img


def centre_square(height: int, width: int) -> tuple[int, int, int]:
    """``(x0, y0, side)`` of the centred square that a non-square crop is framed to."""
    side = min(height, width)
    return (width - side) // 2, (height - side) // 2, side


def transform_crop(
    image: np.ndarray,
    out: int,
    augmentation: Augmentation,
    *,
    train: bool,
    seed: int = 0,
    points: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Frame (and, for training, augment) one RGB crop into an ``out`` x ``out`` input.

    Returns the image (uint8, HxWx3) and, when ``points`` (k, 2) are given, the points in the
    output image; a flip mirrors the five aligned landmarks so that "left eye" stays the left eye.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got shape {image.shape}")
    size = image.shape[0]
    if image.shape[1] != size:  # a non-square crop: frame its centre square
        x0, y0, side = centre_square(*image.shape[:2])
        image = image[y0 : y0 + side, x0 : x0 + side]
        if points is not None:
            points = points - np.array([x0, y0], dtype=np.float32)
        size = side
    rng = np.random.default_rng(seed) if train else None
    matrix, flipped = _geometry(size, out, augmentation, train, rng)
    result = _warp(image, matrix, out)
    if train:
        assert rng is not None  # drawn above whenever train is set
        result = _colour(result, augmentation, rng)
    moved = None
    if points is not None:
        moved = transform_points(matrix, points).astype(np.float32)
        if flipped and len(moved) == len(FLIP_POINT_ORDER):
            moved = moved[list(FLIP_POINT_ORDER)]
    return np.ascontiguousarray(result), moved
