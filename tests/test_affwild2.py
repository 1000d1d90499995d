"""`affbench prepare affwild2`: annotated frames joined with cropped_aligned images, markers,
per-task splits, two-person videos, header checks, folder search, resume."""

from __future__ import annotations

import json
import math
import os
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from affbench.cli import app
from affbench.errors import DataLayoutError, ParameterMismatchError
from affbench.pipelines import affwild2
from affbench.pipelines import sample_data as sd
from affbench.pipelines.affwild2 import AnnotationError
from affbench.scoring.protocols import Protocol
from affbench.shards.codec import decode_image
from affbench.shards.reader import ShardReader

AU_COLUMNS = ["au1", "au2", "au4", "au6", "au7", "au10", "au12", "au15", "au23", "au24", "au25", "au26"]
CHALLENGE = {"au": "AU_Detection_Challenge", "expr": "EXPR_Classification_Challenge", "va": "VA_Estimation_Challenge"}


@pytest.fixture()
def root(sample_data, tmp_path):
    """A private copy of the sample Aff-Wild2 (120 small JPEGs) that a test may change."""
    return shutil.copytree(sample_data["affwild2"], tmp_path / "ABAW3")


@pytest.fixture(scope="module")
def prepared(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "affwild2"
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(sample_data["affwild2"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {(r["subject"], r["frame"]): r for r in ShardReader(out).iter_rows()}
    return out, rows, json.loads((out / "manifest.json").read_text())


def test_one_row_per_annotated_frame_with_zero_based_frames(sample_data, prepared):
    _, rows, manifest = prepared
    expected = {(v, i) for v in sd.AFFWILD2_VIDEOS for i in range(sd.AFFWILD2_FRAMES)}
    assert set(rows) == expected
    images = sample_data["affwild2"] / "cropped_aligned"
    row = rows[("1-30-1280x720", 0)]
    assert row["sample_id"] == "affwild2/1-30-1280x720/000000"
    assert row["source"] == "cropped_aligned/1-30-1280x720/00001.jpg"
    # 00001.jpg is frame 0, stored byte for byte (jpeg at the challenge's 112x112)
    assert row["image"]["bytes"] == (images / "1-30-1280x720" / "00001.jpg").read_bytes()
    assert rows[("1-30-1280x720", 29)]["image"]["bytes"] == (images / "1-30-1280x720" / "00030.jpg").read_bytes()
    assert (row["width"], row["height"], row["split"]) == (112, 112, None)
    assert manifest["parameters"]["keep_original_jpeg"] is True
    assert manifest["totals"]["rows"] == len(expected) and manifest["failures"] == []
    protocol = Protocol.from_dict(manifest["protocol"])  # the harness reads it back from here
    assert protocol.dataset == "affwild2"
    assert sorted(protocol.tasks) == ["au-detection", "expression", "va"]
    assert {t.split_column for t in protocol.tasks.values()} == {"split_au", "split_expr", "split_va"}


def test_labels_follow_the_files_with_markers_and_absent_tasks(prepared):
    _, rows, _ = prepared
    for (video, frame), row in rows.items():
        v = sd.AFFWILD2_VIDEOS.index(video)
        truth = sd.affwild2_labels(v, frame)
        has = {task: video in sd.AFFWILD2_SPLITS[task] for task in CHALLENGE}
        au = [row[c] for c in AU_COLUMNS]
        assert au == (truth["au"] if has["au"] else [-1] * 12), (video, frame)
        assert row["expression"] == (truth["expr"] if has["expr"] else -1)
        if frame in sd.AFFWILD2_UNANNOTATED or not has["va"]:
            assert row["valence"] is None and row["arousal"] is None  # -5 in the file, or no file
        else:
            assert row["valence"] == pytest.approx(round(0.8 * math.sin(frame / 5 + v), 3), abs=1e-6)
            assert row["arousal"] == pytest.approx(round(0.6 * math.cos(frame / 7 + v), 3), abs=1e-6)
        if frame in sd.AFFWILD2_UNANNOTATED:  # the files say -1 there
            assert au == [-1] * 12 and row["expression"] == -1


def test_per_task_split_columns(prepared):
    _, rows, _ = prepared
    for (video, _), row in rows.items():
        for task, column in (("au", "split_au"), ("expr", "split_expr"), ("va", "split_va")):
            assert row[column] == sd.AFFWILD2_SPLITS[task].get(video), (video, column)
    assert rows[("video7", 3)]["split_va"] == "Validation_Set"
    assert rows[("1-30-1280x720", 3)]["split_va"] == "Train_Set"
    assert rows[("1-30-1280x720", 3)]["split_expr"] == "Train_Set" and rows[("10-60-1280x720_left", 3)]["split_expr"] is None


def test_a_frame_without_image_keeps_its_row(prepared):
    out, rows, manifest = prepared
    for (_video, frame), row in rows.items():
        missing = frame in sd.AFFWILD2_NO_IMAGE
        assert row["face_found"] is (not missing)
        assert (row["image"] is None) is missing
        assert row["det_score"] is None and row["box"] is None and row["landmarks"] is None
    stats = manifest["units"]["video7"]["stats"]
    assert stats["images_missing"] == len(sd.AFFWILD2_NO_IMAGE)
    assert stats["images_found"] == sd.AFFWILD2_FRAMES - len(sd.AFFWILD2_NO_IMAGE)


def test_two_person_videos_are_two_subjects_with_their_own_images(sample_data, prepared):
    _, rows, _ = prepared
    images = sample_data["affwild2"] / "cropped_aligned"
    for side in ("left", "right"):
        video = f"10-60-1280x720_{side}"
        row = rows[(video, 4)]
        assert row["subject"] == video
        assert row["source"] == f"cropped_aligned/{video}/00005.jpg"
        assert row["image"]["bytes"] == (images / video / "00005.jpg").read_bytes()
    assert rows[("10-60-1280x720_left", 4)]["image"] != rows[("10-60-1280x720_right", 4)]["image"]
    assert rows[("10-60-1280x720_right", 4)]["split_au"] is None  # only the left person has AU labels


@pytest.mark.parametrize(
    "task, video, change, message",
    [
        ("au", "video7", lambda lines: ["AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25"] + lines[1:], "header"),
        ("expr", "video7", lambda lines: ["Neutral,Anger"] + lines[1:], "header"),
        ("va", "video7", lambda lines: lines[:5] + ["0.1,0.2,0.3"] + lines[6:], "line 6 has 3 value"),
        ("au", "1-30-1280x720", lambda lines: lines[:3] + ["0,1,0"] + lines[4:], "line 4 has 3 value"),
        ("expr", "video7", lambda lines: lines[:2] + ["9"] + lines[3:], "line 3 holds '9'"),
        ("va", "video7", lambda lines: lines[:2] + ["0.5,abc"] + lines[3:], "line 3 holds '0.5,abc', which is not numbers"),
    ],
)
def test_a_wrong_header_or_line_is_an_error_naming_the_file(root, tmp_path, task, video, change, message):
    split = sd.AFFWILD2_SPLITS[task][video]
    path = root / CHALLENGE[task] / split / f"{video}.txt"
    path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
    with pytest.raises(AnnotationError, match=message) as error:
        affwild2.prepare(root, tmp_path / "out", progress=False)
    assert str(path) in str(error.value)
    assert not (tmp_path / "out").exists()  # checked before anything is written
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and str(path) in result.output and "Traceback" not in result.output


def test_annotation_text_tolerates_crlf_spaces_and_trailing_blank_lines():
    text = "valence, arousal\r\n0.5,-0.25\r\n-5,-5\r\n\r\n"
    values = affwild2.parse_annotation(text, "va", "v.txt")
    assert values.tolist() == [[0.5, -0.25], [-5.0, -5.0]]
    with pytest.raises(AnnotationError, match="v.txt is empty"):
        affwild2.parse_annotation("\n\n", "va", "v.txt")
    with pytest.raises(AnnotationError, match=r"v.txt line 2 holds '1.5,0'"):
        affwild2.parse_annotation("valence,arousal\n1.5,0\n", "va", "v.txt")


def test_annotations_elsewhere_and_nested_folders_are_found(root, tmp_path):
    labels = tmp_path / "labels" / "Third ABAW Annotations"
    labels.mkdir(parents=True)
    for challenge in CHALLENGE.values():
        shutil.move(root / challenge, labels / challenge)
    # A file saved on Windows: byte-order mark and CRLF line ends.
    path = labels / CHALLENGE["au"] / "Validation_Set" / "video7.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    nested = root / "cropped_aligned" / "cropped_aligned"
    nested.mkdir()
    for video in sd.AFFWILD2_VIDEOS:
        shutil.move(root / "cropped_aligned" / video, nested / video)

    with pytest.raises(DataLayoutError, match="pass --annotations DIR"):
        affwild2.prepare(root, tmp_path / "out", progress=False)
    result = CliRunner().invoke(
        app, ["prepare", "affwild2", str(root), "--out", str(tmp_path / "out"), "--annotations", str(tmp_path / "labels")]
    )
    assert result.exit_code == 0, result.output
    rows = list(ShardReader(tmp_path / "out").iter_rows(columns=["source", "face_found"]))
    assert len(rows) == len(sd.AFFWILD2_VIDEOS) * sd.AFFWILD2_FRAMES
    assert {r["source"].rsplit("/", 1)[0] for r in rows} == {f"cropped_aligned/cropped_aligned/{v}" for v in sd.AFFWILD2_VIDEOS}
    assert sum(r["face_found"] for r in rows) == len(sd.AFFWILD2_VIDEOS) * (sd.AFFWILD2_FRAMES - len(sd.AFFWILD2_NO_IMAGE))
    info = json.loads((tmp_path / "out" / "manifest.json").read_text())["info"]
    assert info["challenges"]["expr"] == str((labels / CHALLENGE["expr"]).resolve())

    # Two copies of one challenge folder are ambiguous, not silently merged.
    shutil.copytree(labels / CHALLENGE["va"], tmp_path / "labels" / CHALLENGE["va"])
    (tmp_path / "labels" / "x").mkdir()
    shutil.move(tmp_path / "labels" / CHALLENGE["va"], tmp_path / "labels" / "x" / CHALLENGE["va"])
    with pytest.raises(DataLayoutError, match="Found 2 VA_Estimation_Challenge folders"):
        affwild2.find_layout(root, tmp_path / "labels")


def test_resize_and_codec_reencode_the_images(root, tmp_path):
    affwild2.prepare(root, tmp_path / "out", affwild2.PrepareSettings(size=64, codec="png"), progress=False)
    reader = ShardReader(tmp_path / "out")
    row = next(r for r in reader.iter_rows() if r["face_found"])
    assert row["image"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n" and row["image"]["path"].endswith(".png")
    crop = decode_image(row["image"])
    source = cv2.cvtColor(cv2.imread(str(root / row["source"])), cv2.COLOR_BGR2RGB)
    assert crop.shape == (64, 64, 3) and (row["width"], row["height"]) == (64, 64)
    assert np.abs(crop.astype(int) - cv2.resize(source, (64, 64), interpolation=cv2.INTER_AREA)).max() == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["parameters"]["size"] == 64 and manifest["parameters"]["keep_original_jpeg"] is False
    stats = manifest["units"]["video7"]["stats"]
    assert stats["images_reencoded"] == stats["images_found"] > 0


def test_corrupt_image_and_missing_image_folder_are_failures_and_resume_retries(root, tmp_path):
    (root / "cropped_aligned" / "video7" / "00004.jpg").write_bytes(b"\xff\xd8\xff broken")
    shutil.move(root / "cropped_aligned" / "1-30-1280x720", tmp_path / "aside")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out), "--workers", "2"])
    assert result.exit_code == 1
    manifest = json.loads((out / "manifest.json").read_text())
    failures = {f["item"]: f["reason"] for f in manifest["failures"]}
    assert failures["cropped_aligned/video7/00004.jpg"].startswith("unreadable image")
    assert "no image folder cropped_aligned/1-30-1280x720" in failures["cropped_aligned/1-30-1280x720"]
    assert manifest["units"]["1-30-1280x720"]["status"] == "failed"
    rows = {(r["subject"], r["frame"]): r for r in ShardReader(out).iter_rows(columns=["subject", "frame", "face_found"])}
    assert rows[("video7", 3)]["face_found"] is False and rows[("video7", 4)]["face_found"] is True
    assert {s for s, _ in rows} == set(sd.AFFWILD2_VIDEOS) - {"1-30-1280x720"}

    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir() if not p.name.startswith("video7")}
    shutil.move(tmp_path / "aside", root / "cropped_aligned" / "1-30-1280x720")
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out)])
    # The failed video and the video with a failed image are redone; the corrupt JPEG fails again.
    assert "units: 4 (2 already done, 2 processed, 0 failed)" in result.output
    assert "redone because they had failed items: 1 (video7)" in result.output
    assert result.exit_code == 1 and "lists 1 failure(s):" in result.output and "earlier runs" not in result.output
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in (out / "shards").iterdir()) if n in before} == before
    assert ShardReader(out).num_rows == len(sd.AFFWILD2_VIDEOS) * sd.AFFWILD2_FRAMES

    # Once the image is replaced, the next run reads it and the folder is complete.
    shutil.copy(root / "cropped_aligned" / "video7" / "00003.jpg", root / "cropped_aligned" / "video7" / "00004.jpg")
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out)])
    assert result.exit_code == 0 and "units: 4 (3 already done, 1 processed, 0 failed)" in result.output
    rows = {(r["subject"], r["frame"]): r for r in ShardReader(out).iter_rows(columns=["subject", "frame", "face_found"])}
    assert rows[("video7", 3)]["face_found"] is True

    # Changed annotations must not be mixed into the same folder.
    path = root / CHALLENGE["expr"] / "Train_Set" / "1-30-1280x720.txt"
    path.write_text(path.read_text().replace("\n0\n", "\n1\n", 1))
    with pytest.raises(ParameterMismatchError, match="annotations_sha256"):
        affwild2.prepare(root, out, progress=False)


