"""Fit and score encoders: losses from the papers, model selection on validation, resumable epochs.

One call of :func:`fit` trains one model on one or more tasks of one dataset (multi-task models such
as SMM-EmotionNet learn AU, EXPR and VA together, each loss on the rows that task annotates), picks
the epoch with the best validation score, and leaves in ``workdir``:

* ``last.pt``: everything needed to continue after the last finished epoch (model, optimiser,
  scheduler, random states, history), written atomically at the end of every epoch, as tensors and
  plain values only (:mod:`affbench.training.checkpoints`; a damaged one is set aside and training restarts);
* ``best.pt``: the selected weights (``{"model": state_dict, ...}``), loadable by
  ``create_encoder(..., au_checkpoint=...)`` and by evaluation-only cells.

:func:`fit` only strings together one piece per concern:

* device and distribution: :mod:`affbench.training.ddp` (torchrun, DDP, each rank's slice of the
  batches) and :func:`affbench.training.step.place_model`;
* the step (bfloat16 autocast, channels-last, losses, clipping, schedule) and the epoch loop with
  its data-wait timing and progress bar: :mod:`affbench.training.step`;
* validation and scoring: :mod:`affbench.training.evaluation` (also :func:`evaluate_tasks` for the test rows);
* model selection, checkpoints and resume: :class:`_Selection` and the ``_save``/``_resume``
  functions below (rank 0 writes; every rank resumes from the same ``last.pt``);
* logging: one history entry and one line per epoch (:func:`_epoch_entry`, :func:`_epoch_line`);
  the caller's ``on_epoch_end`` turns entries into TensorBoard scalars (:mod:`affbench.training.tensorboard`).

The losses are in :mod:`affbench.training.losses`, the settings and the optimiser and schedule they build in
:mod:`affbench.training.settings` (``TrainSettings`` is importable from here too). Unannotated labels are
masked out of their task's loss and metric only.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affbench.data.loader import RowGroupBatchSampler, ShardImages, make_loader
from affbench.encoders.registry import Encoder
from affbench.errors import AffbenchError
from affbench.runtime.run_folder import JobFolder
from affbench.training.checkpoints import (
    TRAIN_STATE_FORMAT,
    load_training_checkpoint,
    resume_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from affbench.training.ddp import SINGLE, Distribution, RankBatches
from affbench.training.evaluation import (
    Validator,
    choose_workers,
    describe_validation,
    device_of,
)
from affbench.training.losses import build_losses
from affbench.training.settings import TrainSettings, build_optimizer, build_scheduler
from affbench.training.step import TrainStep, place_model
from affbench.training.tasks import TaskData, apply_selection

# ----------------------------------------------------------------------------------------- model states


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); call before building the model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- selection and checkpoints


@dataclass
class _Selection:
    """The run so far: the epochs' history, the steps taken and the selected epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    best_epoch: int | None = None
    best_score: float = float("nan")
    resumed_from: int | None = None  # the first epoch this process trains, when it resumed

    @property
    def start_epoch(self) -> int:
        return self.resumed_from or 0

    def offer(self, epoch: int, score: float, validated: bool) -> bool:
        """Record ``epoch``'s validation score; True when it becomes the selected epoch (the first
        usable or a higher score; without validation rows every epoch replaces the last)."""
        improved = (not validated or not math.isnan(score)
                    and (self.best_epoch is None or math.isnan(self.best_score) or score > self.best_score))
        if improved:
            self.best_epoch, self.best_score = epoch, score
        return improved


def _save_best(model: Encoder, epoch: int, score: float, path: Path) -> None:
    """The selected weights, with what rebuilds their architecture (read by :func:`load_model_state`)."""
    spec = model.spec
    save_checkpoint({"model": model.state_dict(), "epoch": epoch, "score": score,
                     "encoder": spec.name, "options": dict(spec.options)}, path)


def _save_last(path: Path, model, optimizer, scheduler, run: _Selection, epoch: int) -> None:
    """Everything a later run needs to continue after ``epoch`` (0-based)."""
    save_checkpoint(
        {"format": TRAIN_STATE_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
         "scheduler": scheduler.state_dict(), "rng": rng_state(), "history": run.history, "steps": run.steps,
         "epoch": epoch, "best_epoch": run.best_epoch, "best_score": run.best_score},
        path,
    )


