"""`affbench prepare bp4d` on the generated BP4D-layout sample (real faces; 4 tasks of 8 frames,
the first 2 of each uncoded; one 9 code; one truncated JPEG) and the BP4D protocol."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from affbench.cli import app
from affbench.errors import DataLayoutError
from affbench.pipelines import bp4d, protocol_for
from affbench.pipelines import sample_data as sd
from affbench.shards.manifest import read_manifest
from affbench.shards.reader import ShardReader

SETTINGS = bp4d.PrepareSettings(device="cpu")
OCC = f"{bp4d.CODES_DIR}/{bp4d.OCCURRENCE_DIR}"

# Typed from CVI-SZU/ME-GraphAU tool/BP4D_image_label_process.py (BP4D_Sequence_split), fold 1
# testing the third list.
REFERENCE_PARTS = [
    "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008".split(),
    "M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005".split(),
    "F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F014".split(),
]


@pytest.fixture()
def raw(tmp_path, sample_data):
    """A private copy of the BP4D sample that a test may damage."""
    return shutil.copytree(sample_data["bp4d"], tmp_path / "BP4D")


# ----------------------------------------------------------------------------------------- codes


def test_occurrence_rows_are_the_coded_frames_with_9_as_minus_1(sample_data):
    frames, codes = bp4d.read_occurrence(sample_data["bp4d"] / OCC / "F001_T1.csv")
    first = sd.BP4D_FIRST_FRAME + sd.BP4D_UNCODED
    assert frames.tolist() == list(range(first, sd.BP4D_FIRST_FRAME + sd.BP4D_FRAMES))
    subject, task, frame, au = sd.BP4D_UNKNOWN
    for row, f in enumerate(frames):
        for j, a in enumerate(bp4d.AUS):
            expected = -1 if (f, a) == (frame, au) else sd.bp4d_occurrence("F001", "T1", int(f), a)
            assert codes[row, j] == expected


def test_bad_codes_are_one_sentence_naming_file_and_line(tmp_path):
    header = ",".join(["0", *map(str, sd.BP4D_HEADER_AUS)])
    good = ",".join(["7", *["0"] * len(sd.BP4D_HEADER_AUS)])
    cases = {
        "code": (header + "\n" + good.replace(",0", ",3", 1) + "\n", "line 2 gives AU1 the code 3"),
        "twice": (header + "\n" + good + "\n" + good + "\n", "codes frame 7 twice (lines 2 and 3)"),
        "width": (header + "\n7,0,1\n", "line 2 has 3 values"),
        "header": ("0,1,2,4\n7,0,0,0\n", "no column for AU6"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(text)
        with pytest.raises(DataLayoutError, match=re.escape(message)):
            bp4d.read_occurrence(path)


def test_layout_errors_name_what_is_missing(raw, tmp_path, sample_data):
    (raw / OCC / "F007_T1.csv").unlink()
    with pytest.raises(DataLayoutError) as error:
        bp4d.find_units(bp4d.find_layout(raw))
    assert str(error.value).startswith(f"The occurrence code file {raw / OCC / 'F007_T1.csv'} for the frames in")

    shutil.copy(sample_data["bp4d"] / OCC / "F007_T1.csv", raw / OCC / "F007_T1.csv")
    shutil.rmtree(raw / sd.BP4D_IMAGES / "F003" / "T1")
    with pytest.raises(DataLayoutError, match="The frame folder .*F003/T1 for the occurrence codes .*F003_T1.csv is missing"):
        bp4d.find_units(bp4d.find_layout(raw))

    shutil.rmtree(raw / bp4d.CODES_DIR)
    with pytest.raises(DataLayoutError, match=r"Could not find the occurrence codes \(AUCoding/AU_OCC/"):
        bp4d.find_layout(raw)
    empty = tmp_path / "empty"
    (empty / bp4d.CODES_DIR / bp4d.OCCURRENCE_DIR).mkdir(parents=True)
    with pytest.raises(DataLayoutError, match="Could not find the frame folders"):
        bp4d.find_layout(empty)


def test_layout_is_found_below_the_root(sample_data, tmp_path):
    nested = tmp_path / "download" / "BP4D-Spontaneous"
    shutil.copytree(sample_data["bp4d"], nested)
    layout = bp4d.find_layout(tmp_path / "download")
    assert layout.images == nested / sd.BP4D_IMAGES
    assert layout.intensity == nested / bp4d.CODES_DIR / bp4d.INTENSITY_DIR
    assert [u.key for u in bp4d.find_units(layout)] == ["F001/T1", "F001/T2", "F003/T1", "F007/T1"]


# ----------------------------------------------------------------------------------------- protocol


def test_folds_match_the_reference_and_test_every_subject_once():
    protocol = protocol_for("bp4d")
    assert [list(protocol.split.parts[p]) for p in ("part1", "part2", "part3")] == REFERENCE_PARTS
    assert protocol.split.test_parts == {1: ("part3",), 2: ("part2",), 3: ("part1",)}
    assert sorted(sum(REFERENCE_PARTS, [])) == sorted(bp4d.SUBJECTS) and len(bp4d.SUBJECTS) == 41
    meta = pd.DataFrame({"subject": np.repeat(bp4d.SUBJECTS, 3), "face_found": True,
                         **{c: 0 for c in bp4d.AU_COLUMNS}})
    tested = []
    for fold in protocol.folds:
        split = protocol.split_indices(meta, "au-detection", fold=fold)
        test = set(meta.subject.iloc[split["test"]])
        train = set(meta.subject.iloc[np.concatenate([split["train"], split["val"]])])
        assert not test & train and len(test | train) == 41
        tested += sorted(test)
    assert sorted(tested) == sorted(bp4d.SUBJECTS)  # each subject tested exactly once
    assert sorted(set(tested[-14:])) == sorted(REFERENCE_PARTS[0])  # fold 3 tests part1
    task = protocol.task("au-detection")
    assert task.label_names == tuple(f"au{a}" for a in (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24))
    assert protocol.task("au-intensity").metrics == ("icc",)


# ----------------------------------------------------------------------------------------- prepare (MTCNN)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, sample_data):
    """The sample prepared once, with F007_T1.csv's rows reversed: the join must use frame numbers."""
    root = shutil.copytree(sample_data["bp4d"], tmp_path_factory.mktemp("bp4d") / "BP4D")
    codes = root / OCC / "F007_T1.csv"
    header, *rows = codes.read_text().splitlines()
    codes.write_text("\n".join([header, *reversed(rows)]) + "\n")
    out = root.parent / "out"
    summary = bp4d.prepare(root, out, settings=SETTINGS, progress=False)
    return root, out, summary


