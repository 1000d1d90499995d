"""The sample datasets: exact layouts, documented label patterns, quirks, and faces MTCNN finds."""

from __future__ import annotations

import hashlib
import math

import cv2
import numpy as np
import pytest

from affbench.errors import AffbenchError
from affbench.faces.alignment import AlignmentTemplate, align_face
from affbench.pipelines import affwild2, caer_s, disfa
from affbench.pipelines import sample_data as sd


def read_frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def tree_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- DISFA


def test_disfa_layout_and_video_lengths(sample_data):
    root = sample_data["disfa"]
    assert (root / "Videos_LeftCamera").is_dir() and (root / "Video_RightCamera").is_dir()
    for subject in sd.DISFA_SUBJECTS:
        for _camera, folder, prefix in (("left", "Videos_LeftCamera", "Left"), ("right", "Video_RightCamera", "Right")):
            video = root / folder / f"{prefix}Video{subject}_comp.avi"
            capture = cv2.VideoCapture(str(video))
            frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            capture.release()
            expected = sd.DISFA_FRAMES - 1 if subject == "SN010" else sd.DISFA_FRAMES
            assert (frames, size) == (expected, (1024, 768)), video
        label_files = sorted(p.name for p in (root / "ActionUnit_Labels" / subject).iterdir())
        assert label_files == sorted(f"{subject}_au{au}.txt" for au in (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26))


def test_disfa_labels_follow_the_documented_pattern(sample_data):
    root = sample_data["disfa"]
    aus = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
    for s, subject in enumerate(sd.DISFA_SUBJECTS):
        for j, au in enumerate(aus):
            lines = (root / "ActionUnit_Labels" / subject / f"{subject}_au{au}.txt").read_text().splitlines()
            assert len(lines) == sd.DISFA_FRAMES  # SN010 too: its video is the short one
            for i, line in enumerate(lines):
                number, value = map(int, line.split(","))
                peak = 1 + (j + s) % 5
                assert number == i + 1
                assert value == max(0, peak - abs((i + 3 * j + 5 * s) % 16 - 8))
                assert 0 <= value <= 5


def test_disfa_sample_subjects_cover_all_three_folds():
    parts = {subject: part for part, subjects in disfa.PARTS.items() for subject in subjects}
    assert {parts[s] for s in sd.DISFA_SUBJECTS} == {"part1", "part2", "part3"}


@pytest.mark.slow
def test_mtcnn_finds_every_sample_disfa_face_and_none_in_the_empty_frames(sample_data, detector):
    template = AlignmentTemplate()
    for subject in sd.DISFA_SUBJECTS:
        frames = read_frames(sample_data["disfa"] / disfa.video_path("left", subject))
        faces = detector.detect(frames)
        missing = [i for i, found in enumerate(faces) if not found]
        assert missing == list(sd.NO_FACE_FRAMES), subject
        assert all(len(found) == 1 for i, found in enumerate(faces) if i not in sd.NO_FACE_FRAMES)
        # The faces really move, rotate and scale between frames ...
        eyes = np.array([f[0].landmarks[:2] for f in faces if f])
        centres = eyes.mean(axis=1)
        assert np.ptp(centres[:, 0]) > 100
        angles = np.degrees(np.arctan2(eyes[:, 1, 1] - eyes[:, 0, 1], eyes[:, 1, 0] - eyes[:, 0, 0]))
        assert np.ptp(angles) > 10
        # ... and alignment undoes that: re-detected eyes sit on the template.
        frame = next(i for i, f in enumerate(faces) if f)
        crop, _ = align_face(frames[frame], faces[frame][0].landmarks, 256, template)
        again = detector.detect([crop])[0]
        assert len(again) == 1
        assert np.abs(again[0].landmarks[:2] - template.points(256)[:2]).max() < 6


# ----------------------------------------------------------------------------------------- CAER-S


def test_caer_s_layout_with_the_angry_anger_quirk(sample_data):
    root = sample_data["caer-s"]
    train = sorted(p.name for p in (root / "train").iterdir())
    test = sorted(p.name for p in (root / "test").iterdir())
    assert train == sorted(["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"])
    assert test == sorted(["Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"])
    assert {caer_s.FOLDER_TO_CLASS[n] for n in train} == set(range(7)) == {caer_s.FOLDER_TO_CLASS[n] for n in test}
    for split, per_class in (("train", 4), ("test", 2)):
        for folder in (root / split).iterdir():
            names = sorted(p.name for p in folder.iterdir())
            extra = 1 if folder.name == "Neutral" else 0  # the faceless scene
            assert names == [f"{i:04d}.png" for i in range(1, per_class + extra + 1)]
    sizes = {cv2.imread(str(p)).shape[:2] for p in root.glob("*/*/*.png")}
    assert sizes == {(400, 712), (360, 640)}


