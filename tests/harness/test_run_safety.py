"""run-benchmark and export against hostile or damaged input: names that would escape the run folder,
shards changed after prepare, damaged job files, file-system errors, and exports over other files.

Every case ends in one clear sentence (or a warning and a recovery), never a traceback, and loses
nothing."""

from __future__ import annotations

import builtins
import errno
import json
import os
import pathlib
import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from harness_fixtures import chained_suite

from affbench.benchmarks.harness import run_benchmark
from affbench.benchmarks.suite import parse_suite
from affbench.cli import app
from affbench.errors import AffbenchError
from affbench.reporting.records import load_records

QUICK = """
[suite]
name = "quick"

[training]
epochs = 1
max_steps = 1
batch_size = 8
num_workers = 0

[[experiment]]
id = "caer-f"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-f"
options = { input_size = 48 }
"""

# fan-au on DISFA, then EmotiRAM-FAU on CAER-S starting from its selected weights.
DEPENDENT = chained_suite("dependent")


def suite_file(tmp_path: Path, text: str = QUICK) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(textwrap.dedent(text))
    return path


def run(suite: Path, data: Path, out: Path, messages: list[str] | None = None):
    return run_benchmark(suite, data, out, device="cpu", progress=False,
                         log=messages.append if messages is not None else (lambda m: None))


def cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def assert_one_sentence(result, *fragments: str) -> None:
    """Exit 1 with one ``Error:`` line holding every fragment, and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an escaped exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------------------- names


SUITE_DATA = {
    "suite": {"name": "ok"},
    "experiment": [{"id": "e", "dataset": "caer-s", "tasks": ["expression"], "encoder": "emotiram-f"}],
}


@pytest.mark.parametrize("where, bad", [
    ("suite", "../../../x"), ("suite", "/tmp/x"), ("suite", "a/b"), ("suite", ".."), ("suite", ".hidden"),
    ("id", "../x"), ("task", "../../x"), ("encoder", "../x"), ("folder", "../elsewhere"), ("derived", "../x"),
])
def test_a_name_that_would_leave_the_run_folder_is_refused(where, bad):
    data = json.loads(json.dumps(SUITE_DATA))
    experiment = data["experiment"][0]
    if where == "suite":
        data["suite"]["name"] = bad
    elif where == "id":
        experiment["id"] = bad
    elif where == "task":
        experiment["tasks"] = [bad]
    elif where == "encoder":
        experiment["encoder"] = bad
    elif where == "folder":
        data["datasets"] = {"caer-s": bad}
    else:
        data["tasks"] = {bad: {"dataset": "caer-s", "source_task": "expression", "classes": ["happy"], "kind": "au-detection",
                               "label_names": ["au6"], "assume_active": ["au6"], "metrics": ["all_active_rate"]}}
    with pytest.raises(AffbenchError, match=rf"{bad!r} cannot be used: names become file names"):
        parse_suite(data)


def test_a_traversing_suite_name_writes_nothing_outside_the_run_folder(tmp_path, prepared_root):
    suite = suite_file(tmp_path, QUICK.replace('name = "quick"', 'name = "../../escaped"'))
    out = tmp_path / "a" / "b" / "run"
    result = cli("run-benchmark", "--suite", suite, "--data", prepared_root, "--out", out, "--no-plots")
    assert_one_sentence(result, "'../../escaped' cannot be used")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "escaped.toml").exists()
    assert not (tmp_path / "a" / "escaped.toml").exists()


# ----------------------------------------------------------------------------------------- shards


def _caer_shard(data: Path) -> Path:
    manifest = json.loads((data / "caer-s" / "manifest.json").read_text())
    return data / "caer-s" / manifest["units"]["train"]["shards"][0]["file"]


def _relabel(path: Path) -> None:
    """Change the labels and rewrite the shard, as an edit after prepare would."""
    table = pq.read_table(path)
    index = table.schema.get_field_index("expression")
    changed = pa.array(((table["expression"].to_numpy() + 1) % 7).astype("int8"))
    pq.write_table(table.set_column(index, table.schema.field(index), changed), path)


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("change", [_relabel, _flip_a_bit, _truncate], ids=["relabelled", "bit flip", "truncated"])
def test_a_shard_changed_after_prepare_stops_the_run_before_training(tmp_path, data_copy, change):
    shard = _caer_shard(data_copy)
    change(shard)
    out = tmp_path / "run"
    result = cli("run-benchmark", "--suite", suite_file(tmp_path), "--data", data_copy, "--out", out, "--no-plots")
    assert_one_sentence(result, f"The shard {shard} has changed since it was prepared", "re-run the prepare command")
    assert not (out / "jobs").exists()  # nothing trained on it


def test_verified_shards_are_not_hashed_again_until_they_change(tmp_path, data_copy, monkeypatch):
    from affbench.shards import integrity

    hashed: list[Path] = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda path: hashed.append(Path(path)) or real(path))
    suite, out = suite_file(tmp_path), tmp_path / "run"
    run(suite, data_copy, out)
    caer_shards = len(list((data_copy / "caer-s" / "shards").glob("*.parquet")))
    assert len(hashed) == caer_shards and (out / "verified-shards.json").is_file()

    hashed.clear()
    run(suite, data_copy, out)
    assert hashed == []  # unchanged since the first run: not read again

    shard = _caer_shard(data_copy)
    _flip_a_bit(shard)
    with pytest.raises(AffbenchError, match="has changed since it was prepared"):
        run(suite, data_copy, out)
    assert hashed == [shard]


# ----------------------------------------------------------------------------------------- damaged job files


def test_a_corrupt_done_file_is_set_aside_and_its_job_runs_again(tmp_path, prepared_root):
    suite, out = suite_file(tmp_path), tmp_path / "run"
    run(suite, prepared_root, out)
    (job,) = (out / "jobs").iterdir()
    record = next((out / "results").rglob("*.json"))
    record.unlink()  # as if killed between done.json and the record
    (job / "done.json").write_text('{"metrics": {"expre')

    messages: list[str] = []
    report = run(suite, prepared_root, out, messages)

    assert report.cells_written == 1 and record.is_file()
    assert any(m.startswith("warning:") and str(job / "done.json") in m for m in messages)
    assert (job / "done.json.damaged").read_text() == '{"metrics": {"expre'
    assert json.loads((job / "done.json").read_text())["job"] == job.name


def test_a_damaged_result_record_is_set_aside_and_written_again_without_training(tmp_path, prepared_root):
    suite, out = suite_file(tmp_path), tmp_path / "run"
    run(suite, prepared_root, out)
    record = next((out / "results").rglob("*.json"))
    expected = json.loads(record.read_text())
    record.write_bytes(b"\xff\xfe garbage")

    messages: list[str] = []
    report = run(suite, prepared_root, out, messages)

    assert report.jobs_trained == 0 and report.cells_written == 1
    assert any(m.startswith("warning:") and str(record) in m for m in messages)
    assert json.loads(record.read_text())["metrics"] == expected["metrics"]
    assert record.with_name(record.name + ".damaged").read_bytes() == b"\xff\xfe garbage"


def test_damaged_weights_that_another_job_starts_from_are_trained_again(tmp_path, prepared_root):
    suite, out = suite_file(tmp_path, DEPENDENT), tmp_path / "run"
    run(suite, prepared_root, out)
    fan = next(p for p in (out / "jobs").iterdir() if p.name.startswith("disfa-fan-au-"))
    fau = next(p for p in (out / "jobs").iterdir() if p.name.startswith("caer-s-emotiram-fau-"))
    # The dependent job is still to run (its record and summary are gone); its source's weights are damaged.
    (out / "results" / "dependent" / "caer-s__expression__emotiram-fau__fold1.json").unlink()
    (fau / "done.json").unlink()
    _truncate(fan / "best.pt")

    messages: list[str] = []
    report = run(suite, prepared_root, out, messages)

    assert any(str(fan / "best.pt") in m and f"training job {fan.name} again" in m for m in messages)
    assert (fan / "best.pt.damaged").is_file()
    assert report.jobs_trained == 2 and report.cells_written == 2
    records = {r["encoder"]: r for r in load_records(out)}
    assert records["emotiram-fau"]["init_from"]["experiment"] == "disfa-fan"


def test_weights_that_were_not_kept_are_trained_again_when_another_job_needs_them(tmp_path, prepared_root):
    """keep_weights = false in an earlier run, then a suite that starts from those weights."""
    suite, out = suite_file(tmp_path, DEPENDENT), tmp_path / "run"
    run(suite, prepared_root, out)
    fan = next(p for p in (out / "jobs").iterdir() if p.name.startswith("disfa-fan-au-"))
    fau = next(p for p in (out / "jobs").iterdir() if p.name.startswith("caer-s-emotiram-fau-"))
    (out / "results" / "dependent" / "caer-s__expression__emotiram-fau__fold1.json").unlink()
    (fau / "done.json").unlink()
    (fan / "best.pt").unlink()

    messages: list[str] = []
    report = run(suite, prepared_root, out, messages)

    assert any(f"the selected weights of {fan.name} were not kept; training job {fan.name} again" in m for m in messages)
    assert report.jobs_trained == 2 and (fan / "best.pt").is_file()
    assert {r["encoder"] for r in load_records(out)} == {"fan-au", "emotiram-fau"}


def test_a_damaged_run_summary_is_set_aside(tmp_path, prepared_root):
    suite, out = suite_file(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{broken")
    messages: list[str] = []
    run(suite, prepared_root, out, messages)
    assert (out / "run.json.damaged").read_text() == "{broken"
    assert len(json.loads((out / "run.json").read_text())["runs"]) == 1
    assert any("run.json was damaged" in m for m in messages)


# ----------------------------------------------------------------------------------------- file system


def test_a_full_disk_while_saving_a_checkpoint_is_one_sentence_and_leaves_no_half_file(tmp_path, prepared_root,
                                                                                       monkeypatch):
    import torch

    real_save = torch.save

    def disk_full(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() reports it: no file name

    monkeypatch.setattr(torch, "save", disk_full)
    out = tmp_path / "run"
    result = cli("run-benchmark", "--suite", suite_file(tmp_path), "--data", prepared_root, "--out", out, "--no-plots")
    assert_one_sentence(result, "No space left on the device while writing", str(out / "jobs"),
                        "run the same command again")
    assert not list(out.rglob(".*.tmp"))


def _read_only(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Make writes under ``folder`` fail as on a read-only mount (the tests run as root, where chmod
    does not stop writes)."""
    folder = folder.resolve()
    message = os.strerror(code)

    def inside(path) -> bool:
        return Path(os.fsdecode(path)).resolve().is_relative_to(folder)

    real_mkdir, real_open, real_replace = pathlib.Path.mkdir, builtins.open, os.replace

    def mkdir(self, *args, **kwargs):
        if inside(self) and not self.is_dir():
            raise OSError(code, message, str(self))
        return real_mkdir(self, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wxa+") and inside(file):
            raise OSError(code, message, os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if inside(dst):
            raise OSError(code, message, os.fsdecode(src), None, os.fsdecode(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "replace", replace)


def test_a_read_only_run_folder_is_one_sentence(tmp_path, prepared_root, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    _read_only(monkeypatch, out)
    result = cli("run-benchmark", "--suite", suite_file(tmp_path), "--data", prepared_root, "--out", out, "--no-plots")
    assert_one_sentence(result, f"{out / 'verified-shards.json'} is on a read-only file system")


def test_a_read_only_export_folder_is_one_sentence(tmp_path, prepared_root, monkeypatch):
    out = tmp_path / "run"
    run(suite_file(tmp_path), prepared_root, out)
    target = tmp_path / "exports"
    target.mkdir()
    _read_only(monkeypatch, target, errno.EACCES)
    result = cli("export", out, "--csv", target / "table.csv", "--no-plots")
    assert_one_sentence(result, f"Permission denied for {target / 'table.csv'};")


def test_a_read_only_sample_data_folder_is_one_sentence(tmp_path, monkeypatch):
    target = tmp_path / "samples"
    target.mkdir()
    _read_only(monkeypatch, target)
    result = cli("sample-data", target, "--datasets", "caer-s")
    assert_one_sentence(result, "is on a read-only file system", str(target))


@pytest.mark.parametrize("command", ["run-benchmark", "sample-data"])
def test_an_output_folder_that_is_a_file_is_one_sentence(tmp_path, prepared_root, command):
    out = tmp_path / "taken"
    out.write_text("someone's notes\n")
    if command == "run-benchmark":
        result = cli("run-benchmark", "--suite", suite_file(tmp_path), "--data", prepared_root, "--out", out)
    else:
        result = cli("sample-data", out, "--datasets", "caer-s")
    assert_one_sentence(result, f"{out} is a file, not a folder")
    assert out.read_text() == "someone's notes\n"


def test_a_manifest_without_parameters_is_one_sentence(tmp_path, data_copy):
    path = data_copy / "caer-s" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["parameters"]
    path.write_text(json.dumps(manifest))
    result = cli("run-benchmark", "--suite", suite_file(tmp_path), "--data", data_copy, "--out", tmp_path / "run")
    assert_one_sentence(result, str(path), "no valid 'parameters' entry")


# ----------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def finished_run(prepared_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    out = folder / "run"
    run(suite_file(folder), prepared_root, out)
    return out


def test_export_never_replaces_a_file_that_is_not_an_earlier_export(tmp_path, finished_run, data_copy):
    manifest = data_copy / "caer-s" / "manifest.json"
    before = manifest.read_bytes()
    result = cli("export", finished_run, "--csv", manifest, "--no-plots")
    assert_one_sentence(result, f"{manifest} exists and is not an earlier affbench export", "--force")
    assert manifest.read_bytes() == before

    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\n1,2\n")
    result = cli("export", finished_run, "--csv", notes, "--no-plots", "--force")
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(notes).columns)[:4] == ["schema", "suite", "dataset", "task"]


@pytest.mark.parametrize("first, second", [("--long", "--wide"), ("--wide", "--long")])
def test_export_replaces_an_earlier_export(tmp_path, finished_run, first, second):
    target = tmp_path / "table.csv"
    assert cli("export", finished_run, "--csv", target, first, "--no-plots").exit_code == 0
    result = cli("export", finished_run, "--csv", target, second, "--no-plots")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(target).columns[0] == "schema"  # --csv is the tidy table; --wide adds table-tables/
    assert (tmp_path / "table-tables" / "quick__caer-s__expression.csv").is_file()


def test_export_recognises_a_schema_1_export_as_earlier(tmp_path, finished_run):
    target = tmp_path / "old.csv"
    target.write_text("suite,dataset,task,encoder,fold,metric,value\ns,d,t,e,1,f1,0.5\n")
    assert cli("export", finished_run, "--csv", target, "--no-plots").exit_code == 0


def test_export_to_a_folder_is_one_sentence(tmp_path, finished_run):
    result = cli("export", finished_run, "--csv", tmp_path, "--no-plots")
    assert_one_sentence(result, f"--csv {tmp_path} is a folder")


def test_no_results_do_not_claim_that_matplotlib_is_missing(tmp_path, capsys):
    import importlib.util

    from affbench.reporting.plots import plot_run_if_wanted

    assert importlib.util.find_spec("matplotlib") is not None  # the test dependencies include it
    lines = plot_run_if_wanted(tmp_path, [], None)
    assert not any("matplotlib" in line for line in lines)


@pytest.mark.parametrize("folds", [["a"], [1.5], [0], "1"])
def test_folds_that_are_not_fold_numbers_are_one_sentence(folds):
    data = {**SUITE_DATA, "experiment": [{**SUITE_DATA["experiment"][0], "folds": folds}]}
    with pytest.raises(AffbenchError, match="folds of .* must be"):
        parse_suite(data)


def test_damaged_weights_of_a_finished_job_are_set_aside_and_trained_again(tmp_path, prepared_root):
    suite, out = suite_file(tmp_path), tmp_path / "run"
    run(suite, prepared_root, out)
    (job,) = (out / "jobs").iterdir()
    damaged = (job / "best.pt").read_bytes()[:1000]
    (job / "best.pt").write_bytes(damaged)

    messages: list[str] = []
    report = run(suite, prepared_root, out, messages)

    assert report.jobs_trained == 1 and report.cells_written == 1
    assert any(m.startswith("warning:") and str(job / "best.pt") in m and "training job" in m for m in messages)
    assert (job / "best.pt.damaged").read_bytes() == damaged
    result = cli("export-model", job, "--out", tmp_path / "model.pt")
    assert result.exit_code == 0, result.output


def test_export_model_of_damaged_weights_is_one_whole_sentence(tmp_path, finished_run):
    job = tmp_path / "job"
    shutil.copytree(next((finished_run / "jobs").iterdir()), job)
    (job / "best.pt").write_bytes((job / "best.pt").read_bytes()[:1000])
    result = cli("export-model", job, "--out", tmp_path / "model.pt")
    assert_one_sentence(result, f"The checkpoint {job / 'best.pt'} is damaged or not an affbench checkpoint "
                                "(it is cut short: a torch.save archive without its end).")


def test_run_benchmark_into_a_folder_of_other_files_is_refused(tmp_path, prepared_root):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("chapter 1")
    result = cli("run-benchmark", "--suite", suite_file(tmp_path), "--data", prepared_root, "--out", tmp_path / "mine")
    assert_one_sentence(result, f"--out {tmp_path / 'mine'} is not empty and holds no affbench run")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]
