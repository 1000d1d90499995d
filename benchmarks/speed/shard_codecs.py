"""Shard bytes per face crop, and encode/decode throughput, for each image codec.

Baseline: PNG (lossless, the default). The crops are real aligned faces: MTCNN + the 5-point
alignment of affbench.faces applied to frames of the sample DISFA videos (astronaut and LFW faces).

    python -m affbench.benchmarks.speed.shard_codecs --size 256 --crops 64

Prints, per codec: bytes per crop in the Parquet shard (row overhead included), the ratio to PNG,
crops/s to encode and to decode, and the mean absolute error against the uncompressed crop.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from affbench.faces.alignment import AlignmentTemplate, align_face
from affbench.faces.detection import FaceDetector
from affbench.pipelines import sample_data
from affbench.shards.codec import IMAGE_CODECS, decode_image, encode_image
from affbench.shards.schema import make_schema
from affbench.shards.writer import ShardWriter


def aligned_crops(count: int, size: int) -> list[np.ndarray]:
    detector = FaceDetector()
    template = AlignmentTemplate()
    frames = [
        sample_data.disfa_frame(subject, "left", i, count)
        for subject in range(len(sample_data.DISFA_SUBJECTS))
        for i in range(count // len(sample_data.DISFA_SUBJECTS) + 1)
        if i not in sample_data.NO_FACE_FRAMES
    ][:count]
    crops = []
    for frame, faces in zip(frames, detector.detect(frames)):
        if faces:
            crops.append(align_face(frame, faces[0].landmarks, size, template)[0])
    return crops


def measure(crops: list[np.ndarray], codec: str, quality: int, folder: Path) -> dict[str, float]:
    start = time.perf_counter()
    encoded = [encode_image(c, codec, quality=quality) for c in crops]
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = [decode_image(b) for b in encoded]
    decode_s = time.perf_counter() - start
    with ShardWriter(folder, codec, make_schema(), rows_per_shard=len(crops)) as writer:
        for i, data in enumerate(encoded):
            writer.write({"sample_id": f"x/{i}", "dataset": "x", "face_found": True,
                          "image": {"bytes": data, "path": f"{i}{IMAGE_CODECS[codec]}"}})
    shard_bytes = (folder / writer.shards[0].file).stat().st_size
    error = np.mean([np.abs(d.astype(np.int16) - c).mean() for d, c in zip(decoded, crops)])
    return {
        "bytes_per_crop": shard_bytes / len(crops),
        "encode_per_s": len(crops) / encode_s,
        "decode_per_s": len(crops) / decode_s,
        "mean_abs_error": float(error),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--quality", type=int, default=95)
    args = parser.parse_args()
    crops = aligned_crops(args.crops, args.size)
    print(f"{len(crops)} aligned {args.size}x{args.size} crops from the sample DISFA videos")
    with tempfile.TemporaryDirectory() as tmp:
        results = {codec: measure(crops, codec, args.quality, Path(tmp)) for codec in ("png", "jpeg", "webp")}
    base = results["png"]["bytes_per_crop"]
    print(f"{'codec':6s} {'KiB/crop':>9s} {'vs png':>7s} {'encode/s':>9s} {'decode/s':>9s} {'MAE':>6s}")
    for codec, r in results.items():
        label = codec if codec == "png" else f"{codec}{args.quality}"
        print(f"{label:6s} {r['bytes_per_crop'] / 1024:9.1f} {r['bytes_per_crop'] / base:7.3f} "
              f"{r['encode_per_s']:9.0f} {r['decode_per_s']:9.0f} {r['mean_abs_error']:6.2f}")


if __name__ == "__main__":
    main()
