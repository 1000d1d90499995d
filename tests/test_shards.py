"""The shard store: schema v1, round trip, atomic writes, manifest, resume and refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from affbench.errors import AffbenchError, ParameterMismatchError
from affbench.preparation.units import UnitOutcome, run_units
from affbench.runtime.files import file_sha256
from affbench.shards.codec import decode_image, encode_image
from affbench.shards.manifest import DatasetWriter
from affbench.shards.reader import ShardReader
from affbench.shards.schema import BASE_COLUMNS, make_schema
from affbench.shards.writer import ShardWriter

LABELS = [pa.field("au12", pa.int8()), pa.field("valence", pa.float32())]
PARAMS = {"size": 32, "codec": "png", "detector": {"thresholds": [0.6, 0.7, 0.7]}}


def face_image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_row(unit: str, i: int, *, with_face: bool = True) -> dict:
    image = face_image(i)
    return {
        "sample_id": f"toy/{unit}/{i:06d}",
        "dataset": "toy",
        "subject": unit,
        "source": f"{unit}.avi",
        "frame": i,
        "split": None,
        "image": {"bytes": encode_image(image), "path": f"{unit}/{i:06d}.png"} if with_face else None,
        "width": 32 if with_face else None,
        "height": 32 if with_face else None,
        "face_found": with_face,
        "det_score": 0.99 if with_face else None,
        "box": [1.0, 2.0, 30.0, 31.0] if with_face else None,
        "landmarks": [float(v) for v in range(10)] if with_face else None,
        "au12": i % 6,
        "valence": None if i % 4 == 0 else i / 10,
    }


def test_schema_has_base_columns_then_labels_and_hf_image_metadata():
    schema = make_schema(LABELS)
    assert tuple(schema.names[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    assert schema.names[len(BASE_COLUMNS) :] == ["au12", "valence"]
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert schema.field("box").type == pa.list_(pa.float32(), 4)
    assert schema.field("landmarks").type == pa.list_(pa.float32(), 10)
    assert json.loads(schema.metadata[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
    with pytest.raises(ValueError):
        make_schema([pa.field("frame", pa.int8())])


@pytest.mark.parametrize("codec", ["png", "jpeg", "webp"])
def test_image_codecs_round_trip(codec):
    image = np.zeros((40, 40, 3), np.uint8)
    image[10:30, 5:20] = (200, 30, 90)
    decoded = decode_image(encode_image(image, codec))
    assert decoded.shape == image.shape
    error = np.abs(decoded.astype(int) - image)
    if codec == "png":
        assert error.max() == 0
    else:  # lossy: chroma subsampling smears the block's sharp edges, the rest stays close
        assert error.mean() < 6


def test_round_trip_values_and_hashes(tmp_path):
    schema = make_schema(LABELS)
    with ShardWriter(tmp_path, "SN001/left", schema, rows_per_shard=4, row_group_size=3) as writer:
        rows = [make_row("SN001", i, with_face=i != 5) for i in range(10)]
        writer.write_many(rows)
    assert [s.rows for s in writer.shards] == [4, 4, 2]
    assert [s.file for s in writer.shards] == [f"shards/SN001-left-5e42e7b4-{i:05d}.parquet" for i in range(3)]  # 5e42e7b4: sha256("SN001/left")
    for shard in writer.shards:
        assert file_sha256(tmp_path / shard.file) == shard.sha256
        assert pq.read_schema(tmp_path / shard.file).equals(schema, check_metadata=False)

    table = pa.concat_tables(pq.read_table(tmp_path / s.file) for s in writer.shards)
    back = table.to_pylist()
    for original, read in zip(rows, back):
        assert read["sample_id"] == original["sample_id"]
        assert read["frame"] == original["frame"]
        assert read["face_found"] == original["face_found"]
        assert read["au12"] == original["au12"]
        if original["valence"] is None:
            assert read["valence"] is None
        else:
            assert read["valence"] == pytest.approx(original["valence"], rel=1e-6)
        if original["face_found"]:
            assert np.array_equal(decode_image(read["image"]), face_image(original["frame"]))
            assert read["box"] == original["box"]
        else:
            assert read["image"] is None and read["landmarks"] is None


def test_writer_abort_leaves_no_visible_shard(tmp_path):
    schema = make_schema(LABELS)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "u", schema, rows_per_shard=4, row_group_size=1) as writer:
            for i in range(6):
                writer.write(make_row("u", i))
            raise RuntimeError("boom")
    files = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert files == ["u-0bfe935e-00000.parquet"]  # the finished shard stays until the unit is redone


def test_killed_writer_leaves_no_visible_half_shard(tmp_path):
    """SIGKILL in the middle of a shard: the finished shard is readable, the half one invisible,
    and redoing the unit clears both."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_shards import LABELS, make_row
        from affbench.shards.schema import make_schema
        from affbench.shards.writer import ShardWriter
        writer = ShardWriter({str(tmp_path)!r}, "SN002", make_schema(LABELS), rows_per_shard=4, row_group_size=1)
        for i in range(7):
            writer.write(make_row("SN002", i))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=tmp_path.parent)
    assert result.returncode == -9, result.stderr.decode()
    names = sorted(p.name for p in (tmp_path / "shards").iterdir())
    visible = [n for n in names if not n.startswith(".")]
    assert visible == ["SN002-afcb988c-00000.parquet"]
    assert any(n.endswith(".tmp") for n in names)
    assert pq.read_table(tmp_path / "shards" / "SN002-afcb988c-00000.parquet").num_rows == 4

    writer = DatasetWriter(tmp_path / "out", dataset="toy", parameters=PARAMS, schema=make_schema(LABELS))
    assert not writer.is_done("SN002")
    # The same unit name in a real output folder: redoing it removes every leftover.
    (tmp_path / "out" / "shards").mkdir()
    for name in names:
        (tmp_path / "shards" / name).rename(tmp_path / "out" / "shards" / name)
    writer.start_unit("SN002")
    assert list((tmp_path / "out" / "shards").iterdir()) == []