def copy_video(root, source: str, name: str, shift: int) -> None:
    """Add a video called ``name``: ``source``'s annotations, and its images with frame i's image
    taken from frame i + ``shift``, so that each copy's rows can be told from the others'."""
    folder = root / "cropped_aligned" / name
    folder.mkdir()
    images = sorted((root / "cropped_aligned" / source).glob("*.jpg"))
    for image, other in zip(images, images[shift:] + images[:shift]):
        shutil.copy(other, folder / image.name)
    for task, split in ((t, s[source]) for t, s in sd.AFFWILD2_SPLITS.items() if source in s):
        shutil.copy(root / CHALLENGE[task] / split / f"{source}.txt", root / CHALLENGE[task] / split / f"{name}.txt")


def test_video_names_that_differ_only_in_other_characters_or_case_keep_their_own_rows(root, tmp_path):
    # Each name once held the shards of its twin: one video vanished, the other was read twice.
    names = ["clip 1", "clip-1", "vidéo7", "vid-o7", "视频", "Clip", "clip"]
    for shift, name in enumerate(names, start=1):
        copy_video(root, "video7", name, shift)
    (root / CHALLENGE["va"] / "Validation_Set" / "..txt").write_text(
        (root / CHALLENGE["va"] / "Validation_Set" / "video7.txt").read_text())
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    # "..txt" names a video "." whose images no folder can hold: a failed unit, nothing else.
    assert [f["unit"] for f in manifest["failures"]] == ["."]
    assert "no image folder cropped_aligned/." in manifest["failures"][0]["reason"]
    files = [s["file"] for u in manifest["units"].values() for s in u["shards"]]
    assert len({f.lower() for f in files}) == len(files)
    rows = {(r["subject"], r["frame"]): r for r in ShardReader(out).iter_rows(columns=["subject", "frame", "image"])}
    for video in [*names, "video7"]:
        assert sum(subject == video for subject, _ in rows) == sd.AFFWILD2_FRAMES
        expected = (root / "cropped_aligned" / video / "00001.jpg").read_bytes()
        assert rows[(video, 0)]["image"]["bytes"] == expected


