"""Released weights scored per fold without training, and the fold-leakage refusal.

The released files are written here in ME-GraphAU's own layout (key names and shapes transcribed
from the reference code in tests/test_reference_checkpoints.py) and saved as its training script
saves them; the prepared DISFA folder is the harness fixture (seven subjects, every fold tests some).
"""

from __future__ import annotations

import collections
import hashlib
import json
import sys
from pathlib import Path

import pytest

from affbench.benchmarks.harness import run_benchmark
from affbench.benchmarks.plan import make_plan
from affbench.benchmarks.suite import load_suite, parse_suite
from affbench.encoders.published import get_published
from affbench.errors import AffbenchError
from affbench.reporting.export import export

sys.path.insert(0, str(Path(__file__).parents[1]))  # the reference layouts of tests/test_reference_checkpoints.py
from test_reference_checkpoints import (  # noqa: E402
    _fill,
    caer_face_config_shapes,
    megraph_shapes,
    save_caer_trainer,
    save_megraph,
)

FIXTURE_TESTS = {1: ["SN003", "SN029"], 2: ["SN006", "SN013"], 3: ["SN001", "SN002", "SN010"]}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """The three DISFA fold files under their published names, each with its own random weights."""
    folder = tmp_path_factory.mktemp("ME-GraphAU_resnet50_DISFA")
    for fold in (1, 2, 3):
        state = _fill(megraph_shapes(8, stage=2), seed=20 + fold)
        save_megraph(folder / get_published(f"megraph-au/resnet50-disfa-fold{fold}").file_name, state)
    return folder


def _suite(published: str, folds: str = "") -> dict:
    import tomllib

    return parse_suite(tomllib.loads(f"""
[suite]
name = "released"
[[experiment]]
id = "megraph-released"
dataset = "disfa"
tasks = ["au-detection"]
{folds}
[experiment.published]
{published}
"""))


def test_the_shipped_suite_scores_each_fold_file_on_its_own_fold(tmp_path, prepared_root, released):
    jobs = make_plan(load_suite("disfa-au-released"), prepared_root, weights=released).jobs
    assert [(j.fold, j.config["published"]["name"], "leakage" in j.config) for j in jobs] == [
        (fold, f"MEFARG_resnet50_DISFA_fold{fold}.pth", False) for fold in (1, 2, 3)]
    assert all(j.experiment.is_evaluation and j.depends is None for j in jobs)
    run = tmp_path / "run"  # one fold scored end to end (a ResNet-50 on the CPU); the others are the same code
    report = run_benchmark("disfa-au-released", prepared_root, run, weights=released, folds=[2], device="cpu",
                           progress=False, log=lambda m: None, num_workers=0)
    assert report.cells_written == 1 and report.jobs_trained == 0
    record = json.loads((run / "results" / "disfa-au-released" / "disfa__au-detection__megraph-au__fold2.json").read_text())
    name = "MEFARG_resnet50_DISFA_fold2.pth"
    assert record["mode"] == "evaluate" and record["n"]["train"] == 0 and record["leakage"] is None
    assert record["init_from"]["published"] == "megraph-au/resnet50-disfa-fold2"
    assert record["init_from"]["file"].endswith(name)
    assert record["init_from"]["sha256"] == hashlib.sha256((released / name).read_bytes()).hexdigest()
    assert record["initialisation"].startswith("megraph-au/resnet50-disfa-fold2: checkpoint")
    assert sorted(record["test_groups"]) == FIXTURE_TESTS[2]  # the fold's own test subjects, no other
    assert 0.0 <= record["metrics"]["f1"] <= 1.0 and "f1/au26" in record["metrics"]
    # a released cell keeps its test outputs and gets its interval (or the too-few-clusters note) like any cell
    assert record["test_outputs"] and record["ci"]
    exported = export(run, tmp_path / "released.csv", wide=True)
    overall = exported.comparison[exported.comparison.label.fillna("") == ""]
    assert overall["paper"].item() == pytest.approx(0.631) and overall["folds"].item() == 1  # the tag's number
    assert len(exported.comparison) == 9  # overall and 8 AUs
    assert "paper: ME-GraphAU (ResNet-50), released weights" in exported.markdown


