"""affbench.reporting.plots: curves, per-label bars with fold spread and baselines, the paper comparison."""

from __future__ import annotations

import sys

import pytest
from test_results import RECORDS, record  # tests/harness is on sys.path (conftest)

from affbench.errors import AffbenchError
from affbench.reporting import plots
from affbench.reporting.records import write_record

PNG = b"\x89PNG\r\n\x1a\n"

PUBLISHED = """
[[experiment]]
id = "megraph-au"
tasks = ["au-detection"]

[[published]]
experiment = "megraph-au"
task = "au-detection"
metric = "f1"
value = 63.1
labels = { au6 = 54.0 }
scale = 0.01
source = "a table"
"""


def test_plots_are_png_files_in_the_run_folder(tmp_path):
    pytest.importorskip("matplotlib")
    for rec in RECORDS:
        write_record(tmp_path, rec)
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "s.toml").write_text(PUBLISHED)
    written = plots.plot_run(tmp_path)
    names = sorted(p.name for p in written)
    assert "per-label-f1-disfa-au-detection.png" in names
    assert "curve-disfa-au-detection-megraph-au-fold2.png" in names
    assert "paper-vs-affbench.png" in names
    for path in written:
        assert path.read_bytes()[:8] == PNG and path.parent == tmp_path / "plots" / "s"


@pytest.fixture
def captured(monkeypatch):
    """The figures the plot functions would save, kept open for inspection."""
    pytest.importorskip("matplotlib")
    figures = []

    def keep(fig, path):
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "_save_figure", keep)
    yield figures
    plt = plots.require_pyplot()
    for fig in figures:
        plt.close(fig)


def test_per_label_bars_mark_zero_and_missing_and_show_the_fold_spread_and_baseline(captured):
    records = [
        record("a", 1, 0.1, per_au={"au6": 0.0, "au12": 0.5}, baselines={"all-present": {"f1/au6": 0.3, "f1/au12": 0.4}}),
        record("a", 2, 0.1, per_au={"au6": 0.0, "au12": 0.7}),
        record("b", 1, 0.1, per_au={"au6": None, "au12": 0.0}),
    ]
    plots.plot_per_label(records, "f1", "x.png")
    axis = captured[0].axes[0]
    texts = [t.get_text() for t in axis.texts]
    assert texts.count("0") == 2 and texts.count("n/a") == 1  # a's au6 and b's au12 are 0; b's au6 is missing
    legend = [t.get_text() for t in axis.get_legend().get_texts()]
    assert legend == ["best trivial baseline (all-present)", "a (2 folds)", "b (1 fold)"]
    assert axis.get_legend().get_texts()[0].get_fontsize() >= 9
    error_bars = [c for c in axis.containers if getattr(c, "has_yerr", False)]
    assert len(error_bars) == 1  # only the encoder with two folds has a spread
    low, high = axis.get_ylim()
    assert low == 0.0 and high > 1.0


def test_all_zero_scores_get_a_zero_to_one_axis_not_a_collapsed_one(captured):
    plots.plot_per_label([record("a", 1, 0.0, per_au={"au6": 0.0, "au12": 0.0})], "f1", "x.png")
    low, high = captured[0].axes[0].get_ylim()
    assert low == 0.0 and high >= 1.0


def test_curves_name_the_selected_epoch_and_the_validation_metric(captured):
    plots.plot_curves(RECORDS[0], "x.png")
    legend = [t.get_text() for t in captured[0].axes[0].get_legend().get_texts()]
    assert legend[1] == "validation f1"
    assert legend[2] == "selected epoch 2: best validation f1"


def test_curves_say_when_validation_was_undefined_at_every_epoch(captured):
    rec = record("a", 1, 0.1)
    rec["curve"] = [dict(c, val=None) for c in rec["curve"]]
    plots.plot_curves(rec, "x.png")
    legend = [t.get_text() for t in captured[0].axes[0].get_legend().get_texts()]
    assert legend[1] == "validation f1: n/a (undefined on the validation rows)"


