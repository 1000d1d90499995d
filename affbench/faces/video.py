"""Frames from video files (OpenCV), streamed, counted honestly.

A video's container declares a frame count; what matters is how many frames really decode. A
truncated or damaged file usually still declares its full length but stops decoding early or skips
a frame, and every later frame index would then be wrong: :class:`VideoReader` counts the frames it
decodes and :meth:`VideoReader.check_complete` raises :class:`VideoError` when fewer decoded than
the container declared.

Frames are decoded on a background thread into a small bounded queue (OpenCV releases the GIL
while decoding), so decoding overlaps with whatever the caller does with the previous frames and
memory stays at a few frames however long the video is.

Examples
--------
>>> with VideoReader("LeftVideoSN001_comp.avi") as video:          # doctest: +SKIP
...     for index, rgb in video:
...         ...
...     video.check_complete()
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from affbench.errors import AffbenchError

# FFmpeg's own lines about a damaged stream ("[mpeg4 @ 0x...] marker does not match") would fill the
# terminal; a damaged video is reported once, by VideoReader.check_complete. Read by OpenCV when it
# first opens a video; the user's own setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
from affbench.runtime.pixels import TooManyPixelsError, check_pixels


class VideoError(AffbenchError):
    """A video cannot be opened, or decodes fewer frames than it declares."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video. ``frames`` is None when it declares no length."""

    path: str
    frames: int | None
    fps: float
    width: int
    height: int


def _open(path: str | os.PathLike) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"Video {path} does not exist.")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"Video {path} cannot be opened (unreadable or not a video OpenCV can decode).")
    return capture


def _info(path: str | os.PathLike, capture: cv2.VideoCapture) -> VideoInfo:
    declared = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return VideoInfo(
        path=str(path),
        frames=int(declared) if declared and declared > 0 else None,
        fps=float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )


def _checked_info(path: str | os.PathLike, capture: cv2.VideoCapture) -> VideoInfo:
    """The container's description, refused when its frames are above the pixel limit."""
    info = _info(path, capture)
    try:
        check_pixels(info.width, info.height, f"Each frame of the video {path}")
    except TooManyPixelsError as exc:
        raise VideoError(str(exc)) from None
    return info


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open a video just long enough to read what its container declares."""
    capture = _open(path)
    try:
        return _checked_info(path, capture)
    finally:
        capture.release()


_END = object()


class VideoReader:
    """Iterate over ``(index, frame)`` of a video, 0-based, RGB uint8 (or BGR with ``rgb=False``).

    Parameters
    ----------
    path : path-like
        The video file.
    start : int
        First frame to yield. Earlier frames are decoded and skipped rather than seeked to, because
        container seeking lands on key frames and would make frame indices approximate.
    prefetch : int
        Frames decoded ahead on the background thread; 0 decodes on the caller's thread.
    rgb : bool
        Convert OpenCV's BGR to RGB.

    Use it as a context manager so that the decoding thread and the file are released even when
    the caller stops early.
    """

    def __init__(self, path: str | os.PathLike, *, start: int = 0, prefetch: int = 8, rgb: bool = True):
        if start < 0 or prefetch < 0:
            raise ValueError("start and prefetch must be >= 0")
        self.path = Path(path)
        self._capture = _open(self.path)
        try:
            self.info = _checked_info(self.path, self._capture)
        except VideoError:
            self._capture.release()
            raise
        self.start = start
        self.prefetch = prefetch
        self.rgb = rgb
        self.frames_read = 0  # frames decoded so far, skipped ones included
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = False

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self) -> Iterator[tuple[int, np.ndarray]]:
        while not self._stop.is_set():
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                return
            index = self.frames_read
            self.frames_read += 1
            if index < self.start:
                continue
            yield index, (cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if self.rgb else bgr)

    def _put(self, buffer: queue.Queue, item: object) -> bool:
        """Wait for room in the buffer unless the reader is being closed."""
        while not self._stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, buffer: queue.Queue) -> None:
        try:
            for item in self._decode():
                if not self._put(buffer, item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self._error = exc
        finally:
            self._put(buffer, _END)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self._started:
            raise RuntimeError("a VideoReader can be iterated once; open a new one to read again")
        self._started = True
        if self.prefetch == 0:
            yield from self._decode()
            return
        buffer: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._fill, args=(buffer,), name="video-decode", daemon=True)
        self._thread.start()
        while True:
            item = buffer.get()
            if item is _END:
                break
            yield item
        self._thread.join()
        if self._error is not None:
            raise self._error

    def check_complete(self) -> int:
        """After iterating: the number of frames decoded; :class:`VideoError` if the container
        declared more (a truncated or damaged file)."""
        declared = self.info.frames
        if declared is not None and self.frames_read < declared:
            raise VideoError(
                f"Video {self.path} decoded only {self.frames_read} of the {declared} frames it declares "
                "(truncated or damaged file)."
            )
        return self.frames_read

    def close(self) -> None:
        """Stop the decoding thread and release the file (also on leaving the ``with`` block)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._capture.release()


def iter_frames(path: str | os.PathLike, *, start: int = 0, rgb: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Every ``(index, frame)`` of a video, then :class:`VideoError` if it ended early."""
    with VideoReader(path, start=start, rgb=rgb) as video:
        yield from video
        video.check_complete()