def test_a_file_tested_on_its_training_subjects_is_refused_naming_them_and_the_fold(prepared_root, released):
    fold1 = released / "MEFARG_resnet50_DISFA_fold1.pth"
    suite = _suite(f'tag = "megraph-au/resnet50-disfa"\nfiles = {{ 1 = "{fold1}", 2 = "{fold1}", 3 = "{fold1}" }}')
    with pytest.raises(AffbenchError) as refused:
        make_plan(suite, prepared_root)
    message = str(refused.value)
    assert "fold 2, would test megraph-au/resnet50-disfa-fold1 (MEFARG_resnet50_DISFA_fold1.pth)" in message
    assert "on 9 subjects it was trained on (SN006, SN011, SN012, SN013, SN018, SN021, SN024, SN028, SN031)" in message
    assert "score it on fold 1" in message and "allow_leakage = true" in message
    # One fold's tag on every fold: the same refusal; on its own fold only, it runs.
    single = _suite(f'tag = "megraph-au/resnet50-disfa-fold1"\nfiles = {{ 1 = "{fold1}" }}', folds="folds = [1]")
    assert [j.fold for j in make_plan(single, prepared_root).jobs] == [1]


def test_allowing_leakage_is_recorded_and_shown(tmp_path, prepared_root, released):
    fold1 = released / "MEFARG_resnet50_DISFA_fold1.pth"
    suite = _suite(f'tag = "megraph-au/resnet50-disfa"\nfiles = {{ 2 = "{fold1}" }}\nallow_leakage = true',
                   folds="folds = [2]")
    run = tmp_path / "run"
    run_benchmark(suite, prepared_root, run, device="cpu", progress=False, log=lambda m: None, num_workers=0)
    record = json.loads(next((run / "results" / "released").glob("*fold2.json")).read_text())
    assert record["leakage"]["subjects"][:2] == ["SN006", "SN011"] and record["leakage"]["use_fold"] == 1
    assert record["init_from"]["published"] == "megraph-au/resnet50-disfa-fold1"  # named as fold 1's file
    markdown = export(run, tmp_path / "x.csv", wide=True).markdown
    assert "megraph-au (tested on training subjects)" in markdown


CHAINED = """
[suite]
name = "chained"
[training]
epochs = 1
max_steps = 1
batch_size = 4
num_workers = 0
[[experiment]]
id = "first"
dataset = "disfa"
tasks = ["au-detection"]
encoder = "emotiram-fau"
options = {{ input_size = 32 }}
[[experiment]]
id = "again"
variant = "again"
dataset = "disfa"
tasks = ["au-detection"]
{encoder}
[experiment.{table}]
experiment = "first"
fold = 1
{allow}
"""


@pytest.mark.parametrize("table", ["evaluate", "init"])
def test_a_chained_experiment_on_another_folds_weights_is_refused(prepared_root, table):
    import tomllib

    encoder = 'encoder = "emotiram-fau"\noptions = { input_size = 32 }' if table == "init" else ""
    option = '\noption = "pretrained"' if table == "init" else ""
    suite = parse_suite(tomllib.loads(CHAINED.format(table=table, encoder=encoder, allow=option)))
    with pytest.raises(AffbenchError, match=r"Experiment 'again', fold 2, would test the model of experiment "
                                            r"'first', fold 1 on 9 subjects it was trained on \(SN006, .*start "
                                            r"from fold 2 of that experiment instead.*allow_leakage = true in "
                                            rf"\[experiment.{table}\]"):
        make_plan(suite, prepared_root)
    allowed = parse_suite(tomllib.loads(CHAINED.format(table=table, encoder=encoder,
                                                       allow="allow_leakage = true" + option)))
    jobs = {(j.experiment.id, j.fold): j for j in make_plan(allowed, prepared_root).jobs}
    assert "leakage" not in jobs[("again", 1)].config  # fold 1's own weights on fold 1
    assert jobs[("again", 3)].config["leakage"]["subjects"][:2] == ["SN001", "SN002"]


