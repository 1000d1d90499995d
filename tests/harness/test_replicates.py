"""Seeds and refolds: each (seed, partition) its own job and record, aggregated in the tables,
intervals and comparisons."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pandas as pd
import pytest

from affbench.benchmarks.harness import run_benchmark
from affbench.benchmarks.plan import make_plan
from affbench.benchmarks.suite import load_suite, parse_suite
from affbench.errors import AffbenchError
from affbench.reporting.compare import compare_cells
from affbench.reporting.export import export
from affbench.reporting.outputs import outputs_intervals, read_outputs
from affbench.reporting.records import load_records
from affbench.scoring.bootstrap import BootstrapSettings
from affbench.scoring.protocols import CrossValidation

SUITE = """
[suite]
name = "reps"
seeds = [3, 4]
refolds = 1
ci = { resamples = 300, level = 0.9, seed = 5 }

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

[[experiment]]
id = "caer-f2"
variant = "b"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-f"
options = { input_size = 48 }
training = { lr = 1e-2 }

[[experiment]]
id = "disfa-fan"
dataset = "disfa"
tasks = ["au-intensity"]
encoder = "fan-au"
options = { input_size = 64 }
folds = [1]
"""


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def suite_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("replicates") / "reps.toml"
    path.write_text(textwrap.dedent(SUITE))
    return path


@pytest.fixture(scope="module")
def run_dir(suite_path, prepared_root):
    run = suite_path.parent / "run"
    run_benchmark(suite_path, prepared_root, run, device="cpu", progress=False, log=quiet)
    return run


def test_repartitioned_folds_are_reproducible_subject_exclusive_and_keep_the_part_sizes():
    cv = CrossValidation(parts={"a": ("s1", "s2", "s3"), "b": ("s4", "s5"), "c": ("s6", "s7")},
                         test_parts={1: "a", 2: "b", 3: "c"})
    first, again, other = cv.repartitioned(1), cv.repartitioned(1), cv.repartitioned(2)
    assert first == again and first != cv and cv.repartitioned(0) is cv
    assert {p: len(s) for p, s in first.parts.items()} == {"a": 3, "b": 2, "c": 2}
    assert sorted(s for part in first.parts.values() for s in part) == [f"s{i}" for i in range(1, 8)]
    assert first.test_parts == cv.test_parts and other != first


def test_each_seed_and_partition_is_its_own_job(suite_path, prepared_root):
    plan = make_plan(load_suite(suite_path), prepared_root)
    keys = [job.key for job in plan.jobs]
    assert len(keys) == 2 * 2 + 2 * 2  # CAER-S: 2 experiments x 2 seeds; DISFA: 2 seeds x 2 partitions
    assert sum("-seed3-" in k for k in keys) == 4 and sum("-refold1-" in k for k in keys) == 2
    assert len({job.config_hash for job in plan.jobs}) == len(keys)
    assert "caer-f: no refolds, caer-s has a given train/test split" in plan.skipped
    seeds = {job.experiment.training.seed for job in plan.jobs if job.experiment.dataset == "caer-s"}
    assert seeds == {3, 4}


def test_records_name_their_run_and_refolds_test_other_subjects(run_dir):
    records = load_records(run_dir)
    names = sorted(p.name for p in (run_dir / "results" / "reps").glob("*.json"))
    assert "disfa__au-intensity__fan-au__fold1__seed3__refold1.json" in names
    assert "caer-s__expression__emotiram-f__fold1__seed4.json" in names and len(names) == 8
    disfa = {(r["run"]["seed"], r["run"]["partition"]): r for r in records if r["dataset"] == "disfa"}
    assert disfa[(3, 0)]["seed"] == 3 and disfa[(4, 1)]["seed"] == 4
    assert disfa[(3, 0)]["test_groups"] == disfa[(4, 0)]["test_groups"]
    assert disfa[(3, 0)]["test_groups"] != disfa[(3, 1)]["test_groups"]
    assert disfa[(3, 1)]["test_groups"] == disfa[(4, 1)]["test_groups"]


def test_a_second_run_resumes_every_job_as_finished(suite_path, prepared_root, run_dir):
    report = run_benchmark(suite_path, prepared_root, run_dir, device="cpu", progress=False, log=quiet)
    assert report.cells_total == 8 and report.cells_skipped == 8 and report.cells_written == 0


def test_tables_aggregate_runs_and_show_the_random_partitions_beside_the_published_ones(run_dir, tmp_path):
    records = load_records(run_dir)
    exported = export(run_dir, tmp_path / "out.csv", wide=True)
    caer = exported.tables[("reps", "caer-s", "expression")].set_index(["row", "encoder"])
    row = caer.loc[("affbench", "emotiram-f")]
    accuracy = [r["metrics"]["accuracy"] for r in records if r["encoder"] == "emotiram-f"]
    assert row["runs"] == 2 and row["folds"] == 1
    assert row["accuracy"] == pytest.approx(np.mean(accuracy))
    assert row["accuracy_sd"] == pytest.approx(np.std(accuracy, ddof=1))
    assert ("affbench-refolds", "emotiram-f") not in caer.index
    disfa = exported.tables[("reps", "disfa", "au-intensity")].set_index(["row", "encoder"])
    assert disfa.loc[("affbench", "fan-au"), "runs"] == 2 and disfa.loc[("affbench-refolds", "fan-au"), "runs"] == 2
    assert "| fan-au (random partitions) | 1 | 2 |" in exported.markdown
    assert "runs = seeds x partitions" in exported.markdown
    long = pd.read_csv(tmp_path / "out.csv")
    assert set(long["partition"]) == {0, 1} and set(long["seed"].dropna()) >= {3, 4}

    # The published row's interval: each fold's seeds resampled with the same clusters, averaged.
    cells = [r for r in records if r["encoder"] == "emotiram-f"]
    expected = outputs_intervals([read_outputs(run_dir / r["test_outputs"]) for r in cells], SUITE_CI)
    assert row["accuracy_ci_low"] == pytest.approx(expected.low["accuracy"])
    assert row["accuracy"] == pytest.approx(expected.values["accuracy"])


SUITE_CI = BootstrapSettings(resamples=300, level=0.9, seed=5)


def test_the_suites_interval_settings_draw_and_are_recorded_in_every_record(run_dir):
    for record in load_records(run_dir):
        outputs = read_outputs(run_dir / record["test_outputs"])
        for ci in (record["ci"], *record["baselines_ci"].values()):
            assert (ci["resamples"], ci["level"], ci["seed"]) == (300, 0.9, 5)
        expected = outputs_intervals([outputs], SUITE_CI)
        assert record["ci"]["intervals"] == {k: [expected.low[k], expected.high[k]] for k in expected.low}


def test_compare_averages_each_cells_seeds(run_dir):
    found = compare_cells(run_dir, "reps/caer-s/expression/emotiram-f-b", "reps/caer-s/expression/emotiram-f")
    records = load_records(run_dir)
    mean = {e: np.mean([r["metrics"]["accuracy"] for r in records if r["encoder"] == e])
            for e in ("emotiram-f", "emotiram-f-b")}
    assert found.result.difference == pytest.approx(mean["emotiram-f-b"] - mean["emotiram-f"])
    assert "2 seeds per fold (mean)" in found.lines()[2]
    one = compare_cells(run_dir, "reps/caer-s/expression/emotiram-f-b/seed3", "reps/caer-s/expression/emotiram-f/seed3")
    assert one.runs_per_fold == 1
    refold = compare_cells(run_dir, "reps/disfa/au-intensity/fan-au/refold1", "reps/disfa/au-intensity/fan-au/refold1")
    assert refold.result.difference == 0
    with pytest.raises(AffbenchError, match="were not scored on the same test rows"):
        compare_cells(run_dir, "reps/disfa/au-intensity/fan-au/refold1", "reps/disfa/au-intensity/fan-au")


@pytest.mark.parametrize("meta, message", [
    ({"seeds": []}, "seeds of the suite must be a list of distinct integers"),
    ({"seeds": [1, 1]}, "seeds of the suite must be a list of distinct integers"),
    ({"refolds": -1}, "refolds of the suite must be a whole number"),
    ({"ci": {"resamples": 50}}, "ci resamples of the suite must be an integer of at least 100; got 50"),
    ({"ci": {"resamples": 2000.5}}, "ci resamples of the suite must be an integer of at least 100"),
    ({"ci": {"level": 1.0}}, "ci level of the suite must be a finite number in (0, 1); got 1.0"),
    ({"ci": {"level": float("nan")}}, "ci level of the suite must be a finite number in (0, 1)"),
    ({"ci": {"level": "95%"}}, "ci level of the suite must be a finite number in (0, 1)"),
    ({"ci": {"seed": -1}}, "ci seed of the suite must be an integer of at least 0"),
    ({"ci": {"levels": 0.9}}, "ci of the suite must be a table of resamples, level, seed"),
    ({"ci": 0.95}, "ci of the suite must be a table of resamples, level, seed"),
])
def test_bad_seeds_refolds_or_interval_settings_are_one_sentence(meta, message):
    with pytest.raises(AffbenchError, match=re.escape(message)):
        parse_suite({"suite": {"name": "x", **meta}, "experiment": [
            {"id": "a", "dataset": "caer-s", "tasks": ["expression"], "encoder": "emotiram-f"}]})