def test_rows_are_the_coded_frames_joined_by_frame_number(prepared):
    root, out, summary = prepared
    table = ShardReader(out).table().to_pandas().sort_values("sample_id")
    coded = range(sd.BP4D_FIRST_FRAME + sd.BP4D_UNCODED, sd.BP4D_FIRST_FRAME + sd.BP4D_FRAMES)
    expected = sorted(f"bp4d/{s}/{t}/{f}" for s, t in sd.BP4D_UNITS for f in coded)
    assert table.sample_id.tolist() == expected and table.sample_id.is_unique
    for row in table.itertuples():
        for au in bp4d.AUS:
            truth = sd.bp4d_occurrence(row.subject, row.task, row.frame, au)
            assert getattr(row, f"au{au}") == (-1 if truth == 9 else truth), (row.sample_id, au)
        for au in bp4d.INTENSITY_AUS:
            assert getattr(row, f"au{au}_intensity") == sd.bp4d_intensity(row.subject, row.frame, au)
        assert row.source == f"{sd.BP4D_IMAGES}/{row.subject}/{row.task}/{row.frame}.jpg"
    subject, task, frame, au = sd.BP4D_UNKNOWN
    assert table.set_index("sample_id").loc[f"bp4d/{subject}/{task}/{frame}", f"au{au}"] == -1
    manifest = read_manifest(out)
    assert bp4d.uncoded_frames(manifest) == sd.BP4D_UNCODED * len(sd.BP4D_UNITS)
    assert [t["name"] for t in manifest["protocol"]["tasks"]] == ["au-detection", "au-intensity"]


def test_corrupt_jpeg_fails_its_row_only(prepared):
    root, out, summary = prepared
    table = ShardReader(out).table(columns=["source", "face_found"]).to_pandas()
    found = dict(zip(table.source, table.face_found))
    assert found.pop(sd.BP4D_CORRUPT) is False
    assert all(found.values())  # MTCNN found every other sample face
    assert [f["item"] for f in read_manifest(out)["failures"]] == [sd.BP4D_CORRUPT]


def test_resume_skips_finished_tasks_and_redoes_changed_ones(prepared):
    root, out, _ = prepared
    before = json.loads((out / "manifest.json").read_text())["units"]
    (root / sd.BP4D_CORRUPT).write_bytes((root / sd.BP4D_IMAGES / "F003" / "T1" / "44.jpg").read_bytes())
    codes = root / OCC / "F001_T2.csv"
    codes.write_text(codes.read_text() + "\n")  # the same codes, other bytes
    summary = bp4d.prepare(root, out, settings=SETTINGS, progress=False)
    after = json.loads((out / "manifest.json").read_text())["units"]
    assert summary.units_skipped == 2
    assert "F001/T2" in summary.units_changed
    assert set(summary.units_changed) | set(summary.units_retried) == {"F001/T2", "F003/T1"}
    for key in ("F001/T1", "F007/T1"):
        assert after[key]["shards"] == before[key]["shards"]
    assert read_manifest(out)["failures"] == []


def test_cli_names_a_missing_image_folder_in_one_sentence(raw, tmp_path):
    shutil.rmtree(raw / sd.BP4D_IMAGES / "F007" / "T1")
    result = CliRunner().invoke(app, ["prepare", "bp4d", str(raw), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "The frame folder" in result.output and "F007/T1" in result.output
