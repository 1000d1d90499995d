"""affbench.faces.tracking: verified tracking (no silent drift), --tracking off, fallback crops for faceless frames."""

from __future__ import annotations

import numpy as np
import pytest

from affbench.faces.detection import Face
from affbench.faces.tracking import (
    FaceTracker,
    TrackedFace,
    TrackerSettings,
    fill_gaps,
    landmark_disagreement,
)
from affbench.pipelines import sample_data as sd


def jumping_face(n: int = 6, jump_at: int = 3):
    """The astronaut still for a few frames, then suddenly higher, turned 25 degrees and smaller:
    O-Net run on the old box keeps a confident score but puts the landmarks a third of the eye
    distance off (the tracker before issue 10 kept them)."""
    frames = []
    for i in range(n):
        canvas = sd.scene(480, 640, seed=3)
        if i < jump_at:
            sd.paste_face(canvas, sd.astronaut_face(), (320, 240), 0, 300)
        else:
            sd.paste_face(canvas, sd.astronaut_face(), (320, 180), 25, 225)
        frames.append(canvas)
    return frames


@pytest.fixture(scope="module")
def jump(detector):
    frames = jumping_face()
    truth = [faces[0] for faces in detector.detect(frames)]
    return frames, truth


def test_a_confident_but_drifted_track_is_caught_and_redetected(detector, jump):
    frames, truth = jump
    # What the tracker before issue 10 did: two O-Net passes from the previous frame's box, trusted
    # because the score is high. On the jump frame it is confident and wrong.
    first = detector.refine([frames[3]], [truth[2].box])[0]
    stale = detector.refine([frames[3]], [first.box])[0]
    assert stale.score > 0.9 and landmark_disagreement(stale, truth[3]) > 0.2

    results = FaceTracker(detector).track(frames)
    assert results[3].method == "detected"  # the geometry check sent it to the full cascade
    for result, reference in zip(results, truth):
        assert landmark_disagreement(result.face, reference) < 0.1
    assert results[0].n_faces == 1  # the first frame searched the whole frame; frame 3 only around the face


def searched_near(detector, monkeypatch) -> list[int]:
    """The frames (their ids) around whose face the tracker will run the cascade."""
    seen: list[int] = []
    original = detector.detect_near

    def spy(image, box, **options):
        seen.append(id(image))
        return original(image, box, **options)

    monkeypatch.setattr(detector, "detect_near", spy)
    return seen


def test_every_tracked_frame_is_confirmed_by_a_later_full_detection(detector, monkeypatch):
    # the sample motion at DISFA's pace (a cycle in 240 frames); frame 5 of the sample has no face
    frames = [sd.disfa_frame(0, "left", i, 240) for i in range(5)]
    searched = searched_near(detector, monkeypatch)
    results = FaceTracker(detector, TrackerSettings(redetect_every=0)).track(frames)
    # the batch's last frame is always an anchor: the cascade ran around the face there and agreed;
    # only the first frame, with nothing to follow yet, searched the whole frame (a face count)
    assert [r.method for r in results] == ["detected"] + ["tracked"] * 4
    assert searched == [id(frames[4])]
    assert [r.n_faces for r in results] == [1, None, None, None, None]


def test_an_agreeing_anchor_keeps_the_tracked_landmarks(detector, monkeypatch):
    """Switching to the cascade's landmarks at every anchor would jump the crop by the offset
    between the two estimates (frame-to-frame jitter on steady footage)."""
    frames = [sd.disfa_frame(0, "left", i, 240) for i in range(5)]
    settings = TrackerSettings(redetect_every=0)
    searched = searched_near(detector, monkeypatch)
    anchored = FaceTracker(detector, settings).track(frames)  # frame 4 is the batch's anchor
    assert searched == [id(frames[4])]
    running = FaceTracker(detector, settings).track(frames + [frames[4].copy()])  # frame 4 is tracked through
    assert searched[1:] == [searched[1]] and searched[1] != id(frames[4])
    np.testing.assert_array_equal(anchored[4].face.landmarks, running[4].face.landmarks)
    cascade = detector.detect([frames[4]])[0][0]
    assert np.abs(cascade.landmarks - anchored[4].face.landmarks).max() > 0.3  # the two estimates do differ


