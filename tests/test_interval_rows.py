"""Intervals of the tables' baseline rows over folds and of the random-partition rows, checked
against resampling by hand on synthetic kept outputs (no model is trained)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from affbench.reporting.export import EXPECTED_VALUE_NOTE, long_table, paper_tables_of
from affbench.reporting.outputs import interval_record, outputs_table, write_outputs
from affbench.reporting.tables import latex, markdown
from affbench.scoring.bootstrap import BootstrapSettings, fold_intervals, partition_intervals
from affbench.scoring.cluster_statistics import cluster_sums
from affbench.scoring.protocols import TaskSpec
from affbench.scoring.scorer import score_task

TASK = TaskSpec(name="expression", kind="expression", label_columns=("expression",), output_key="expression",
                n_outputs=3, label_names=("calm", "happy", "sad"), metrics=("accuracy",), primary_metric="accuracy")
SUBJECTS = [f"s{i:02d}" for i in range(12)]
ROWS_PER_SUBJECT = 5
MAJORITY = 0
SETTINGS = BootstrapSettings(resamples=400, seed=7)


def subject_rows(subject: str) -> tuple[np.ndarray, np.ndarray]:
    """A subject's reproducible class labels and raw class scores."""
    rng = np.random.default_rng(int(subject[1:]))
    labels = rng.integers(0, 3, ROWS_PER_SUBJECT)
    raw = rng.normal(size=(ROWS_PER_SUBJECT, 3)) + 2.0 * np.eye(3)[labels] * (int(subject[1:]) % 3 != 0)
    return labels, raw


def deal(partition: int) -> list[list[str]]:
    """The 12 subjects in 3 folds of 4: as listed for partition 0, shuffled for the others."""
    order = list(SUBJECTS) if partition == 0 else list(np.random.default_rng(partition).permutation(SUBJECTS))
    return [order[i::3] for i in range(3)]


def write_cell(run_dir, fold: int, partition: int, subjects: list[str]) -> dict:
    """One cell's kept outputs and record (metrics and majority-class baseline as the harness makes them)."""
    labels, raw = (np.concatenate(parts) for parts in zip(*(subject_rows(s) for s in subjects)))
    clusters = np.repeat(subjects, ROWS_PER_SUBJECT)
    rows = pd.DataFrame({"sample_id": [f"x/{c}/{i}" for i, c in enumerate(clusters)], "subject": clusters})
    mask = np.ones(len(labels), dtype=bool)
    table = outputs_table(TASK, rows, clusters, labels, mask, raw, fold=fold, cluster_unit="subject",
                          au_output=None, protocol_version="p", baseline_constants={"majority-class": MAJORITY})
    name = f"jobs/p{partition}-f{fold}/test-outputs/expression.parquet"
    write_outputs(run_dir / name, table)
    probabilities = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    constant = np.full(len(labels), MAJORITY)
    baseline_ci = fold_intervals([cluster_sums(TASK, labels, constant, clusters)], SETTINGS)
    return {"suite": "s", "dataset": "d", "task": "expression", "encoder": "enc", "fold": fold,
            "run": {"seed": None, "partition": partition}, "test_outputs": name,
            "metrics": score_task(TASK, labels, probabilities),
            "ci": interval_record(fold_intervals([cluster_sums(TASK, labels, probabilities, clusters)], SETTINGS),
                                  "subject"),
            "baselines": {"majority-class": score_task(TASK, labels, constant),
                          "label-frequency": {"accuracy": 0.4}},
            "baselines_ci": {"majority-class": interval_record(baseline_ci, "subject")}}


@pytest.fixture()
def run(tmp_path):
    records = [write_cell(tmp_path, fold + 1, partition, subjects)
               for partition in (0, 1, 2) for fold, subjects in enumerate(deal(partition))]
    return tmp_path, records


