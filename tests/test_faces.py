"""affbench.faces: O-Net refinement, the video face tracker, face choice, crop columns."""

from __future__ import annotations

import numpy as np
import pytest

from affbench.faces.alignment import (
    AlignmentTemplate,
    alignment_matrix,
    similarity_transform,
    transform_points,
)
from affbench.faces.detection import SIZE_MARGIN, DetectorSettings, Face, select_face, shared_detector
from affbench.faces.tracking import FaceGeometry, FaceTracker, TrackerSettings
from affbench.pipelines import sample_data as sd
from affbench.shards.codec import decode_image
from affbench.shards.rows import face_crop_columns

FRAMES = 24  # the motion of the sample DISFA videos: a full cycle in 24 frames, fast on purpose


def disfa_frames(indices, subject=0):
    return [sd.disfa_frame(subject, "left", i, FRAMES) for i in indices]


def eye_error(a, b) -> float:
    """Largest eye distance between two landmark sets, in source pixels."""
    return float(np.linalg.norm(np.asarray(a)[:2] - np.asarray(b)[:2], axis=1).max())


def crop_eye_shift(landmarks, reference, size=256) -> float:
    """How far the reference eyes land from where the reference's own crop puts them, in pixels
    of a crop aligned with ``landmarks`` (what a landmark difference means for the crops)."""
    template = AlignmentTemplate()
    ours = transform_points(alignment_matrix(landmarks, size, template), np.asarray(reference)[:2])
    theirs = transform_points(alignment_matrix(reference, size, template), np.asarray(reference)[:2])
    return float(np.linalg.norm(ours - theirs, axis=1).max())


@pytest.fixture(scope="module")
def reference(detector):
    """Full-cascade MTCNN faces of frames 0-7 of the first sample subject (frame 5 has none)."""
    frames = disfa_frames(range(8))
    return frames, [faces[0] if faces else None for faces in detector.detect(frames)]


def test_onet_refinement_from_a_displaced_box_finds_the_cascade_landmarks(detector, reference):
    frames, faces = reference
    face = faces[3]
    w = face.box[2] - face.box[0]
    displaced = face.box + np.array([0.12, -0.08, 0.12, -0.08]) * w  # as after a frame of motion
    once = detector.refine([frames[3]], [displaced])[0]
    twice = detector.refine([frames[3]], [once.box])[0]
    assert twice.score > 0.95
    assert eye_error(twice.landmarks, face.landmarks) < 3.0  # on a face about 200 px wide
    assert eye_error(twice.landmarks, face.landmarks) < eye_error(displaced[:2].reshape(1, 2).repeat(2, 0), face.landmarks)


def test_onet_rejects_a_box_without_a_face_and_skips_boxes_outside_the_image(detector, reference):
    frames, faces = reference
    empty = detector.refine([frames[5]], [faces[4].box])[0]  # frame 5 shows the empty scene
    assert empty is not None and empty.score < detector.settings.thresholds[2]
    assert detector.refine([frames[0]], [np.array([2000.0, 2000.0, 2100.0, 2100.0])]) == [None]


def test_tracker_follows_the_face_with_cascade_quality_landmarks(detector, reference):
    frames, faces = reference
    tracker = FaceTracker(detector, TrackerSettings(redetect_every=0))
    results = tracker.track(frames[:3]) + tracker.track(frames[3:])  # state carries across batches
    # Each batch ends with a full detection (an anchor), which agrees with the track at frames 2
    # and 7, so their tracked landmarks stay; frames 3-4 cannot be confirmed by tracking back from
    # faceless frame 5, so they get the full cascade.
    assert [r.method for r in results] == ["detected", "tracked", "tracked", "detected", "detected", "none",
                                           "tracked", "tracked"]
    # The cascade searched the whole frame (a face count) only with nothing to follow (frame 0) and
    # where the region around the face held none (frame 5); elsewhere it searched around the face.
    assert [r.n_faces for r in results] == [1, None, None, None, None, 0, None, None]
    # The sample moves fast (a full cycle in 24 frames); even so the tracked crops put the eyes
    # within a few pixels of the full cascade's crops (measured against the known motion, the
    # tracker's eyes are as close to the truth as the cascade's; see benchmarks/speed).
    shifts = [crop_eye_shift(r.face.landmarks, f.landmarks) for r, f in zip(results, faces) if f is not None]
    assert np.mean(shifts) < 2.0 and max(shifts) < 4.5
    tracker.reset()
    assert tracker.track(frames[6:7])[0].method == "detected"  # a new video starts from scratch


