"""CAER-S (Lee et al. 2019): layout, classes and split facts (see shared FACTS.md).

Layout: ``ROOT/train/<Class>/NNNN.png`` and ``ROOT/test/<Class>/NNNN.png``; no validation folder.
Reported quirk: the anger folder is ``Angry`` in train and ``Anger`` in test; both map to Anger.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
#: Folder name -> class index; both spellings of anger are real.
FOLDER_TO_CLASS: dict[str, int] = {**{name: i for i, name in enumerate(CLASSES)}, "Angry": 0}
SPLITS: tuple[str, ...] = ("train", "test")
#: Public EmotiRAM/CAER-Net code holds out this fraction of train, with a fixed seed, for validation.
DEFAULT_VALIDATION_FRACTION = 0.125
DEFAULT_VALIDATION_SEED = 0
