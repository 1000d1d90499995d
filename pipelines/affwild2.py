"""Aff-Wild2, ABAW3 release (Kollias et al.): layout, headers and label facts (see shared FACTS.md).

Layout::

    ROOT/cropped_aligned/<video>/00001.jpg            112x112, 1-based, 5 digits
    ROOT/AU_Detection_Challenge/{Train_Set,Validation_Set}/<video>.txt
    ROOT/EXPR_Classification_Challenge/{Train_Set,Validation_Set}/<video>.txt
    ROOT/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt

An annotation file has one header line, then line N (1-based) labels image N. Frames without a
detected face have no image. Two-person videos carry ``_left``/``_right`` on the annotation name.
"""

from __future__ import annotations

IMAGE_DIR = "cropped_aligned"
IMAGE_SIZE = 112
SPLITS: tuple[str, ...] = ("Train_Set", "Validation_Set")

AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)
EXPRESSIONS: tuple[str, ...] = (
    "Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other",
)

#: task -> (challenge folder, exact header line)
CHALLENGES: dict[str, tuple[str, str]] = {
    "au": ("AU_Detection_Challenge", ",".join(f"AU{a}" for a in AUS)),
    "expr": ("EXPR_Classification_Challenge", ",".join(EXPRESSIONS)),
    "va": ("VA_Estimation_Challenge", "valence,arousal"),
}
AU_MISSING = -1
EXPR_MISSING = -1
VA_MISSING = -5.0
TWO_PERSON_SUFFIXES = ("_left", "_right")


def image_name(frame: int) -> str:
    """Image file for a 0-based frame (frame 0 -> 00001.jpg)."""
    return f"{frame + 1:05d}.jpg"
