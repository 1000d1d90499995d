"""Builders of small prepared datasets for the harness tests, written with the real shard writer.

Crops are real faces (LFW crops from scikit-image, tinted per class or subject) in the exact shard
schema, with the protocols the prepare pipelines store. Each dataset is generated once per session;
nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from affbench.faces.alignment import AlignmentTemplate
from affbench.shards.codec import encode_image
from affbench.shards.manifest import DatasetWriter
from affbench.shards.schema import make_schema
from affbench.shards.writer import ShardWriter

CROP = 64  # stored crop side (the real datasets store 96-256)
TEMPLATE = AlignmentTemplate()


def face_crop(index: int, tint=(1.0, 0.9, 0.8), size: int = CROP) -> np.ndarray:
    from affbench.pipelines.sample_data import lfw_face

    patch = lfw_face(index % 100, size=size, tint=tint)
    background = np.full_like(patch.rgb, 90)
    alpha = patch.alpha[..., None]
    return (patch.rgb * alpha + background * (1 - alpha)).astype(np.uint8)


def landmarks_for(row: int, size: int = CROP) -> list[float]:
    """Source landmarks that the recorded template maps close to itself (source = crop pixels)."""
    jitter = np.random.default_rng(row).normal(0, 0.6, (5, 2))
    return [float(v) for v in (TEMPLATE.points(size) + jitter).reshape(-1)]


def base_row(dataset: str, unit: str, i: int, image: np.ndarray | None, *, split=None) -> dict:
    found = image is not None
    return {
        "sample_id": f"{dataset}/{unit}/{i:05d}",
        "dataset": dataset,
        "subject": unit,
        "source": f"{unit}.avi",
        "frame": i,
        "split": split,
        "image": {"bytes": encode_image(image), "path": f"{unit}/{i:05d}.png"} if found else None,
        "width": CROP if found else None,
        "height": CROP if found else None,
        "face_found": found,
        "det_score": 0.99 if found else None,
        "box": [0.0, 0.0, float(CROP), float(CROP)] if found else None,
        "landmarks": landmarks_for(i) if found else None,
    }


def write_dataset(out: Path, dataset: str, label_fields, units: dict[str, list[dict]], protocol: dict,
                  parameters: dict | None = None) -> Path:
    schema = make_schema(label_fields)
    parameters = parameters or {"size": CROP, "codec": "png", "alignment": TEMPLATE.describe(CROP)}
    writer = DatasetWriter(out, dataset=dataset, parameters=parameters, schema=schema, protocol=protocol)
    for unit, rows in units.items():
        writer.start_unit(unit)
        with ShardWriter(out, unit, schema, rows_per_shard=24, row_group_size=8) as shard_writer:
            shard_writer.write_many(rows)
        writer.record_unit(unit, shards=shard_writer.shards)
    return out


def make_caer(out: Path, *, train_per_class: int = 6, test_per_class: int = 3, drop_labels: bool = False) -> Path:
    from affbench.pipelines import protocols

    units: dict[str, list[dict]] = {}
    tints = [(1.0, 0.8, 0.7), (0.7, 1.0, 0.7), (0.7, 0.7, 1.0), (1.0, 1.0, 0.6), (0.8, 0.8, 0.8), (0.6, 0.9, 1.0), (1.0, 0.6, 1.0)]
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        rows = []
        for c in range(7):
            for k in range(count):
                i = len(rows)
                image = face_crop(5 * c + k % 3, tint=tints[c])
                if split == "train" and c == 4 and k == count - 1:
                    image = None  # one faceless training row, which must be excluded and counted
                row = base_row("caer-s", split, i, image, split=split)
                row["subject"] = None
                if not drop_labels:
                    row["expression"] = c
                rows.append(row)
        units[split] = rows
    fields = [] if drop_labels else [pa.field("expression", pa.int8())]
    return write_dataset(out, "caer-s", fields, units, protocols()["caer-s"].to_dict())


DISFA_SUBJECTS = ("SN001", "SN010", "SN006", "SN003", "SN002", "SN013", "SN029")


def make_disfa(out: Path, frames: int = 10, *, distinct_faces: bool = False) -> Path:
    """Seven subjects; each alternates two faces unless ``distinct_faces`` (then every frame its own face,
    so that no two crops with different labels look the same)."""
    from affbench.pipelines import disfa, protocols
    from affbench.pipelines.sample_data import disfa_intensity

    units = {}
    for s, subject in enumerate(DISFA_SUBJECTS):
        rows = []
        for i in range(frames):
            face = s * frames + i if distinct_faces else 3 * s + i % 2
            image = None if i == 3 else face_crop(face, tint=(1.0, 0.85 + 0.02 * s, 0.8))
            row = base_row("disfa", subject, i, image)
            for j, au in enumerate(disfa.AUS):
                row[f"au{au}"] = disfa_intensity(s, j, 2 * i)
            rows.append(row)
        units[subject] = rows
    fields = [pa.field(f"au{au}", pa.int8()) for au in disfa.AUS]
    return write_dataset(out, "disfa", fields, units, protocols()["disfa"].to_dict())


BP4D_SUBJECTS = ("F001", "M007", "M011", "F003", "F007", "F015")  # two per part


def make_bp4d(out: Path, frames: int = 8) -> Path:
    from affbench.pipelines import bp4d, protocols

    units = {}
    for s, subject in enumerate(BP4D_SUBJECTS):
        rows = []
        for i in range(frames):
            row = base_row("bp4d", subject, i, face_crop(60 + 2 * s + i % 2))
            row["task"] = "T1"
            for j, au in enumerate(bp4d.AUS):
                row[f"au{au}"] = -1 if (i, j) == (2, 0) else int((i + j + s) % 3 == 0)
            for k, au in enumerate(bp4d.INTENSITY_AUS):
                row[f"au{au}_intensity"] = (i + k + s) % 6
            rows.append(row)
        units[subject] = rows
    return write_dataset(out, "bp4d", list(bp4d.LABEL_FIELDS), units, protocols()["bp4d"].to_dict())


def make_affwild2(out: Path, frames: int = 12, *, distinct_faces: bool = False) -> Path:
    """Aff-Wild2 videos; each alternates two faces unless ``distinct_faces`` (see :func:`make_disfa`)."""
    from affbench.pipelines import affwild2, protocols
    from affbench.pipelines.sample_data import AFFWILD2_SPLITS, AFFWILD2_VIDEOS, affwild2_labels

    units = {}
    for v, video in enumerate(AFFWILD2_VIDEOS):
        rows = []
        for i in range(frames):
            face = (v * frames + i) % 100 if distinct_faces else 40 + 2 * v + i % 2
            row = base_row("affwild2", video, i, face_crop(face))
            labels = affwild2_labels(v, i)
            annotated = {task: video in AFFWILD2_SPLITS[task] for task in ("au", "expr", "va")}
            for j, au in enumerate(affwild2.AUS):
                row[f"au{au}"] = labels["au"][j] if annotated["au"] else -1
            row["expression"] = labels["expr"] if annotated["expr"] else -1
            valence, arousal = labels["va"]
            missing = not annotated["va"] or valence == affwild2.VA_MISSING
            row["valence"] = None if missing else valence
            row["arousal"] = None if missing else arousal
            row["split_au"] = AFFWILD2_SPLITS["au"].get(video)
            row["split_expr"] = AFFWILD2_SPLITS["expr"].get(video)
            row["split_va"] = AFFWILD2_SPLITS["va"].get(video)
            rows.append(row)
        units[video] = rows
    fields = [pa.field(f"au{au}", pa.int8()) for au in affwild2.AUS]
    fields += [pa.field("expression", pa.int8()), pa.field("valence", pa.float32()), pa.field("arousal", pa.float32()),
               pa.field("split_au", pa.string()), pa.field("split_expr", pa.string()), pa.field("split_va", pa.string())]
    return write_dataset(out, "affwild2", fields, units, protocols()["affwild2"].to_dict())


# ----------------------------------------------------------------------------------------- suites

_SOLO = """
[[experiment]]
id = "caer-f"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-f"
options = { input_size = 48 }
"""

_CHAIN = """
[[experiment]]
id = "disfa-fan"
dataset = "disfa"
tasks = ["au-intensity"]
encoder = "fan-au"
options = { input_size = 64 }
folds = [1]

[[experiment]]
id = "caer-fau"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-fau"
options = { input_size = 64 }

[experiment.init]
experiment = "disfa-fan"
fold = 1
option = "au_checkpoint"
"""


def chained_suite(name: str, *, solo: str | None = None, training: str = "") -> str:
    """A one-step suite (TOML) in which EmotiRAM-FAU on CAER-S starts from fan-au's DISFA weights (a
    job that depends on another), with EmotiRAM-f on CAER-S on its own ``solo="first"`` or
    ``"last"``; ``training``: extra lines for the ``[training]`` table."""
    head = f"""[suite]
name = "{name}"

[training]
epochs = 1
max_steps = 1
batch_size = 8
num_workers = 0
{training}"""
    parts = [head, _SOLO if solo == "first" else "", _CHAIN, _SOLO if solo == "last" else ""]
    return "".join(parts)

