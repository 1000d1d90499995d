"""Speed of ``affbench predict`` on a video against its two parts, measured in the same run.

Baselines (named in issue 14), on the same frames, same process, same device:

* **face pipeline alone**: decode + :class:`~affbench.faces.tracking.FaceTracker` (what ``prepare`` runs on
  a DISFA video) + the similarity alignment onto the model's template; no model;
* **bare model forward**: the model's forward pass alone, in batches, on the crops the face
  pipeline cut (pre-aligned, already in memory), framing and normalisation included.

``predict`` does both plus the table; its rate is compared with each baseline, and with the rate
the two parts would give run back to back (``1 / (1/face + 1/model)``), so that the overhead of
predict's own bookkeeping shows as a ratio below 1.00.

Run::

    python -P -m affbench.benchmarks.speed.predict --work /tmp/affbench-speed --frames 120

The models carry random weights (speed does not depend on them). The load average is printed
before and after: other processes on the machine slow every side alike, so read the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-P", "-m", "affbench.cli"]
VIDEO = "Videos_LeftCamera/LeftVideoSN001_comp.avi"
#: (label, encoder, options, dataset whose protocol names the outputs, tasks, crop size)
MODELS = {
    "smm-75": ("smm-emotionnet", {"input_size": 75}, "affwild2", ("au-detection", "expression", "va"), 112),
    "smm-299": ("smm-emotionnet", {}, "affwild2", ("au-detection", "expression", "va"), 112),
    "emotiram-f": ("emotiram-f", {}, "caer-s", ("expression",), 96),
}


def sample_video(work: Path, frames: int) -> Path:
    folder = work / f"sample-{frames}"
    subprocess.run([*CLI, "sample-data", str(folder), "--datasets", "disfa", "--frames", str(frames)],
                   check=True, stdout=subprocess.DEVNULL)
    return folder / "disfa" / VIDEO


def model_file(work: Path, label: str) -> Path:
    import torch

    from affbench.encoders.registry import create_encoder
    from affbench.faces.alignment import AlignmentTemplate
    from affbench.inference.bundle import describe_trained_model, save_model_file
    from affbench.pipelines import protocols

    path = work / f"{label}.pt"
    if not path.is_file():
        encoder, options, dataset, tasks, crop = MODELS[label]
        torch.manual_seed(0)
        model = create_encoder(encoder, **options)
        protocol = protocols()[dataset]
        description = describe_trained_model(label, model.spec, [protocol.task(t) for t in tasks],
                                             {"alignment": AlignmentTemplate().describe(crop)})
        save_model_file(path, description, model.state_dict())
    return path


def face_pipeline(video: Path, model) -> tuple[float, list[np.ndarray]]:
    """Seconds for decode + track + align over the whole video, and the crops."""
    from affbench.faces.detection import shared_detector
    from affbench.faces.tracking import FaceTracker
    from affbench.faces.video import VideoReader

    tracker = FaceTracker(shared_detector(model.description.detector_settings, str(model.device)),
                          model.description.tracker_settings)
    crops = []
    start = time.perf_counter()
    with VideoReader(video) as reader:
        for _, frame, result in tracker.follow(reader):
            if result.face is not None:
                crops.append(model.align(frame, result.face))
    return time.perf_counter() - start, crops


def bare_forward(model, crops: list[np.ndarray], batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(crops), batch_size):
        model.outputs(crops[i : i + batch_size])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    import torch

    from affbench.faces.video import probe_video
    from affbench.inference.predict import load_model, predict_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/affbench-speed"))
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--models", default="smm-75,emotiram-f", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="each side is timed this often; the fastest counts")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    video = sample_video(args.work, args.frames)
    info = probe_video(video)
    print(f"video {video} ({info.frames} frames, {info.width}x{info.height}); device {args.device}; "
          f"torch threads {torch.get_num_threads()}; load average before {os.getloadavg()}")
    print("| model | face pipeline alone (frames/s) | bare model forward (crops/s) | predict (frames/s) "
          "| predict / face pipeline | predict / both parts back to back |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in [m.strip() for m in args.models.split(",") if m.strip()]:
        model = load_model(model_file(args.work, label), device=args.device, batch_size=args.batch_size)
        predict_table([model], [video])  # warm-up: MTCNN and the model load their kernels
        face_times: list[float] = []
        forward_times: list[float] = []
        predict_times: list[float] = []
        for _ in range(args.repeats):  # interleaved, so that a burst of load hits every side alike
            seconds, crops = face_pipeline(video, model)
            face_times.append(seconds)
            forward_times.append(bare_forward(model, crops, args.batch_size))
            start = time.perf_counter()
            result = predict_table([model], [video], batch_size=args.batch_size)
            predict_times.append(time.perf_counter() - start)
        face_s, forward_s, predict_s = min(face_times), min(forward_times), min(predict_times)
        n = len(result.table)
        face_rate, forward_rate, predict_rate = n / face_s, len(crops) / forward_s, n / predict_s
        both = n / (face_s + forward_s)
        print(f"| {label} | {face_rate:.1f} | {forward_rate:.1f} | {predict_rate:.1f} | "
              f"{predict_rate / face_rate:.2f}x | {predict_rate / both:.2f}x |")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