def two_face_frames(n: int):
    """The astronaut on the left moving slowly; from frame 1 a larger LFW face on the right."""
    frames = []
    for i in range(n):
        canvas = sd.scene(480, 800, seed=7)
        sd.paste_face(canvas, sd.astronaut_face(), (220 + 6 * i, 240), 0, 260)
        if i > 0:
            sd.paste_face(canvas, sd.lfw_face(sd.RELIABLE_LFW[0], size=220), (600, 250), 0, 330)
        frames.append(canvas)
    return frames


def test_of_several_faces_the_one_of_the_previous_frame_is_kept(detector):
    frames = two_face_frames(4)
    # Re-detecting on every whole frame (local_margin 0) makes the cascade find both faces each time.
    settings = TrackerSettings(redetect_every=1, local_margin=0)
    results = FaceTracker(detector, settings).track(frames)
    assert [r.n_faces for r in results] == [1, 2, 2, 2]
    assert all(r.face.centre[0] < 400 for r in results)  # the astronaut throughout
    # around the face followed, the larger face beside it is never a candidate
    assert all(r.face.centre[0] < 400 for r in FaceTracker(detector, TrackerSettings(redetect_every=1)).track(frames))
    fresh = FaceTracker(detector, settings).track(frames[1:2])[0]
    assert fresh.n_faces == 2 and fresh.face.centre[0] > 400  # no history: the largest face


@pytest.mark.parametrize("height", [260, 520], ids=["small-face", "large-face-shrunk"])
def test_the_cascade_around_a_face_finds_it_as_on_the_whole_frame(detector, height):
    canvas = sd.scene(768, 1024, seed=5)
    sd.paste_face(canvas, sd.astronaut_face(), (420, 400), 8, height)
    sd.paste_face(canvas, sd.lfw_face(sd.RELIABLE_LFW[0], size=220), (880, 300), 0, 300)  # outside the region
    whole = detector.detect([canvas])[0]
    face = min(whole, key=lambda f: f.centre[0])
    assert len(whole) == 2
    near, region = detector.detect_near(canvas, face.box)
    side = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
    assert region[2] - region[0] == pytest.approx(2.5 * side, abs=2) or region[0] == 0 or region[2] == 1024
    assert len(near) == 1  # the other face lies outside the region searched
    # the same face as the whole-frame cascade's, in the frame's pixels, within a few hundredths of
    # the eye distance (the large face was searched at (0.709)^k of its size: a resampled copy)
    eye_distance = FaceGeometry.of(face.landmarks).eye_distance
    assert np.linalg.norm(near[0].landmarks - face.landmarks, axis=1).max() < 0.06 * eye_distance
    assert near[0].score > 0.99


def test_the_cascade_around_a_face_is_not_fooled_by_an_empty_region(detector):
    canvas = sd.scene(480, 640, seed=5)
    near, region = detector.detect_near(canvas, np.array([100.0, 100.0, 200.0, 220.0]))
    assert near == [] and region.tolist() == [0.0, 10.0, 300.0, 310.0]
    assert detector.detect_near(canvas, np.array([700.0, 500.0, 720.0, 520.0]))[0] == []  # outside the frame


def test_full_detections_run_on_a_downscaled_copy(detector):
    tracker = FaceTracker(detector, TrackerSettings(detect_max_side=384))
    small, scale = tracker._downscale(np.zeros((768, 1024, 3), np.uint8))
    assert small.shape == (288, 384, 3) and scale == pytest.approx(0.375)
    untouched, one = FaceTracker(detector, TrackerSettings(detect_max_side=0))._downscale(small)
    assert untouched is small and one == 1.0


def test_crop_columns_with_and_without_a_face(reference):
    frames, faces = reference
    template = AlignmentTemplate()
    columns = face_crop_columns(frames[0], faces[0], size=128, template=template, codec="png")
    crop = decode_image(columns["image"])
    assert crop.shape == (128, 128, 3) and columns["face_found"] is True
    assert len(columns["landmarks"]) == 10 and len(columns["box"]) == 4
    empty = face_crop_columns(frames[5], None, size=128, template=template)
    assert empty["face_found"] is False
    assert all(empty[k] is None for k in ("image", "width", "height", "det_score", "box", "landmarks"))


