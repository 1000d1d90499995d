"""Every test output kept, rescore, compare and the intervals in records, the long CSV and the tables,
on a tiny suite run through the real harness."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from affbench.benchmarks.harness import run_benchmark
from affbench.cli import app
from affbench.errors import AffbenchError
from affbench.reporting.compare import compare_cells
from affbench.reporting.export import export, long_table
from affbench.reporting.outputs import read_outputs
from affbench.reporting.records import load_records
from affbench.reporting.rescore import rescore
from affbench.scoring.registry import get_metric
from affbench.scoring.scorer import score_task

SUITE = """
[suite]
name = "ci"
reference = "caer-a"

[training]
epochs = 1
max_steps = 2
batch_size = 8
optimizer = "adamw"
lr = 1e-3
num_workers = 0
seed = 1

[[experiment]]
id = "caer-a"
variant = "a"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-f"
options = { input_size = 48 }

[[experiment]]
id = "caer-b"
variant = "b"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-f"
options = { input_size = 48 }
training = { lr = 1e-2 }

[[experiment]]
id = "disfa-megraph"
dataset = "disfa"
tasks = ["au-detection"]
encoder = "megraph-au"
options = { input_size = 48 }
folds = [1]
"""


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prepared_root):
    root = tmp_path_factory.mktemp("uncertainty")
    suite = root / "ci.toml"
    suite.write_text(textwrap.dedent(SUITE))
    run = root / "run"
    run_benchmark(suite, prepared_root, run, device="cpu", progress=False, log=quiet)
    return run


def records_by_encoder(run_dir):
    return {(r["dataset"], r["encoder"]): r for r in load_records(run_dir)}


def test_each_cell_keeps_its_test_outputs_and_they_reproduce_its_metrics(run_dir):
    records = records_by_encoder(run_dir)
    caer = records[("caer-s", "emotiram-f-a")]
    outputs = read_outputs(run_dir / caer["test_outputs"])
    assert caer["test_outputs"].startswith("jobs/") and caer["test_outputs"].endswith("/expression.parquet")
    assert len(outputs.rows) == caer["n"]["test"] == 21
    frame = pd.read_parquet(run_dir / caer["test_outputs"])  # plain pandas reads it
    assert {"sample_id", "subject", "source", "frame", "cluster", "label", "annotated", "output/anger",
            "output/surprise"} <= set(frame.columns)
    assert frame["sample_id"].str.startswith("caer-s/").all()
    # CAER-S names no clip: every image is its own cluster.
    assert caer["ci"]["cluster_unit"] == "row" and caer["ci"]["n_clusters"] == 21
    probabilities = np.exp(outputs.raw) / np.exp(outputs.raw).sum(axis=1, keepdims=True)
    again = score_task(outputs.task, outputs.y, probabilities, mask=outputs.mask)
    assert again["accuracy"] == pytest.approx(caer["metrics"]["accuracy"], abs=1e-12)

    disfa = records[("disfa", "megraph-au")]
    kept = read_outputs(run_dir / disfa["test_outputs"])
    assert disfa["ci"]["cluster_unit"] == "subject"
    assert disfa["ci"]["n_clusters"] == len(set(kept.rows["subject"])) < 10
    assert disfa["ci"]["intervals"] == {} and "fewer than the 10" in disfa["ci"]["note"]
    assert {f"label/{au}" for au in kept.task.label_names} <= set(pd.read_parquet(run_dir / disfa["test_outputs"]))


def test_records_state_the_protocol_and_metric_versions_and_interval_settings(run_dir):
    caer = records_by_encoder(run_dir)[("caer-s", "emotiram-f-a")]
    assert caer["scoring"]["metrics"] == {"accuracy": get_metric("accuracy").version, "f1": get_metric("f1").version}
    assert len(caer["scoring"]["protocol"]) == 12
    ci = caer["ci"]
    assert (ci["method"], ci["level"], ci["resamples"], ci["seed"]) == ("cluster-bootstrap-percentile", 0.95, 2000, 0)
    low, high = ci["intervals"]["accuracy"]
    assert low <= caer["metrics"]["accuracy"] <= high


def test_rescore_reproduces_the_records_exactly_then_finds_a_changed_one(run_dir, tmp_path):
    before = {p: p.read_bytes() for p in (run_dir / "results").rglob("*.json")}
    report = rescore(run_dir)
    assert report.checked == 3 and report.changed == []
    assert {p: p.read_bytes() for p in before} == before  # not even rewritten

    # A record edited by hand (as if scored under another convention) is recomputed and named.
    path = next(p for p in before if "emotiram-f-a" in p.name)
    record = json.loads(path.read_text())
    record["metrics"]["accuracy"] = 0.999
    record["scoring"]["metrics"]["f1"] = 0
    path.write_text(json.dumps(record))
    report = rescore(run_dir)
    assert report.changed == [("ci/caer-s/expression/emotiram-f-a/fold1", ["accuracy", "scoring"])]
    assert path.read_bytes() == before[path]
    assert any(line.startswith("changed  ci/caer-s/expression/emotiram-f-a/fold1: accuracy, scoring")
               for line in report.lines())

    # Other interval settings are drawn and recorded.
    report = rescore(run_dir, settings=__import__("affbench.scoring.bootstrap", fromlist=["x"]).BootstrapSettings(
        resamples=500, seed=3))
    assert all(keys == ["ci", "baselines_ci"] for _, keys in report.changed if "disfa" not in _)
    assert json.loads(path.read_text())["ci"]["resamples"] == 500
    rescore(run_dir, settings=__import__("affbench.scoring.bootstrap", fromlist=["x"]).BootstrapSettings())
    assert path.read_bytes() == before[path]


def without_baseline_constants(path):
    """Rewrite a kept outputs file as an affbench before the baseline constants were kept wrote it."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    described = json.loads(table.schema.metadata[b"affbench_outputs"])
    del described["baselines"]
    pq.write_table(table.replace_schema_metadata({b"affbench_outputs": json.dumps(described).encode()}), path)