@pytest.mark.slow
def test_mtcnn_finds_every_caer_s_face_and_none_in_the_faceless_scenes(sample_data, detector):
    root = sample_data["caer-s"]
    paths = sorted(root.glob("*/*/*.png"))
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    found = detector.detect(images)
    faceless = sorted(p.relative_to(root).as_posix() for p, faces in zip(paths, found) if not faces)
    assert faceless == sorted(sd.CAER_NO_FACE)
    assert all(len(f) == 1 for f in found if f)


# ----------------------------------------------------------------------------------------- Aff-Wild2


def test_affwild2_annotations_headers_markers_and_missing_images(sample_data):
    root = sample_data["affwild2"]
    headers = {
        "AU_Detection_Challenge": "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26",
        "EXPR_Classification_Challenge": "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
        "VA_Estimation_Challenge": "valence,arousal",
    }
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*_Challenge/*/*.txt"))
    assert any(f.endswith("_right.txt") for f in files) and any(f.endswith("_left.txt") for f in files)
    assert {f.split("/")[1] for f in files} == {"Train_Set", "Validation_Set"}
    for challenge, header in headers.items():
        for path in (root / challenge).glob("*/*.txt"):
            lines = path.read_text().splitlines()
            assert lines[0] == header
            assert len(lines) == sd.AFFWILD2_FRAMES + 1
            for i, line in enumerate(lines[1:]):
                values = [float(v) for v in line.split(",")]
                # EXPR files name the 8 classes in the header but hold one class index per line
                assert len(values) == (1 if challenge.startswith("EXPR") else len(header.split(",")))
                if i in sd.AFFWILD2_UNANNOTATED:
                    assert set(values) == ({-5.0} if challenge.startswith("VA") else {-1.0})
                elif challenge.startswith("AU"):
                    assert set(values) <= {0.0, 1.0}
                elif challenge.startswith("EXPR"):
                    assert values[0] in range(8)
                else:
                    assert all(-1 <= v <= 1 for v in values)
    video = "1-30-1280x720"
    v = sd.AFFWILD2_VIDEOS.index(video)
    va = (root / "VA_Estimation_Challenge/Train_Set/10-60-1280x720_left.txt").read_text().splitlines()
    valence, arousal = map(float, va[1 + 3].split(","))
    assert valence == pytest.approx(round(0.8 * math.sin(3 / 5 + 1), 3))
    assert arousal == pytest.approx(round(0.6 * math.cos(3 / 7 + 1), 3))
    au = (root / f"AU_Detection_Challenge/Train_Set/{video}.txt").read_text().splitlines()
    assert [int(x) for x in au[1 + 4].split(",")] == [int((4 + 3 * j + v) % 10 < 3) for j in range(12)]

    for name in sd.AFFWILD2_VIDEOS:
        images = sorted(p.name for p in (root / "cropped_aligned" / name).iterdir())
        expected = [f"{i + 1:05d}.jpg" for i in range(sd.AFFWILD2_FRAMES) if i not in sd.AFFWILD2_NO_IMAGE]
        assert images == expected
    first = cv2.imread(str(root / "cropped_aligned" / video / "00001.jpg"))
    assert first.shape == (112, 112, 3)
    assert affwild2.image_name(0) == "00001.jpg"


@pytest.mark.slow
def test_mtcnn_finds_the_affwild2_faces(sample_data, detector):
    paths = sorted((sample_data["affwild2"] / "cropped_aligned").glob("*/*.jpg"))[::4]
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    assert all(detector.detect(images))


# ----------------------------------------------------------------------------------------- behaviour


def test_generation_is_deterministic_and_atomic(tmp_path, sample_data):
    written = sd.write_sample_data(tmp_path / "a", datasets=["caer-s", "affwild2"])
    for name, root in written.items():
        assert tree_digest(root) == tree_digest(sample_data[name])
        assert not (tmp_path / "a" / f".{name}.partial").exists()
    before = (written["caer-s"] / "train/Happy/0001.png").stat().st_mtime_ns
    sd.write_sample_data(tmp_path / "a", datasets=["caer-s"])  # complete already: left alone
    assert (written["caer-s"] / "train/Happy/0001.png").stat().st_mtime_ns == before


def test_refuses_to_overwrite_a_folder_that_is_not_sample_data(tmp_path):
    (tmp_path / "disfa").mkdir()
    (tmp_path / "disfa" / "my-notes.txt").write_text("real data lives here")
    with pytest.raises(AffbenchError, match="not affbench sample data"):
        sd.write_sample_data(tmp_path, datasets=["disfa"])
    with pytest.raises(AffbenchError, match="No sample data for fer2013"):
        sd.write_sample_data(tmp_path, datasets=["fer2013"])
