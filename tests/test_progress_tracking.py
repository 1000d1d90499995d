"""affbench.runtime.progress (plain lines off a terminal, silence with --quiet) and affbench.training.tensorboard (TensorBoard)."""

from __future__ import annotations

import io

import pytest

from affbench.runtime.progress import PlainProgress, progress_bar


class Log(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_off_a_terminal_progress_is_plain_lines_without_carriage_returns():
    log = Log()
    bar = progress_bar(range(5), total=5, desc="disfa", unit="frame", stream=log, interval=0.0)
    assert isinstance(bar, PlainProgress)
    assert list(bar) == [0, 1, 2, 3, 4]
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 6  # one per update (interval 0) and one at the end
    assert lines[0].startswith("disfa: 1/5 frame (20.0%)") and "s left" in lines[0]
    assert lines[-1].startswith("disfa: 5/5 frame (100.0%)") and "done in" in lines[-1]


def test_plain_lines_come_at_most_every_interval():
    log = Log()
    with progress_bar(total=1000, desc="x", stream=log, interval=3600) as bar:
        for _ in range(1000):
            bar.update(1)
    assert log.getvalue() == ""  # short work: the caller's summary says it finished


def test_quiet_shows_nothing():
    log = Log()
    for _ in progress_bar(range(3), enabled=False, stream=log):
        pass
    assert log.getvalue() == ""


def test_on_a_terminal_it_is_a_tqdm_bar():
    from tqdm import tqdm

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = progress_bar(range(2), stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()


def test_epoch_scalars_are_written_for_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from affbench.training.tensorboard import open_tracker

    tracker = open_tracker(tmp_path, "job-1")
    for epoch, loss in ((1, 0.9), (2, 0.7)):
        tracker.log_epoch({"epoch": epoch, "train_loss": {"au-detection": loss, "va": None}, "lr": 0.1 / epoch,
                           "val": {"au-detection": {"f1": 0.2 * epoch, "f1/au6": 0.5}}, "val_score": 0.2 * epoch,
                           "seconds": 3.0, "data_seconds": 1.0})
    tracker.log_test({"au-detection": {"f1": 0.33}}, step=2)
    tracker.close()
    events = EventAccumulator(str(tmp_path / "tensorboard" / "job-1"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"loss/au-detection", "validation/au-detection/f1", "validation/selection_score", "lr",
                    "time/epoch_seconds", "time/data_wait_seconds", "test/au-detection/f1"}
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss/au-detection")] == [(1, 0.9), (2, 0.7)]
    assert [round(e.value, 6) for e in events.Scalars("lr")] == [0.1, 0.05]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("test/au-detection/f1")] == [(2, 0.33)]


def test_without_tensorboard_nothing_is_tracked(tmp_path, monkeypatch):
    import sys

    from affbench.training import tensorboard as tracking

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert tracking.open_tracker(tmp_path, "job") is None
    assert not (tmp_path / "tensorboard").exists()


def test_epoch_lines_name_their_validation_metric():
    from types import SimpleNamespace

    from affbench.training.evaluation import describe_validation

    def task(name, metric):
        return SimpleNamespace(name=name, spec=SimpleNamespace(primary_metric=metric))

    au, va = task("au-detection", "f1"), task("va", "ccc")
    assert describe_validation([au], {"au-detection": {"f1": 0.412, "accuracy": 0.9}}, 0.412) == "validation f1 0.4120"
    assert describe_validation([au, va], {"au-detection": {"f1": 0.4}, "va": {"ccc": float("nan")}}, 0.4) == (
        "validation au-detection f1 0.4000, va ccc n/a (mean 0.4000)")
    assert describe_validation([au], {}, float("nan")) == "validation n/a (no validation rows)"