def test_rescore_draws_the_baselines_intervals_again_from_the_kept_outputs(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = next((copy / "results").rglob("caer-s__expression__emotiram-f-a__*.json"))
    record = json.loads(path.read_text())
    outputs = read_outputs(copy / record["test_outputs"])
    # The majority class learnt on the training rows is kept; predicting it scores as recorded.
    majority = outputs.baseline_constants["majority-class"]
    assert set(outputs.baseline_constants) == {"majority-class"}
    assert record["baselines"]["majority-class"]["accuracy"] == pytest.approx(np.mean(outputs.y == majority))
    assert record["baselines_ci"]["majority-class"]["n_clusters"] == 21

    before = path.read_bytes()
    edited = json.loads(before)
    edited["baselines_ci"]["majority-class"]["intervals"]["accuracy"] = [0.0, 1.0]
    path.write_text(json.dumps(edited))
    report = rescore(copy)
    assert report.changed == [("ci/caer-s/expression/emotiram-f-a/fold1", ["baselines_ci"])]
    assert path.read_bytes() == before and report.baselines_kept == []

    # Outputs kept before the constants were: the recorded baseline intervals stay, and rescore says so.
    without_baseline_constants(copy / record["test_outputs"])
    path.write_text(json.dumps(edited))
    report = rescore(copy)
    assert report.changed == [] and json.loads(path.read_text()) == edited
    assert report.baselines_kept == ["ci/caer-s/expression/emotiram-f-a/fold1"]
    assert any(line.startswith("kept     ci/caer-s/expression/emotiram-f-a/fold1: baseline intervals as recorded")
               for line in report.lines())


def test_compare_two_cells_and_refuse_cells_on_other_rows(run_dir, tmp_path):
    a, b = "ci/caer-s/expression/emotiram-f-a", "ci/caer-s/expression/emotiram-f-b"
    found = compare_cells(run_dir, a, b, metric="accuracy", csv_path=tmp_path / "cmp.csv")
    records = records_by_encoder(run_dir)
    assert found.result.value_a == pytest.approx(records[("caer-s", "emotiram-f-a")]["metrics"]["accuracy"])
    assert found.result.difference == pytest.approx(found.result.value_a - found.result.value_b)
    assert 0 < found.result.p_value <= 1 and found.result.n_clusters == 21
    table = pd.read_csv(tmp_path / "cmp.csv")
    assert list(table["metric"]) == ["accuracy"] and table.loc[0, "test"].startswith("paired permutation test")
    same = compare_cells(run_dir, a, a)
    assert same.result.difference == 0 and same.result.p_value == 1.0
    with pytest.raises(AffbenchError, match=r"^ci/caer-s/expression/emotiram-f-a and ci/disfa/au-detection/megraph-au "
                                            r"were not scored on the same test rows \(.*\), so they cannot be compared"):
        compare_cells(run_dir, a, "ci/disfa/au-detection/megraph-au", metric="f1")
    with pytest.raises(AffbenchError, match="No cell 'ci/caer-s/expression/nope' in this run; its cells are: "):
        compare_cells(run_dir, a, "ci/caer-s/expression/nope")

    result = CliRunner().invoke(app, ["compare", str(run_dir), a, b, "--metric", "f1"])
    assert result.exit_code == 0, result.output
    assert "difference A - B" in result.output and "p = " in result.output
    refused = CliRunner().invoke(app, ["compare", str(run_dir), a, "ci/disfa/au-detection/megraph-au", "--metric", "f1"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "were not scored on the same test rows" in refused.output


def test_long_csv_and_tables_carry_the_intervals(run_dir, tmp_path):
    exported = export(run_dir, tmp_path / "out.csv", wide=True, latex=True)
    frame = pd.read_csv(tmp_path / "out.csv")
    assert {"ci_low", "ci_high", "ci_level", "n_clusters", "ci_method", "ci_note"} <= set(frame.columns)
    assert (frame["schema"] == 3).all()
    row = frame[(frame["encoder"] == "emotiram-f-a") & (frame["metric"] == "accuracy") & frame["label"].isna()].iloc[0]
    assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["n_clusters"] == 21 and row["ci_level"] == 0.95
    # The baselines that predict a constant get intervals on the same clusters; the expectation does not.
    base = frame[(frame["baseline"] == "majority-class") & (frame["metric"] == "accuracy") & frame["label"].isna()]
    assert base["ci_low"].item() <= base["value"].item() <= base["ci_high"].item()
    assert base["n_clusters"].item() == 21 and base["ci_low"].item() < base["ci_high"].item()
    frequency = frame[(frame["baseline"] == "label-frequency") & (frame["metric"] == "f1")]
    assert len(frequency) and frequency["ci_low"].isna().all()
    disfa = frame[(frame["encoder"] == "megraph-au") & (frame["metric"] == "f1") & frame["label"].isna()].iloc[0]
    assert np.isnan(disfa["ci_low"]) and "fewer than the 10" in disfa["ci_note"]
    assert "0." in exported.markdown and " [" in exported.markdown
    tables = (tmp_path / "out-tables" / "tables.md").read_text()
    assert "cluster bootstrap" in tables and "fewer than 10" in tables


def test_a_record_without_intervals_still_exports(run_dir, tmp_path):
    records = [dict(r) for r in load_records(run_dir)]
    for record in records:
        for key in ("ci", "test_outputs", "scoring", "baselines_ci", "run"):
            record.pop(key, None)
    frame = long_table(records)
    assert frame["ci_low"].isna().all() and len(frame) > 0


def test_tables_mark_each_rows_difference_from_the_suites_reference(run_dir, tmp_path):
    export(run_dir, tmp_path / "out.csv", wide=True)
    tables = (tmp_path / "out-tables" / "tables.md").read_text()
    caer = tables[tables.index("### ci · caer-s · expression"):]
    assert "| vs emotiram-f-a (accuracy) |" in caer.splitlines()[2]
    row_a = next(line for line in caer.splitlines() if line.startswith("| emotiram-f-a |"))
    row_b = next(line for line in caer.splitlines() if line.startswith("| emotiram-f-b |"))
    assert row_a.endswith("| reference |")
    found = compare_cells(run_dir, "ci/caer-s/expression/emotiram-f-b", "ci/caer-s/expression/emotiram-f-a")
    # One row compared: Holm leaves its p-value as it is.
    assert f", p {found.result.p_value:.2g} (Holm {found.result.p_value:.2g})" in row_b
    assert f"{found.result.difference:+.3f} [{found.result.low:+.3f}, {found.result.high:+.3f}]" in row_b
    table = pd.read_csv(tmp_path / "out-tables" / "ci__caer-s__expression.csv")
    b = table[table["encoder"] == "emotiram-f-b"].iloc[0]
    assert b["reference_p_holm"] == pytest.approx(found.result.p_value)
    assert "Holm's correction" in tables


def test_a_reference_that_names_no_experiment_is_refused():
    from affbench.benchmarks.suite import parse_suite

    with pytest.raises(AffbenchError, match="nope"):
        parse_suite({"suite": {"name": "x", "reference": "nope"}, "experiment": [
            {"id": "a", "dataset": "caer-s", "tasks": ["expression"], "encoder": "emotiram-f"}]})