def test_plots_without_matplotlib_say_how_to_install_it(tmp_path, monkeypatch):
    for rec in RECORDS:
        write_record(tmp_path, rec)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(AffbenchError, match=r"pip install 'affbench\[plots\]'"):
        plots.plot_run(tmp_path)


def test_a_multi_task_curve_says_its_epoch_was_chosen_over_all_tasks_and_why_validation_is_missing(captured):
    rec = record("smm", 1, 0.1, task="va")
    rec.update(job_tasks=["au-detection", "expression", "va"], primary_metric="ccc", n={"train": 9, "val": 0, "test": 3})
    rec["curve"] = [dict(c, val=None) for c in rec["curve"]]
    plots.plot_curves(rec, "x.png")
    legend = [t.get_text() for t in captured[0].axes[0].get_legend().get_texts()]
    assert legend == ["training loss (va)", "validation ccc: n/a (this task has no validation rows)",
                      "selected epoch 2: best mean validation score of the model's 3 tasks (au-detection, expression, va)"]


def test_per_label_error_bars_are_the_intervals_where_there_are_some(captured):
    """An encoder with intervals gets them as asymmetric error bars; one without keeps its fold std."""
    records = [record("a", 1, 0.1, per_au={"au6": 0.4, "au12": 0.5}), record("a", 2, 0.1, per_au={"au6": 0.6, "au12": 0.7}),
               record("b", 1, 0.1, per_au={"au6": 0.2, "au12": 0.3}), record("b", 2, 0.1, per_au={"au6": 0.4, "au12": 0.3})]
    intervals = {"a": {"level": 0.9, "intervals": {"f1/au6": [0.3, 0.8], "f1/au12": [0.55, 0.65]}}}
    plots.plot_per_label(records, "f1", "x.png", intervals)
    axis = captured[0].axes[0]
    bars = [c for c in axis.containers if getattr(c, "has_yerr", False)]
    assert len(bars) == 2
    segments = bars[0].lines[2][0].get_segments()  # encoder a: from the interval's bounds
    assert [(round(s[0][1], 6), round(s[1][1], 6)) for s in segments] == [(0.3, 0.8), (0.55, 0.65)]
    spread = bars[1].lines[2][0].get_segments()  # encoder b: mean ± sample std over its two folds
    assert round(spread[0][1][1] - spread[0][0][1], 6) == round(2 * 0.1414213562, 6)
    assert "90% cluster bootstrap interval, else sample std over folds" in axis.get_title()


def test_paper_comparison_bars_carry_affbench_intervals(captured, tmp_path):
    """Per-encoder bars beside the papers: the interval where affbench has one, else the fold std."""
    from affbench.reporting.published import comparison_table, load_published

    suite = tmp_path / "s.toml"
    suite.write_text(PUBLISHED)
    records = [record("megraph-au", 1, 0.6, per_au={"au6": 0.5, "au12": 0.5}),
               record("megraph-au", 2, 0.4, per_au={"au6": 0.7, "au12": 0.5})]
    for r in records:
        r["experiment"] = "megraph-au"
    intervals = {("s", "disfa", "au-detection", "megraph-au"): {"intervals": {"f1": [0.45, 0.58]}}}
    table = comparison_table(records, {"s": load_published(suite)}, intervals)
    overall = table[table["label"] == ""].iloc[0]
    assert (overall["affbench_ci_low"], overall["affbench_ci_high"]) == (0.45, 0.58)
    assert table[table["label"] == "au6"]["affbench_ci_low"].isna().all()
    plots.plot_comparison(table, "s", "x.png")
    axis = captured[0].axes[0]
    errors = [c for c in axis.containers if getattr(c, "has_xerr", False)][0]
    spans = sorted((round(a[0], 6), round(b[0], 6)) for (a, b) in errors.lines[2][0].get_segments())
    # au6: mean 0.6 ± std 0.1414 over its two folds; f1: 0.5 with its interval [0.45, 0.58]
    assert spans == [(0.45, 0.58), (round(0.6 - 0.141421, 6), round(0.6 + 0.141421, 6))]
    assert "interval, else sample std" in [t.get_text() for t in axis.get_legend().get_texts()][1]