def _resume(workdir: Path, model, optimizer, scheduler, log: Callable[[str], None],
            distribution: Distribution) -> _Selection:
    """The run recorded in ``workdir/last.pt`` applied to the model, optimiser, scheduler and random
    states, or a fresh one. Rank 0 reads (and sets aside a damaged file); the other ranks then load
    the same file, read only, so that every rank continues from the same state."""

    def on_rank_0() -> dict[str, Any] | None:
        state = resume_training_state(workdir, model, optimizer, scheduler, log)
        keys = ("history", "steps", "best_epoch", "best_score", "epoch")
        return None if state is None else {k: state[k] for k in keys}

    state = distribution.decide(on_rank_0)
    if state is None:
        return _Selection()
    if not distribution.is_main:
        saved = load_training_checkpoint(JobFolder(workdir).last)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
    return _Selection(history=state["history"], steps=state["steps"], best_epoch=state["best_epoch"],
                      best_score=state["best_score"], resumed_from=state["epoch"] + 1)


def _clean_workdir(workdir: str | os.PathLike, distribution: Distribution) -> Path:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if distribution.is_main:
        for stale in workdir.glob(".*.tmp"):  # a checkpoint being written when the last run was killed
            stale.unlink(missing_ok=True)
    return workdir


# ----------------------------------------------------------------------------------------- logging


def _epoch_entry(epoch: int, stats, optimizer, steps: int, *, loop_seconds: float) -> dict[str, Any]:
    """The history entry of ``epoch`` (0-based) after its steps; validation and time are added later."""
    return {
        "epoch": epoch + 1,
        "train_loss": stats.train_loss,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "steps": steps,
        "data_seconds": round(stats.data_seconds, 3),
        # Above a few percent the input pipeline, not the model, sets the pace.
        "data_wait_fraction": round(stats.data_seconds / loop_seconds, 4) if loop_seconds > 0 else None,
    }


def _epoch_line(tasks: Sequence[TaskData], entry: Mapping[str, Any], epochs: int, improved: bool) -> str:
    losses_text = ", ".join(f"{k} {v:.4f}" for k, v in entry["train_loss"].items() if v is not None)
    return (f"epoch {entry['epoch']}/{epochs}: loss {losses_text or 'n/a'}; "
            f"{describe_validation(tasks, entry.get('val'), entry.get('val_score', float('nan')))}"
            + (" (best so far)" if improved else ""))


def _describe_selection(settings: TrainSettings, validated: bool, best_score: float) -> str:
    if settings.selection == "reference-last-epoch":
        return ("reference protocol: last epoch, trained on the training and validation subjects together "
                "(no held-out model selection)")
    if validated and not math.isnan(best_score):
        return "best validation score (mean of the tasks' primary metrics)"
    return "last epoch (no usable validation score)"


# ----------------------------------------------------------------------------------------- fit


@dataclass
class FitResult:
    """What :func:`fit` leaves behind (also in ``workdir``)."""

    best_epoch: int | None
    best_score: float
    selection: str
    history: list[dict[str, Any]]
    steps: int
    epochs_run: int
    resumed_from: int | None
    losses: dict[str, str]
    train_seconds: float
    n_train: int


def _rows(tasks: Sequence[TaskData], role: str) -> np.ndarray:
    return np.unique(np.concatenate([t.rows[role] for t in tasks]))


