"""benchmarks/suite.py, plan.py and harness.py: suites, planning, a tiny suite end to end, resume, and the error messages."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from affbench.benchmarks.harness import run_benchmark
from affbench.benchmarks.plan import make_plan
from affbench.benchmarks.suite import list_suites, load_suite, parse_suite, validate_encoders
from affbench.errors import AffbenchError, UnknownNameError
from affbench.reporting.records import load_records

SHIPPED = ("abaw3", "bp4d-au", "bp4d-au-released", "demo", "disfa-au", "disfa-au-released", "thesis-au", "thesis-caer")

# A tiny suite: EmotiRAM-f on CAER-S twice (two seeds = two cells), plus an evaluation-only cell on
# the derived "happy" rows is impossible for an expression-only model, so the dependency is shown
# with a second training that starts from the first's weights.
TINY_HEAD = """
[suite]
name = "tiny"
description = "test suite"

[training]
epochs = 2
batch_size = 8
optimizer = "adamw"
lr = 1e-3
num_workers = 0
seed = 1

[training.augmentation]
hflip = 0.5
"""

EMOTIRAM_F = """
[[experiment]]
id = "caer-f"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-f"
options = { input_size = 48 }
"""

# fan-au on DISFA, then EmotiRAM-FAU on CAER-S starting from its weights (a cell dependency).
FAN_THEN_FAU = """
[[experiment]]
id = "disfa-fan"
dataset = "disfa"
tasks = ["au-intensity"]
encoder = "fan-au"
options = { input_size = 64 }
folds = [1]

[experiment.training]
epochs = 1
max_steps = 1

[[experiment]]
id = "caer-fau"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-fau"
options = { input_size = 64 }

[experiment.training]
epochs = 1
max_steps = 1

