"""DISFA (Mavadati et al. 2013): layout, labels and protocol facts (see shared FACTS.md).

Layout::

    ROOT/Videos_LeftCamera/LeftVideoSN001_comp.avi
    ROOT/Video_RightCamera/RightVideoSN001_comp.avi     ("Video", singular: a real inconsistency)
    ROOT/ActionUnit_Labels/SN001/SN001_au1.txt          one "frame,intensity" line per frame

Label line i belongs to video frame i (0-based); the printed frame number's base is not trusted.
"""

from __future__ import annotations

#: The 12 annotated AUs, in label-column order.
AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
#: AUs of the standard detection protocol (occurrence = intensity >= 2).
DETECTION_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
OCCURRENCE_THRESHOLD = 2
MAX_INTENSITY = 5

SUBJECTS: tuple[str, ...] = tuple(
    f"SN{n:03d}" for n in (*range(1, 14), 16, 17, 18, 21, *range(23, 33))
)
FRAMES_PER_VIDEO = 4845
SHORT_SUBJECTS = {"SN010": 4844}  # reported: one frame fewer than the others
FPS = 20
FRAME_SIZE = (1024, 768)  # width, height

#: The 3-fold subject-exclusive split of JAA-Net / ME-GraphAU; fold k tests FOLD_TEST_PART[k].
PARTS: dict[str, tuple[str, ...]] = {
    "part1": ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
    "part2": ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
    "part3": ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
}
FOLD_TEST_PART: dict[int, str] = {1: "part3", 2: "part2", 3: "part1"}

LEFT_DIR = "Videos_LeftCamera"
RIGHT_DIR = "Video_RightCamera"
LABEL_DIR = "ActionUnit_Labels"
CAMERA_DIRS = {"left": LEFT_DIR, "right": RIGHT_DIR}
CAMERA_PREFIX = {"left": "Left", "right": "Right"}


def au_column(au: int) -> str:
    return f"au{au}"


def video_path(camera: str, subject: str) -> str:
    """The video of ``subject`` for ``camera``, relative to ROOT."""
    return f"{CAMERA_DIRS[camera]}/{CAMERA_PREFIX[camera]}Video{subject}_comp.avi"


def label_path(subject: str, au: int) -> str:
    """The label file of one AU of ``subject``, relative to ROOT."""
    return f"{LABEL_DIR}/{subject}/{subject}_au{au}.txt"