def correct_and_count(subjects: list[str], predict_majority: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per subject: rows predicted correctly, and rows."""
    correct = []
    for subject in subjects:
        labels, raw = subject_rows(subject)
        predicted = np.full(len(labels), MAJORITY) if predict_majority else raw.argmax(axis=1)
        correct.append(float(np.sum(predicted == labels)))
    return np.array(correct), np.full(len(subjects), float(ROWS_PER_SUBJECT))


def percentile(replicates: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float(low), float(high)


def test_a_baseline_row_over_folds_has_the_interval_of_its_fold_mean(run):
    run_dir, records = run
    # By hand: each fold's 4 subjects drawn with replacement from the fold's own stream, the
    # accuracy of predicting the majority class recomputed, the three folds averaged.
    per_fold = []
    for i, subjects in enumerate(deal(0)):
        rng = np.random.default_rng(np.random.SeedSequence([SETTINGS.seed, i]))
        counts = rng.multinomial(4, np.full(4, 0.25), size=SETTINGS.resamples)
        correct, rows = correct_and_count(sorted(subjects), predict_majority=True)
        per_fold.append(counts @ correct / (counts @ rows))
    low, high = percentile(np.mean(per_fold, axis=0))

    table = paper_tables_of(run_dir, records, {})[("s", "d", "expression")].set_index(["row", "encoder"])
    row = table.loc[("baseline", "majority-class")]
    assert row["folds"] == 3 and row["clusters"] == 12
    assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]


def test_the_tables_print_the_baseline_interval_and_mark_an_expected_value(run):
    run_dir, records = run
    tables = paper_tables_of(run_dir, records, {})
    row = tables[("s", "d", "expression")].set_index(["row", "encoder"]).loc[("baseline", "majority-class")]
    text = markdown(tables)
    assert f"| baseline: majority-class | 3 | 1 | 12 | {row['accuracy']:.3f} [{row['accuracy_ci_low']:.3f}, " in text
    assert "| baseline: label-frequency | 3 | 1 | ‡ | 0.400 ± 0.000 |" in text
    assert "‡ = an expected value (label-frequency), no interval by nature" in text
    assert r"$^\ddagger$" in latex(tables)
    long = long_table(records)
    assert (long.loc[long["baseline"] == "label-frequency", "ci_note"] == EXPECTED_VALUE_NOTE).all()


def test_a_baseline_of_outputs_kept_before_their_constants_shows_its_spread_only(run):
    run_dir, records = run
    import pyarrow.parquet as pq

    for record in records:  # as an earlier affbench wrote them: no baseline constants
        path = run_dir / record["test_outputs"]
        table = pq.read_table(path)
        meta = table.schema.metadata[b"affbench_outputs"].replace(b', "baselines": {"majority-class": 0}', b"")
        pq.write_table(table.replace_schema_metadata({b"affbench_outputs": meta}), path)
    row = paper_tables_of(run_dir, records, {})[("s", "d", "expression")].set_index(["row", "encoder"]).loc[
        ("baseline", "majority-class")]
    assert pd.isna(row["accuracy_ci_low"]) and row["accuracy_sd"] > 0


def test_random_partition_rows_draw_the_shared_subjects_once_for_all_partitions(run):
    run_dir, records = run
    # By hand: one draw of the 12 subjects per resample; each partition's folds scored on their own
    # subjects' counts, averaged over the folds that drew any of their subjects, then over the two
    # partitions.
    rng = np.random.default_rng(np.random.SeedSequence([SETTINGS.seed, 1 << 21]))
    counts = rng.multinomial(12, np.full(12, 1 / 12), size=SETTINGS.resamples)
    position = {s: i for i, s in enumerate(sorted(SUBJECTS))}
    per_partition = []
    for partition in (1, 2):
        per_fold = []
        for subjects in deal(partition):
            correct, rows = correct_and_count(subjects, predict_majority=False)
            drawn = counts[:, [position[s] for s in subjects]]
            with np.errstate(invalid="ignore"):
                per_fold.append(drawn @ correct / (drawn @ rows))
        per_partition.append(np.nanmean(per_fold, axis=0))
    assert np.isnan(per_fold).any()  # a fold that drew none of its subjects is left out
    low, high = percentile(np.mean(per_partition, axis=0))

    tables = paper_tables_of(run_dir, records, {})
    row = tables[("s", "d", "expression")].set_index(["row", "encoder"]).loc[("affbench-refolds", "enc")]
    assert row["runs"] == 2 and row["clusters"] == 12
    assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    text = markdown(tables)
    assert f"| enc (random partitions) | 3 | 2 | 12 | {row['accuracy']:.3f} [" in text
    assert "(random partitions): the units drawn once per resample for all partitions" in text


def test_identical_partitions_add_no_subjects_so_they_do_not_narrow_the_interval():
    labels = np.random.default_rng(0).integers(0, 3, 120)
    clusters = np.repeat(SUBJECTS, 10)
    scores = np.eye(3)[np.where(np.random.default_rng(1).random(120) < 0.6, labels, (labels + 1) % 3)]
    one = [cluster_sums(TASK, labels, scores, clusters)]
    alone = partition_intervals([one], SETTINGS)
    twice = partition_intervals([one, one], SETTINGS)
    assert (twice.low, twice.high, twice.n_clusters) == (alone.low, alone.high, 12)


def test_one_partition_of_one_fold_agrees_with_scipys_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 200)
    predicted = np.where(rng.random(200) < 0.7, labels, (labels + 1) % 3)
    settings = BootstrapSettings(resamples=4000, seed=2)
    found = partition_intervals([[cluster_sums(TASK, labels, np.eye(3)[predicted], np.arange(200))]], settings)
    reference = bootstrap(((predicted == labels).astype(float),), np.mean, n_resamples=4000, method="percentile",
                          random_state=np.random.default_rng(4)).confidence_interval
    assert found.low["accuracy"] == pytest.approx(reference.low, abs=0.01)
    assert found.high["accuracy"] == pytest.approx(reference.high, abs=0.01)
