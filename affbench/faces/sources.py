"""How a row's face was found: the vocabulary of the ``landmark_source`` column.

Every crop row says where its landmarks came from, so that a reader can keep or drop what was not
detected: the full MTCNN cascade, O-Net tracking from the previous frame, a fallback crop taken
from neighbouring frames for a frame without a face, or nothing at all (no crop).
"""

from __future__ import annotations

#: How a row's landmarks were obtained (``landmark_source``): found by the full detector, tracked
#: from the previous video frame, taken from neighbouring frames (a fallback crop for a frame
#: without a face), or not at all (no crop).
LANDMARK_SOURCES: tuple[str, ...] = ("detected", "tracked", "interpolated", "carried", "none")
#: The sources of fallback crops: such rows have an image but ``face_found`` false.
FALLBACK_SOURCES: tuple[str, ...] = ("interpolated", "carried")
