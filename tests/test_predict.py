"""affbench predict, model files and load_model, on the sample data (real faces, MTCNN on the CPU).

The models carry random (seeded) weights: what is tested is that every frame keeps its row, that
the crops are the tracker's and the template's, and that the numbers are the network's own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from affbench.cli import app
from affbench.encoders.registry import create_encoder
from affbench.faces.alignment import AlignmentTemplate, align_face
from affbench.faces.detection import shared_detector
from affbench.faces.tracking import FaceTracker, TrackerSettings
from affbench.faces.video import VideoReader
from affbench.inference.bundle import (
    ModelDescription,
    describe_trained_model,
    read_model_file,
    save_model_file,
)
from affbench.inference.predict import FACE_COLUMNS, load_model, task_columns
from affbench.pipelines import protocols
from affbench.pipelines.sample_data import CAER_NO_FACE, NO_FACE_FRAMES

# Not the default template: predict must use the one the model records, not a default.
TEMPLATE = AlignmentTemplate(face_scale=0.75, shift_y=0.02)


def make_model_file(path: Path, *, seed: int = 0, name: str = "mtl") -> Path:
    """A small multi-task model (AU presence, expression, VA) described as trained on 112 crops."""
    torch.manual_seed(seed)
    model = create_encoder("inceptionv3-mtl", input_size=75).eval()
    protocol = protocols()["affwild2"]
    tasks = [protocol.task(n) for n in ("au-detection", "expression", "va")]
    description = describe_trained_model(name, model.spec, tasks, {"alignment": TEMPLATE.describe(112)},
                                         eval_crop=0.875, metrics={"expression": {"accuracy": 0.5}})
    return save_model_file(path, description, model.state_dict())


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("models") / "mtl.pt")


@pytest.fixture(scope="module")
def video(sample_data) -> Path:
    return sample_data["disfa"] / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"


@pytest.fixture(scope="module")
def video_run(model_file, video, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "frames.csv"
    result = CliRunner().invoke(app, ["predict", str(model_file), str(video), "--out", str(out), "--device", "cpu",
                                      "--plot"])
    assert result.exit_code == 0, result.output
    return out, pd.read_csv(out)


def test_a_model_file_round_trips_through_weights_only_load(model_file):
    blob = torch.load(model_file, map_location="cpu", weights_only=True)
    assert set(blob) == {"affbench_model", "state_dict"}
    description, state = read_model_file(model_file)
    assert description == ModelDescription.from_dict(blob["affbench_model"])
    assert description.template == TEMPLATE and description.crop_size == 112 and description.eval_crop == 0.875
    assert [t.label_names for t in description.tasks] == [
        protocols()["affwild2"].task(n).label_names for n in ("au-detection", "expression", "va")]
    torch.manual_seed(0)
    original = create_encoder("inceptionv3-mtl", input_size=75).eval()
    assert description.encoder_spec["mean"] == list(original.spec.mean)
    assert description.encoder_spec["input_size"] == 75 and description.options == original.spec.options
    assert all(torch.equal(state[k], v) for k, v in original.state_dict().items())
    # the loaded network computes what the original computes
    x = torch.rand(2, 3, 75, 75)
    loaded = load_model(model_file, device="cpu").network
    with torch.inference_mode():
        assert torch.allclose(loaded(x)["va"], original(x)["va"])


def test_predict_on_a_video_gives_one_row_per_frame_with_values_in_range(video_run, video):
    out, table = video_run
    with VideoReader(video) as reader:
        frames = sum(1 for _ in reader)
        fps = reader.info.fps
    assert len(table) == frames
    assert table["frame"].tolist() == list(range(frames))
    np.testing.assert_allclose(table["time"], np.arange(frames) / fps)
    protocol = protocols()["affwild2"]
    expected = list(FACE_COLUMNS) + [c for n in ("au-detection", "expression", "va")
                                     for c in task_columns(protocol.task(n))]
    assert list(table.columns) == expected
    assert "AU12_c" in table.columns and "happiness" in table.columns
    found = table[table["face_found"]]
    missing = table[~table["face_found"]]
    assert set(missing["frame"]) >= set(NO_FACE_FRAMES)
    assert len(found) >= frames - len(NO_FACE_FRAMES) - 1
    # the empty scene is cropped from its neighbours in time and predicted, marked as such
    assert set(missing["landmark_source"]) <= {"interpolated", "carried"}
    assert missing["det_score"].isna().all() and missing["n_faces"].eq(0).all()
    assert np.isfinite(missing[["valence", "arousal"]].to_numpy()).all()
    predictions = expected[len(FACE_COLUMNS):]
    assert table[predictions[0]].notna().all()
    aus = found[[c for c in table.columns if c.endswith("_c")]].to_numpy()
    assert ((aus >= 0) & (aus <= 1)).all()
    classes = list(protocol.task("expression").label_names)
    np.testing.assert_allclose(found[classes].sum(axis=1), 1.0, atol=1e-6)
    assert (found["expression"] == found[classes].idxmax(axis=1)).all()
    assert np.isfinite(found[["valence", "arousal"]].to_numpy()).all()
    assert set(found["landmark_source"]) <= {"detected", "tracked"} and "detected" in set(found["landmark_source"])
    # faces are counted where the whole frame was searched: the first frame (and the faceless ones)
    assert found["n_faces"].iloc[0] == 1 and found["n_faces"].iloc[1:].isna().all()
    boxes = found[["box_x1", "box_y1", "box_x2", "box_y2"]].to_numpy()
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    plot = out.with_name(f"{out.stem}-{video.stem}.png")
    assert plot.is_file() and plot.stat().st_size > 10_000


def test_no_fill_gaps_leaves_faceless_frames_unpredicted_and_the_rest_unchanged(video_run, model_file, video,
                                                                               tmp_path):
    _, filled = video_run
    out = tmp_path / "frames.csv"
    result = CliRunner().invoke(app, ["predict", str(model_file), str(video), "--out", str(out), "--device", "cpu",
                                      "--no-fill-gaps"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    missing = ~table["face_found"]
    assert set(table.loc[missing, "frame"]) >= set(NO_FACE_FRAMES)
    assert (table.loc[missing, "landmark_source"] == "none").all()
    predictions = list(table.columns[len(FACE_COLUMNS):])
    assert table.loc[missing, predictions].isna().all().all()
    # frames with a face are the same rows either way
    pd.testing.assert_frame_equal(table[~missing].reset_index(drop=True), filled[~missing].reset_index(drop=True))


def test_the_same_crop_through_load_model_and_predict_gives_the_same_numbers(video_run, model_file, video):
    """Track the video independently (the tracker's public interface, the recorded template) and
    feed the crops to load_model(...).predict: the numbers equal those of the predict table."""
    _, table = video_run
    model = load_model(model_file, device="cpu")
    tracker = FaceTracker(shared_detector(model.description.detector_settings, "cpu"), TrackerSettings())
    crops, frames = [], []
    with VideoReader(video) as reader:
        for index, frame, result in tracker.follow(reader):
            if result.face is not None and index in (0, 7, 15):
                crops.append(align_face(frame, result.face.landmarks, 112, TEMPLATE)[0])
                frames.append(index)
    assert len(frames) == 3
    direct = model.predict(crops)
    rows = table.set_index("frame").loc[frames]
    numeric = [c for c in model.columns if c != "expression"]
    # 3 crops in one batch against the whole video's batches: float32 sums differ in the 5th digit
    # on this untrained model's huge raw regressions (-2000)
    np.testing.assert_allclose(direct[numeric].to_numpy(), rows[numeric].to_numpy(), rtol=1e-4, atol=1e-6)
    assert direct["expression"].tolist() == rows["expression"].tolist()
    # and the Python API's video path gives the CLI's table
    api = model.predict_video(video)
    np.testing.assert_allclose(api[numeric].to_numpy(dtype=float), table[numeric].to_numpy(dtype=float),
                               rtol=1e-5, atol=1e-6)


def test_a_folder_of_images_with_faceless_broken_and_tiny_images_keeps_every_row(sample_data, model_file, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(sample_data["caer-s"] / "test" / "Neutral", folder)
    (folder / "broken.png").write_bytes(b"not an image at all")
    cv2.imwrite(str(folder / "tiny.png"), np.full((5, 5, 3), 90, np.uint8))  # MTCNN fails on it in a batch
    images = sorted(p.name for p in folder.iterdir())
    faceless = Path(next(p for p in CAER_NO_FACE if p.startswith("test/Neutral/"))).name
    out = tmp_path / "images.parquet"
    result = CliRunner().invoke(app, ["predict", str(model_file), str(folder), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 1  # the broken image is reported ...
    assert "broken.png" in result.output and "tiny.png" in result.output and "Traceback" not in result.output
    table = pd.read_parquet(out)  # ... and every image, the broken one included, keeps its row
    assert sorted(Path(s).name for s in table["source"]) == images
    by_name = table.set_index(table["source"].map(lambda s: Path(s).name))
    for name in (faceless, "broken.png", "tiny.png"):
        assert not by_name.loc[name, "face_found"]
        assert pd.isna(by_name.loc[name, "AU12_c"]) and pd.isna(by_name.loc[name, "expression"])
    assert by_name["face_found"].sum() == len(images) - 3
    assert table["frame"].isna().all() and table["time"].isna().all()
    # how many faces the detector saw: none in the empty scene, unknown where it could not run
    assert by_name.loc[faceless, "n_faces"] == 0
    assert pd.isna(by_name.loc["broken.png", "n_faces"]) and pd.isna(by_name.loc["tiny.png", "n_faces"])
    assert (by_name.loc[by_name["face_found"], "n_faces"] >= 1).all()


def test_two_models_side_by_side_prefix_clashing_columns(sample_data, model_file, tmp_path):
    other = make_model_file(tmp_path / "other.pt", seed=1, name="other")
    image = sample_data["caer-s"] / "test" / "Happy" / "0001.png"
    out = tmp_path / "two.csv"
    result = CliRunner().invoke(app, ["predict", str(model_file), str(image), "-m", str(other),
                                      "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert "mtl_AU12_c" in table.columns and "other_AU12_c" in table.columns and "AU12_c" not in table.columns
    alone = load_model(model_file, device="cpu").predict_images([image])
    np.testing.assert_allclose(table["mtl_valence"], alone["valence"], rtol=1e-5)
    assert not np.allclose(table["mtl_valence"], table["other_valence"])


@pytest.mark.parametrize("args, message", [
    (["{model}", "missing.mp4", "--out", "{tmp}/x.csv"], "does not exist"),
    (["{model}", "{tmp}", "--out", "{tmp}/x.txt"], "must end in .csv or .parquet"),
    (["{tmp}/fake.pt", "{tmp}/blank.png", "--out", "{tmp}/x.csv"], "not an affbench model file"),
    (["{model}", "{tmp}/notes.txt", "--out", "{tmp}/x.csv"], "neither a video"),
])
def test_bad_input_is_one_sentence_and_a_non_zero_exit(model_file, tmp_path, args, message):
    (tmp_path / "fake.pt").write_bytes(b"\x80\x04garbage")
    (tmp_path / "notes.txt").write_text("hello")
    cv2.imwrite(str(tmp_path / "blank.png"), np.zeros((32, 32, 3), np.uint8))
    args = [a.format(model=model_file, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(app, ["predict", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.csv").exists()


def test_predict_takes_single_crops_and_arrays(model_file):
    model = load_model(model_file, device="cpu")
    crops = np.random.default_rng(0).integers(0, 255, (3, 112, 112, 3), dtype=np.uint8)
    batch = model.predict(crops)
    single = model.predict(crops[1])
    assert list(batch.columns) == model.columns and len(batch) == 3 and len(single) == 1
    np.testing.assert_allclose(single["valence"], batch["valence"][1:2], rtol=1e-5)


def test_an_interrupted_run_resumes_without_redoing_finished_inputs(sample_data, model_file, video, tmp_path,
                                                                     monkeypatch):
    import affbench.inference.predict as inference

    model = load_model(model_file, device="cpu")
    image = sample_data["caer-s"] / "test" / "Happy" / "0001.png"
    parts = tmp_path / "parts"
    first = inference.predict_table([model], [video], resume=parts)
    assert len(list(parts.glob("*.parquet"))) == 1

    def no_tracking(*args, **kwargs):
        raise AssertionError("the finished video was processed again")

    monkeypatch.setattr(inference, "video_faces", no_tracking)
    again = inference.predict_table([model], [video, image], resume=parts)
    assert len(again.table) == len(first.table) + 1
    pd.testing.assert_frame_equal(again.table.iloc[: len(first.table)], first.table, check_dtype=False)
    assert len(list(parts.glob("*.parquet"))) == 2


def test_a_published_checkpoint_is_wrapped_when_its_labels_are_named(tmp_path):
    torch.manual_seed(5)
    original = create_encoder("emotiram-f", input_size=64).eval()
    checkpoint = tmp_path / "published.pth"
    torch.save({"state_dict": original.state_dict()}, checkpoint)
    classes = ["anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    out = tmp_path / "wrapped.pt"
    runner = CliRunner()
    result = runner.invoke(app, ["export-model", "--encoder", "emotiram-f", "--pretrained", str(checkpoint),
                                 "--option", "input_size=64", "--labels", ",".join(classes), "--crop-size", "96",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = load_model(out, device="cpu")
    assert model.columns == ["expression", *classes] and model.crop_size == 96
    assert "published checkpoint" in model.description.notes[0]
    assert str(checkpoint) in model.description.initialisation
    crops = np.random.default_rng(1).integers(0, 255, (2, 96, 96, 3), dtype=np.uint8)
    x = model._inputs(list(crops)).float().div(255)
    mean = torch.tensor(original.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(original.spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = torch.softmax(original((x - mean) / std)["expression"], dim=1).numpy()
    np.testing.assert_allclose(model.predict(crops)[classes].to_numpy(), expected, rtol=1e-4, atol=1e-6)

    wrong = runner.invoke(app, ["export-model", "--encoder", "emotiram-f", "--pretrained", str(checkpoint),
                                "--option", "input_size=64", "--labels", "a,b", "--out", str(tmp_path / "w.pt")])
    assert wrong.exit_code != 0 and "outputs 7 expression values" in wrong.output


# ----------------------------------------------------------------------------------------- careless use (issue 23)


def test_a_model_trained_on_caer_s_predicts_still_images(sample_data, tmp_path):
    from affbench.pipelines.caer_s import PrepareSettings

    torch.manual_seed(0)
    model = create_encoder("emotiram-f", input_size=48).eval()
    caer = PrepareSettings.from_options(size=64, select="prob").parameters()  # the manifest's parameters
    description = describe_trained_model("caer", model.spec, [protocols()["caer-s"].task("expression")], caer)
    assert description.face_selection == "prob"
    path = save_model_file(tmp_path / "caer.pt", description, model.state_dict())
    image = sample_data["caer-s"] / "test" / "Happy" / "0001.png"
    assert load_model(path, device="cpu").predict_images([image])["face_found"].all()
    # a model file written before the fix holds the rule as the text of the manifest's dict
    from dataclasses import replace

    old = save_model_file(tmp_path / "old.pt", replace(description, face_selection=str(caer["select"])),
                          model.state_dict())
    assert load_model(old, device="cpu").description.face_selection == "prob"


def test_a_finished_job_folder_or_its_best_pt_is_a_model(model_file, tmp_path, sample_data):
    from affbench.inference.bundle import write_job_description

    description, state = read_model_file(model_file)
    job = tmp_path / "run" / "jobs" / "affwild2-inceptionv3-mtl-fold1-abc"
    job.mkdir(parents=True)
    write_job_description(job, description)
    torch.save({"model": state}, job / "best.pt")
    image = sample_data["caer-s"] / "test" / "Happy" / "0001.png"
    expected = load_model(model_file, device="cpu").predict_images([image])
    for given in (job, job / "best.pt"):
        loaded = load_model(given, device="cpu")
        assert loaded.name == job.name
        pd.testing.assert_frame_equal(loaded.predict_images([image]), expected)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(image), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 1 and "is not a finished job folder" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("content, reason", [
    (b"hello, this is a text file\n", "not a file written by torch.save"),
    (b"", "the file is empty"),
])
def test_a_file_that_is_no_model_is_one_sentence(tmp_path, content, reason):
    (tmp_path / "model.txt").write_bytes(content)
    cv2.imwrite(str(tmp_path / "blank.png"), np.zeros((32, 32, 3), np.uint8))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "model.txt"), str(tmp_path / "blank.png"),
                                      "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is not an affbench model file" in result.output and reason in result.output


def test_a_pickled_object_is_refused_without_advising_weights_only_false(tmp_path):
    import collections
    import pickle

    with open(tmp_path / "pickle.pt", "wb") as handle:  # a plain pickle, not a torch.save archive
        pickle.dump(collections.OrderedDict(a=[1, 2]), handle, protocol=4)
    cv2.imwrite(str(tmp_path / "blank.png"), np.zeros((32, 32, 3), np.uint8))
    for args in (["predict", str(tmp_path / "pickle.pt"), str(tmp_path / "blank.png"), "--out", str(tmp_path / "x.csv")],
                 ["export-model", "--encoder", "emotiram-f", "--pretrained", str(tmp_path / "pickle.pt"),
                  "--labels", "a,b,c,d,e,f,g", "--out", str(tmp_path / "m.pt")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "False" not in result.output and "never unpickles" in result.output  # no advice to set weights_only=False


def test_predict_never_replaces_a_file_it_did_not_write(model_file, sample_data, tmp_path):
    image = sample_data["caer-s"] / "test" / "Happy" / "0001.png"
    keep = tmp_path / "keep.csv"
    keep.write_text("name,score\nalice,3\n")
    result = CliRunner().invoke(app, ["predict", str(model_file), str(image), "--out", str(keep)])
    assert result.exit_code == 1 and "is not an earlier affbench predictions table" in result.output
    assert keep.read_text() == "name,score\nalice,3\n"
    for out in (tmp_path / "table.csv", tmp_path / "table.parquet"):
        for _ in range(2):  # its own earlier table is replaced
            result = CliRunner().invoke(app, ["predict", str(model_file), str(image), "--out", str(out)])
            assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["predict", str(model_file), str(image), "--out", str(keep), "--force"])
    assert result.exit_code == 0 and pd.read_csv(keep).columns[0] == "source"


def test_two_predicts_into_one_file_at_once_are_refused(model_file, sample_data, tmp_path):
    from affbench.runtime.locks import shared_lock_path, try_lock, unlock

    out = tmp_path / "p.csv"
    lock = shared_lock_path(out)
    fd = try_lock(lock)  # another predict writing p.csv
    try:
        result = CliRunner().invoke(app, ["predict", str(model_file), str(sample_data["caer-s"] / "test" / "Happy"
                                                                          / "0001.png"), "--out", str(out)])
    finally:
        unlock(fd, lock)
    assert result.exit_code == 1 and "p.csv is being written by process" in result.output
    assert not out.exists()


def test_export_model_never_replaces_a_file_it_did_not_write(tmp_path):
    torch.manual_seed(5)
    checkpoint = tmp_path / "published.pth"
    torch.save(create_encoder("emotiram-f", input_size=64).state_dict(), checkpoint)
    precious = tmp_path / "precious.pt"
    torch.save({"my": torch.ones(3)}, precious)
    before = precious.read_bytes()
    args = ["export-model", "--encoder", "emotiram-f", "--pretrained", str(checkpoint), "--option", "input_size=64",
            "--labels", "a,b,c,d,e,f,g"]
    result = CliRunner().invoke(app, [*args, "--out", str(precious)])
    assert result.exit_code == 1 and "is not an earlier affbench model file" in result.output
    assert precious.read_bytes() == before
    for _ in range(2):  # an earlier model file is replaced
        assert CliRunner().invoke(app, [*args, "--out", str(tmp_path / "m.pt")]).exit_code == 0


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_two_model_files_of_one_name_get_distinct_columns(sample_data, model_file, tmp_path, suffix):
    (tmp_path / "b").mkdir()
    other = make_model_file(tmp_path / "b" / model_file.name, seed=1)
    image = sample_data["caer-s"] / "test" / "Happy" / "0001.png"
    out = tmp_path / f"two{suffix}"
    result = CliRunner().invoke(app, ["predict", str(model_file), str(image), "-m", str(other), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert table.columns.is_unique
    assert "mtl_valence" in table.columns and "mtl-2_valence" in table.columns
    assert not np.allclose(table["mtl_valence"], table["mtl-2_valence"])


def test_links_out_of_an_input_folder_or_looping_are_not_read(sample_data, tmp_path):
    from affbench.inference.predict import collect_inputs

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_data["caer-s"] / "test" / "Happy" / "0001.png", folder / "mine.png")
    private = tmp_path / "private"
    private.mkdir()
    shutil.copy(sample_data["caer-s"] / "test" / "Happy" / "0002.png", private / "secret.png")
    os.symlink(private / "secret.png", folder / "secret.png")
    os.symlink(private, folder / "elsewhere")
    os.symlink("loop.png", folder / "loop.png")
    skipped: list[str] = []
    sources = collect_inputs([folder], skipped)
    assert [s.images for s in sources] == [(folder / "mine.png",)]
    assert sorted(skipped) == [f"{folder / 'elsewhere'} is not read: it is a symbolic link out of {folder}",
                               f"{folder / 'loop.png'} is not read: it is a symbolic link loop",
                               f"{folder / 'secret.png'} is not read: it is a symbolic link out of {folder}"]


def test_a_video_without_frames_is_a_failure(model_file, tmp_path):
    video = tmp_path / "empty.avi"
    cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64)).release()
    result = CliRunner().invoke(app, ["predict", str(model_file), str(video), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"failed     {video}:" in result.output


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header declares ``width`` x ``height`` pixels (as a decompression bomb does)."""
    import struct
    import zlib

    ok, data = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))
    data = bytearray(data.tobytes())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def test_an_image_above_the_pixel_limit_is_refused_before_it_is_decoded(model_file, tmp_path, monkeypatch):
    import affbench.shards.codec as codec
    from affbench.runtime.pixels import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "")  # the default; restored after the --max-pixels calls below
    (tmp_path / "bomb.png").write_bytes(png_claiming(16000, 16000))
    cv2.imwrite(str(tmp_path / "small.png"), np.full((40, 40, 3), 90, np.uint8))
    decoded = []
    monkeypatch.setattr(codec, "decode_image", lambda data: decoded.append(len(data)) or np.zeros((40, 40, 3), np.uint8))
    result = CliRunner().invoke(app, ["predict", str(model_file), str(tmp_path / "bomb.png"), str(tmp_path / "small.png"),
                                      "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "bomb.png: unreadable image (the image is 16000 x 16000 pixels, more than the limit of 64,000,000" in result.output
    assert len(decoded) == 1  # only the small image was decoded
    # the limit is the user's to set, and it applies to videos too
    result = CliRunner().invoke(app, ["--max-pixels", "1000", "predict", str(model_file), str(tmp_path / "small.png"),
                                      "--out", str(tmp_path / "q.csv")])
    assert "the image is 40 x 40 pixels, more than the limit of 1,000 pixels per image" in result.output
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    result = CliRunner().invoke(app, ["--max-pixels", "1000", "predict", str(model_file), str(video),
                                      "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 1 and f"Each frame of the video {video} is 64 x 64 pixels" in result.output


def test_an_image_too_small_for_the_detector_says_so(model_file, tmp_path):
    cv2.imwrite(str(tmp_path / "dot.png"), np.zeros((1, 1, 3), np.uint8))
    result = CliRunner().invoke(app, ["predict", str(model_file), str(tmp_path / "dot.png"), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 1 and "the image is 1 x 1 pixels, smaller than the smallest face" in result.output
    assert "torch.cat" not in result.output


def test_find_face_then_align_gives_what_predict_images_gives(model_file, sample_data):
    model = load_model(model_file, device="cpu")
    path = sample_data["caer-s"] / "test" / "Happy" / "0001.png"
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    face = model.find_face(image)
    assert face is not None
    by_hand = model.predict(model.align(image, face))
    whole = model.predict_images([path])
    np.testing.assert_allclose(by_hand["valence"], whole["valence"], rtol=1e-5)


def test_decoder_messages_go_into_the_failures_not_onto_the_terminal(model_file, tmp_path):
    import subprocess
    import sys

    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    damaged = bytearray(png.tobytes())
    damaged[200:210] = b"x" * 10  # a CRC error libpng reports on standard error
    (tmp_path / "crc.png").write_bytes(bytes(damaged))
    writer = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 64))
    for i in range(20):
        writer.write(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    writer.release()
    video = bytearray((tmp_path / "v.mp4").read_bytes())
    video[3000:3400] = bytes(400)  # FFmpeg complains about every damaged frame
    (tmp_path / "v.mp4").write_bytes(bytes(video))
    result = subprocess.run([sys.executable, "-P", "-m", "affbench.cli", "predict", str(model_file),
                             str(tmp_path / "crc.png"), str(tmp_path / "v.mp4"), "--out", str(tmp_path / "p.csv"),
                             "--device", "cpu"], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert f"failed     {tmp_path / 'crc.png'}: unreadable image (OpenCV cannot decode it (libpng error: IDAT: CRC error))" in lines
    assert not any(line.startswith(("libpng", "[mpeg4", "[mov")) for line in lines), result.stderr


def test_timeline_plots_never_replace_a_file_predict_did_not_write(tmp_path):
    from affbench.inference.predict import PredictResult, write_plots

    table = pd.DataFrame({"frame": [0, 1, 2], "time": [0.0, 0.04, 0.08], "face_found": [True, False, True],
                          "valence": [0.1, 0.2, 0.3], "arousal": [0.0, -0.1, 0.2]})
    result = PredictResult(table, [], {"clips/talk.mp4": table}, {"va": [["valence", "arousal"]]})
    mine = tmp_path / "frames-talk.png"
    mine.write_bytes(b"my own picture")
    first = write_plots(result, tmp_path / "frames.csv")
    assert first == [tmp_path / "frames-talk-2.png"] and mine.read_bytes() == b"my own picture"
    mine.unlink()
    assert write_plots(result, tmp_path / "frames.csv") == [mine]
    assert write_plots(result, tmp_path / "frames.csv") == [mine]  # its own plot is replaced
