"""affbench.faces.alignment: where the default template frames the face, the constant border, anti-aliasing."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from affbench.faces.alignment import (
    AlignmentTemplate,
    align_face,
    alignment_matrix,
    antialias_sigma,
    transform_points,
    warp_crop,
)

#: The template before issue 10: the ArcFace points shrunk to 0.8 about the crop centre.
OLD = AlignmentTemplate(face_scale=0.8, shift_y=0.0, border="replicate", antialias=False)

#: A face with known landmarks, in units of the distance between the pupils, eye midpoint at the
#: origin, y down: MTCNN's five points, then the top of the brows and the chin. The proportions
#: are those of dlib's 68-point fits on the JAA-Net and ME-GraphAU sample crops (brows 0.4, chin
#: 1.75 eye-to-mouth distances from the eye line, eye-to-mouth 1.15 eye distances).
FIVE = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.65], [-0.4, 1.15], [0.4, 1.15]])
BROWS = np.array([[-0.55, -0.46], [0.55, -0.46]])
CHIN = np.array([[0.0, 2.01]])


def posed(points: np.ndarray, roll: float = 0.0, yaw: float = 0.0, scale: float = 120.0,
          at=(400.0, 300.0)) -> np.ndarray:
    """The face turned by ``yaw`` (its width foreshortened by cos yaw), rolled by ``roll`` degrees,
    ``scale`` pixels between the pupils, placed at ``at`` in a source image."""
    turned = points * np.array([math.cos(math.radians(yaw)), 1.0])
    a = math.radians(roll)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return turned @ rotation.T * scale + np.asarray(at)


def where(template: AlignmentTemplate, roll: float, yaw: float, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(brows, chin) of the posed face in the crop, as fractions of the crop side."""
    matrix = alignment_matrix(posed(FIVE, roll, yaw), size, template)
    return transform_points(matrix, posed(BROWS, roll, yaw)) / size, transform_points(matrix, posed(CHIN, roll, yaw)) / size


@pytest.mark.parametrize("roll", [0.0, 30.0, -40.0])
def test_brows_and_chin_stay_inside_the_default_crop_for_rolled_and_turned_faces(roll):
    for yaw in (0.0, 30.0, 45.0):
        brows, chin = where(AlignmentTemplate(), roll, yaw)
        assert brows[:, 1].min() > 0.12 and chin[0, 1] < 0.96, (roll, yaw)
        assert ((brows > 0.03) & (brows < 0.97)).all()
    # A frontal face keeps brows and chin inside the centred 0.875 crop ME-GraphAU evaluates on.
    brows, chin = where(AlignmentTemplate(), roll, 0.0)
    assert brows[:, 1].min() > 0.0625 + 0.1 and chin[0, 1] < 1 - 0.0625 - 0.1


def test_the_old_template_lost_the_chin_of_a_turned_face_and_spent_a_third_on_the_forehead():
    brows, chin = where(OLD, 30.0, 45.0)
    assert chin[0, 1] > 1.0
    brows, chin = where(OLD, 0.0, 0.0)
    assert brows[:, 1].min() > 0.33 and chin[0, 1] > 0.93


def test_default_follows_the_jaa_net_box_rule_with_the_documented_enlargement():
    template = AlignmentTemplate()
    points = template.points(200)
    box = points.max(axis=0) - points.min(axis=0)
    assert 200 / box.max() == pytest.approx(template.box_enlarge) == pytest.approx(3.6)
    assert (points[:, 1].max() + points[:, 1].min()) / 2 == pytest.approx(0.43 * 200)
    assert template.box_centre_y == pytest.approx(0.43)
    assert template.describe(200)["box_enlarge"] == pytest.approx(3.6)
    jaa = AlignmentTemplate.framed(2.9).points(200)
    assert (jaa[:, 1].max() + jaa[:, 1].min()) / 2 == pytest.approx(100.0)
    assert 200 / np.ptp(jaa, axis=0).max() == pytest.approx(2.9)


@pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None,
    reason="dlib and its 68-point model are not installed",
)
def test_dlib_finds_brows_and_chin_of_a_rolled_real_face_inside_the_crop(detector):
    """The astronaut rolled 30 degrees: aligned from MTCNN's landmarks, judged by dlib's 68 points."""
    from pathlib import Path

    import cv2
    import dlib
    from skimage import data

    spec = importlib.util.find_spec("face_recognition_models")
    model = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not model.exists():
        pytest.skip("dlib's 68-point model file is missing")
    image = data.astronaut()
    rolled = cv2.warpAffine(image, cv2.getRotationMatrix2D((256, 150), 30, 1.0), (512, 512), borderValue=(110, 110, 110))
    face = max(detector.detect([rolled])[0], key=lambda f: f.area)
    rect = max(dlib.get_frontal_face_detector()(rolled, 1), key=lambda r: r.area())
    marks = dlib.shape_predictor(str(model))(rolled, rect)
    judge = np.array([[p.x, p.y] for p in marks.parts()], dtype=np.float64)
    def framing(template):
        points = transform_points(alignment_matrix(face.landmarks, 256, template), judge) / 256
        return points[17:27, 1].min(), points[8, 1], points

    brows, chin, points = framing(AlignmentTemplate())
    # all 68 points inside the centred 0.875 crop, with room above the brows for the forehead
    assert ((points > 0.0625) & (points < 0.9375)).all()
    assert brows > 0.12 and chin < 0.85
    brows, chin, _ = framing(OLD)
    assert brows > 0.3 and chin > 0.88  # a third spent above the brows, the chin near the edge


def test_outside_the_source_the_crop_is_exactly_the_fill_value():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    landmarks = posed(FIVE, roll=25.0, scale=40.0, at=(30.0, 40.0))  # a face near the top-left corner
    for template in (AlignmentTemplate(), AlignmentTemplate(fill=0, antialias=False)):
        crop, matrix = align_face(image, landmarks, 200, template)  # shrinks: the pre-filter runs
        ys, xs = np.mgrid[0:200, 0:200]
        source = transform_points(np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2], np.c_[xs.ravel(), ys.ravel()])
        outside = ((source < -1) | (source > np.array([160, 120]))).any(axis=1).reshape(200, 200)
        assert outside.mean() > 0.2, "precondition: much of the crop lies outside the source"
        assert (crop[outside] == template.fill).all()
    streaky = align_face(image, landmarks, 200, OLD)[0]
    assert (streaky[outside] != 0).mean() > 0.9  # replicated edge pixels, not a fill


def grating(period: float, size: int = 900) -> np.ndarray:
    """Vertical stripes of the given period (source pixels), grey 127.5 +- 100."""
    x = np.arange(size, dtype=np.float64)
    row = 127.5 + 100 * np.sin(2 * np.pi * x / period)
    return np.repeat(np.repeat(row[None, :, None], size, axis=0), 3, axis=2).round().astype(np.uint8)


def test_the_prefilter_removes_aliasing_that_plain_bilinear_sampling_shows():
    shrink, size = 3.0, 200
    a = math.radians(10.0)
    linear = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / shrink
    matrix = np.hstack([linear, (np.array([size / 2, size / 2]) - linear @ np.array([450.0, 450.0]))[:, None]])
    # Stripes every 2.3 source pixels are 0.77 crop pixels apart: finer than the crop can show, so
    # a correct crop is flat grey; bilinear sampling folds them into coarse false stripes (moire).
    fine = grating(2.3)
    plain = warp_crop(fine, matrix, size, AlignmentTemplate(antialias=False)).astype(float)
    filtered = warp_crop(fine, matrix, size, AlignmentTemplate()).astype(float)
    assert plain.std() > 30
    assert filtered.std() < plain.std() / 5 and abs(filtered.mean() - 127.5) < 3
    # Stripes the crop can show (every 40 source pixels = 13 crop pixels) keep their contrast.
    coarse = grating(40.0)
    kept = warp_crop(coarse, matrix, size, AlignmentTemplate()).astype(float).std()
    assert kept > 0.9 * warp_crop(coarse, matrix, size, AlignmentTemplate(antialias=False)).astype(float).std()
    assert antialias_sigma(1.0) == antialias_sigma(0.5) == 0.0  # no blur when the crop enlarges


def test_warp_settings_round_trip_and_old_descriptions_mean_the_old_warp():
    template = AlignmentTemplate(border="replicate", fill=7, antialias=False)
    assert AlignmentTemplate.from_description(json.loads(json.dumps(template.describe(96)))) == template
    described = AlignmentTemplate().describe(256)
    assert {"border": "constant", "fill": 128, "antialias": True}.items() <= described.items()
    assert "pre-filter" in described["interpolation"]
    before = {k: v for k, v in OLD.describe(256).items() if k not in ("border", "fill", "antialias")}
    assert AlignmentTemplate.from_description(before) == OLD
    with pytest.raises(ValueError, match="border"):
        AlignmentTemplate(border="reflect")
