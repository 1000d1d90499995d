"""affbench.reporting.records: records, long and wide tables, Markdown, CSV export read back, plots."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from affbench.errors import AffbenchError
from affbench.reporting.export import LONG_COLUMNS, SCHEMA_VERSION, export, long_table, write_csv
from affbench.reporting.records import load_records, write_record


def record(encoder: str, fold: int, f1: float, *, suite="s", dataset="disfa", task="au-detection", per_au=None,
           baselines=None, experiment=None):
    metrics = {"f1": f1, "accuracy": 0.9}
    for au, value in (per_au or {}).items():
        metrics[f"f1/{au}"] = value
    return {
        "suite": suite, "dataset": dataset, "task": task, "encoder": encoder, "fold": fold, "kind": "au-detection",
        "experiment": experiment or encoder, "label": f"{encoder} (paper name)",
        "metrics": metrics, "primary_metric": "f1", "selected_epoch": 2, "epochs": 3, "epochs_planned": 3,
        "seed": 7, "initialisation": "imagenet", "job": f"job-{encoder}-{fold}", "config_hash": f"hash{fold}",
        "device": "cpu (test)", "git_commit": "abc", "affbench_version": "0.1.0",
        "n": {"train": 100, "val": 10, "test": 40 + fold},
        "excluded": {"no_face": {"train": 1, "val": 0, "test": 2}, "unannotated": {"train": 0, "val": 0, "test": 1},
                     "no_split": 0},
        "baselines": baselines or {},
        "curve": [{"epoch": 1, "train_loss": 0.9, "val": 0.3, "lr": 1e-3},
                  {"epoch": 2, "train_loss": 0.7, "val": 0.4, "lr": 1e-4},
                  {"epoch": 3, "train_loss": 0.6, "val": 0.35, "lr": 1e-5}],
        "selection": "best validation score (mean of the tasks' primary metrics)",
    }


def absent(f1_au6: float) -> dict:
    return {"all-absent": {"f1": 0.0, "f1/au6": 0.0, "f1/au12": 0.0, "accuracy": f1_au6},
            "all-present": {"f1": 0.5, "f1/au6": 0.4, "f1/au12": 0.6, "accuracy": 0.3}}


RECORDS = [
    record("megraph-au", 1, 0.5, per_au={"au6": 0.6, "au12": 0.8}, baselines=absent(0.7)),
    record("megraph-au", 2, 0.7, per_au={"au6": 0.4, "au12": 0.6}, baselines=absent(0.8)),
    record("fan-au", 1, 0.2, baselines=absent(0.7)),
]


def test_records_round_trip_and_nan_becomes_missing(tmp_path):
    rec = record("x", 1, float("nan"))
    path = write_record(tmp_path, rec)
    assert path == tmp_path / "results" / "s" / "disfa__au-detection__x__fold1.json"
    loaded = load_records(tmp_path)
    assert loaded[0]["metrics"]["f1"] is None
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left nothing behind
    long = long_table(loaded)
    assert np.isnan(long.set_index("metric").loc["f1", "value"])


def test_long_table_is_tidy_with_label_and_provenance_columns():
    long = long_table(RECORDS)
    assert list(long.columns) == list(LONG_COLUMNS)
    mine = long[long["row"] == "affbench"]
    assert len(mine) == 4 + 4 + 2  # one row per metric value of each record
    row = mine[(mine.encoder == "megraph-au") & (mine.fold == 2) & (mine.metric == "f1") & (mine.label == "au12")]
    assert row["value"].item() == 0.6
    overall = mine[(mine.encoder == "fan-au") & (mine.metric == "f1")]
    assert overall["label"].item() == "" and overall["value"].item() == 0.2
    first = row.iloc[0]
    assert (first["schema"], first["seed"], first["n_test"], first["n_excluded"], first["selected_epoch"]) == (
        SCHEMA_VERSION, 7, 42, 3, 2)
    assert (first["job"], first["config_hash"], first["initialisation"]) == ("job-megraph-au-2", "hash2", "imagenet")
    # Baselines: once per (dataset, task, fold), not once per encoder.
    base = long[long["row"] == "baseline"]
    assert set(base["baseline"]) == {"all-absent", "all-present"} and set(base["encoder"]) == {""}
    assert len(base[(base.baseline == "all-absent") & (base.metric == "accuracy")]) == 2
    assert base[(base.baseline == "all-absent") & (base.fold == 2) & (base.metric == "accuracy")]["value"].item() == 0.8


def test_long_csv_reads_back_with_pandas_and_matches_the_records(tmp_path):
    for rec in RECORDS:
        write_record(tmp_path / "run", rec)
    exported = export(tmp_path / "run", tmp_path / "out.csv")
    back = pd.read_csv(tmp_path / "out.csv", dtype={"label": str})
    assert list(back.columns) == list(LONG_COLUMNS)
    assert set(back["schema"]) == {SCHEMA_VERSION}
    assert len(back) == len(exported.long)
    for rec in RECORDS:
        for key, value in rec["metrics"].items():
            metric, _, label = key.partition("/")
            match = back[(back["row"] == "affbench") & (back.encoder == rec["encoder"]) & (back.fold == rec["fold"])
                         & (back.metric == metric) & (back.label.fillna("") == label)]
            assert match["value"].item() == pytest.approx(value)
            assert match["n_test"].item() == rec["n"]["test"] and match["config_hash"].item() == rec["config_hash"]
    assert not (tmp_path / "out-tables").exists()  # only with --wide


def test_wide_tables_one_per_task_with_sample_std_and_clean_column_names():
    other = record("emotiram-f", 1, 0.3, dataset="caer-s", task="expression")
    tables = tables_of(RECORDS + [other])
    assert list(tables) == [("s", "disfa", "au-detection"), ("s", "caer-s", "expression")]
    table = tables[("s", "disfa", "au-detection")]
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", c) for c in table.columns)
    assert "f1_au6" in table.columns and "f1_anger" not in table.columns  # this task's labels only
    mine = table[table["row"] == "affbench"].set_index("encoder")
    assert mine.loc["megraph-au", "folds"] == 2
    assert mine.loc["megraph-au", "f1"] == pytest.approx(0.6)
    assert mine.loc["megraph-au", "f1_sd"] == pytest.approx(0.1414214)  # sample std (ddof=1) of 0.5 and 0.7
    assert mine.loc["megraph-au", "f1_au6"] == pytest.approx(0.5)
    assert np.isnan(mine.loc["fan-au", "f1_sd"])  # one fold: no spread, not zero
    assert np.isnan(mine.loc["fan-au", "f1_au6"])
    base = table[table["row"] == "baseline"].set_index("encoder")
    assert base.loc["all-absent", "accuracy"] == pytest.approx(0.75) and base.loc["all-absent", "folds"] == 2
    columns = list(table.columns)
    assert columns[:4] == ["row", "encoder", "name", "folds"]
    assert columns.index("f1") < columns.index("f1_sd") < columns.index("f1_au6") < columns.index("accuracy")


def tables_of(records, published=None):
    from affbench.reporting import tables

    return tables.wide_tables(records, published)


def test_markdown_shows_headline_metrics_with_spread_and_baselines():
    from affbench.reporting import tables

    text = tables.markdown(tables_of(RECORDS))
    assert text.startswith("### s · disfa · au-detection")
    assert "| megraph-au | 2 | 0.600 ± 0.141 | 0.900 ± 0.000 |" in text
    assert "| fan-au | 1 | 0.200 | 0.900 |" in text
    assert "| baseline: all-absent | 2 | 0.000 ± 0.000 | 0.750 ± 0.071 |" in text
    assert "ddof=1" in text
    assert "f1_au6" not in text and "f1_au6" in tables.markdown(tables_of(RECORDS), per_label=True)


def test_wide_export_writes_one_csv_per_table_and_latex(tmp_path):
    for rec in RECORDS + [record("emotiram-f", 1, 0.3, dataset="caer-s", task="expression")]:
        write_record(tmp_path / "run", rec)
    exported = export(tmp_path / "run", tmp_path / "out.csv", wide=True, latex=True)
    folder = tmp_path / "out-tables"
    assert sorted(p.name for p in folder.iterdir()) == [
        "s__caer-s__expression.csv", "s__disfa__au-detection.csv", "tables.md", "tables.tex"]
    back = pd.read_csv(folder / "s__disfa__au-detection.csv")
    assert back[back["row"] == "affbench"].set_index("encoder").loc["megraph-au", "f1_au12"] == pytest.approx(0.7)
    tex = (folder / "tables.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and "f1\\_au12" in tex and r"0.600 $\pm$ 0.141" in tex
    assert tex.count(r"\begin{table}") == 4  # one per (table, metric): f1 and accuracy of two tables
    assert "±" not in tex.split("\n", 1)[1] and "–" not in tex.split("\n", 1)[1]  # LaTeX gets $\pm$ and --
    assert "megraph-au" in exported.markdown


def test_export_of_an_empty_or_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(AffbenchError, match="does not exist"):
        export(tmp_path / "none", tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AffbenchError, match="No finished benchmark cells in .*; run `affbench run-benchmark` first"):
        export(tmp_path / "empty", tmp_path / "x.csv")


def test_records_and_csv_get_the_users_usual_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = write_record(tmp_path, RECORDS[0])
        csv = write_csv(long_table(RECORDS), tmp_path / "out.csv")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644 and csv.stat().st_mode & 0o777 == 0o644


def test_wide_export_leaves_a_users_own_tables_file_alone_and_replaces_its_own(tmp_path):
    for rec in RECORDS:
        write_record(tmp_path / "run", rec)
    folder = tmp_path / "out-tables"
    folder.mkdir()
    (folder / "tables.md").write_text("# my own notes on the tables\n")
    with pytest.raises(AffbenchError, match="tables.md exists and is not an earlier affbench export"):
        export(tmp_path / "run", tmp_path / "out.csv", wide=True)
    assert (folder / "tables.md").read_text() == "# my own notes on the tables\n"
    assert not (tmp_path / "out.csv").exists()  # refused before anything was written
    (folder / "tables.md").unlink()
    export(tmp_path / "run", tmp_path / "out.csv", wide=True, latex=True)
    export(tmp_path / "run", tmp_path / "out.csv", wide=True, latex=True)  # its own files are replaced
    assert "megraph-au" in (folder / "tables.md").read_text()


def test_an_export_whose_suite_copy_is_damaged_writes_nothing(tmp_path):
    for rec in RECORDS:
        write_record(tmp_path / "run", rec)
    (tmp_path / "run" / "suites").mkdir()
    (tmp_path / "run" / "suites" / "s.toml").write_text("[suite\nname = ")
    with pytest.raises(AffbenchError, match="not valid TOML"):
        export(tmp_path / "run", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_two_exports_into_one_file_at_once_are_refused(tmp_path):
    from affbench.runtime.locks import shared_lock_path, try_lock, unlock

    for rec in RECORDS:
        write_record(tmp_path / "run", rec)
    lock = shared_lock_path(tmp_path / "out.csv")
    fd = try_lock(lock)  # another export writing out.csv
    try:
        with pytest.raises(AffbenchError, match=r"out.csv is being written by process \d+"):
            export(tmp_path / "run", tmp_path / "out.csv")
    finally:
        unlock(fd, lock)
    assert not (tmp_path / "out.csv").exists()


def test_a_tables_file_of_an_export_before_the_mark_is_recognised(tmp_path):
    for rec in RECORDS:
        write_record(tmp_path / "run", rec)
    folder = tmp_path / "out-tables"
    folder.mkdir()
    (folder / "tables.md").write_text("### s · disfa · au-detection\n\n| predictor | folds |\n")
    export(tmp_path / "run", tmp_path / "out.csv", wide=True)
    assert (folder / "tables.md").read_text().startswith("<!-- affbench export")
