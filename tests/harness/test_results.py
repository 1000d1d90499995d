"""affbench.results: records, long and wide tables, Markdown, CSV export read back, plots."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from affbench import results
from affbench.errors import AffbenchError


def record(encoder: str, fold: int, f1: float, *, suite="s", dataset="disfa", task="au-detection", per_au=None):
    metrics = {"f1": f1, "accuracy": 0.9}
    for au, value in (per_au or {}).items():
        metrics[f"f1/{au}"] = value
    return {
        "suite": suite, "dataset": dataset, "task": task, "encoder": encoder, "fold": fold, "kind": "au-detection",
        "metrics": metrics, "primary_metric": "f1", "selected_epoch": 2,
        "curve": [{"epoch": 1, "train_loss": 0.9, "val": 0.3, "lr": 1e-3},
                  {"epoch": 2, "train_loss": 0.7, "val": 0.4, "lr": 1e-4}],
    }


RECORDS = [
    record("megraph-au", 1, 0.5, per_au={"au6": 0.6, "au12": 0.8}),
    record("megraph-au", 2, 0.7, per_au={"au6": 0.4, "au12": 0.6}),
    record("fan-au", 1, 0.2),
]


def test_records_round_trip_and_nan_becomes_missing(tmp_path):
    rec = record("x", 1, float("nan"))
    path = results.write_record(tmp_path, rec)
    assert path == tmp_path / "results" / "s" / "disfa__au-detection__x__fold1.json"
    loaded = results.load_records(tmp_path)
    assert loaded[0]["metrics"]["f1"] is None
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left nothing behind
    long = results.long_table(loaded)
    assert np.isnan(long.set_index("metric").loc["f1", "value"])


def test_long_table_has_one_row_per_metric_value():
    long = results.long_table(RECORDS)
    assert list(long.columns) == list(results.LONG_COLUMNS)
    assert len(long) == 4 + 4 + 2
    row = long[(long.encoder == "megraph-au") & (long.fold == 2) & (long.metric == "f1/au12")]
    assert row["value"].item() == 0.6


def test_wide_table_means_and_population_std_over_folds():
    wide = results.wide_table(RECORDS).set_index("encoder")
    assert wide.loc["megraph-au", "folds"] == 2
    assert wide.loc["megraph-au", "f1"] == pytest.approx(0.6)
    assert wide.loc["megraph-au", "f1 std"] == pytest.approx(0.1)  # |0.5 - 0.7| / 2
    assert wide.loc["megraph-au", "f1/au6"] == pytest.approx(0.5)
    assert np.isnan(wide.loc["fan-au", "f1 std"])  # one fold: no spread, not zero
    assert np.isnan(wide.loc["fan-au", "f1/au6"])
    columns = list(results.wide_table(RECORDS).columns)
    assert columns[:5] == ["suite", "dataset", "task", "encoder", "folds"]
    assert columns.index("f1") < columns.index("f1/au6") < columns.index("accuracy")


def test_markdown_shows_headline_metrics_with_spread():
    text = results.markdown(RECORDS)
    assert text.startswith("### s · disfa · au-detection")
    assert "| megraph-au | 2 | 0.600 ± 0.100 | 0.900 ± 0.000 |" in text
    assert "| fan-au | 1 | 0.200 | 0.900 |" in text
    assert "f1/au6" not in text and "f1/au6" in results.markdown(RECORDS, per_label=True)


@pytest.mark.parametrize("wide", [False, True])
def test_export_writes_csv_that_pandas_reads_back(tmp_path, wide):
    for rec in RECORDS:
        results.write_record(tmp_path / "run", rec)
    frame, table = results.export(tmp_path / "run", tmp_path / "out.csv", wide=wide)
    back = pd.read_csv(tmp_path / "out.csv")
    assert list(back.columns) == list(frame.columns)
    assert len(back) == len(frame) == (2 if wide else 10)
    if wide:
        assert back.set_index("encoder").loc["megraph-au", "f1"] == pytest.approx(0.6)
    else:
        assert set(back["fold"]) == {1, 2}
    assert "megraph-au" in table


def test_export_of_an_empty_or_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(AffbenchError, match="does not exist"):
        results.export(tmp_path / "none", tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AffbenchError, match="No finished benchmark cells in .*; run `affbench run-benchmark` first"):
        results.export(tmp_path / "empty", tmp_path / "x.csv")


def test_plots_are_png_files_in_the_run_folder(tmp_path):
    pytest.importorskip("matplotlib")
    for rec in RECORDS:
        results.write_record(tmp_path, rec)
    written = results.plot_run(tmp_path)
    names = sorted(p.name for p in written)
    assert "per-au-f1-disfa-au-detection.png" in names
    assert "curve-disfa-au-detection-megraph-au-fold2.png" in names
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.parent == tmp_path / "plots" / "s"


def test_plots_without_matplotlib_say_how_to_install_it(tmp_path, monkeypatch):
    for rec in RECORDS:
        results.write_record(tmp_path, rec)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(AffbenchError, match=r"pip install 'affbench\[plots\]'"):
        results.plot_run(tmp_path)


def test_records_and_csv_get_the_users_usual_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = results.write_record(tmp_path, RECORDS[0])
        csv = results.write_csv(results.long_table(RECORDS), tmp_path / "out.csv")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644 and csv.stat().st_mode & 0o777 == 0o644
