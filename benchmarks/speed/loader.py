"""Images/s the training loop receives: decoded cache vs PNG shards vs ImageFolder vs decoded in memory.

Four loaders over the same crops, with the same batch size, worker count and augmentation (random
crop ``--crop`` of the stored crop, horizontal flip, resize to ``--input-size``), each at every
worker count of ``--workers``, in one run:

* **baseline: torchvision ImageFolder** over the crops written as PNG files (PIL decoding,
  ``RandomCrop`` + ``RandomHorizontalFlip`` + ``Resize``), shuffled uniformly;
* **affbench shards**: :class:`~affbench.data.loader.ShardImages` (PNG bytes in Parquet row groups, OpenCV);
* **affbench decoded cache**: :class:`~affbench.data.cache.DecodedImages` over the memory-mapped cache
  (what ``affbench run-benchmark`` uses by default);
* **ceiling: decoded in memory**: the same crops already decoded in an in-process array, so only
  the per-sample augmentation and batching remain.

Usage (self-contained, about a minute on a quiet 2-core machine)::

    python -m affbench.benchmarks.speed.loader [--rows 1000] [--workers 0,1,2] [--size 256]
        [--input-size 224] [--crop 0.875] [--batch-size 32]

Images/s are those of the faster of epochs 2 and 3 (the first starts the workers and fills the
page cache; the better of two counts a burst of load from other processes less).
Peak memory is sampled every 100 ms over the main process and its workers during both epochs:
RSS summed (pages shared between processes, such as the mapped cache, count once per process)
and PSS summed (shared pages divided among their processes: what the loader really holds). The
load average is printed with the figures: other processes slow every loader alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

LOADERS = ("imagefolder", "shards", "cached", "memory")
TITLES = {
    "imagefolder": "baseline: torchvision ImageFolder (PNG files, PIL)",
    "shards": "affbench shards (PNG in Parquet, OpenCV)",
    "cached": "affbench decoded cache (memory-mapped .npy)",
    "memory": "ceiling: decoded crops in memory",
}


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


class MemoryPeak:
    """Peak summed RSS and PSS (bytes) of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.rss, self.pss = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        rss = pss = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except (psutil.Error, OSError):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryPeak:
        try:
            import psutil  # noqa: F401
        except ImportError:
            return self  # no figures without psutil (it comes with dask/distributed)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def imagefolder_loader(folder: Path, input_size: int, batch_size: int, workers: int, crop: float, stored: int):
    from affbench.benchmarks.speed.train_step import imagefolder_loader as baseline

    return baseline(folder, input_size, batch_size, workers, crop, stored), None


def affbench_loader(images, batch_size: int, workers: int):
    from affbench.data.loader import RowGroupBatchSampler, make_loader

    sampler = RowGroupBatchSampler(np.arange(len(images)), images.row_groups, batch_size, shuffle=True, seed=0)
    return make_loader(images.with_mode(train=True), sampler, num_workers=workers), sampler


def epoch_rate(loader, sampler, epochs: int = 3) -> float:
    """Images/s of the best epoch after the first (which starts the workers and fills the page
    cache); the best of two, so that a burst of load from other processes counts less."""
    rates = []
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        count, start = 0, time.perf_counter()
        for batch in loader:
            images = batch["image"] if isinstance(batch, dict) else batch[0]
            count += len(images)
        rates.append(count / (time.perf_counter() - start))
    return max(rates[1:])


def make_in_memory(shards: Path, input_size: int, augmentation, cache):
    """:class:`DecodedImages` whose pixels are an in-process array (copied out of the cache)."""
    from affbench.data.cache import PIXELS_NAME, DecodedImages

    class InMemoryImages(DecodedImages):
        _memory: np.ndarray  # set below, before any worker starts

        def _pixel_array(self) -> np.ndarray:
            return self._memory

        def __getstate__(self):
            return self.__dict__.copy()  # workers are forked; the array is shared copy-on-write

    images = InMemoryImages(shards, input_size, augmentation, cache=cache)
    images._memory = np.array(np.load(cache.folder / PIXELS_NAME, allow_pickle=False))
    return images