def test_an_empty_image_fails_only_its_own_row(root, tmp_path):
    (root / "cropped_aligned" / "video7" / "00004.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["failures"] == [{"unit": "video7", "item": "cropped_aligned/video7/00004.jpg",
                                     "reason": "unreadable image: the file is empty"}]
    assert manifest["units"]["video7"]["status"] == "done"
    rows = {r["frame"]: r["face_found"] for r in ShardReader(out).iter_rows(columns=["subject", "frame", "face_found"])
            if r["subject"] == "video7"}
    assert len(rows) == sd.AFFWILD2_FRAMES and rows[3] is False and rows[4] is True and rows[2] is True


def test_a_replaced_or_added_image_redoes_its_video(root, tmp_path):
    out = tmp_path / "out"
    assert CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out)]).exit_code == 0
    folder = root / "cropped_aligned" / "video7"
    shutil.copy(folder / "00003.jpg", folder / "00002.jpg")  # a replaced image
    shutil.copy(folder / "00003.jpg", folder / "00008.jpg")  # an image that was missing (frame 7)
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "units: 4 (3 already done, 1 processed, 0 failed)" in result.output
    assert "redone because their input files changed: 1 (video7)" in result.output
    rows = {r["frame"]: r for r in ShardReader(out).iter_rows(columns=["subject", "frame", "image", "face_found"])
            if r["subject"] == "video7"}
    assert rows[1]["image"]["bytes"] == (folder / "00003.jpg").read_bytes()
    assert rows[7]["face_found"] is True