def test_shared_detector_is_loaded_once_per_settings():
    a = shared_detector(DetectorSettings(), "cpu")
    assert shared_detector(DetectorSettings(), "cpu") is a
    assert shared_detector(DetectorSettings(min_face_size=40), "cpu") is not a


def test_tracker_settings_are_validated_and_described():
    with pytest.raises(ValueError):
        TrackerSettings(refine_passes=0)
    described = TrackerSettings().describe()
    assert {"detect_max_side", "refine_passes", "refine_tolerance", "redetect_every", "method"} <= set(described)


def test_similarity_transform_recovers_a_known_transform_whatever_the_weights():
    angle, scale, shift = np.radians(17.0), 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    dst = scale * src @ rotation.T + shift
    for weights in (None, (32, 32, 1, 1, 1), (1, 2, 3, 4, 5)):
        matrix = similarity_transform(src, dst, weights)
        assert np.allclose(matrix[:, :2], scale * rotation) and np.allclose(matrix[:, 2], shift)
    with pytest.raises(ValueError):
        similarity_transform(src, dst, (1, 1, 1, 1, 0))


def test_weighted_fit_puts_the_heavy_points_on_the_template():
    """A face whose nose and mouth sit 20 px lower than the template's (far more than real faces
    differ): with equal weights the least-squares compromise moves the eyes 6-7 px off the
    template, with the default eye weights they stay within 2 px."""
    template = AlignmentTemplate()
    target = template.points(256)
    face = target.copy()
    face[2:, 1] += 20.0  # nose and mouth 20 px lower than the template's
    equal = transform_points(similarity_transform(face, target), face)
    weighted = transform_points(alignment_matrix(face, 256, template), face)
    assert eye_error(equal, target) > 6.0
    assert eye_error(weighted, target) < eye_error(equal, target) / 3 and eye_error(weighted, target) < 2.0


def test_a_template_round_trips_through_its_manifest_description():
    import json

    template = AlignmentTemplate(face_scale=0.7, shift_y=0.02, landmark_weights=(8, 8, 1, 2, 2))
    recorded = json.loads(json.dumps(template.describe(96)))  # what a manifest holds
    assert AlignmentTemplate.from_description(recorded) == template
    assert AlignmentTemplate.from_description(json.loads(json.dumps(AlignmentTemplate().describe(256)))) == AlignmentTemplate()


def near_equal_faces():
    """The same real face twice, 2% apart in size; the smaller one nearer the image centre."""
    canvas = sd.scene(480, 900, seed=9)
    sd.paste_face(canvas, sd.lfw_face(sd.RELIABLE_LFW[1], size=220), (200, 240), 0, 306)
    sd.paste_face(canvas, sd.lfw_face(sd.RELIABLE_LFW[1], size=220), (520, 240), 0, 300)
    return canvas


def test_near_equal_faces_go_to_the_one_nearest_the_centre_whatever_the_rule(detector):
    image = near_equal_faces()
    faces = detector.detect([image])[0]
    assert len(faces) == 2
    areas = sorted(f.area for f in faces)
    assert areas[1] < SIZE_MARGIN * areas[0], "precondition: a near tie in size"
    central = min(faces, key=lambda f: abs(f.centre[0] - 450))
    for strategy in ("largest", "prob"):
        for order in (faces, faces[::-1]):
            assert select_face(order, strategy, image_shape=image.shape) is central


def test_face_choice_margins_on_synthetic_faces():
    def face(x: float, side: float, score: float) -> Face:
        return Face(box=np.array([x, 0.0, x + side, side]), score=score, landmarks=np.zeros((5, 2)))

    big, small_central = face(0, 130, 0.999), face(430, 100, 1.0)
    shape = (200, 1000, 3)
    assert select_face([big, small_central], "largest", image_shape=shape) is big  # 1.69x the area: clear
    assert select_face([big, small_central], "prob", image_shape=shape) is big  # scores tie: size decides
    sure = face(430, 100, 1.0)
    unsure = face(0, 130, 0.95)
    assert select_face([unsure, sure], "prob", image_shape=shape) is sure  # clearly more confident
    with pytest.raises(ValueError):
        select_face([big], "sharpest")
