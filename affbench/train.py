"""Fit and score encoders: losses from the papers, model selection on validation, resumable epochs.

One call of :func:`fit` trains one model on one or more tasks of one dataset (multi-task models such
as SMM-EmotionNet learn AU, EXPR and VA together, each loss on the rows that task annotates), picks
the epoch with the best validation score, and leaves in ``workdir``:

* ``last.pt``: everything needed to continue after the last finished epoch (model, optimiser,
  scheduler, random states, history), written atomically at the end of every epoch, as tensors and
  plain values only (:mod:`affbench.checkpoints`; a damaged one is set aside and training restarts);
* ``best.pt``: the selected weights (``{"model": state_dict, ...}``), loadable by
  ``create_encoder(..., au_checkpoint=...)`` and by evaluation-only cells.

:func:`fit` only strings together one piece per concern:

* device and distribution: :mod:`affbench.distributed` (torchrun, DDP, each rank's slice of the
  batches) and :func:`affbench.train_step.place_model`;
* the step (bfloat16 autocast, channels-last, losses, clipping, schedule) and the epoch loop with
  its data-wait timing and progress bar: :mod:`affbench.train_step`;
* validation and scoring: :mod:`affbench.evaluation` (also :func:`evaluate_tasks` for the test rows);
* model selection, checkpoints and resume: :class:`_Selection` and the ``_save``/``_resume``
  functions below (rank 0 writes; every rank resumes from the same ``last.pt``);
* logging: one history entry and one line per epoch (:func:`_epoch_entry`, :func:`_epoch_line`);
  the caller's ``on_epoch_end`` turns entries into TensorBoard scalars (:mod:`affbench.tracking`).

The losses are in :mod:`affbench.losses`, the settings and the optimiser and schedule they build in
:mod:`affbench.settings` (``TrainSettings`` is importable from here too). Unannotated labels are
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

from affbench.checkpoints import (
    TRAIN_STATE_FORMAT,
    DamagedCheckpointError,
    load_checkpoint,
    resume_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from affbench.data import RowGroupBatchSampler, ShardImages, make_loader
from affbench.distributed import SINGLE, Distribution, RankBatches
from affbench.errors import AffbenchError
from affbench.evaluation import (  # noqa: F401 - re-exported: affbench.train is where callers look
    Validator,
    choose_workers,
    describe_validation,
    device_of,
    evaluate_tasks,
    evaluation_loader,
    forward,
    predict,
    score_tasks,
    selection_score,
    task_scores,
)
from affbench.losses import build_losses
from affbench.settings import TrainSettings, build_optimizer, build_scheduler  # noqa: F401 - re-exported
from affbench.train_step import TrainStep, place_model

_forward = forward  # the name the learnability tests use

# ----------------------------------------------------------------------------------------- tasks


@dataclass
class TaskData:
    """One task's targets over the whole label table, and its rows per role.

    Attributes
    ----------
    spec : affbench.protocols.TaskSpec
    y : ndarray
        Targets for every row of the label table: (n_rows, n_labels) float32, or (n_rows,) class
        indices for expression.
    mask : ndarray of bool
        True where ``y`` is annotated; same shape as ``y``.
    rows : dict
        ``"train"``, ``"val"``, ``"test"``: row positions (any may be empty).
    """

    spec: Any
    y: np.ndarray
    mask: np.ndarray
    rows: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.spec.name


def apply_selection(tasks: Sequence[TaskData], settings: TrainSettings) -> list[TaskData]:
    """The tasks as ``settings.selection`` trains them: under ``reference-last-epoch`` the validation
    rows join the training rows (ME-GraphAU trains on every training subject); otherwise unchanged."""
    if settings.selection != "reference-last-epoch":
        return list(tasks)
    empty = np.zeros(0, np.int64)
    return [TaskData(t.spec, t.y, t.mask, {**t.rows, "train": np.union1d(t.rows["train"], t.rows["val"]), "val": empty})
            for t in tasks]


def check_compatible(task_spec, encoder_spec) -> None:
    """Raise one clear sentence when an encoder cannot be trained or scored on a task."""
    key = task_spec.output_key
    heads = dict(encoder_spec.heads)
    if key not in heads:
        raise AffbenchError(
            f"Encoder {encoder_spec.name!r} has no {key!r} output (it has {', '.join(heads) or 'none'}), "
            f"so it cannot be used for task {task_spec.name!r}."
        )
    if heads[key] != task_spec.n_outputs:
        raise AffbenchError(
            f"Encoder {encoder_spec.name!r} outputs {heads[key]} {key} values but task {task_spec.name!r} "
            f"has {task_spec.n_outputs}; set the encoder's head size in the suite."
        )
    aus = getattr(encoder_spec, "aus", None)
    if key == "au" and aus is not None and all(str(n).startswith("au") for n in task_spec.label_names):
        names = tuple(f"au{a}" for a in aus)
        if names != tuple(task_spec.label_names):
            raise AffbenchError(
                f"Encoder {encoder_spec.name!r} predicts {', '.join(names)} but task {task_spec.name!r} scores "
                f"{', '.join(task_spec.label_names)}; set the encoder's AUs to the task's, in the same order."
            )
    if task_spec.kind == "au-intensity" and encoder_spec.au_output != "intensities":
        raise AffbenchError(
            f"Encoder {encoder_spec.name!r} outputs AU {encoder_spec.au_output}, not intensities, so it cannot "
            f"be scored on the intensity task {task_spec.name!r}."
        )


# ----------------------------------------------------------------------------------------- model states


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); call before building the model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_model_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a ``best.pt`` (or any ``{"model": state}`` / plain state dict), read as tensors
    only; an unreadable file is a :class:`~affbench.checkpoints.DamagedCheckpointError`."""
    blob = load_checkpoint(path)
    if isinstance(blob, Mapping) and "model" in blob:
        blob = blob["model"]
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise DamagedCheckpointError(path, "it holds no model weights")
    return dict(blob)


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