def test_a_face_that_leaves_the_region_is_found_on_the_whole_frame(detector, monkeypatch):
    # The face jumps across the frame between two frames (a cut): the track is lost, the region
    # around the last face holds none, so the cascade searches the whole frame and counts faces.
    frames = []
    for x in (250, 250, 800):
        canvas = sd.scene(768, 1024, seed=9)
        sd.paste_face(canvas, sd.astronaut_face(), (x, 400), 0, 300)
        frames.append(canvas)
    searched = searched_near(detector, monkeypatch)
    results = FaceTracker(detector).track(frames)
    # frame 1 is detected too: the lost track at frame 2 left it unconfirmed (see the module docstring)
    assert [r.method for r in results] == ["detected", "detected", "detected"]
    assert searched == [id(frames[2]), id(frames[1])] and [r.n_faces for r in results] == [1, None, 1]
    assert abs(results[2].face.centre[0] - 800) < 30


def test_tracking_off_runs_the_full_cascade_on_every_frame(detector, jump):
    frames, truth = jump
    results = FaceTracker(detector, TrackerSettings(tracking=False)).track(frames)
    assert [r.method for r in results] == ["detected"] * len(frames)
    assert [r.n_faces for r in results] == [1] * len(frames)
    assert all(landmark_disagreement(r.face, t) < 0.1 for r, t in zip(results, truth))
    assert TrackerSettings(tracking=False).describe()["tracking"] is False


def hand_over_a_rolled_face(n: int = 8):
    """The astronaut rolled 15 degrees, a skin-coloured hand over her nose and mouth, drifting a few
    pixels a frame; and where her eyes truly are in each frame (the unoccluded face's eyes, moved by
    the same transform as the face)."""
    import cv2

    face = sd.astronaut_face()
    h, w = face.rgb.shape[:2]

    def placement(centre, roll, height):
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), roll, height / h)
        matrix[:, 2] += np.asarray(centre) - np.array([w / 2, h / 2])
        return matrix

    upright = sd.scene(768, 1024, seed=3)
    sd.paste_face(upright, face, (512, 384), 0, 420)
    eyes = max(_detector().detect([upright])[0], key=lambda f: f.area).landmarks[:2]
    inverse = cv2.invertAffineTransform(placement((512, 384), 0, 420))
    eyes_in_patch = eyes @ inverse[:, :2].T + inverse[:, 2]
    frames, truth = [], []
    for i in range(n):
        centre, roll = (512 + 4 * i, 346 + 2 * i), -15
        canvas = sd.scene(768, 1024, seed=31)
        sd.paste_face(canvas, face, centre, roll, 300)
        matrix = placement(centre, roll, 300)
        true_eyes = eyes_in_patch @ matrix[:, :2].T + matrix[:, 2]
        iod = float(np.linalg.norm(true_eyes[1] - true_eyes[0]))
        down = np.array([np.sin(np.radians(roll)), np.cos(np.radians(roll))])
        hand = true_eyes.mean(axis=0) + 0.75 * iod * down
        cv2.ellipse(canvas, (int(hand[0]), int(hand[1])), (int(0.9 * iod), int(0.4 * iod)), 15 - roll, 0, 360,
                    (224, 172, 140), -1)
        frames.append(canvas)
        truth.append(true_eyes)
    return frames, truth


def _detector():
    from affbench.faces.detection import shared_detector

    return shared_detector(device="cpu")


def eye_error(face: Face, true_eyes: np.ndarray) -> float:
    """The worse eye's distance from where it truly is, as a fraction of the true eye distance."""
    return float(np.linalg.norm(face.landmarks[:2] - true_eyes, axis=1).max() / np.linalg.norm(true_eyes[1] - true_eyes[0]))


