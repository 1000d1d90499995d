"""One command for a GPU machine: prepare, one short training epoch per encoder family, and predict.

Run on a machine with CUDA (it finishes in well under 5 minutes on one GPU)::

    python -m affbench.benchmarks.speed.gpu_check [--work /tmp/affbench-gpu-check] [--images 2048]
        [--batch-size 64] [--workers N]

It prints one table:

* **prepare**: ``affbench prepare disfa`` on the sample DISFA videos with MTCNN on ``--device``
  (frames/s, decode + detect/track + align + encode + write);
* **train <family>**: one epoch of ``--images`` crops (the prepared rows, repeated) for one variant
  of every encoder family at its paper input size, the way ``affbench.training.fit.fit`` runs it:
  :class:`~affbench.data.cache.DecodedImages` (the decoded cache) + :class:`~affbench.data.loader.RowGroupBatchSampler`
  + :func:`~affbench.data.make_loader` with loader workers, ``channels_last``, bf16 autocast,
  AdamW. The loss is the mean square of every output (the step's cost is the network's; the task
  losses cost next to nothing). Reported: images/s after two warm-up steps, the fraction of the
  epoch the loop waited for batches, and peak GPU memory (``torch.cuda.max_memory_allocated``);
* **predict**: ``affbench predict`` on one sample video with a model file of random weights (frames/s).

Without CUDA it refuses in one sentence (exit status 2). ``--device cpu --tiny`` runs the same
steps with a few frames, a few images and reduced input sizes, to check the script itself
(the tests do); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: The model predict runs (random weights: speed does not depend on them), as in speed/predict.py.
PREDICT_MODEL = "smm-emotionnet"
#: Reduced input sizes for --tiny (the families' smallest sensible sizes).
TINY_INPUT = {"caer": 48, "fan": 64, "megraph": 64, "inception": 75, "vgg": 32}


def family_variants() -> dict[str, str]:
    """One registered variant per encoder family (the first registered)."""
    from affbench.encoders.registry import get_encoder_spec, list_encoders

    chosen: dict[str, str] = {}
    for name in list_encoders():
        chosen.setdefault(get_encoder_spec(name).family, name)
    return chosen


def run_prepare(work: Path, frames: int, device: str) -> tuple[Path, float, int]:
    """Sample DISFA videos -> prepared shards; returns the folder, frames/s and frames."""
    from affbench.pipelines import disfa
    from affbench.pipelines.sample_data import write_sample_data
    from affbench.shards.reader import ShardReader

    root = write_sample_data(work / f"sample-{frames}", ["disfa"], frames=frames)["disfa"]
    out = work / f"prepared-{frames}-{device.replace(':', '')}" / "disfa"
    started = time.perf_counter()
    disfa.prepare(root, out, settings=disfa.PrepareSettings(device=device), workers=1, progress=False)
    seconds = time.perf_counter() - started
    rows = ShardReader(out).num_rows
    return out, rows / seconds, rows


def train_one_epoch(folder: Path, variant: str, input_size: int | None, *, device, images: int, batch_size: int,
                    workers: int) -> dict:
    import numpy as np
    import torch

    from affbench.data.augment import Augmentation
    from affbench.data.cache import images_with_cache
    from affbench.data.loader import RowGroupBatchSampler, make_loader
    from affbench.data.prepared import open_prepared
    from affbench.encoders.registry import create_encoder
    from affbench.training.evaluation import forward

    torch.manual_seed(0)
    model = create_encoder(variant, **({"input_size": input_size} if input_size else {})).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    augmentation = Augmentation(hflip=0.5, crop=0.875)
    dataset, cache = images_with_cache(folder, model.spec.input_size, augmentation)
    meta = open_prepared(folder, "disfa").meta
    rows = np.flatnonzero(meta["face_found"].to_numpy())
    rows = np.resize(rows, max(images, batch_size))  # the prepared rows, repeated up to --images
    sampler = RowGroupBatchSampler(rows, dataset.row_groups, batch_size, shuffle=True, seed=0, drop_last=True)
    loader = make_loader(dataset.with_mode(train=True), sampler, num_workers=workers, pin_memory=cuda, seed=0)

    def step(batch) -> None:
        outputs = forward(model, batch["image"], model.spec, device, cuda)
        loss = sum(o.float().pow(2).mean() for o in outputs.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    count, waited, started = 0, 0.0, None
    waited_from = time.perf_counter()
    for index, batch in enumerate(loader):
        if index == 2:  # two warm-up steps (workers starting, cuDNN autotuning) are not timed
            if cuda:
                torch.cuda.synchronize(device)
            started = waited_from = time.perf_counter()
            waited = 0.0
        if index >= 2:
            waited += time.perf_counter() - waited_from
            count += len(batch["image"])
        step(batch)
        if cuda and index >= 2:
            # Wait for the GPU: otherwise the loop runs ahead and the data wait hides in the next step.
            torch.cuda.synchronize(device)
        waited_from = time.perf_counter()
    seconds = time.perf_counter() - started if started is not None else float("nan")
    return {"variant": variant, "input": model.spec.input_size, "images_per_s": count / seconds if count else float("nan"),
            "wait_fraction": waited / seconds if count else float("nan"),
            "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
            "cache": cache.describe() if cache is not None else None}


def run_predict(work: Path, frames: int, device: str, input_size: int | None) -> tuple[float, int]:
    import torch

    from affbench.encoders.registry import create_encoder
    from affbench.faces.alignment import AlignmentTemplate
    from affbench.inference.bundle import describe_trained_model, save_model_file
    from affbench.inference.predict import load_model, predict_table
    from affbench.pipelines import disfa, protocols

    torch.manual_seed(0)
    model = create_encoder(PREDICT_MODEL, **({"input_size": input_size} if input_size else {}))
    protocol = protocols()["affwild2"]  # names its AU, expression and VA outputs
    description = describe_trained_model("gpu-check", model.spec,
                                         [protocol.task(t) for t in ("au-detection", "expression", "va")],
                                         {"alignment": AlignmentTemplate().describe(112)})
    path = save_model_file(work / f"gpu-check-{model.spec.input_size}.pt", description, model.state_dict())
    video = work / f"sample-{frames}" / "disfa" / disfa.video_path("left", "SN001")
    loaded = load_model(path, device=device)
    predict_table([loaded], [video])  # warm-up: MTCNN and the model load their kernels
    started = time.perf_counter()
    result = predict_table([loaded], [video])
    return len(result.table) / (time.perf_counter() - started), len(result.table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --tiny")
    parser.add_argument("--work", type=Path, default=Path("/tmp/affbench-gpu-check"))
    parser.add_argument("--frames", type=int, default=None, help="frames per sample video (default 240; tiny 6)")
    parser.add_argument("--images", type=int, default=None, help="crops per training epoch (default 2048; tiny 16)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64; tiny 4")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: as training chooses)")
    parser.add_argument("--families", default=None, help="comma-separated encoder families (default: every one)")
    parser.add_argument("--tiny", action="store_true", help="a few frames and images at reduced sizes (checks the script)")
    args = parser.parse_args(argv)

    import torch

    from affbench.errors import AffbenchError
    from affbench.training.evaluation import choose_workers

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check measures a CUDA GPU and this machine has none; run it on a GPU machine "
              "(or use --device cpu --tiny to check the script itself).", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.tiny:
        print("gpu_check without CUDA only runs with --tiny (its figures would say nothing about a GPU).",
              file=sys.stderr)
        return 2
    variants = family_variants()
    wanted = [f.strip() for f in args.families.split(",")] if args.families else list(variants)
    unknown = sorted(set(wanted) - set(variants))
    if unknown:
        print(f"Unknown encoder family {unknown[0]!r}; the families are: {', '.join(variants)}.", file=sys.stderr)
        return 2
    frames = args.frames or (6 if args.tiny else 240)
    images = args.images or (16 if args.tiny else 2048)
    batch_size = args.batch_size or (4 if args.tiny else 64)
    workers = args.workers if args.workers is not None else (0 if args.tiny else choose_workers(device, None))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu, {torch.get_num_threads()} threads"
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check on {name}; {os.cpu_count()} cores, {workers} loader workers; "
          f"load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)

    started = time.perf_counter()
    lines = ["| step | model (input) | rate | data-wait fraction | peak GPU memory (MiB) | seconds |",
             "|---|---|---:|---:|---:|---:|"]
    clock = [time.perf_counter()]

    def seconds() -> str:  # of this step, so that a slow step shows against the 5-minute bound
        now = time.perf_counter()
        spent, clock[0] = now - clock[0], now
        return f"{spent:.1f}"

    try:
        folder, rate, rows = run_prepare(args.work, frames, str(device))
        lines.append(f"| prepare (sample DISFA, {rows} frames) | MTCNN + tracking | {rate:.1f} frames/s | | | {seconds()} |")
        print(lines[-1], flush=True)
        for family in wanted:
            variant = variants[family]
            result = train_one_epoch(folder, variant, TINY_INPUT.get(family) if args.tiny else None, device=device,
                                     images=images, batch_size=batch_size, workers=workers)
            memory = "" if result["peak_gpu_mib"] is None else f"{result['peak_gpu_mib']:.0f}"
            precision = "bf16 autocast" if device.type == "cuda" else "fp32"
            lines.append(f"| train {family} ({images} images, batch {batch_size}, {precision}) | {variant} ({result['input']}) "
                         f"| {result['images_per_s']:.1f} images/s | {result['wait_fraction']:.2f} | {memory} | {seconds()} |")
            print(lines[-1], flush=True)
        rate, n = run_predict(args.work, frames, str(device), 75 if args.tiny else None)
        lines.append(f"| predict (one sample video, {n} frames) | {PREDICT_MODEL} | {rate:.1f} frames/s | | | {seconds()} |")
    except AffbenchError as exc:
        print(f"gpu_check stopped: {exc}", file=sys.stderr)
        return 1
    print("\n" + "\n".join(lines))
    print(f"\n{time.perf_counter() - started:.0f} s in all; load average after "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