def test_a_fifo_among_the_annotation_files_is_not_read(root, tmp_path):
    import threading

    os.mkfifo(root / CHALLENGE["au"] / "Train_Set" / "waiting.txt")  # opening it would block for ever
    found = []
    reader = threading.Thread(target=lambda: found.append(affwild2.read_annotations(affwild2.find_layout(root))),
                              daemon=True)
    reader.start()
    reader.join(30)
    assert found, "reading the annotations blocked on a FIFO"
    videos, _ = found[0]
    assert [v.name for v in videos] == sorted(sd.AFFWILD2_VIDEOS)


def test_a_full_disk_stops_prepare_with_one_sentence_and_the_rerun_completes(root, tmp_path, monkeypatch):
    import errno

    from affbench.shards.writer import ShardWriter

    flush = ShardWriter._flush

    def full(self):
        if self.prefix.startswith("video7"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.shard_dir / "x.parquet"))
        return flush(self)

    out = tmp_path / "out"
    monkeypatch.setattr(ShardWriter, "_flush", full)
    # --workers 1: the full disk is simulated in this process, which worker processes would not share
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output and result.exception.__class__ is SystemExit
    assert "(No space left on device) while preparing video7; free some space" in result.output
    units = json.loads((out / "manifest.json").read_text())["units"]
    assert "video7" not in units and all(u["status"] == "done" for u in units.values())

    monkeypatch.setattr(ShardWriter, "_flush", flush)
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out)])
    assert result.exit_code == 0 and ShardReader(out).num_rows == len(sd.AFFWILD2_VIDEOS) * sd.AFFWILD2_FRAMES