@pytest.mark.parametrize("tracking", [False, True], ids=["tracking-off", "tracking-on"])
def test_a_hand_over_a_rolled_face_keeps_the_eyes_where_the_cascade_puts_them(detector, tracking):
    # Issue 22: re-running O-Net on the cascade's own output box (a framing O-Net was not trained
    # on) put the eyes of every one of these frames 0.16-0.18 of the eye distance off (0.17 on
    # average). The plain detector (MTCNN on each whole full-resolution frame) is 0.06-0.15 off,
    # 0.10 on average; the cascade's landmarks on an occluded face move by a few hundredths from
    # one framing of the frame to the next, so the tracker (0.11 on average, around the face at
    # full resolution) and --tracking off (0.13, the whole frame downscaled) are held to the plain
    # detector's average within 0.03.
    frames, truth = hand_over_a_rolled_face()
    results = FaceTracker(detector, TrackerSettings(tracking=tracking)).track(frames)
    assert all(r.face is not None for r in results)
    errors = [eye_error(r.face, eyes) for r, eyes in zip(results, truth)]
    plain = [eye_error(max(faces, key=lambda f: f.area), eyes) for faces, eyes in zip(detector.detect(frames), truth)]
    assert np.mean(errors) < min(np.mean(plain) + 0.03, 0.14), (errors, plain)


def test_an_unoccluded_detection_takes_the_landmarks_a_track_would_have(detector):
    # Where O-Net re-run on the cascade's box agrees with the cascade (within detection_tolerance),
    # the detected frame takes the re-run's landmarks, the kind every tracked frame has, so that
    # the crop does not jump where detection and tracking take turns (frontal jitter).
    frame = sd.disfa_frame(0, "left", 0, 240)
    tracker = FaceTracker(detector, TrackerSettings(tracking=False))
    result = tracker.track([frame])[0]
    small, scale = tracker._downscale(frame)
    own = detector.detect([small])[0][0].scaled(1.0 / scale)
    again = tracker._refine([frame], [own.box])[0]
    assert landmark_disagreement(again, own) <= TrackerSettings().detection_tolerance
    np.testing.assert_array_equal(result.face.landmarks, again.landmarks)
    assert np.abs(result.face.landmarks - own.landmarks).max() > 0.1


def face_at(x: float) -> Face:
    marks = np.array([[x, 10.0], [x + 10, 10.0], [x + 5, 15.0], [x + 1, 20.0], [x + 9, 20.0]])
    return Face(box=np.array([x - 5, 0.0, x + 15, 25.0]), score=1.0, landmarks=marks)


def stream(faces):
    frame = np.zeros((4, 4, 3), np.uint8)
    for i, face in enumerate(faces):
        yield i, frame, TrackedFace(face, "detected" if face is not None else "none", 1 if face is not None else 0)


def test_faceless_frames_get_landmarks_from_their_neighbours():
    faces = [None, face_at(0.0), None, None, None, face_at(40.0), None]
    out = [r for _, _, r in fill_gaps(stream(faces))]
    assert [r.method for r in out] == ["carried", "detected", "interpolated", "interpolated", "interpolated",
                                       "detected", "carried"]
    # linear in time between the two sides: 10, 20, 30
    assert [r.face.landmarks[0, 0] for r in out[2:5]] == pytest.approx([10.0, 20.0, 30.0])
    assert out[0].face.landmarks[0, 0] == 0.0 and out[6].face.landmarks[0, 0] == 40.0
    assert [r.n_faces for r in out] == [0, 1, 0, 0, 0, 1, 0]  # what the detector saw is kept
    assert [i for i, _, _ in fill_gaps(stream(faces))] == list(range(7))  # order kept


def test_gap_filling_holds_a_bounded_number_of_frames():
    faces = [face_at(0.0)] + [None] * 5 + [face_at(50.0)]
    out = [r for _, _, r in fill_gaps(stream(faces), max_hold=2)]
    # the first three of the run could not wait for the far side: carried from the face before
    assert [r.method for r in out[1:6]] == ["carried"] * 3 + ["interpolated"] * 2
    nothing = [r for _, _, r in fill_gaps(stream([None, None]))]
    assert [r.method for r in nothing] == ["none", "none"] and nothing[0].face is None
