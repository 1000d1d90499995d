"""Published numbers: each shipped suite declares its papers' values; export shows them beside affbench's."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from affbench.benchmarks.suite import SUITES_DIR, parse_suite
from affbench.errors import AffbenchError
from affbench.reporting.export import export
from affbench.reporting.published import parse_published
from affbench.reporting.records import write_record

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PAPER_SUITES = ("abaw3", "disfa-au", "thesis-au", "thesis-caer")


def fake_run(tmp_path, suite: str) -> tuple[dict, list[tuple]]:
    """Records for every published (experiment, task) of a shipped suite, each value = paper + 0.01."""
    data = tomllib.loads((SUITES_DIR / f"{suite}.toml").read_text())
    experiments = {e["id"]: e for e in data["experiment"]}
    run = tmp_path / suite
    (run / "suites").mkdir(parents=True)
    (run / "suites" / f"{suite}.toml").write_text((SUITES_DIR / f"{suite}.toml").read_text())
    records: dict[tuple[str, str], dict] = {}
    expected = []
    for entry in data["published"]:
        experiment = experiments[entry["experiment"]]
        key = (entry["experiment"], entry["task"])
        rec = records.setdefault(key, {
            "suite": suite, "dataset": experiment["dataset"], "task": entry["task"], "fold": 1,
            "encoder": experiment.get("encoder") or experiments[experiment["evaluate"]["experiment"]]["encoder"],
            "experiment": entry["experiment"], "metrics": {}, "kind": "x"})
        scale = entry.get("scale", 1.0)
        values = dict(entry.get("labels", {}))
        if "value" in entry:
            values[""] = entry["value"]
        for label, printed in values.items():
            paper = printed * scale
            rec["metrics"][entry["metric"] + (f"/{label}" if label else "")] = paper + 0.01
            expected.append((entry["experiment"], entry["task"], entry["metric"], label, paper))
    # Two experiments of a suite may share an encoder on one dataset and task only across suites.
    for rec in records.values():
        rec["encoder"] = f"{rec['encoder']}-{rec['experiment']}"  # one record file per experiment
        write_record(run, rec)
    return run, expected


@pytest.mark.parametrize("suite", PAPER_SUITES)
def test_every_published_number_of_a_shipped_suite_appears_in_the_export(tmp_path, suite):
    run, expected = fake_run(tmp_path, suite)
    assert expected, f"{suite} declares no published numbers"
    exported = export(run, tmp_path / f"{suite}.csv")
    back = pd.read_csv(tmp_path / f"{suite}-vs-paper.csv", dtype={"label": str})
    assert len(back) == len(expected) == len(exported.comparison)
    for experiment, task, metric, label, paper in expected:
        row = back[(back.experiment == experiment) & (back.task == task) & (back.metric == metric)
                   & (back.label.fillna("") == label)]
        assert len(row) == 1, (experiment, task, metric, label)
        assert row["paper"].item() == pytest.approx(paper)
        assert row["affbench"].item() == pytest.approx(paper + 0.01)
        assert row["difference"].item() == pytest.approx(0.01)
        assert row["source"].item()
    assert f"### {suite}: paper vs affbench" in exported.markdown


def test_transcribed_values_of_the_papers(tmp_path):
    """A few numbers checked against the printed tables by hand (thesis Tables 4-6, ABAW3 Table 1)."""
    def values(suite):
        data = tomllib.loads((SUITES_DIR / f"{suite}.toml").read_text())
        return {(p["experiment"], p["metric"]): p for p in data["published"]}

    assert values("thesis-caer")[("caer-emotiram-fau-megraph", "accuracy")]["value"] == 0.66
    assert values("thesis-au")[("disfa-after-caer", "f1")]["labels"]["au6"] == 0.0067
    assert values("thesis-au")[("happy-megraph", "any_active_rate")]["value"] == 0.98
    assert values("abaw3")[("inception-mtl", "ccc")]["labels"] == {"valence": 0.441, "arousal": 0.485}
    disfa = values("disfa-au")[("megraph", "f1")]
    assert disfa["value"] == 63.1 and disfa["scale"] == 0.01 and disfa["labels"]["au26"] == 53.0


def test_an_unrun_published_value_keeps_its_row_with_affbench_empty(tmp_path):
    run, _ = fake_run(tmp_path, "thesis-caer")
    for path in (run / "results" / "thesis-caer").glob("*emotiram-fau__*"):
        path.unlink()
    comparison = export(run, tmp_path / "x.csv").comparison
    row = comparison[comparison.experiment == "caer-emotiram-fau"]
    assert len(row) == 1 and pd.isna(row["affbench"].item()) and row["paper"].item() == 0.77


def test_wide_tables_carry_paper_rows(tmp_path):
    run, _ = fake_run(tmp_path, "abaw3")
    tables = export(run, tmp_path / "x.csv", wide=True).tables
    va = tables[("abaw3", "affwild2", "va")]
    paper = va[va["row"] == "paper"]
    assert sorted(paper["ccc_valence"].round(3)) == [0.23, 0.441, 0.447]
    assert sorted(paper["ccc_arousal"].round(3)) == [0.21, 0.485, 0.491]


USER_SUITE = """
[suite]
name = "mine"

[[experiment]]
id = "m"
dataset = "disfa"
tasks = ["au-detection"]
encoder = "megraph-au"

[[published]]
experiment = "m"
task = "au-detection"
metric = "f1"
value = 50.0
scale = 0.01
source = "my paper, Table 1"
"""


def test_a_users_suite_declares_published_values():
    suite = parse_suite(tomllib.loads(USER_SUITE))
    assert [(p.experiment, p.metric, dict(p.values), p.source) for p in suite.published] == [
        ("m", "f1", {"": 0.5}, "my paper, Table 1")]


@pytest.mark.parametrize("change, message", [
    ('experiment = "m"', "names experiment 'nope', which the suite does not declare"),
    ('task = "au-detection"', "experiment 'm' has no task 'nope'"),
    ('metric = "f1"', "Unknown metric 'nope'"),
    ('value = 50.0', "value must be a number; got 'nope'"),
    ('source = "my paper, Table 1"', "has no 'source'"),
])
def test_published_mistakes_are_one_clear_sentence(change, message):
    key = change.split(" = ")[0]
    broken = USER_SUITE.replace(change, f'{key} = "nope"' if key != "source" else 'notes = "x"')
    with pytest.raises(AffbenchError, match=message):
        parse_suite(tomllib.loads(broken))


def test_published_needs_a_value_or_labels():
    with pytest.raises(AffbenchError, match="gives neither a value nor labels"):
        parse_published([{"experiment": "m", "task": "t", "metric": "f1", "source": "s"}], {"m": ["t"]}, "x.toml")