[experiment.init]
experiment = "disfa-fan"
fold = 1
option = "au_checkpoint"
"""

TINY = TINY_HEAD + FAN_THEN_FAU + EMOTIRAM_F
ONLY_F = TINY_HEAD + EMOTIRAM_F


def write_suite(tmp_path: Path, text: str = TINY, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def quiet(message: str) -> None:
    pass


# ----------------------------------------------------------------------------------------- suites


def test_shipped_suites_are_listed_and_valid():
    names = [name for name, _, _ in list_suites()]
    assert sorted(names) == sorted(SHIPPED)
    for name in names:
        suite = load_suite(name)
        validate_encoders(suite)  # every encoder and option exists
        assert suite.description and suite.experiments


def test_every_variant_is_in_the_demo_suite():
    from affbench.encoders.registry import list_encoders

    demo = load_suite("demo")
    assert {e.encoder for e in demo.experiments} == set(list_encoders())
    assert any(e.init for e in demo.experiments) and any(e.is_evaluation for e in demo.experiments)


def test_thesis_suites_plan_dependencies_and_evaluation_cells(prepared_root):
    plan = make_plan(load_suite("thesis-au"), prepared_root)
    keys = [(j.experiment.id, j.fold) for j in plan.jobs]
    index = {k: i for i, k in enumerate(keys)}
    # Sources come before what depends on them.
    assert index[("disfa-megraph", 1)] < index[("caer-emotiram-fau-megraph", 1)] < index[("disfa-after-caer", 1)]
    table6 = next(j for j in plan.jobs if j.experiment.id == "happy-megraph")
    assert table6.experiment.is_evaluation and table6.depends.experiment.id == "disfa-megraph"
    assert table6.experiment.encoder == "megraph-au"
    # thesis-caer declares the same two training jobs: same configuration, so one RUNDIR shares them.
    caer = {j.experiment.id: j.config_hash for j in make_plan(load_suite("thesis-caer"), prepared_root).jobs}
    au = {j.experiment.id: j.config_hash for j in plan.jobs}
    assert caer["disfa-megraph"] == au["disfa-megraph"]
    assert caer["caer-emotiram-fau-megraph"] == au["caer-emotiram-fau-megraph"]
    # The ME-Graph [DISFA] stand-in is made as the published model was: disfa-au's two-stage fold-1 jobs.
    stage2 = next(j for j in plan.jobs if j.experiment.id == "disfa-megraph")
    assert stage2.depends.experiment.id == "disfa-megraph-stage1"
    assert stage2.experiment.training.au_loss == "weighted-asymmetric" and stage2.experiment.training.edge_loss_weight > 0
    disfa = {(j.experiment.id, j.fold): j.config_hash for j in make_plan(load_suite("disfa-au"), prepared_root).jobs}
    assert au["disfa-megraph-stage1"] == caer["disfa-megraph-stage1"] == disfa[("megraph-stage1", 1)]
    assert au["disfa-megraph"] == disfa[("megraph", 1)]


def test_disfa_suite_runs_three_folds_and_narrowing(prepared_root):
    suite = load_suite("disfa-au")
    plan = make_plan(suite, prepared_root)
    assert sorted((j.experiment.id, j.fold) for j in plan.jobs) == [
        ("fan", 1), ("fan", 2), ("fan", 3), ("megraph", 1), ("megraph", 2), ("megraph", 3),
        ("megraph-stage1", 1), ("megraph-stage1", 2), ("megraph-stage1", 3)]
    # Each fold's stage 2 starts from the same fold's stage 1.
    assert all(j.depends.experiment.id == "megraph-stage1" and j.depends.fold == j.fold
               for j in plan.jobs if j.experiment.id == "megraph")
    narrowed = make_plan(suite, prepared_root, encoders=["fan-au"], folds=[2])
    assert [(j.experiment.encoder, j.fold) for j in narrowed.jobs] == [("fan-au", 2)]
    longer = make_plan(suite, prepared_root, encoders=["fan-au"], folds=[2], epochs=3)
    assert longer.jobs[0].config_hash != narrowed.jobs[0].config_hash
    assert longer.jobs[0].experiment.training.epochs == 3


def test_narrowing_keeps_what_a_cell_starts_from(prepared_root):
    plan = make_plan(load_suite("thesis-caer"), prepared_root, encoders=["emotiram-fau"])
    assert [(j.experiment.id, j.requested) for j in plan.jobs] == [
        ("disfa-fan", False), ("caer-emotiram-fau", True), ("bp4d-fan", False), ("caer-emotiram-fau-bp4d", True)]


def test_unknown_names_list_the_valid_ones(tmp_path, prepared_root):
    with pytest.raises(UnknownNameError, match=r"Unknown suite 'thesis'; valid suites are: abaw3, bp4d-au, bp4d-au-released, demo, disfa-au, disfa-au-released, thesis-au, thesis-caer\."):
        load_suite("thesis")
    bad_encoder = write_suite(tmp_path, TINY.replace('encoder = "emotiram-f"', 'encoder = "emotiram-g"'))
    with pytest.raises(UnknownNameError, match=r"Unknown encoder 'emotiram-g'; valid encoders are: .*emotiram-f.*vggface"):
        validate_encoders(load_suite(bad_encoder))
    bad_metric = write_suite(tmp_path, TINY.replace('tasks = ["expression"]\nencoder = "emotiram-f"',
                                                    'tasks = ["expression"]\nencoder = "emotiram-f"\nmetrics = ["auc"]'))
    with pytest.raises(UnknownNameError, match=r"Unknown metric 'auc'; valid metrics are: .*accuracy.*f1"):
        load_suite(bad_metric)
    bad_task = write_suite(tmp_path, TINY.replace('tasks = ["expression"]\nencoder = "emotiram-f"',
                                                  'tasks = ["au-detection"]\nencoder = "emotiram-f"'))
    with pytest.raises(UnknownNameError, match=r"Unknown caer-s task 'au-detection'; valid caer-s tasks are: expression"):
        make_plan(load_suite(bad_task), prepared_root)
    with pytest.raises(AffbenchError, match=r"Suite tiny has no encoder 'vgg'; its encoders are: emotiram-f, emotiram-fau, fan-au"):
        make_plan(load_suite(write_suite(tmp_path)), prepared_root, encoders=["vgg"])
    with pytest.raises(AffbenchError, match=r"Unknown key 'epoch' in \[\[experiment\]\] #1"):
        parse_suite({"suite": {"name": "x"}, "experiment": [{"id": "a", "dataset": "disfa", "tasks": [], "epoch": 3}]})
    with pytest.raises(AffbenchError, match="Unknown training setting 'epoch'"):
        parse_suite({"suite": {"name": "x"}, "training": {"epoch": 3}})


def test_missing_or_foreign_data_folders_are_clear_errors(tmp_path, prepared_root):
    suite = load_suite(write_suite(tmp_path, ONLY_F))
    (tmp_path / "data").mkdir()
    with pytest.raises(AffbenchError, match=r"No prepared caer-s dataset in .*data: .*caer-s/manifest.json is missing"):
        make_plan(suite, tmp_path / "data")
    (tmp_path / "data" / "caer-s").symlink_to(prepared_root / "disfa")
    with pytest.raises(AffbenchError, match=r"holds a prepared 'disfa' dataset, not 'caer-s'"):
        make_plan(suite, tmp_path / "data")


def test_a_task_whose_labels_are_absent_is_a_clear_error(tmp_path):
    from harness_fixtures import make_caer

    data = tmp_path / "data"
    make_caer(data / "caer-s", drop_labels=True)
    suite = load_suite(write_suite(tmp_path, ONLY_F))
    with pytest.raises(AffbenchError, match=r"caer-s shards .* have no column\(s\) expression, which task 'expression' needs"):
        run_benchmark(suite, data, tmp_path / "run", device="cpu", progress=False, log=quiet)


# ----------------------------------------------------------------------------------------- running


@pytest.mark.slow
def test_tiny_suite_end_to_end_then_resume_after_an_interruption(tmp_path, prepared_root):
    suite_path = write_suite(tmp_path)
    run_dir = tmp_path / "run"

    class Stop(KeyboardInterrupt):
        pass

    def interrupt_second_epoch_of_emotiram_f(job, epoch, entry):
        if job.experiment.id == "caer-f" and epoch == 1:
            raise Stop

    # First run: disfa-fan and caer-fau finish, then the interruption hits caer-f after its first epoch.
    with pytest.raises(Stop):
        run_benchmark(suite_path, prepared_root, run_dir, device="cpu", progress=False, log=quiet,
                      on_epoch_end=interrupt_second_epoch_of_emotiram_f)
    records = load_records(run_dir)
    assert [(r["encoder"], r["task"]) for r in records] == [("emotiram-fau", "expression"), ("fan-au", "au-intensity")]
    finished = (run_dir / "results" / "tiny" / "disfa__au-intensity__fan-au__fold1.json")
    stamp = finished.stat().st_mtime_ns
    caer_job = next(p for p in (run_dir / "jobs").iterdir() if p.name.startswith("caer-s-emotiram-f-"))
    assert (caer_job / "last.pt").is_file() and not (caer_job / "done.json").exists()

    # Second run: the finished cells are skipped and caer-f resumes after epoch 1.
    messages: list[str] = []
    report = run_benchmark(suite_path, prepared_root, run_dir, device="cpu", progress=False, log=messages.append)
    assert report.cells_total == 3 and report.cells_skipped == 2 and report.cells_written == 1
    assert finished.stat().st_mtime_ns == stamp
    assert any(m.startswith("skip disfa-fan-au") for m in messages)
    assert any("resuming after epoch 1 of 2" in m for m in messages)

    records = {(r["dataset"], r["task"], r["encoder"]): r for r in load_records(run_dir)}
    assert set(records) == {("caer-s", "expression", "emotiram-f"), ("caer-s", "expression", "emotiram-fau"),
                            ("disfa", "au-intensity", "fan-au")}
    resumed = records[("caer-s", "expression", "emotiram-f")]
    assert resumed["resumed_from"] == 1 and resumed["epochs"] == 2 and resumed["selected_epoch"] in (1, 2)
    for key in ("config_hash", "seed", "device", "git_commit", "wall_seconds", "initialisation", "n", "excluded"):
        assert key in resumed
    assert resumed["n"]["test"] == 21 and resumed["n"]["train"] + resumed["n"]["val"] == 41
    assert resumed["excluded"]["no_face"]["train"] == 1  # the faceless training row, counted
    assert {"accuracy", "f1", "f1/happy"} <= set(resumed["metrics"])
    fan = records[("disfa", "au-intensity", "fan-au")]
    assert {"icc", "icc/au1", "icc/au26"} <= set(fan["metrics"])
    # The fixture's fold-1 validation subjects never show AU9: the record says why its validation ICC is 0.
    assert any("icc/au9" in w and "constant" in w for w in fan["validation_metric_warnings"])
    assert resumed["validation_metric_warnings"] == []  # a list in every record, empty when nothing was degenerate
    # every record counts the fallback crops it scored (this fixture's faceless rows have none)
    assert fan["fallback_crops"] == {"train": 0, "val": 0, "test": 0}
    assert fan["excluded"]["fallback_crop"] == {"train": 0, "val": 0, "test": 0}
    fau = records[("caer-s", "expression", "emotiram-fau")]
    assert fau["init_from"]["experiment"] == "disfa-fan" and "checkpoint" in fau["initialisation"]
    # The record lists what kept its fresh initialisation: the new emotion bottleneck, nothing of a plain run.
    assert any(key.startswith("bottleneck.") for key in fau["fresh_parameters"])
    assert resumed["fresh_parameters"] == []

    # The resumed cell scores exactly as an uninterrupted run of the same suite.
    clean = run_benchmark(suite_path, prepared_root, tmp_path / "clean", device="cpu", progress=False, log=quiet,
                          encoders=["emotiram-f"])
    assert clean.cells_written == 1
    reference = load_records(tmp_path / "clean")[0]
    assert reference["metrics"] == resumed["metrics"]
    assert [c["train_loss"] for c in reference["curve"]] == [c["train_loss"] for c in resumed["curve"]]

    # A third run does nothing; other settings into the same folder are refused.
    again = run_benchmark(suite_path, prepared_root, run_dir, device="cpu", progress=False, log=quiet)
    assert again.cells_skipped == 3 and again.cells_written == 0
    with pytest.raises(AffbenchError, match="made with other settings .* use another --out folder"):
        run_benchmark(suite_path, prepared_root, run_dir, device="cpu", progress=False, log=quiet,
                      encoders=["emotiram-f"], epochs=1)


@pytest.mark.slow
def test_multitask_and_evaluation_only_cells(tmp_path, prepared_root):
    suite = """
    [suite]
    name = "mt"

    [training]
    epochs = 1
    batch_size = 8
    num_workers = 0
    keep_weights = false

    [tasks.happy]
    dataset = "caer-s"
    source_task = "expression"
    classes = ["happy"]
    kind = "au-detection"
    label_names = ["au1", "au2", "au4", "au6", "au9", "au12", "au25", "au26"]
    assume_active = ["au6", "au12"]
    metrics = ["all_active_rate", "any_active_rate"]

    [[experiment]]
    id = "aff"
    dataset = "affwild2"
    tasks = ["au-detection", "expression", "va"]
    encoder = "inceptionv3-mtl"
    options = { input_size = 75 }

    [[experiment]]
    id = "megraph"
    dataset = "disfa"
    tasks = ["au-detection"]
    encoder = "megraph-au"
    options = { input_size = 64 }
    folds = [1]

    [[experiment]]
    id = "happy"
    dataset = "caer-s"
    tasks = ["happy"]

    [experiment.evaluate]
    experiment = "megraph"
    """
    run_dir = tmp_path / "run"
    run_benchmark(write_suite(tmp_path, suite, "mt.toml"), prepared_root, run_dir, device="cpu", progress=False, log=quiet)
    records = {(r["dataset"], r["task"]): r for r in load_records(run_dir)}
    assert set(records) == {("affwild2", "au-detection"), ("affwild2", "expression"), ("affwild2", "va"),
                            ("disfa", "au-detection"), ("caer-s", "happy")}
    # One multi-task job, three cells with the tasks' own splits and metrics.
    aff = [records[("affwild2", t)] for t in ("au-detection", "expression", "va")]
    assert len({r["job"] for r in aff}) == 1
    assert {"f1", "f1/au7"} <= set(aff[0]["metrics"]) and "ccc/arousal" in aff[2]["metrics"]
    assert aff[0]["n"] != aff[2]["n"]
    # The sample VA set has two training videos, so VA gets validation rows and a validation curve.
    assert aff[2]["n"]["val"] > 0 and all(c["val"] is not None for c in aff[2]["curve"])
    happy = records[("caer-s", "happy")]
    assert happy["mode"] == "evaluate" and happy["n"]["test"] == 3 and happy["n"]["train"] == 0
    assert set(happy["metrics"]) == {"all_active_rate", "any_active_rate"}
    assert happy["metrics"]["all_active_rate"] <= happy["metrics"]["any_active_rate"]
    assert happy["init_from"]["experiment"] == "megraph"
    # keep_weights = false: only the weights another cell evaluates survive the run.
    kept = {p.parent.name.split("-fold")[0] for p in (run_dir / "jobs").glob("*/best.pt")}
    assert kept == {"disfa-megraph-au-au-detection"}


# ----------------------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_run_export_and_list(tmp_path, prepared_root):
    from click.testing import CliRunner

    from affbench.cli import app

    runner = CliRunner()
    suite = write_suite(tmp_path, ONLY_F)
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["run-benchmark", "--suite", str(suite), "--data", str(prepared_root), "--out",
                                 str(run_dir), "--device", "cpu", "--epochs", "1", "--max-steps", "2", "--no-plots",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert "### tiny · caer-s · expression" in result.output and "| emotiram-f | 1 |" in result.output
    assert "| baseline: majority-class | 1 |" in result.output
    assert "epoch 1/1" not in result.output and "train caer-s" not in result.output  # --quiet: only the tables

    result = runner.invoke(app, ["export", str(run_dir), "--csv", str(tmp_path / "long.csv"), "--no-plots"])
    assert result.exit_code == 0, result.output
    long = pd.read_csv(tmp_path / "long.csv", dtype={"label": str})
    assert list(long.columns)[:14] == ["schema", "suite", "dataset", "task", "kind", "row", "encoder", "baseline",
                                       "experiment", "name", "fold", "metric", "label", "value"]
    record = load_records(run_dir)[0]
    mine = long[long["row"] == "affbench"]
    assert set(mine["metric"]) >= {"accuracy", "f1"} and "anger" in set(mine["label"])
    accuracy = mine[(mine.metric == "accuracy") & mine.label.isna()]
    assert accuracy["value"].item() == pytest.approx(record["metrics"]["accuracy"])
    assert accuracy["n_test"].item() == record["n"]["test"] and accuracy["job"].item() == record["job"]
    assert accuracy["selected_epoch"].item() == record["selected_epoch"]
    # The harness scored the majority-class predictor on the same test rows.
    majority = long[(long["row"] == "baseline") & (long.metric == "accuracy") & long.label.isna()]
    assert majority["baseline"].item() == "majority-class"
    assert majority["value"].item() == pytest.approx(record["baselines"]["majority-class"]["accuracy"])
    assert 0 < majority["value"].item() < 1

    result = runner.invoke(app, ["export", str(run_dir), "--csv", str(tmp_path / "wide.csv"), "--wide", "--plots"])
    assert result.exit_code == 0, result.output
    wide = pd.read_csv(tmp_path / "wide-tables" / "tiny__caer-s__expression.csv")
    assert wide.loc[0, "encoder"] == "emotiram-f" and wide.loc[0, "folds"] == 1
    assert wide.loc[0, "accuracy"] == pytest.approx(record["metrics"]["accuracy"])
    assert np.isnan(wide.loc[0, "accuracy_sd"])  # one fold: no spread
    assert wide.loc[1, "row"] == "baseline" and wide.loc[1, "encoder"] == "majority-class"
    curve = run_dir / "plots" / "tiny" / "curve-caer-s-expression-emotiram-f-fold1.png"
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Every job writes TensorBoard scalars that match its record.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / record["job"]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/expression", "lr", "validation/expression/accuracy", "test/expression/accuracy"} <= tags
    losses = [e.value for e in events.Scalars("loss/expression")]
    assert losses == pytest.approx([c["train_loss"] for c in record["curve"]], rel=1e-6)
    assert events.Scalars("test/expression/accuracy")[0].value == pytest.approx(record["metrics"]["accuracy"], rel=1e-6)

    result = runner.invoke(app, ["list", "suites"])
    assert result.exit_code == 0 and all(name in result.output for name in SHIPPED)

    result = runner.invoke(app, ["run-benchmark", "--suite", "nope", "--data", str(prepared_root), "--out", str(run_dir)])
    assert result.exit_code != 0 and "Unknown suite 'nope'; valid suites are: abaw3" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_epoch(tmp_path, prepared_root):
    """SIGKILL (no clean-up at all) in the middle of a cell, then the same command again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    suite = write_suite(tmp_path, ONLY_F.replace("epochs = 2", "epochs = 12"))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-P", "-m", "affbench.cli", "run-benchmark", "--suite", str(suite), "--data",
               str(prepared_root), "--out", str(run_dir), "--device", "cpu", "--no-plots"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    deadline = time.monotonic() + 240
    checkpoint = None
    while time.monotonic() < deadline and process.poll() is None:
        found = list((run_dir / "jobs").glob("*/last.pt")) if (run_dir / "jobs").is_dir() else []
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.1)
    assert checkpoint is not None, process.stderr.read().decode() if process.poll() is not None else "no checkpoint"
    time.sleep(0.3)  # let it get into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (checkpoint.parent / "done.json").exists() and load_records(run_dir) == []
    # The killed process's claim on the job is left as a file, but the kernel dropped its lock.
    (lock,) = (run_dir / "locks").iterdir()
    assert lock.name == f"{checkpoint.parent.name}.lock" and lock.read_text().strip() == str(process.pid)

    messages: list[str] = []
    report = run_benchmark(suite, prepared_root, run_dir, device="cpu", progress=False, log=messages.append,
                           epochs=None)
    resumed = [m for m in messages if "resuming after epoch" in m]
    assert len(resumed) == 1 and report.cells_written == 1
    record = load_records(run_dir)[0]
    assert record["resumed_from"] >= 1 and record["epochs"] == 12
    assert not list(checkpoint.parent.glob(".*.tmp"))  # a half-written checkpoint never survives as one
    assert not lock.exists()  # taken over, then released


