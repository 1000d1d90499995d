"""Aliasing of the crop warp: plain bilinear against pre-filtered warps, judged by a supersampled one.

Reference: the same warp made at 4x the crop's resolution (bilinear), then reduced 4x by area
averaging. Compared with it (PSNR in dB / SSIM, higher = closer): plain bilinear sampling (affbench
before), an INTER_AREA pre-resize of the source to about the crop's scale, and a Gaussian pre-filter
of the source with three sigma rules, including :func:`affbench.faces.alignment.warp_crop` as shipped.

Images: a zone plate (every frequency up to the source's Nyquist limit) and the scikit-image
astronaut enlarged 3x (cubic), each cut with a 17 degree rotation at shrinks of 1.7, 3 and 6
source pixels per crop pixel (the range of affbench's crops).

Run::

    python -m affbench.benchmarks.quality.antialias
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from affbench.faces.alignment import AlignmentTemplate, warp_crop

PLAIN = AlignmentTemplate(antialias=False)
FILL = (128, 128, 128)


def zone_plate(n: int = 1200) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) - n / 2
    plate = 127.5 + 127.5 * np.cos(math.pi * (x**2 + y**2) / n)
    return np.repeat(plate[..., None], 3, axis=2).astype(np.uint8)


def astronaut_3x() -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (1536, 1536), interpolation=cv2.INTER_CUBIC)


def crop_matrix(shrink: float, degrees: float, size: int, centre: np.ndarray) -> np.ndarray:
    a = math.radians(degrees)
    linear = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / shrink
    return np.hstack([linear, (np.array([size / 2, size / 2]) - linear @ centre)[:, None]])


def supersampled(image: np.ndarray, matrix: np.ndarray, size: int, factor: int = 4) -> np.ndarray:
    # pixel i of the crop covers sub-pixels factor*i ... factor*i + factor - 1 of the big warp
    big = np.hstack([matrix[:, :2] * factor, (factor * (matrix[:, 2] + 0.5) - 0.5)[:, None]])
    fine = warp_crop(image, big, size * factor, PLAIN)
    return cv2.resize(fine, (size, size), interpolation=cv2.INTER_AREA)


def gaussian_then_bilinear(image: np.ndarray, matrix: np.ndarray, size: int, sigma: float) -> np.ndarray:
    blurred = cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image
    return warp_crop(blurred, matrix, size, PLAIN)


def area_then_bilinear(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    factor = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    h, w = image.shape[:2]
    small = cv2.resize(image, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)
    fx, fy = small.shape[1] / w, small.shape[0] / h
    to_small = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])
    return warp_crop(small, (np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(to_small))[:2], size, PLAIN)


RULES = {
    "(k-1)/2": lambda k: (k - 1) / 2,
    "0.5 sqrt(k^2-1)": lambda k: 0.5 * math.sqrt(k * k - 1),
    "0.6 sqrt(k^2-1)": lambda k: 0.6 * math.sqrt(k * k - 1),
}


def main() -> None:
    print(f"{'image':13s} {'shrink':>6s}  method: PSNR dB / SSIM against the 4x-supersampled warp")
    for name, image in (("zone plate", zone_plate()), ("astronaut 3x", astronaut_3x())):
        for shrink in (1.7, 3.0, 6.0):
            size = 256 if shrink < 5 else 160
            centre = np.array([image.shape[1] / 2 + 3.3, image.shape[0] / 2 - 2.1])
            matrix = crop_matrix(shrink, 17.0, size, centre)
            reference = supersampled(image, matrix, size)
            crops = {
                "bilinear": warp_crop(image, matrix, size, PLAIN),
                "INTER_AREA pre-resize": area_then_bilinear(image, matrix, size),
                **{f"gauss {rule}": gaussian_then_bilinear(image, matrix, size, f(shrink)) for rule, f in RULES.items()},
                "affbench warp_crop": warp_crop(image, matrix, size, AlignmentTemplate()),
            }
            for method, crop in crops.items():
                psnr = peak_signal_noise_ratio(reference, crop)
                ssim = structural_similarity(reference, crop, channel_axis=2)
                print(f"{name:13s} {shrink:6.1f}  {method:22s} {psnr:5.1f} / {ssim:.3f}")


if __name__ == "__main__":
    main()
