"""The one limit on the size of the images and video frames affbench decodes.

A small file can hold a huge image (a 747 KB PNG of 16000 x 16000 pixels took 54 s and 13.7 GB in
``predict``, more with several workers), so every source image and video is checked against the
limit from its header, before its pixels are decoded. The limit is a number of pixels per image
(width x height); the command line's ``--max-pixels`` raises it. It is kept in the environment
variable :data:`ENV_VAR`, so that the worker processes a command starts keep the same limit.
"""

from __future__ import annotations

import os

from affbench.errors import AffbenchError

#: The environment variable that holds the limit (pixels per image) for this process and its workers.
ENV_VAR = "AFFBENCH_MAX_PIXELS"
#: The default limit: 64 megapixels, above the largest phone and most camera photographs (8000 x 8000).
DEFAULT_MAX_PIXELS = 64_000_000


class TooManyPixelsError(AffbenchError, ValueError):
    """An image or video frame larger than the pixel limit (a ``ValueError`` too, so that the
    readers that list unreadable images as failures list it with them)."""


def max_pixels() -> int:
    """The pixel limit now in force: :data:`ENV_VAR` if set, else :data:`DEFAULT_MAX_PIXELS`."""
    text = os.environ.get(ENV_VAR, "")
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        raise AffbenchError(f"{ENV_VAR}={text!r} is not a whole number of pixels.") from None
    if value < 1:
        raise AffbenchError(f"{ENV_VAR}={text!r} must be a positive number of pixels.")
    return value


def set_max_pixels(limit: int) -> None:
    """Set the pixel limit for this process and the worker processes it starts from now on.

    Parameters
    ----------
    limit : int
        Pixels per image (width x height), at least 1.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise AffbenchError(f"The pixel limit must be a positive whole number; got {limit!r}.")
    os.environ[ENV_VAR] = str(limit)


def check_pixels(width: int, height: int, what: str) -> None:
    """Refuse, in one sentence, an image of ``width`` x ``height`` above the pixel limit.

    Examples
    --------
    >>> check_pixels(640, 480, "photo.jpg")
    """
    limit = max_pixels()
    if width * height > limit:
        raise TooManyPixelsError(
            f"{what} is {width} x {height} pixels, more than the limit of {limit:,} pixels per image; "
            "to read it, give affbench --max-pixels a larger number (and expect it to need many GB of memory)."
        )
