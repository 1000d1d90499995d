"""`affbench prepare caer-s`: one row per image, the Angry/Anger quirk, faceless and unreadable
images, face selection, aligned 96x96 crops with source-pixel boxes, resume."""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from affbench.cli import app
from affbench.errors import DataLayoutError, ParameterMismatchError
from affbench.faces.alignment import AlignmentTemplate, align_face
from affbench.pipelines import caer_s
from affbench.pipelines import sample_data as sd
from affbench.scoring.protocols import Protocol
from affbench.shards.codec import decode_image
from affbench.shards.reader import ShardReader

pytestmark = pytest.mark.slow  # MTCNN runs on every image

#: (split, folder, file) copied from the sample data: both anger spellings, two image sizes
#: (every third sample image is 640x360), and the faceless Neutral scene.
COPIED = [
    ("train", "Angry", "0001.png"),
    ("train", "Angry", "0003.png"),
    ("test", "Anger", "0001.png"),
    ("test", "Anger", "0002.png"),
    ("train", "Neutral", "0001.png"),
    ("train", "Neutral", "0005.png"),
]
FACELESS = "train/Neutral/0005.png"
CORRUPT = {"train/Sad/0001.png": b"this is not a PNG file" * 10, "train/Sad/0002.png": None}  # None: truncated
TWO_FACES = "train/Surprise/0001.png"


def two_face_scene() -> np.ndarray:
    """A large, blurry LFW face and a small, sharp astronaut: MTCNN is surer of the smaller one."""
    canvas = sd.scene(400, 712, seed=7)
    sd.paste_face(canvas, sd.lfw_face(0, size=200), (220, 200), 0, 300)
    sd.paste_face(canvas, sd.astronaut_face(), (540, 200), 5, 170)
    return canvas


def write_png(path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def small_caer(sample_root, root, files=COPIED):
    for split, folder, name in files:
        (root / split / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_root / split / folder / name, root / split / folder / name)
    (root / "train").mkdir(exist_ok=True)
    (root / "test").mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="module")
