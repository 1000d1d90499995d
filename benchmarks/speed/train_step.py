"""Training throughput per encoder variant, and the shard loader against an ImageFolder of PNGs.

Two measurements in one run, so that they can be compared (the loader must keep the step fed):

1. **Training step**, images/s per variant: forward, backward and an AdamW step on random batches
   at the variant's input size, the way the harness runs it (bf16 autocast and channels_last on
   CUDA). Loss: the mean square of every output (the step's cost is the network's, not the loss's).
2. **Loader**, images/s over one epoch of training batches (decode, random crop, flip, resize to
   the input size): affbench's shard loader (``ShardImages`` + ``RowGroupBatchSampler``) against
   the named baseline, torchvision's ``ImageFolder`` over the same crops written as PNG files, with
   the same batch size, worker count and augmentation, shuffled uniformly.

Usage::

    python -m affbench.benchmarks.speed.train_step [--device auto] [--workers 4] [--rows 2000]
        [--size 256] [--input-size 224] [--batch-size 32] [--steps 10] [--variants emotiram-f,fan-au]
        [--small]

The crops are generated (LFW faces from scikit-image, jittered), written once as PNG shards and as
an ImageFolder under a temporary folder. ``--small`` runs every variant at a reduced input size
(CPU smoke runs). The machine's load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TypedDict

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: Reduced input sizes for --small (each variant's smallest sensible size).
SMALL_INPUT = {"emotiram-f": 96, "fan-au": 64, "emotiram-fau": 64, "megraph-au": 64, "emotiram-fau-megraph": 64,
               "smm-emotionnet": 75, "inceptionv3-mtl": 75, "vggface": 64}


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------------------- training step


def time_step(name: str, device: torch.device, batch_size: int, steps: int, input_size: int | None) -> tuple[int, float]:
    from affbench.data.loader import normalise
    from affbench.encoders.registry import create_encoder

    options = {"input_size": input_size} if input_size else {}
    model = create_encoder(name, **options).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    size = model.spec.input_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)

    def step() -> None:
        x = normalise(images, model.spec.mean, model.spec.std)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            outputs = model(x)
        loss = sum(o.float().pow(2).mean() for o in outputs.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator, cuDNN autotuning, first-call overheads
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return size, batch_size * steps / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------- data


def make_crops(work: Path, rows: int, size: int) -> tuple[Path, Path]:
    """The same ``rows`` crops as a prepared shard folder (PNG, as prepare writes) and an ImageFolder."""
    import cv2
    import pyarrow as pa

    from affbench.faces.alignment import AlignmentTemplate
    from affbench.pipelines.sample_data import lfw_face
    from affbench.shards.codec import encode_image
    from affbench.shards.manifest import DatasetWriter
    from affbench.shards.schema import make_schema
    from affbench.shards.writer import ShardWriter

    shards, folder = work / "shards", work / "imagefolder"
    schema = make_schema([pa.field("expression", pa.int8())])
    writer = DatasetWriter(shards, dataset="caer-s", parameters={"size": size, "codec": "png",
                                                                 "alignment": AlignmentTemplate().describe(size)},
                           schema=schema, protocol=None)
    rng = np.random.default_rng(0)
    faces = [lfw_face(i, size=size) for i in range(0, 100, 3)]
    writer.start_unit("train")
    with ShardWriter(shards, "train", schema, rows_per_shard=1000) as shard_writer:
        for i in range(rows):
            face = faces[i % len(faces)]
            # Jitter so that no two crops are byte-identical (PNG sizes stay realistic).
            matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-8, 8), rng.uniform(0.95, 1.05))
            rgb = cv2.warpAffine(face.rgb, matrix, (size, size), borderMode=cv2.BORDER_REFLECT_101)
            rgb = np.clip(rgb.astype(np.int16) + rng.integers(-6, 7, rgb.shape), 0, 255).astype(np.uint8)
            data = encode_image(rgb)
            label = i % 7
            shard_writer.write({"sample_id": f"bench/{i}", "dataset": "caer-s", "subject": None, "source": None,
                                "frame": None, "split": "train", "image": {"bytes": data, "path": f"{i}.png"},
                                "width": size, "height": size, "face_found": True, "det_score": 1.0, "box": None,
                                "landmarks": None, "expression": label})
            target = folder / f"class{label}"
            target.mkdir(parents=True, exist_ok=True)
            (target / f"{i:06d}.png").write_bytes(data)
    writer.record_unit("train", shards=shard_writer.shards)
    return shards, folder


def time_shard_loader(shards: Path, input_size: int, batch_size: int, workers: int, crop: float) -> float:
    from affbench.data.augment import Augmentation
    from affbench.data.loader import RowGroupBatchSampler, ShardImages, make_loader

    images = ShardImages(shards, input_size, Augmentation(hflip=0.5, crop=crop), train=True)
    sampler = RowGroupBatchSampler(np.arange(len(images)), images.row_groups, batch_size, shuffle=True, seed=0)
    loader = make_loader(images, sampler, num_workers=workers)
    return _epoch_rate(loader, sampler)


class _WorkerOptions(TypedDict, total=False):
    """The DataLoader options that only apply with worker processes."""

    persistent_workers: bool
    prefetch_factor: int


def imagefolder_loader(folder: Path, input_size: int, batch_size: int, workers: int, crop: float,
                       stored: int) -> torch.utils.data.DataLoader:
    """The baseline: torchvision's ImageFolder over the same crops as PNG files, the same augmentation."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomCrop(round(crop * stored)),
        transforms.RandomHorizontalFlip(),
        transforms.Resize(input_size, antialias=True),
        transforms.PILToTensor(),
    ])
    dataset = datasets.ImageFolder(folder, transform=transform)
    options: _WorkerOptions = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, **options)


