"""Checkpoints hold tensors and plain values only: nothing in a run folder can run code, and a
damaged checkpoint is set aside and its job trained again instead of blocking the run."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from affbench.training.checkpoints import (
    DamagedCheckpointError,
    load_model_state,
    load_training_checkpoint,
    rng_state,
    set_rng_state,
)
from affbench.training.fit import fit, seed_everything
from affbench.training.settings import TrainSettings
from affbench.training.tasks import TaskData

SETTINGS = TrainSettings(epochs=2, batch_size=8, optimizer="adamw", lr=1e-3, schedule="cosine", seed=5,
                         num_workers=0, max_steps=3, augmentation={"hflip": 0.5})


class RunsAShellCommand:
    """Pickles to ``os.system(command)``: what an attacker would put into a shared run folder."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _train(prepared_root, workdir: Path, on_epoch_end=None):
    from affbench.data.loader import ShardImages
    from affbench.data.prepared import open_prepared
    from affbench.encoders.registry import create_encoder
    from affbench.scoring.protocols import Protocol

    prepared = open_prepared(prepared_root, "caer-s", columns=["expression"])
    protocol = Protocol.from_dict(prepared.protocol_dict)
    split = protocol.split_indices(prepared.meta, "expression", 1)
    y, mask = protocol.targets(prepared.meta, "expression")
    tasks = [TaskData(protocol.task("expression"), y, mask, {r: np.asarray(split[r]) for r in ("train", "val", "test")})]
    seed_everything(SETTINGS.seed)
    model = create_encoder("emotiram-f", input_size=48)
    images = ShardImages(prepared.folder, 48, SETTINGS.augmentation)
    messages: list[str] = []
    result = fit(model, tasks, images, SETTINGS, workdir=workdir, progress=False, log=messages.append,
                 on_epoch_end=on_epoch_end)
    return result, messages


@pytest.fixture(scope="module")
def clean(prepared_root, tmp_path_factory):
    """An uninterrupted training: its losses, and the checkpoint files it left."""
    workdir = tmp_path_factory.mktemp("clean")
    result, _ = _train(prepared_root, workdir)
    return [h["train_loss"] for h in result.history], workdir


def test_random_states_survive_a_tensors_only_round_trip(tmp_path):
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.rand(3).tolist()) == expected


def test_the_checkpoints_fit_writes_load_as_tensors_only(clean):
    _, workdir = clean
    for name in ("last.pt", "best.pt"):
        torch.load(workdir / name, weights_only=True)  # raises on anything but tensors and plain values


def test_a_crafted_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "owned"
    crafted = tmp_path / "best.pt"
    torch.save({"model": RunsAShellCommand(f"touch {marker}")}, crafted)
    with pytest.raises(DamagedCheckpointError, match=r"best\.pt is damaged or not an affbench checkpoint .*never unpickles"):
        load_model_state(crafted)
    assert not marker.exists()


def _write_truncated(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "empty": lambda clean_dir, path: path.write_bytes(b""),
    "garbage": lambda clean_dir, path: path.write_bytes(b"not a checkpoint at all\n" * 40),
    "truncated": lambda clean_dir, path: _write_truncated(clean_dir / "last.pt", path),
    "wrong keys": lambda clean_dir, path: torch.save({"model": {"weight": torch.zeros(2)}, "epoch": 0}, path),
    "crafted pickle": lambda clean_dir, path: torch.save(
        {"model": RunsAShellCommand(f"touch {path.parent / 'owned'}")}, path),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_last_checkpoint_is_set_aside_and_the_job_trains_from_the_start(prepared_root, tmp_path, clean, damage):
    losses, clean_dir = clean
    workdir = tmp_path / "job"
    workdir.mkdir()
    DAMAGE[damage](clean_dir, workdir / "last.pt")
    before = (workdir / "last.pt").read_bytes()

    result, messages = _train(prepared_root, workdir)

    assert not (workdir / "owned").exists()  # the crafted pickle ran nothing
    warnings = [m for m in messages if m.startswith("warning:")]
    assert len(warnings) == 1 and str(workdir / "last.pt") in warnings[0] and "last.pt.damaged" in warnings[0]
    assert (workdir / "last.pt.damaged").read_bytes() == before  # kept for inspection, not lost
    assert result.resumed_from is None and [h["train_loss"] for h in result.history] == losses
    assert load_model_state(workdir / "best.pt")  # the job finished with readable weights


def test_a_damaged_best_checkpoint_trains_the_job_again_instead_of_crashing_later(prepared_root, tmp_path, clean):
    losses, _ = clean
    workdir = tmp_path / "job"

    def stop(epoch, entry):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(prepared_root, workdir, on_epoch_end=stop)
    _write_truncated(workdir / "best.pt", workdir / "best.pt")  # last.pt is intact, its best weights are not

    result, messages = _train(prepared_root, workdir)

    assert any(str(workdir / "best.pt") in m and "damaged" in m for m in messages)
    assert (workdir / "best.pt.damaged").is_file()
    assert result.resumed_from is None and [h["train_loss"] for h in result.history] == losses
    load_training_checkpoint(workdir / "best.pt")
    assert load_model_state(workdir / "best.pt")


def test_a_kill_between_the_best_and_the_last_checkpoint_resumes_without_loss(prepared_root, tmp_path, clean,
                                                                                monkeypatch):
    """Within an epoch best.pt is written before last.pt: a kill between them leaves a newer best.pt."""
    from affbench.training import fit as train

    losses, clean_dir = clean
    # Seed 5 selects epoch 2 (validation 0.14 then 0.29); otherwise this test would not test the window.
    assert load_training_checkpoint(clean_dir / "best.pt")["epoch"] == 2
    real_save = train.save_checkpoint

    def killed_before_the_second_last_pt(obj, path):
        if Path(path).name == "last.pt" and obj["epoch"] == 1:
            raise KeyboardInterrupt
        real_save(obj, path)

    workdir = tmp_path / "job"
    monkeypatch.setattr(train, "save_checkpoint", killed_before_the_second_last_pt)
    with pytest.raises(KeyboardInterrupt):
        _train(prepared_root, workdir)
    monkeypatch.undo()
    assert load_training_checkpoint(workdir / "best.pt")["epoch"] == 2 and load_training_checkpoint(workdir / "last.pt")["epoch"] == 0

    result, messages = _train(prepared_root, workdir)

    assert not any(m.startswith("warning:") for m in messages)
    assert result.resumed_from == 1 and result.best_epoch == 2
    assert [h["train_loss"] for h in result.history] == losses
    clean_weights = load_model_state(clean_dir / "best.pt")
    assert all(torch.equal(v, clean_weights[k]) for k, v in load_model_state(workdir / "best.pt").items())