def fit(
    model: Encoder,
    tasks: Sequence[TaskData],
    images: ShardImages,
    settings: TrainSettings,
    *,
    workdir: str | os.PathLike,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    distribution: Distribution = SINGLE,
) -> FitResult:
    """Train ``model`` on ``tasks`` and keep the epoch with the best validation score.

    Parameters
    ----------
    model : Encoder
        Built and seeded by the caller (:func:`seed_everything` before ``create_encoder``).
    tasks : sequence of TaskData
        One or more tasks; each loss uses only rows in that task's ``rows["train"]``.
    images : ShardImages
        The dataset's crops at the encoder's input size (with ``points`` for heatmap models).
    workdir : path
        Where ``last.pt`` and ``best.pt`` live; an existing ``last.pt`` is resumed from.
    on_epoch_end : callable, optional
        Called with ``(epoch, history_entry)`` after each epoch's checkpoint is saved.
    distribution : Distribution
        This process's place under torchrun (:mod:`affbench.training.ddp`): ``settings.batch_size``
        is then the global batch, each rank trains on its slice, only rank 0 writes and logs.

    Returns
    -------
    FitResult
    """
    device = device_of(device)
    tasks = apply_selection(tasks, settings)
    if not distribution.is_main:
        log, progress = (lambda message: None), False
    workdir = _clean_workdir(workdir, distribution)
    train_rows, val_rows = _rows(tasks, "train"), _rows(tasks, "val")
    if len(train_rows) == 0:
        raise AffbenchError(f"No training rows for task(s) {', '.join(t.name for t in tasks)}.")
    distribution.per_rank_batch(settings.batch_size)
    losses = build_losses(tasks, model.spec, settings, device)

    # One process's batches (the global batch), of which each rank takes its slice.
    sampler = RankBatches(RowGroupBatchSampler(
        train_rows, images.row_groups, settings.batch_size, shuffle=True, seed=settings.seed,
        drop_last=True, max_batches=settings.max_steps,
    ), distribution)
    workers = choose_workers(device, settings.num_workers)
    loader = make_loader(images.with_mode(train=True), sampler, num_workers=workers, pin_memory=device.type == "cuda",
                         seed=settings.seed)
    channels_last = place_model(model, device)
    optimizer = build_optimizer(model, settings)
    scheduler = build_scheduler(optimizer, settings, len(sampler))
    run = _resume(workdir, model, optimizer, scheduler, log, distribution)
    if run.resumed_from is not None:
        log(f"resuming after epoch {run.start_epoch} of {settings.epochs} from {JobFolder(workdir).last}")
    step = TrainStep(model, tasks, losses, optimizer, scheduler, settings, device=device, channels_last=channels_last,
                     distribution=distribution)
    distribution.seed_rank(settings.seed)
    eval_batch = settings.eval_batch_size or 2 * settings.batch_size
    validate = Validator(tasks, images, encoder_spec=model.spec, device=device,
                         batch_size=max(1, eval_batch // distribution.world_size), num_workers=workers,
                         distribution=distribution)
    loop = _EpochLoop(model, tasks, settings, step, sampler, loader, validate, optimizer, scheduler, run,
                      JobFolder(workdir), distribution, log, progress, on_epoch_end)
    train_seconds = sum(h.get("seconds", 0.0) for h in run.history)
    for epoch in range(run.start_epoch, settings.epochs):
        train_seconds += loop.epoch(epoch)["seconds"]
    loop.keep_last_epoch_if_never_validated()
    return FitResult(
        best_epoch=run.best_epoch, best_score=run.best_score,
        selection=_describe_selection(settings, len(val_rows) > 0, run.best_score), history=run.history,
        steps=run.steps, epochs_run=len(run.history), resumed_from=run.resumed_from,
        losses={t.name: loss.describe for t, loss in zip(tasks, losses)}, train_seconds=round(train_seconds, 3),
        n_train=int(len(train_rows)),
    )


@dataclass
class _EpochLoop:
    """One epoch of :func:`fit` after another: train, validate, select, checkpoint, log."""

    model: Encoder
    tasks: Sequence[TaskData]
    settings: TrainSettings
    step: TrainStep
    sampler: RankBatches
    loader: Any
    validate: Validator
    optimizer: Any
    scheduler: Any
    run: _Selection
    folder: JobFolder
    distribution: Distribution
    log: Callable[[str], None]
    progress: bool
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Run 0-based ``epoch``; its history entry."""
        run, settings = self.run, self.settings
        started = time.perf_counter()
        self.sampler.set_epoch(epoch)
        stats = self.step.run_epoch(self.loader, description=f"epoch {epoch + 1}/{settings.epochs}",
                                    progress=self.progress)
        run.steps += stats.steps
        entry = _epoch_entry(epoch, stats, self.optimizer, run.steps, loop_seconds=time.perf_counter() - started)
        metrics, score = self.validate(self.model)
        if metrics is not None:
            entry["val"], entry["val_score"] = metrics, score
            if self.validate.notes:  # what qualifies this epoch's numbers (a 0 or nan by convention)
                entry["val_warnings"] = self.validate.notes
        improved = run.offer(epoch + 1, score, validated=metrics is not None)
        if improved and self.distribution.is_main:
            _save_best(self.model, epoch + 1, score, self.folder.weights)
        entry["seconds"] = round(time.perf_counter() - started, 3)
        run.history.append(entry)
        if self.distribution.is_main:
            _save_last(self.folder.last, self.model, self.optimizer, self.scheduler, run, epoch)
        self.log(_epoch_line(self.tasks, entry, settings.epochs, improved))
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch + 1, entry)
        return entry

    def keep_last_epoch_if_never_validated(self) -> None:
        """Where validation never gave a usable score, keep the last epoch (and say so in the selection)."""
        run, best = self.run, self.folder.weights
        if self.distribution.decide(lambda: run.best_epoch is None or not best.is_file()):
            run.best_epoch = len(run.history)
            if self.distribution.is_main:
                _save_best(self.model, run.best_epoch, float("nan"), best)
        self.distribution.barrier()  # best.pt is on disk before any rank reads it