def toy_process(out: Path, calls: list[str], rows: int = 5, fail=frozenset(), interrupt=frozenset()):
    """A unit processor that writes ``rows`` toy rows and notes which units it was called for."""

    def process(unit, tick):
        calls.append(unit.key)
        if unit.key in interrupt:
            raise KeyboardInterrupt
        if unit.key in fail:
            raise OSError(f"cannot read {unit.key}.avi")
        with ShardWriter(out, unit.key, make_schema(LABELS), rows_per_shard=3) as writer:
            for i in range(rows):
                writer.write(make_row(unit.key, i, with_face=i != 2))
                tick(1)
        return UnitOutcome(unit.key, writer.shards, stats={"faces_found": rows - 1})

    return process


class ToyUnit:
    def __init__(self, key: str, size: int = 5):
        self.key, self.size = key, size


def open_writer(out: Path, params=PARAMS) -> DatasetWriter:
    return DatasetWriter(out, dataset="toy", parameters=params, schema=make_schema(LABELS), protocol={"folds": [1]})


def test_resume_skips_finished_units_and_rerun_changes_no_byte(tmp_path):
    out = tmp_path / "prepared"
    units = [ToyUnit(k) for k in ("SN001", "SN002", "SN003")]

    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_units(open_writer(out), units, toy_process(out, calls, interrupt={"SN002"}), progress=False)
    assert calls == ["SN001", "SN002"]
    assert ShardReader(out).num_rows == 5  # only the finished unit is visible

    calls.clear()
    summary = run_units(open_writer(out), units, toy_process(out, calls), progress=False)
    assert calls == ["SN002", "SN003"]
    assert (summary.units_skipped, summary.units_done, summary.rows) == (1, 2, 10)
    assert summary.stats["faces_found"] == 8

    reader = ShardReader(out)
    assert reader.num_rows == 15
    assert sorted(set(reader.table(columns=["subject"]).column("subject").to_pylist())) == ["SN001", "SN002", "SN003"]
    assert reader.verify() == []

    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    calls.clear()
    summary = run_units(open_writer(out), units, toy_process(out, calls), progress=False)
    assert calls == [] and summary.units_skipped == 3
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == snapshot


def test_failed_unit_is_recorded_others_continue_and_it_is_retried(tmp_path):
    out = tmp_path / "prepared"
    units = [ToyUnit("A"), ToyUnit("B"), ToyUnit("C")]
    calls: list[str] = []
    summary = run_units(open_writer(out), units, toy_process(out, calls, fail={"B"}), progress=False)
    assert calls == ["A", "B", "C"]
    assert not summary.ok and summary.units_failed == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units"]["B"]["status"] == "failed"
    assert manifest["failures"][0]["item"] == "B"
    assert "OSError: cannot read B.avi" in manifest["failures"][0]["reason"]
    assert manifest["totals"]["rows"] == 10

    calls.clear()
    summary = run_units(open_writer(out), units, toy_process(out, calls), progress=False)
    assert calls == ["B"] and summary.ok
    assert json.loads((out / "manifest.json").read_text())["failures"] == []


