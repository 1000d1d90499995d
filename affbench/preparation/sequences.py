"""One face followed through a sequence of frames, written as shard rows (not experiment tracking: see affbench.training.tensorboard).

Shared by the pipelines whose unit is a frame sequence (a DISFA video, a BP4D task's JPEG
frames): the sequence is tracked in order with :class:`~affbench.faces.tracking.FaceTracker`, each
frame becomes one row, and the counts say how each face was found. A frame where no face is found
gets a fallback crop from its neighbours in time (:func:`~affbench.faces.tracking.fill_gaps`). A
frame that could not be read (``None`` in the stream) keeps its row without a face and is not shown
to the tracker, which carries on from the last face it saw.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from affbench.faces.alignment import AlignmentTemplate
from affbench.faces.sources import FALLBACK_SOURCES, LANDMARK_SOURCES
from affbench.faces.tracking import FaceTracker, TrackedFace, fill_gaps
from affbench.shards.codec import IMAGE_CODECS
from affbench.shards.rows import face_crop_columns
from affbench.shards.writer import ShardWriter

#: Frames between two progress ticks.
TICK_EVERY = 16


def follow_with_gaps(
    tracker: FaceTracker, frames: Iterable[tuple[int, np.ndarray | None]]
) -> Iterator[tuple[int, np.ndarray | None, TrackedFace]]:
    """:meth:`FaceTracker.follow` over a stream in which some frames are ``None`` (unreadable);
    those come back in their place with ``TrackedFace(None, "unreadable")``."""
    for unreadable, run in itertools.groupby(frames, key=lambda item: item[1] is None):
        if unreadable:
            for index, _ in run:
                yield index, None, TrackedFace(None, "unreadable")
        else:  # a run of readable frames: none of them is None
            yield from tracker.follow((index, frame) for index, frame in run if frame is not None)


def write_tracked_sequence(
    frames: Iterable[tuple[int, np.ndarray | None]],
    tracker: FaceTracker,
    writer: ShardWriter,
    row_for: Callable[[int], dict],
    *,
    size: int,
    template: AlignmentTemplate,
    codec: str,
    quality: int,
    tick: Callable[[int], None],
) -> dict[str, int]:
    """Track ``frames`` (``(index, rgb or None)`` in sequence order) and write one row per frame.

    ``row_for(index)`` gives the row's other columns (``sample_id`` first among them, the labels);
    the crop is stored under the sample id without the dataset prefix. Returns the counts
    ``frames``, ``faces_found``, ``no_face``, one per landmark source (``detected``, ``tracked``,
    ``interpolated``, ``carried``, ``none``), ``fallback_crops``, ``several_faces`` and ``unreadable``.
    """
    counts = {"frames": 0, "faces_found": 0, "no_face": 0, **{source: 0 for source in LANDMARK_SOURCES},
              "fallback_crops": 0, "several_faces": 0, "unreadable": 0}
    suffix = IMAGE_CODECS[codec]
    since_tick = 0
    for index, frame, result in fill_gaps(follow_with_gaps(tracker, frames)):
        row = row_for(index)
        path = row["sample_id"].split("/", 1)[1] + suffix
        row.update(face_crop_columns(frame, result.face, size=size, template=template, codec=codec,
                                     quality=quality, path=path))
        row.update(source_columns(result))
        writer.write(row)
        counts["frames"] += 1
        counts["faces_found"] += row["face_found"]
        counts["unreadable"] += result.method == "unreadable"
        counts["no_face"] += not row["face_found"] and result.method != "unreadable"
        if result.method in counts:
            counts[result.method] += 1
        counts["fallback_crops"] += result.method in FALLBACK_SOURCES
        counts["several_faces"] += (result.n_faces or 0) > 1
        since_tick += 1
        if since_tick == TICK_EVERY:
            tick(since_tick)
            since_tick = 0
    tick(since_tick)
    return counts


def source_columns(result: TrackedFace) -> dict:
    """How the row's landmarks were obtained; a fallback crop's row keeps ``face_found`` false and
    no detector score, since no face was found in its frame. An unreadable frame has no source."""
    if result.method == "unreadable":
        return {"landmark_source": "none", "n_faces": None}
    columns = {"landmark_source": result.method, "n_faces": result.n_faces}
    if result.method in FALLBACK_SOURCES:
        columns.update(face_found=False, det_score=None)
    return columns
