"""Where the time of one DISFA video goes in `affbench prepare disfa`: milliseconds per frame by stage.

Runs the unit function of ``affbench prepare disfa`` (:func:`affbench.pipelines.disfa.prepare_video`,
the default settings, one PyTorch thread as each worker has) on each video in this process, with the
stages below timed by wrappers. Each stage's time is its own (exclusive): O-Net called while
checking a track backwards counts as "O-Net, backward check", not also as "O-Net, forward".

* decode: a separate pass that only decodes the video (the prepare run decodes in a background
  thread; "waiting for frames" is the time its main thread waited for that thread);
* cascade, whole frame / around the face: the full MTCNN cascade (``FaceDetector.detect`` /
  ``detect_near``);
* O-Net, forward / backward check / re-run on detections: ``FaceDetector.refine`` called while
  tracking, while confirming a track backwards from an anchor, and on a detection's box;
* warp: the aligned crop (anti-aliasing pre-filter and ``warpAffine``);
* encode: the crop's PNG encoding;
* shard write: rows into Parquet shards;
* other: the rest (the geometry and agreement checks, gap filling, rows, Python).

Run (the sample videos are generated once under --work; --real-video as in prepare_disfa)::

    python -m affbench.benchmarks.speed.prepare_stages --work /tmp/affbench-speed --frames 600 \\
        --real-video .../feat/tests/data/WolfgangLanger_Pexels.mp4
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

from affbench.benchmarks.speed.prepare_disfa import REAL_VIDEO, VIDEO, sample_root, with_real_footage
from affbench.faces.detection import DetectorSettings, FaceDetector, shared_detector
from affbench.faces.tracking import FaceTracker
from affbench.faces.video import VideoReader
from affbench.shards.writer import ShardWriter

STAGES = ("decode", "waiting for frames", "cascade, whole frame", "cascade, around the face", "O-Net, forward",
          "O-Net, backward check", "O-Net, re-run on detections", "warp", "encode", "shard write", "other")


class StageClock:
    """Exclusive time per stage: a wrapped call's time goes to its own stage, minus the time of
    the wrapped calls inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []  # [stage, start, time spent in nested stages]

    def wrap(self, function: Callable, stage: str | Callable[[list[str]], str]) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            enclosing = [entry[0] for entry in self._stack]
            name = stage(enclosing) if callable(stage) else stage
            self._stack.append([name, time.perf_counter(), 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                name, start, nested = self._stack.pop()
                spent = time.perf_counter() - start
                self.seconds[name] += spent - nested
                if self._stack:
                    self._stack[-1][2] += spent

        return timed

    def frames(self, stream: Iterator) -> Iterator:
        """Time the waits for each item of ``stream``."""
        while True:
            start = time.perf_counter()
            try:
                item = next(stream)
            except StopIteration:
                return
            finally:
                self.seconds["waiting for frames"] += time.perf_counter() - start
            yield item


def _onet_stage(enclosing: list[str]) -> str:
    if "backward" in enclosing:
        return "O-Net, backward check"
    if "detections" in enclosing:
        return "O-Net, re-run on detections"
    return "O-Net, forward"


def decode_seconds(path: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with VideoReader(path, prefetch=8) as video:
        frames = sum(1 for _ in video)
    return frames, time.perf_counter() - start


def profile_video(root: Path, video: str, out: Path) -> dict[str, Any]:
    """Prepare one video of ``root`` into ``out`` with every stage timed; ms per frame by stage."""
    import torch

    from affbench.pipelines import disfa

    frames, decoding = decode_seconds(root / video)
    unit = next(u for u in disfa.find_videos(root) if u.video == video)
    clock = StageClock()
    reader_iter = VideoReader.__iter__
    targets: dict[tuple[type, str], str | Callable[[list[str]], str]] = {
        (FaceDetector, "detect"): "cascade, whole frame",
        (FaceDetector, "detect_near"): "cascade, around the face",
        (FaceDetector, "refine"): _onet_stage,
        (FaceTracker, "_confirm"): "backward",
        (FaceTracker, "_detect"): "detections",
        (ShardWriter, "write"): "shard write",
        (ShardWriter, "close"): "shard write",
    }
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with ExitStack() as patches:
        for (owner, name), stage in targets.items():
            if not hasattr(owner, name):  # an older affbench (timed for comparison) lacks a stage
                continue
            patches.enter_context(mock.patch.object(owner, name, clock.wrap(getattr(owner, name), stage)))
        from affbench.faces import alignment
        from affbench.shards import codec, rows

        patches.enter_context(mock.patch.object(rows, "align_face", clock.wrap(alignment.align_face, "warp")))
        patches.enter_context(mock.patch.object(codec, "encode_image", clock.wrap(codec.encode_image, "encode")))
        patches.enter_context(mock.patch.object(VideoReader, "__iter__", lambda self: clock.frames(reader_iter(self))))
        start = time.perf_counter()
        outcome = disfa.prepare_video(unit, lambda n: None, out_dir=str(out), settings=disfa.PrepareSettings())
        total = time.perf_counter() - start
    torch.set_num_threads(os.cpu_count() or 1)
    stages = {name: clock.seconds.get(name, 0.0) for name in STAGES if name not in ("decode", "other")}
    stages["other"] = total - sum(stages.values())
    stages = {"decode": decoding, **stages}
    rows_done = outcome.stats["frames"]
    return {
        "video": video, "frames": rows_done, "decoded_frames": frames, "seconds": round(total, 2),
        "fps": round(rows_done / total, 1),
        "ms_per_frame": {name: round(1000 * s / rows_done, 2) for name, s in stages.items()},
        "frames_by_source": {k: outcome.stats[k] for k in ("detected", "tracked", "interpolated", "carried")},
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("affbench-speed"), help="folder for sample data and outputs")
    parser.add_argument("--frames", type=int, default=600, help="frames per sample video")
    parser.add_argument("--real-video", type=Path, default=None, help="real footage for the second subject")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    root = sample_root(args.work, args.frames)
    videos = [VIDEO]
    if args.real_video:
        root = with_real_footage(root, args.real_video, args.frames)
        videos.append(REAL_VIDEO)
    shared_detector(DetectorSettings(), "auto")  # loaded once per worker process: not a cost per frame
    results = [profile_video(root, video, args.work / "out-stages") for video in videos]
    for result in results:
        print(f"{result['video']}: {result['frames']} frames, {result['fps']} frames/s in one process "
              f"(1 thread); frames by source {result['frames_by_source']}")
        print("  ms/frame: " + ", ".join(f"{k} {v}" for k, v in result["ms_per_frame"].items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