def _save_best(model: torch.nn.Module, epoch: int, score: float, path: Path) -> None:
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
        saved = load_checkpoint(workdir / "last.pt")
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
    model: torch.nn.Module,
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
        This process's place under torchrun (:mod:`affbench.distributed`): ``settings.batch_size``
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
    last_path, best_path = workdir / "last.pt", workdir / "best.pt"
    run = _resume(workdir, model, optimizer, scheduler, log, distribution)
    if run.resumed_from is not None:
        log(f"resuming after epoch {run.start_epoch} of {settings.epochs} from {last_path}")
    step = TrainStep(model, tasks, losses, optimizer, scheduler, settings, device=device, channels_last=channels_last,
                     distribution=distribution)
    distribution.seed_rank(settings.seed)
    eval_batch = settings.eval_batch_size or 2 * settings.batch_size
    validate = Validator(tasks, images, encoder_spec=model.spec, device=device,
                         batch_size=max(1, eval_batch // distribution.world_size), num_workers=workers,
                         distribution=distribution)

    train_seconds = sum(h.get("seconds", 0.0) for h in run.history)
    for epoch in range(run.start_epoch, settings.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        stats = step.run_epoch(loader, description=f"epoch {epoch + 1}/{settings.epochs}", progress=progress)
        run.steps += stats.steps
        entry = _epoch_entry(epoch, stats, optimizer, run.steps, loop_seconds=time.perf_counter() - started)
        metrics, score = validate(model)
        if metrics is not None:
            entry["val"], entry["val_score"] = metrics, score
            if validate.notes:  # what qualifies this epoch's numbers (a 0 or nan by convention)
                entry["val_warnings"] = validate.notes
        improved = run.offer(epoch + 1, score, validated=metrics is not None)
        if improved and distribution.is_main:
            _save_best(model, epoch + 1, score, best_path)
        entry["seconds"] = round(time.perf_counter() - started, 3)
        train_seconds += entry["seconds"]
        run.history.append(entry)
        if distribution.is_main:
            _save_last(last_path, model, optimizer, scheduler, run, epoch)
        log(_epoch_line(tasks, entry, settings.epochs, improved))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, entry)

    if distribution.decide(lambda: run.best_epoch is None or not best_path.is_file()):
        # Validation never gave a usable score: keep the last epoch, and say so.
        run.best_epoch = len(run.history)
        if distribution.is_main:
            _save_best(model, run.best_epoch, float("nan"), best_path)
    distribution.barrier()  # best.pt is on disk before any rank reads it
    return FitResult(
        best_epoch=run.best_epoch, best_score=run.best_score,
        selection=_describe_selection(settings, len(val_rows) > 0, run.best_score), history=run.history,
        steps=run.steps, epochs_run=len(run.history), resumed_from=run.resumed_from,
        losses={t.name: l.describe for t, l in zip(tasks, losses)}, train_seconds=round(train_seconds, 3),
        n_train=int(len(train_rows)),
    )