def test_a_missing_released_file_says_where_it_is_published(tmp_path, prepared_root):
    suite = load_suite("disfa-au-released")
    with pytest.raises(AffbenchError, match=r"MEFARG_resnet50_DISFA_fold1.pth .*github.com/CVI-SZU/ME-GraphAU.*"
                                            r"affbench downloads nothing"):
        make_plan(suite, prepared_root, weights=tmp_path)


def test_a_training_experiment_started_from_a_released_file_is_checked_too(prepared_root, tmp_path):
    import tomllib

    text = """
[suite]
name = "finetune"
[[experiment]]
id = "finetune"
dataset = "disfa"
tasks = ["au-detection"]
encoder = "megraph-au"
options = {{ pretrained = "{path}" }}
{extra}
"""
    path = tmp_path / "MEFARG_resnet50_DISFA_fold3.pth"  # planning reads no weights
    with pytest.raises(AffbenchError, match=r"Experiment 'finetune', fold 1, would test megraph-au/resnet50-disfa-"
                                            r"fold3 \(MEFARG_resnet50_DISFA_fold3.pth\) on 9 subjects it was trained "
                                            r"on \(SN003, .*run this experiment on fold 3 only \(folds = \[3\]\).*"
                                            r"allow_leakage = true in the \[\[experiment\]\]"):
        make_plan(parse_suite(tomllib.loads(text.format(path=path, extra=""))), prepared_root)
    jobs = make_plan(parse_suite(tomllib.loads(text.format(path=path, extra="folds = [3]"))), prepared_root).jobs
    assert [(j.fold, "leakage" in j.config) for j in jobs] == [(3, False)]
    allowed = make_plan(parse_suite(tomllib.loads(text.format(path=path, extra="allow_leakage = true"))),
                        prepared_root).jobs
    assert [j.config.get("leakage", {}).get("use_fold") for j in allowed] == [3, 3, None]


def test_run_benchmark_reads_released_files_under_weights(prepared_root, released, tmp_path):
    from click.testing import CliRunner

    from affbench.cli import app

    result = CliRunner().invoke(app, ["run-benchmark", "--suite", "disfa-au-released", "--data", str(prepared_root),
                                      "--out", str(tmp_path / "run"), "--weights", str(released), "--list-jobs"])
    assert result.exit_code == 0, result.output
    assert [line.split("-fold")[1][0] for line in result.output.split()] == ["1", "2", "3"]
    assert all(line.startswith("eval-disfa-megraph-au-au-detection-fold") for line in result.output.split())
    missing = CliRunner().invoke(app, ["run-benchmark", "--suite", "disfa-au-released", "--data", str(prepared_root),
                                       "--out", str(tmp_path / "run"), "--weights", str(tmp_path), "--list-jobs"])
    assert missing.exit_code != 0 and "affbench downloads nothing" in missing.output and "Traceback" not in missing.output


def test_a_given_split_release_is_scored_on_its_test_split(tmp_path, prepared_root):
    import tomllib

    path = tmp_path / "model_best.pth"
    save_caer_trainer(path, _fill(caer_face_config_shapes(), seed=6), collections.OrderedDict(concat=True, use_context=False))
    text = """
[suite]
name = "caer-released"
[[experiment]]
id = "caer-face"
dataset = "caer-s"
tasks = ["expression"]
[experiment.published]
tag = "caer-net-s/face"
{where}
"""
    with pytest.raises(AffbenchError, match="caer-net-s/face has no published file name to find in a folder"):
        parse_suite(tomllib.loads(text.format(where='folder = "."')))
    toml = text.format(where=f'files = {{ 1 = "{path}" }}')
    suite = parse_suite(tomllib.loads(toml), text=toml)  # the text is kept in the run: export reads its numbers
    run = tmp_path / "run"
    report = run_benchmark(suite, prepared_root, run, device="cpu", progress=False, log=lambda m: None, num_workers=0)
    assert report.cells_written == 1
    record = json.loads(next((run / "results" / "caer-released").glob("*.json")).read_text())
    assert record["encoder"] == "emotiram-f" and record["n"]["test"] == 21 and record["leakage"] is None
    comparison = export(run, tmp_path / "x.csv").comparison
    assert comparison["paper"].item() == pytest.approx(0.7681) and comparison["metric"].item() == "accuracy"
