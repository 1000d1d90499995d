"""Where brows and chin land in the crop, for the old template, the default and a JAA-Net crop.

Judge: dlib's 68-point shape predictor (not MTCNN), run on the *source* image, its points mapped
into each crop by the crop's own transform, so that a chin outside the crop still has a position.
The crops are aligned from MTCNN's five landmarks exactly as ``affbench prepare`` does.

Faces: the scikit-image astronaut and the LFW faces the sample data uses, each frontal, rolled by
+-30 degrees, pitched (the face foreshortened vertically, cos 35 degrees) and yawed (foreshortened
horizontally, cos 30 and cos 45 degrees: a turned face's eye distance shrinks by that factor).

Reported per pose and crop: median top of the brows and chin as a fraction of the crop height
(from the top), and the share of faces whose 68 points all lie inside the crop, and inside its
centred 0.875 crop (what ME-GraphAU's 224-of-256 evaluation sees).

Run::

    python -m affbench.benchmarks.quality.crop_framing --sheet /tmp/framing.png

Needs dlib and its 68-point model (``face_recognition_models``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

from affbench.faces.alignment import AlignmentTemplate, alignment_matrix, transform_points, warp_crop
from affbench.faces.detection import shared_detector
from affbench.pipelines import sample_data as sd

SIZE = 256
OLD = AlignmentTemplate(face_scale=0.8, shift_y=0.0, border="replicate", antialias=False)


def _roll(degrees: float) -> np.ndarray:
    """The rotation by ``degrees`` in the image plane."""
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


POSES: dict[str, np.ndarray] = {
    "frontal": np.eye(2),
    "roll +30": _roll(30.0),
    "roll -30": _roll(-30.0),
    "pitch 35": np.diag([1.0, math.cos(math.radians(35))]),
    "yaw 30": np.diag([math.cos(math.radians(30)), 1.0]),
    "yaw 45": np.diag([math.cos(math.radians(45)), 1.0]),
}


def dlib_predictor():
    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        raise SystemExit("dlib's 68-point model (face_recognition_models) is not installed.")
    model = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))

    def landmarks(rgb: np.ndarray, near: np.ndarray) -> np.ndarray | None:
        """The 68 points of the dlib face whose box centre is nearest ``near`` (MTCNN's face:
        dlib also fires on the astronaut's suit)."""
        found = [r for r in detector(rgb, 1) if r.left() <= near[0] <= r.right() and r.top() <= near[1] <= r.bottom()]
        if not found:
            return None
        centre = lambda r: np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
        shape = predictor(rgb, min(found, key=lambda r: float(np.linalg.norm(centre(r) - near))))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    return landmarks


def sources() -> list[tuple[str, np.ndarray]]:
    from skimage import data

    faces = [("astronaut", data.astronaut())]
    for index in sd.RELIABLE_LFW[:12]:
        canvas = sd.scene(560, 560, seed=index)
        sd.paste_face(canvas, sd.lfw_face(index, size=300), (280, 280), 0.0, 300)
        faces.append((f"lfw{index}", canvas))
    return faces


def posed(image: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """``image`` under ``linear`` about its centre, on a grey canvas large enough to hold it
    (grey, not reflected: a reflected copy of the face would be a second face at the edge)."""
    h, w = image.shape[:2]
    side = int(max(h, w) * 1.5)
    matrix = np.hstack([linear, (np.array([side, side]) / 2 - linear @ np.array([w, h]) / 2)[:, None]])
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(110, 110, 110))


def jaa_matrix(five: np.ndarray, size: int, enlarge: float = 2.9) -> np.ndarray:
    """JAA-Net's framing from five points: roll removed by the eye line, the box around the five
    rotated points centred, its longer side x ``enlarge`` = the crop (Shao et al. 2018)."""
    dx, dy = five[1] - five[0]
    length = math.hypot(dx, dy)
    c, s = dx / length, dy / length
    rotation = np.array([[c, s], [-s, c]])
    turned = five @ rotation.T
    low, high = turned.min(axis=0), turned.max(axis=0)
    half = 0.5 * enlarge * float((high - low).max())
    scale = (size - 1) / 2.0 / half
    centre = (high + low) / 2
    return np.hstack([scale * rotation, (scale * (half - centre))[:, None]])


def framing(points68: np.ndarray, matrix: np.ndarray, size: int) -> dict:
    p = transform_points(matrix, points68) / size
    inner = 0.0625  # the centred 0.875 crop
    return {
        "brow": float(p[17:27, 1].min()),
        "chin": float(p[8, 1]),
        "inside": bool(((p >= 0) & (p < 1)).all()),
        "inside_875": bool(((p >= inner) & (p < 1 - inner)).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sheet", type=Path, help="write a contact sheet (PNG) of old / default / JAA-Net crops")
    args = parser.parse_args()
    landmarks68 = dlib_predictor()
    detector = shared_detector(device="cpu")
    results: dict[tuple[str, str], list[dict]] = {}
    sheet_rows = []
    for name, image in sources():
        for pose, linear in POSES.items():
            rgb = posed(image, linear)
            faces = detector.detect([rgb])[0]
            if not faces:
                print(f"skipped {name} {pose}: no MTCNN face")
                continue
            five = max(faces, key=lambda f: f.area).landmarks
            judge = landmarks68(rgb, five[:2].mean(axis=0))
            if judge is None:
                print(f"skipped {name} {pose}: dlib finds no face there")
                continue
            matrices = {
                "old (face_scale 0.8)": (alignment_matrix(five, SIZE, OLD), OLD),
                "default": (alignment_matrix(five, SIZE, AlignmentTemplate()), AlignmentTemplate()),
                "JAA-Net 200": (jaa_matrix(five, SIZE), AlignmentTemplate()),
            }
            # JAA-Net's network sees the central 176 of its 200 crop.
            zoom = 200 / 176
            jaa = matrices["JAA-Net 200"][0]
            matrices["JAA-Net 176 of 200"] = (np.vstack([zoom * jaa[:, :2].T, zoom * jaa[:, 2] - (zoom - 1) * SIZE / 2]).T, AlignmentTemplate())
            for method, (matrix, _) in matrices.items():
                results.setdefault((pose, method), []).append(framing(judge, matrix, SIZE))
            if args.sheet and name in ("astronaut", "lfw12") and pose in ("frontal", "roll +30", "yaw 45", "pitch 35"):
                crops = []
                for method in ("old (face_scale 0.8)", "default", "JAA-Net 176 of 200"):
                    matrix, template = matrices[method]
                    crop = np.ascontiguousarray(warp_crop(rgb, matrix, SIZE, template))
                    for x, y in transform_points(matrix, judge):
                        cv2.circle(crop, (int(round(x)), int(round(y))), 2, (0, 255, 0), -1)
                    crops.append(crop)
                sheet_rows.append(np.hstack(crops))
    print(f"{'pose':10s} {'crop':22s} {'n':>3s} {'brow top':>9s} {'chin':>6s} {'all 68 in':>10s} {'in 0.875':>9s}")
    for (pose, method), rows in results.items():
        brow = np.median([r["brow"] for r in rows])
        chin = np.median([r["chin"] for r in rows])
        inside = 100 * np.mean([r["inside"] for r in rows])
        inner = 100 * np.mean([r["inside_875"] for r in rows])
        print(f"{pose:10s} {method:22s} {len(rows):3d} {brow:9.3f} {chin:6.3f} {inside:9.0f}% {inner:8.0f}%")
    if args.sheet and sheet_rows:
        sheet = np.vstack(sheet_rows)
        cv2.imwrite(str(args.sheet), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"contact sheet (columns: old, default, JAA-Net 176 of 200): {args.sheet}")


if __name__ == "__main__":
    main()