def main(argv: list[str] | None = None) -> None:
    from affbench.benchmarks.speed.train_step import make_crops
    from affbench.data.augment import Augmentation
    from affbench.data.cache import DecodedImages, open_decoded_cache
    from affbench.data.loader import ShardImages

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="crops in the comparison")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--size", type=int, default=256, help="stored crop side (DISFA: 256)")
    parser.add_argument("--input-size", type=int, default=224, help="loader output side")
    parser.add_argument("--crop", type=float, default=0.875, help="random crop fraction (ME-GraphAU: 224 of 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loaders", default=",".join(LOADERS), help=f"comma-separated, of {', '.join(LOADERS)}")
    args = parser.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",")]
    loaders = [name.strip() for name in args.loaders.split(",") if name.strip()]
    # One core per process for every loader (PIL decodes on one thread; OpenCV would use more at
    # 0 workers): the comparison is per worker process, the way the harness runs on many cores.
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    print(f"cores: {os.cpu_count()}; load average before: {load()}")
    work = Path(tempfile.mkdtemp(prefix="affbench-loader-"))
    try:
        started = time.perf_counter()
        shards, folder = make_crops(work, args.rows, args.size)
        print(f"wrote {args.rows} crops {args.size}x{args.size} as PNG shards and an ImageFolder "
              f"in {time.perf_counter() - started:.1f} s")
        augmentation = Augmentation(hflip=0.5, crop=args.crop)
        cache = open_decoded_cache(shards, input_size=args.input_size, augmentation=augmentation)
        print(f"decoded cache: {cache.folder.name}, {cache.side}x{cache.side} ({'exact' if cache.exact else 'resized'}), "
              f"{cache.nbytes / 2**20:.0f} MiB, built in {cache.build_seconds:.1f} s "
              f"(PNG shards: {sum(p.stat().st_size for p in (shards / 'shards').glob('*.parquet')) / 2**20:.0f} MiB)")
        print(f"\n{args.rows} crops -> {args.input_size}, random crop {args.crop}, flip; batch {args.batch_size}; "
              "images/s: the faster of epochs 2 and 3")
        rates: dict[tuple[str, int], float] = {}
        memory: dict[tuple[str, int], tuple[float, float]] = {}
        for workers in worker_counts:
            for name in loaders:
                if name == "imagefolder":
                    loader, sampler = imagefolder_loader(folder, args.input_size, args.batch_size, workers, args.crop,
                                                         args.size)
                elif name == "shards":
                    loader, sampler = affbench_loader(ShardImages(shards, args.input_size, augmentation),
                                                      args.batch_size, workers)
                elif name == "cached":
                    loader, sampler = affbench_loader(DecodedImages(shards, args.input_size, augmentation, cache=cache),
                                                      args.batch_size, workers)
                else:
                    loader, sampler = affbench_loader(make_in_memory(shards, args.input_size, augmentation, cache),
                                                      args.batch_size, workers)
                with MemoryPeak() as peak:
                    rates[name, workers] = epoch_rate(loader, sampler)
                memory[name, workers] = (peak.rss / 2**20, peak.pss / 2**20)
                del loader  # stops its workers before the next loader starts
                print(f"  {name}, {workers} workers: {rates[name, workers]:.0f} images/s (load {load()})", flush=True)
        header = " | ".join(f"{w} workers" for w in worker_counts)
        print(f"\nimages/s (x ImageFolder at the same worker count)\n\n| loader | {header} |")
        print("|---|" + "---:|" * len(worker_counts))
        for name in loaders:
            cells = []
            for w in worker_counts:
                base = rates.get(("imagefolder", w))
                ratio = f" ({rates[name, w] / base:.2f}x)" if base else ""
                cells.append(f"{rates[name, w]:.0f}{ratio}")
            print(f"| {TITLES[name]} | {' | '.join(cells)} |")
        print(f"\npeak memory, main process + workers, RSS / PSS MiB\n\n| loader | {header} |")
        print("|---|" + "---:|" * len(worker_counts))
        for name in loaders:
            cells = [f"{memory[name, w][0]:.0f} / {memory[name, w][1]:.0f}" for w in worker_counts]
            print(f"| {TITLES[name]} | {' | '.join(cells)} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {load()}")


if __name__ == "__main__":
    main()