def time_imagefolder(folder: Path, input_size: int, batch_size: int, workers: int, crop: float, stored: int) -> float:
    return _epoch_rate(imagefolder_loader(folder, input_size, batch_size, workers, crop, stored), None)


def _epoch_rate(loader, sampler) -> float:
    """Images/s of the second epoch (the first starts the workers and fills the page cache)."""
    rate = 0.0
    for epoch in range(2):
        if sampler is not None:
            sampler.set_epoch(epoch)
        count, start = 0, time.perf_counter()
        for batch in loader:
            images = batch["image"] if isinstance(batch, dict) else batch[0]
            count += len(images)
        rate = count / (time.perf_counter() - start)
    return rate


# ----------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    from affbench.encoders.registry import list_encoders
    from affbench.runtime.devices import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--rows", type=int, default=2000, help="crops in the loader comparison")
    parser.add_argument("--size", type=int, default=256, help="stored crop side (DISFA: 256)")
    parser.add_argument("--input-size", type=int, default=224, help="loader output side")
    parser.add_argument("--crop", type=float, default=0.875, help="random crop fraction (ME-GraphAU: 224 of 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--variants", default=None, help="comma-separated (default: every variant)")
    parser.add_argument("--small", action="store_true", help="reduced input sizes (CPU smoke runs)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-loader", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(resolve_device(args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; cores: {os.cpu_count()}; load average before: {load()}")

    if not args.skip_loader:
        work = Path(tempfile.mkdtemp(prefix="affbench-speed-"))
        try:
            shards, folder = make_crops(work, args.rows, args.size)
            print(f"\nloader: {args.rows} crops {args.size}x{args.size} (PNG) -> {args.input_size}, random crop "
                  f"{args.crop}, flip; batch {args.batch_size}, {args.workers} workers; images/s of the 2nd epoch")
            baseline = time_imagefolder(folder, args.input_size, args.batch_size, args.workers, args.crop, args.size)
            ours = time_shard_loader(shards, args.input_size, args.batch_size, args.workers, args.crop)
            print("| loader | images/s | vs baseline |\n|---|---:|---:|")
            print(f"| baseline: torchvision ImageFolder (PNG files, PIL) | {baseline:.0f} | 1.00x |")
            print(f"| affbench shards (Parquet row groups, OpenCV) | {ours:.0f} | {ours / baseline:.2f}x |")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    if not args.skip_train:
        variants = args.variants.split(",") if args.variants else list_encoders()
        print(f"\ntraining step: batch {args.batch_size}, {args.steps} timed steps after 2 warm-up steps"
              + (" (bf16 autocast, channels_last)" if device.type == "cuda" else ""))
        print("| variant | input | train images/s |\n|---|---:|---:|")
        for variant in variants:
            size = SMALL_INPUT.get(variant) if args.small else None
            input_size, rate = time_step(variant, device, args.batch_size, args.steps, size)
            print(f"| {variant} | {input_size} | {rate:.1f} |", flush=True)
    print(f"\nload average after: {load()}")


if __name__ == "__main__":
    main()
