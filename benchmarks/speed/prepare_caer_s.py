"""Throughput of ``affbench prepare caer-s`` (images/s) against a named baseline in the same run.

Baseline: one image per MTCNN call in one process (``--batch-size 1 --workers 1``). Compared:
batches of images of one size (``--batch-size 16``), and the same with joblib workers. Each
configuration runs the real command line in a fresh process on the same images; the rate is the
one the command reports (rows / seconds of the run, MTCNN loading included, Python start-up not).

Usage::

    python -m affbench.benchmarks.speed.prepare_caer_s [--root CAER-S] [--copies 2] [--workers 2]

Without ``--root`` it generates the sample CAER-S (``affbench sample-data``, 44 images, 712x400
and 640x360) and repeats every image ``--copies`` times. The machine's load average is printed
next to the figures, since other work on the machine changes them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATE = re.compile(r"images: (\d+) written in ([\d.]+) s \(([\d.]+) images/s\)")


def affbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "affbench.cli", *args], capture_output=True, text=True)


def make_root(work: Path, copies: int) -> Path:
    result = affbench("sample-data", str(work / "sample"), "--datasets", "caer-s")
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    source, root = work / "sample" / "caer-s", work / "CAER-S"
    for image in sorted(source.glob("*/*/*.png")):
        folder = root / image.relative_to(source).parent
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            shutil.copy(image, folder / f"{k}{image.name}")
    return root


def measure(root: Path, out: Path, options: list[str]) -> tuple[int, float, float]:
    start = time.perf_counter()
    result = affbench("prepare", "caer-s", str(root), "--out", str(out), "--device", "cpu", *options)
    wall = time.perf_counter() - start
    match = RATE.search(result.stdout)
    if match is None:
        raise SystemExit(f"no rate in the output of {options}:\n{result.stdout}\n{result.stderr}")
    return int(match.group(1)), float(match.group(3)), wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, help="a CAER-S root to measure on (default: generated)")
    parser.add_argument("--copies", type=int, default=2, help="copies of each sample image")
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel configuration")
    args = parser.parse_args(argv)
    configurations = [
        ("baseline: batch 1, 1 process", ["--batch-size", "1"]),
        ("batch 16, 1 process", ["--batch-size", "16"]),
        (f"batch 16, {args.workers} workers", ["--batch-size", "16", "--workers", str(args.workers)]),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = args.root or make_root(work, args.copies)
        print(f"cpus: {os.cpu_count()}  load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{'configuration':32s} {'images':>7s} {'images/s':>9s} {'vs baseline':>12s} {'wall s':>8s}")
        baseline = None
        for index, (name, options) in enumerate(configurations):
            images, rate, wall = measure(root, work / f"out{index}", options)
            baseline = baseline or rate
            print(f"{name:32s} {images:7d} {rate:9.2f} {rate / baseline:11.2f}x {wall:8.1f}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