def test_an_unwritable_or_busy_or_file_out_is_one_sentence(root, tmp_path, monkeypatch):
    import errno

    import affbench.shards.manifest
    from affbench.runtime.locks import FolderLock

    def prepare(out):
        result = CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out)])
        assert result.exit_code == 1 and "Traceback" not in result.output and result.exception.__class__ is SystemExit
        return result.output.strip()

    (tmp_path / "file").write_text("not a folder")
    assert prepare(tmp_path / "file") == f"Error: {tmp_path / 'file'} is a file, not a folder; choose a folder for --out."

    busy = tmp_path / "busy"
    busy.mkdir()
    lock = FolderLock(busy)  # as another prepare would hold it
    assert prepare(busy).startswith(f"Error: {busy} is in use by process {os.getpid()} (another affbench run)")
    lock.release()

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(affbench.shards.manifest, "write_text_atomic", read_only)
    assert prepare(tmp_path / "ro") == (f"Error: Cannot write {tmp_path / 'ro' / 'manifest.json'}: Read-only file system; "
                                        "make it writable or choose another --out, then run the same command again to resume.")


def test_another_root_into_a_prepared_folder_is_refused_and_changes_nothing(root, sample_data, tmp_path):
    out = tmp_path / "out"
    assert CliRunner().invoke(app, ["prepare", "affwild2", str(root), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()} | {"manifest": (out / "manifest.json").read_bytes()}
    other = shutil.copytree(sample_data["affwild2"], tmp_path / "other")
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(other), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"was prepared from ROOT {root.resolve()}, not {other.resolve()}" in result.output
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} | {"manifest": (out / "manifest.json").read_bytes()} == before
    os.symlink(root, tmp_path / "link")  # the same root by another path resumes
    assert CliRunner().invoke(app, ["prepare", "affwild2", str(tmp_path / "link"), "--out", str(out)]).exit_code == 0


def test_an_image_above_the_pixel_limit_is_a_failure_before_it_is_decoded(root, tmp_path, monkeypatch):
    from affbench.runtime.pixels import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "")  # restored after --max-pixels below
    image = root / "cropped_aligned" / "video7" / "00004.jpg"
    height, width = cv2.imread(str(image)).shape[:2]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["--max-pixels", str(height * width - 1), "prepare", "affwild2", str(root),
                                      "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    reasons = {f["item"]: f["reason"] for f in json.loads((out / "manifest.json").read_text())["failures"]}
    assert reasons["cropped_aligned/video7/00004.jpg"] == (
        f"unreadable image: the image is {width} x {height} pixels, more than the limit of {height * width - 1:,} "
        "pixels per image; to read it, give affbench --max-pixels a larger number (and expect it to need many GB "
        "of memory).")
