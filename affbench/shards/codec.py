"""Encoding and decoding of face crops (PNG, JPEG, WebP) and reading of source images.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from affbench.runtime.pixels import check_pixels

IMAGE_CODECS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


# ----------------------------------------------------------------------------------------- images


def encode_image(rgb: np.ndarray, codec: str = "png", *, quality: int = 95) -> bytes:
    """Encode an RGB uint8 image (H, W, 3) as PNG, JPEG or WebP bytes."""
    if codec not in IMAGE_CODECS:
        raise ValueError(f"unknown image codec {codec!r}; choose one of {sorted(IMAGE_CODECS)}")
    params: list[int] = []
    if codec == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif codec == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, buf = cv2.imencode(IMAGE_CODECS[codec], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    return buf.tobytes()


def decode_image(image: Mapping[str, Any] | bytes) -> np.ndarray:
    """Decode the ``image`` column's struct (or its bytes) to an RGB uint8 array."""
    data = image["bytes"] if isinstance(image, Mapping) else image
    if data is None:
        raise ValueError("this row has no image (face_found is false)")
    if not data:
        raise ValueError("the file is empty")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None:
        raise ValueError("the image bytes could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8; ``OSError`` if it cannot be read, ``ValueError`` with a sentence
    a user understands if it is empty, larger than the pixel limit
    (:class:`~affbench.runtime.pixels.TooManyPixelsError`) or not an image OpenCV can decode."""
    return decode_source(Path(path).read_bytes())


def decode_source(data: bytes) -> np.ndarray:
    """A source image's encoded bytes (a dataset's or a user's image, not a shard's crop) as RGB
    uint8: checked against the pixel limit from its header first, and ``ValueError`` with a sentence
    a user understands (the decoder's own message included) where it cannot be decoded."""
    if not data:
        raise ValueError("the file is empty")
    size = header_size(data)
    if size is not None:
        check_pixels(*size, "the image")
    with _native_stderr() as said:
        try:
            return decode_image(data)
        except ValueError:
            pass
    detail = "; ".join(line.strip() for line in said() if line.strip())
    raise ValueError(f"OpenCV cannot decode it ({detail or 'corrupt, truncated or not an image'})")


@contextmanager
def _native_stderr() -> Iterator[Callable[[], list[str]]]:
    """Capture what native code (libpng) writes to file descriptor 2 meanwhile: a damaged image's
    reason then goes into its failure, not onto the terminal between progress lines. Yields a
    function that returns the captured lines once the block has ended."""
    import tempfile

    captured: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to redirect
        yield lambda: captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured += sink.read(4096).decode("utf-8", "replace").splitlines()


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header, without decoding its pixels; None where
    Pillow does not know the format (OpenCV then decides)."""
    from PIL import Image, UnidentifiedImageError

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check would hide the size; the pixel limit decides
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
