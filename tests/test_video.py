"""affbench.faces.video: 0-based frames in order, honest counts, truncated and unreadable files."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from affbench.errors import AffbenchError
from affbench.faces.video import VideoError, VideoReader, iter_frames, probe_video

FRAMES = 12


def frame_image(i: int) -> np.ndarray:
    """A 96x64 BGR frame whose brightness encodes its index (survives MJPG compression); the
    texture makes every frame a sizeable part of the file, as in real videos."""
    noise = np.random.default_rng(i).integers(-6, 7, (64, 96, 3))
    image = np.full((64, 96, 3), 10 + 20 * i) + noise
    image[:, :, 2] = 255 - 20 * i + noise[:, :, 2]  # red falls as blue rises: RGB order is checkable
    return np.clip(image, 0, 255).astype(np.uint8)


def brightness_index(rgb: np.ndarray) -> int:
    return round((float(rgb[..., 2].mean()) - 10) / 20)  # blue channel in RGB order


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (96, 64))
    for i in range(FRAMES):
        writer.write(frame_image(i))
    writer.release()
    return path


def test_probe_reports_what_the_container_declares(video):
    info = probe_video(video)
    assert (info.frames, info.width, info.height) == (FRAMES, 96, 64)
    assert info.fps == pytest.approx(20)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_frames_come_in_order_0_based_in_rgb(video, prefetch):
    with VideoReader(video, prefetch=prefetch) as reader:
        items = list(reader)
        assert reader.check_complete() == FRAMES
    assert [i for i, _ in items] == list(range(FRAMES))
    assert [brightness_index(rgb) for _, rgb in items] == list(range(FRAMES))
    assert all(rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8 for _, rgb in items)


def test_start_skips_by_decoding_so_indices_stay_exact(video):
    items = list(iter_frames(video, start=5))
    assert [i for i, _ in items] == list(range(5, FRAMES))
    assert [brightness_index(rgb) for _, rgb in items] == list(range(5, FRAMES))


def test_a_truncated_video_is_an_error_naming_the_counts(video, tmp_path):
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with VideoReader(cut) as reader:
        frames = sum(1 for _ in reader)
        with pytest.raises(VideoError, match=rf"decoded only {frames} of the {FRAMES} frames"):
            reader.check_complete()
    assert 0 < frames < FRAMES
    with pytest.raises(VideoError, match="truncated"):
        list(iter_frames(cut))


def test_unreadable_and_missing_videos_are_user_errors(tmp_path):
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(bytes(range(256)) * 200)
    with pytest.raises(VideoError, match="cannot be opened"):
        VideoReader(garbage)
    with pytest.raises(AffbenchError, match="does not exist"):
        probe_video(tmp_path / "nothing.avi")


def test_stopping_early_releases_the_decoding_thread(video):
    before = threading.active_count()
    with VideoReader(video, prefetch=2) as reader:
        for i, _ in reader:
            if i == 1:
                break
    assert threading.active_count() == before
