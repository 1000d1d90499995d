"""The columns of one face-crop row: the encoded crop, its box, landmarks and how it was found.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from affbench.faces.alignment import (
    AlignmentTemplate,
    align_face,
)
from affbench.faces.detection import Face


def face_crop_columns(
    image: np.ndarray | None,
    face: Face | None,
    *,
    size: int,
    template: AlignmentTemplate,
    codec: str = "png",
    quality: int = 95,
    path: str | None = None,
) -> dict[str, Any]:
    """The face columns of a shard row (schema v1) for one image and its chosen face.

    ``path`` is the name stored beside the image bytes (Hugging Face ``datasets`` shows it as the
    image's file name). Without a face the row keeps ``face_found=False`` and nulls: no image, box
    or landmarks.

    Parameters
    ----------
    image : ndarray or None
        The RGB frame (uint8, HxWx3) the face was found in; None (an unreadable frame) only
        together with ``face=None``.
    face : Face or None
        The chosen face, None where there is none.
    size : int
        Side of the square aligned crop.
    template : AlignmentTemplate
        The alignment the crop is cut with.
    codec : str, default "png"
        Image codec of the stored crop (a key of :data:`affbench.shards.codec.IMAGE_CODECS`).
    quality : int, default 95
        Quality of the lossy codecs.
    path : str or None
        The file name stored beside the image bytes.

    Returns
    -------
    dict
        The columns ``image``, ``width``, ``height``, ``face_found``, ``det_score``, ``box`` and
        ``landmarks``.
    """
    from affbench.shards.codec import encode_image

    if face is None:
        return {"image": None, "width": None, "height": None, "face_found": False,
                "det_score": None, "box": None, "landmarks": None}
    if image is None:
        raise ValueError("face_crop_columns: a face was given without the image it was found in")
    crop, _ = align_face(image, face.landmarks, size, template)
    return {
        "image": {"bytes": encode_image(crop, codec, quality=quality), "path": path},
        "width": size,
        "height": size,
        "face_found": True,
        "det_score": float(face.score),
        "box": [float(v) for v in face.box[:4]],
        "landmarks": [float(v) for v in np.asarray(face.landmarks).reshape(-1)],
    }