def test_manifest_records_parameters_counts_hashes_and_protocol(tmp_path):
    out = tmp_path / "prepared"
    run_units(open_writer(out), [ToyUnit("A", 4)], toy_process(out, [], rows=4), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 2
    assert manifest["dataset"] == "toy"
    assert manifest["parameters"] == PARAMS
    assert manifest["protocol"] == {"folds": [1]}
    assert manifest["columns"][-2:] == [["au12", "int8"], ["valence", "float"]]
    shards = manifest["units"]["A"]["shards"]
    assert [s["rows"] for s in shards] == [3, 1]
    assert all(file_sha256(out / s["file"]) == s["sha256"] for s in shards)
    assert manifest["totals"] == {"units": 1, "units_failed": 0, "rows": 4, "failures": 0}


def test_rerun_with_other_parameters_is_refused(tmp_path):
    out = tmp_path / "prepared"
    open_writer(out)
    changed = {**PARAMS, "size": 64, "detector": {"thresholds": [0.5, 0.7, 0.7]}}
    with pytest.raises(ParameterMismatchError, match=r"detector\.thresholds, size"):
        open_writer(out, changed)
    with pytest.raises(AffbenchError, match="holds a prepared 'toy' dataset"):
        DatasetWriter(out, dataset="other", parameters=PARAMS, schema=make_schema(LABELS))


def test_refuses_a_non_empty_folder_without_manifest(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(AffbenchError, match="not empty"):
        open_writer(tmp_path)


def test_reader_selects_columns_and_streams_rows(tmp_path):
    out = tmp_path / "prepared"
    run_units(open_writer(out), [ToyUnit("A"), ToyUnit("B")], toy_process(out, []), progress=False)
    reader = ShardReader(out)
    labels = reader.table(columns=["sample_id", "au12"])
    assert labels.column_names == ["sample_id", "au12"] and labels.num_rows == 10
    rows = list(reader.iter_rows(columns=["sample_id", "image", "face_found"], batch_size=3))
    assert len(rows) == 10
    assert [r["image"] is None for r in rows] == [not r["face_found"] for r in rows]
    with pytest.raises(AffbenchError, match="no column"):
        reader.table(columns=["au99"])
    with pytest.raises(AffbenchError, match="manifest.json is missing"):
        ShardReader(tmp_path / "nowhere")


def test_reader_reports_a_changed_shard(tmp_path):
    out = tmp_path / "prepared"
    run_units(open_writer(out), [ToyUnit("A")], toy_process(out, []), progress=False)
    reader = ShardReader(out)
    with open(out / reader.shards[0].file, "ab") as fh:
        fh.write(b"x")
    assert reader.verify() == [reader.shards[0].file]


def test_hugging_face_datasets_reads_the_image_column_as_an_image(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    with ShardWriter(tmp_path, "A", make_schema(LABELS), rows_per_shard=10) as writer:
        writer.write_many(make_row("A", i) for i in range(3))
    ds = datasets.Dataset.from_parquet(str(tmp_path / writer.shards[0].file), cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features["image"], datasets.Image)
    image = ds[1]["image"]
    assert image.size == (32, 32)
    assert np.array_equal(np.asarray(image.convert("RGB")), face_image(1))
    assert ds[1]["au12"] == 1


def test_outputs_get_the_usual_permissions_not_private_temp_ones(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        out = tmp_path / "prepared"
        run_units(open_writer(out), [ToyUnit("A")], toy_process(out, []), progress=False)
    finally:
        os.umask(umask)
    for path in [out / "manifest.json", *(out / "shards").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_folders_of_schema_1_still_read_and_newer_ones_are_refused_in_one_sentence(tmp_path):
    out = tmp_path / "prepared"
    run_units(open_writer(out), [ToyUnit("A", 2)], toy_process(out, [], rows=2), progress=False)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    for version, readable in ((1, True), (3, False)):
        path.write_text(json.dumps({**manifest, "schema_version": version}))
        if readable:
            assert ShardReader(out).num_rows == 2  # a version-1 folder (no landmark_source column) reads
            with pytest.raises(AffbenchError, match="schema version 1.*another --out folder"):
                open_writer(out)  # ... but is not extended with rows of another schema
        else:
            with pytest.raises(AffbenchError, match="schema version 3.*upgrade affbench"):
                ShardReader(out)


@pytest.mark.parametrize("file", ["../../../../../etc/passwd", "/etc/passwd", "shards/../manifest.json",
                                  "shards/sub/x.parquet", "other/x.parquet", "shards/.hidden.parquet", 7])
def test_a_manifest_naming_files_outside_its_shards_folder_is_refused(tmp_path, file):
    out = tmp_path / "prepared"
    run_units(open_writer(out), [ToyUnit("SN001")], toy_process(out, []), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["units"]["SN001"]["shards"][0]["file"] = file
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AffbenchError, match=r"is not an affbench manifest: unit 'SN001' names the shard file"):
        ShardReader(out)
    with pytest.raises(AffbenchError, match="is not an affbench manifest"):
        open_writer(out)  # a prepare into the folder deletes nothing it names


def test_a_manifest_with_malformed_units_is_one_sentence(tmp_path):
    out = tmp_path / "prepared"
    run_units(open_writer(out), [ToyUnit("SN001")], toy_process(out, []), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["units"]["SN001"]["shards"][0]["extra"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AffbenchError, match="lists a shard that is not"):
        ShardReader(out)