def test_a_missing_imagenet_file_stops_the_run_before_any_job_trains(tmp_path, prepared_root, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-cache"))
    needs_imagenet = EMOTIRAM_F + """
[[experiment]]
id = "disfa-megraph"
dataset = "disfa"
tasks = ["au-detection"]
encoder = "megraph-au"
options = { input_size = 64, pretrained = "imagenet" }
folds = [1]
"""
    suite = write_suite(tmp_path, TINY_HEAD + needs_imagenet)
    cache = tmp_path / "empty-torch-cache" / "hub" / "checkpoints"
    with pytest.raises(AffbenchError) as caught:
        run_benchmark(suite, prepared_root, tmp_path / "run", device="cpu", progress=False, log=quiet)
    assert str(caught.value).startswith(
        "This run needs 1 ImageNet weights file(s) that are not in the torch cache, and affbench never downloads: "
        f"download https://download.pytorch.org/models/resnet50-0676ba61.pth and save it as {cache / 'resnet50-0676ba61.pth'}")
    assert "sha256sum" in str(caught.value)
    # EmotiRAM-f comes first in the suite, yet nothing was trained or recorded.
    assert not (tmp_path / "run" / "jobs").exists() or not any((tmp_path / "run" / "jobs").iterdir())
    assert not (tmp_path / "run" / "results").exists()
    # a file under the right name whose bytes are not torchvision's (an interrupted download) is named too
    cache.mkdir(parents=True)
    (cache / "resnet50-0676ba61.pth").write_bytes(b"half a download")
    with pytest.raises(AffbenchError, match=r"download https://\S+ again and save it as .*resnet50-0676ba61.pth"):
        run_benchmark(suite, prepared_root, tmp_path / "run", device="cpu", progress=False, log=quiet)


def test_bp4d_suite_and_the_thesis_bp4d_rows(prepared_root, data_copy):
    plan = make_plan(load_suite("bp4d-au"), prepared_root)
    assert sorted((j.experiment.id, j.fold) for j in plan.jobs) == [
        ("fan", 1), ("fan", 2), ("fan", 3), ("megraph", 1), ("megraph", 2), ("megraph", 3),
        ("megraph-stage1", 1), ("megraph-stage1", 2), ("megraph-stage1", 3)]
    bp4d_jobs = {(j.experiment.id, j.fold): j.config_hash for j in plan.jobs}
    thesis = make_plan(load_suite("thesis-caer"), prepared_root)
    by_id = {j.experiment.id: j for j in thesis.jobs}
    # thesis-caer's ME-Graph [BP4D] is bp4d-au's fold-1 model: one run folder trains it once.
    assert by_id["bp4d-megraph-stage1"].config_hash == bp4d_jobs[("megraph-stage1", 1)]
    assert by_id["bp4d-megraph"].config_hash == bp4d_jobs[("megraph", 1)]
    assert by_id["caer-emotiram-fau-megraph-bp4d"].depends.experiment.id == "bp4d-megraph"
    assert by_id["caer-emotiram-fau-bp4d"].depends.experiment.id == "bp4d-fan"
    assert "caer-emotiram-fau" in by_id and by_id["caer-emotiram-fau"].depends.experiment.id == "disfa-fan"

    shutil.rmtree(data_copy / "bp4d")  # a user without BP4D keeps the DISFA stand-in
    without = make_plan(load_suite("thesis-caer"), data_copy)
    assert not any("bp4d" in j.experiment.id for j in without.jobs)
    assert {"disfa-fan", "caer-emotiram-fau", "caer-emotiram-fau-megraph"} <= {j.experiment.id for j in without.jobs}
    assert len(without.skipped) == 5 and all("no prepared bp4d dataset" in note for note in without.skipped)