def caer_root(sample_data, tmp_path_factory):
    root = small_caer(sample_data["caer-s"], tmp_path_factory.mktemp("caer") / "CAER-S")
    real = (root / "train/Angry/0001.png").read_bytes()
    for relative, data in CORRUPT.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data if data is not None else real[: len(real) // 2])
    write_png(root / TWO_FACES, two_face_scene())
    (root / "train" / "README.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def prepared(caer_root, detector, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "caer-s"
    result = CliRunner().invoke(app, ["prepare", "caer-s", str(caer_root), "--out", str(out), "--device", "cpu"])
    rows = {r["source"]: r for r in ShardReader(out).iter_rows()}
    manifest = json.loads((out / "manifest.json").read_text())
    return result, rows, manifest


def all_images(root):
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*/*.png"))


def test_every_image_is_one_row_with_its_split_and_class(caer_root, prepared):
    _, rows, manifest = prepared
    assert sorted(rows) == all_images(caer_root)
    expected_class = {"Angry": 0, "Anger": 0, "Neutral": 4, "Sad": 5, "Surprise": 6}
    for source, row in rows.items():
        split, folder, name = source.split("/")
        assert row["split"] == split
        assert row["expression"] == expected_class[folder]
        assert row["sample_id"] == f"caer-s/{split}/{folder}/{name[:-4]}"
        assert (row["dataset"], row["subject"], row["frame"]) == ("caer-s", None, None)
    assert manifest["parameters"]["expression_classes"] == ["Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    assert manifest["info"]["ignored_files"] == {"count": 1, "examples": ["train/README.txt"]}
    protocol = Protocol.from_dict(manifest["protocol"])  # the harness reads it back from here
    assert protocol.dataset == "caer-s" and list(protocol.tasks) == ["expression"]
    assert protocol.tasks["expression"].n_outputs == 7


def test_a_faceless_image_keeps_its_row(prepared):
    _, rows, _ = prepared
    row = rows[FACELESS]
    assert row["face_found"] is False
    assert row["image"] is None and row["box"] is None and row["landmarks"] is None
    assert row["n_faces"] == 0 and row["landmark_source"] == "none"
    assert all(rows[c]["n_faces"] is None for c in CORRUPT)  # unreadable: the detector never ran
    found = {s for s, r in rows.items() if r["face_found"]}
    assert found == set(rows) - {FACELESS} - set(CORRUPT)


def test_unreadable_images_are_failures_with_rows_and_the_rest_is_processed(prepared):
    result, rows, manifest = prepared
    assert result.exit_code == 1
    assert "failures: 2" in result.output and "manifest.json lists 2 failure(s)" in result.output
    failures = {f["item"]: f["reason"] for f in manifest["failures"]}
    assert sorted(failures) == sorted(CORRUPT)
    assert all(reason.startswith("unreadable image: OpenCV cannot decode") for reason in failures.values())
    for source in CORRUPT:
        assert rows[source]["face_found"] is False and rows[source]["image"] is None
    assert manifest["totals"]["rows"] == len(rows) == len(COPIED) + len(CORRUPT) + 1
    assert all(u["status"] == "done" for u in manifest["units"].values())
    assert "unreadable" in manifest["info"]["notes"]["face_found"]


def test_crops_are_aligned_96x96_and_boxes_landmarks_are_in_source_pixels(caer_root, prepared, detector):
    _, rows, manifest = prepared
    template = AlignmentTemplate()
    assert manifest["parameters"]["alignment"] == json.loads(json.dumps(template.describe(96)))
    faces = {s: r for s, r in rows.items() if r["face_found"]}
    crops = [decode_image(r["image"]) for r in faces.values()]
    assert {c.shape for c in crops} == {(96, 96, 3)}
    assert all((r["width"], r["height"]) == (96, 96) for r in faces.values())

    # MTCNN, run again on the crops, finds the eyes where the template put them; the nose and
    # mouth follow each face's proportions (the fit weighs the eyes most), so they are only near.
    redetected = detector.detect(crops)
    for source, found in zip(faces, redetected):
        assert found, source
        best = max(found, key=lambda f: f.score)
        error = np.linalg.norm(best.landmarks - template.points(96), axis=1)
        assert error[:2].max() < 3.0 and error.max() < 8.0, (source, error)

    # The stored landmarks are source pixels: aligning the source with them gives the crop again.
    for (source, row), crop in zip(faces.items(), crops):
        rgb = cv2.cvtColor(cv2.imread(str(caer_root / source)), cv2.COLOR_BGR2RGB)
        again, _ = align_face(rgb, np.array(row["landmarks"]).reshape(5, 2), 96, template)
        assert np.array_equal(again, crop), source
        x1, y1, x2, y2 = row["box"]
        points = np.array(row["landmarks"]).reshape(5, 2)
        assert 0 <= x1 < x2 <= rgb.shape[1] and 0 <= y1 < y2 <= rgb.shape[0]
        assert ((points >= [x1, y1]) & (points <= [x2, y2])).all()
        assert 0.9 < row["det_score"] <= 1.0


def test_several_faces_keep_the_largest_or_the_most_confident(caer_root, prepared, detector, tmp_path):
    _, rows, manifest = prepared
    found = detector.detect([two_face_scene()])[0]
    largest, surest = max(found, key=lambda f: f.area), max(found, key=lambda f: f.score)
    assert len(found) == 2 and largest is not surest, "precondition: the two rules pick different faces"

    assert manifest["parameters"]["select"]["strategy"] == "largest"
    assert largest.area > caer_s.SIZE_MARGIN * surest.area  # clearly larger: no tie to break
    assert np.allclose(rows[TWO_FACES]["box"], largest.box, atol=1e-3)
    assert rows[TWO_FACES]["n_faces"] == 2 and rows[TWO_FACES]["landmark_source"] == "detected"
    assert manifest["units"]["train/Surprise"]["stats"]["several_faces"] == 1

    root = tmp_path / "CAER-S"
    write_png(root / TWO_FACES, two_face_scene())
    (root / "test").mkdir()
    caer_s.prepare(root, tmp_path / "out", caer_s.PrepareSettings(select="prob"), progress=False)
    (row,) = ShardReader(tmp_path / "out").iter_rows()
    # "prob" keeps the surer face only by a clear margin; closer scores fall back to the size rule
    expected = surest if surest.score > largest.score + caer_s.SCORE_MARGIN else largest
    assert np.allclose(row["box"], expected.box, atol=1e-3)
    assert row["det_score"] == pytest.approx(expected.score)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["parameters"]["select"]["strategy"] == "prob"


def test_resume_redoes_only_unfinished_folders_and_refuses_other_parameters(sample_data, detector, tmp_path, monkeypatch):
    files = [("train", "Angry", "0001.png"), ("test", "Anger", "0001.png"), ("test", "Happy", "0002.png")]
    root = small_caer(sample_data["caer-s"], tmp_path / "CAER-S", files)
    out = tmp_path / "out"
    read = caer_s.read_image_file
    calls = []

    def interrupted(path):
        calls.append(path.relative_to(root).as_posix())
        if "Happy" in path.as_posix():
            raise KeyboardInterrupt  # Ctrl-C in the last folder
        return read(path)

    monkeypatch.setattr(caer_s, "read_image_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        caer_s.prepare(root, out, progress=False)
    assert calls == ["train/Angry/0001.png", "test/Anger/0001.png", "test/Happy/0002.png"]
    assert ShardReader(out).num_rows == 2
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    assert sorted(finished) == ["test-Anger-9c755541-00000.parquet", "train-Angry-549e8b12-00000.parquet"]

    monkeypatch.setattr(caer_s, "read_image_file", lambda path: (calls.append(path.name), read(path))[1])
    calls.clear()
    summary = caer_s.prepare(root, out, progress=False)
    assert calls == ["0002.png"] and (summary.units_skipped, summary.units_done) == (2, 1)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*-A*.parquet")} == finished
    rows = {r["source"]: r for r in ShardReader(out).iter_rows(columns=["source", "expression", "face_found"])}
    assert rows == {
        "train/Angry/0001.png": {"source": "train/Angry/0001.png", "expression": 0, "face_found": True},
        "test/Anger/0001.png": {"source": "test/Anger/0001.png", "expression": 0, "face_found": True},
        "test/Happy/0002.png": {"source": "test/Happy/0002.png", "expression": 3, "face_found": True},
    }

    with pytest.raises(ParameterMismatchError, match="size"):
        caer_s.prepare(root, out, caer_s.PrepareSettings(size=64), progress=False)
    with pytest.raises(ParameterMismatchError, match="select"):
        caer_s.prepare(root, out, caer_s.PrepareSettings(select="prob"), progress=False)
    # crops resampled another way (the warp before issue 10) are not mixed in either
    with pytest.raises(ParameterMismatchError, match=r"alignment\.antialias, alignment\.border"):
        caer_s.prepare(root, out, caer_s.PrepareSettings(template=AlignmentTemplate(border="replicate", antialias=False)),
                       progress=False)


def test_the_unit_work_pickles_for_joblib_workers_and_gives_the_same_rows(caer_root, prepared, detector, tmp_path):
    # workers > 1 sends exactly this (settings + unit) to loky; the speed benchmark runs real workers.
    settings = caer_s.Settings(root=str(caer_root), out=str(tmp_path / "out"), device="cpu")
    (unit,) = [u for u in caer_s.find_image_folders(caer_root)[0] if u.key == "test/Anger"]
    process = pickle.loads(pickle.dumps(functools.partial(caer_s.process_folder, settings)))
    outcome = process(pickle.loads(pickle.dumps(unit)), lambda n: None)
    assert outcome.stats["faces_found"] == 2 and not outcome.failures
    table = pq.read_table(tmp_path / "out" / outcome.shards[0].file)
    _, serial, _ = prepared
    for row in table.to_pylist():
        assert row == serial[row["source"]]


def test_layout_errors_are_one_clear_sentence(tmp_path):
    (tmp_path / "train" / "Angry").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match=r"has no test/ folder"):
        caer_s.find_image_folders(tmp_path)
    (tmp_path / "test" / "Contempt").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match=r"Contempt is not a CAER-S class folder"):
        caer_s.find_image_folders(tmp_path)
    result = CliRunner().invoke(app, ["prepare", "caer-s", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output


def test_images_mtcnn_cannot_take_fail_alone_and_changes_are_picked_up(sample_data, detector, tmp_path):
    # --out inside ROOT/train/ once made every resume fail: the output folder looked like a class.
    root = small_caer(sample_data["caer-s"], tmp_path / "CAER-S", [("train", "Happy", "0001.png"), ("test", "Happy", "0002.png")])
    rng = np.random.default_rng(0)
    write_png(root / "train/Happy/tiny.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    write_png(root / "train/Happy/wide.png", rng.integers(0, 256, (12, 4000, 3), dtype=np.uint8))
    out = root / "train" / "prepared"
    command = ["prepare", "caer-s", str(root), "--out", str(out), "--device", "cpu"]

    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1 and "Traceback" not in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["item"]: f["reason"].split(":")[0] for f in manifest["failures"]} == {
        "train/Happy/tiny.png": "face detection failed", "train/Happy/wide.png": "face detection failed"}
    rows = {r["source"]: r["face_found"] for r in ShardReader(out).iter_rows(columns=["source", "face_found"])}
    assert rows == {"train/Happy/0001.png": True, "train/Happy/tiny.png": False, "train/Happy/wide.png": False,
                    "test/Happy/0002.png": True}

    result = CliRunner().invoke(app, command)  # the folder with failed images is tried again
    assert result.exit_code == 1 and "units: 2 (1 already done, 1 processed, 0 failed)" in result.output
    assert "redone because they had failed items: 1 (train/Happy)" in result.output

    (root / "train/Happy/tiny.png").unlink()
    (root / "train/Happy/wide.png").unlink()
    shutil.copy(sample_data["caer-s"] / "train/Happy/0002.png", root / "train/Happy/0002.png")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "redone because their input files changed: 1 (train/Happy)" in result.output
    rows = {r["source"]: r["face_found"] for r in ShardReader(out).iter_rows(columns=["source", "face_found"])}
    assert rows == {"train/Happy/0001.png": True, "train/Happy/0002.png": True, "test/Happy/0002.png": True}


def test_class_folders_whose_names_differ_only_in_case_do_not_share_shards(tmp_path):
    from affbench.shards.writer import unit_prefix

    for folder in ("train/Happy", "train/happy", "test/Happy"):
        (tmp_path / folder).mkdir(parents=True)
        write_png(tmp_path / folder / "0001.png", np.zeros((8, 8, 3), np.uint8))
    units, _ = caer_s.find_image_folders(tmp_path)
    assert [u.key for u in units] == ["train/Happy", "train/happy", "test/Happy"]
    assert len({unit_prefix(u.key).lower() for u in units}) == 3


def test_a_link_out_of_the_root_is_one_sentence_and_a_loop_is_listed(sample_data, tmp_path):
    root = shutil.copytree(sample_data["caer-s"], tmp_path / "CAER-S")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.png").write_bytes((root / "train" / "Happy" / "0001.png").read_bytes())
    happy = root / "train" / "Happy"
    os.symlink("loop.png", happy / "loop.png")  # points at itself
    os.symlink(outside / "secret.png", happy / "secret.png")
    os.symlink(outside, root / "train" / "Sad2")
    os.symlink(happy / "0001.png", happy / "inside.png")  # a link within the root is an ordinary image
    with pytest.raises(DataLayoutError, match=f"secret.png is a symbolic link out of {root}, which affbench does not read"):
        caer_s.find_image_folders(root)
    (happy / "secret.png").unlink()
    with pytest.raises(DataLayoutError, match=f"Sad2 is a symbolic link out of {root}"):
        caer_s.find_image_folders(root)
    (root / "train" / "Sad2").unlink()
    units, ignored = caer_s.find_image_folders(root)
    files = {f"{u.key}/{name}" for u in units for name in u.files}
    assert "train/Happy/inside.png" in files and "train/Happy/loop.png" not in files
    assert "train/Happy/loop.png (a symbolic link loop)" in ignored
