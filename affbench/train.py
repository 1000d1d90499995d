"""Fit and score encoders: losses from the papers, model selection on validation, resumable epochs.

One call of :func:`fit` trains one model on one or more tasks of one dataset (multi-task models such
as SMM-EmotionNet learn AU, EXPR and VA together, each loss on the rows that task annotates), picks
the epoch with the best validation score, and leaves in ``workdir``:

* ``last.pt``: everything needed to continue after the last finished epoch (model, optimiser,
  scheduler, random states, history), written atomically at the end of every epoch, as tensors and
  plain values only (:mod:`affbench.checkpoints`; a damaged one is set aside and training restarts);
* ``best.pt``: the selected weights (``{"model": state_dict, ...}``), loadable by
  ``create_encoder(..., au_checkpoint=...)`` and by evaluation-only cells.

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
from dataclasses import dataclass
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
)
from affbench.data import RowGroupBatchSampler, ShardImages, make_loader, normalise
from affbench.errors import AffbenchError
from affbench.losses import build_losses
from affbench.progress import progress_bar
from affbench.settings import TrainSettings, build_optimizer, build_scheduler

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


def device_of(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


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


def task_scores(task_spec, encoder_spec, output: np.ndarray) -> np.ndarray:
    """Turn a model output into what :func:`affbench.scoring.evaluate` scores for a task.

    AU detection gets probabilities (a sigmoid of logits; intensities map to ``I / (2 t)`` clipped
    to [0, 1], so that 0.5 falls at the occurrence threshold ``t``); expression gets softmax
    probabilities; intensities and VA stay as they are.
    """
    output = np.asarray(output, dtype=np.float64)
    if task_spec.kind == "au-detection":
        kind = encoder_spec.au_output if task_spec.output_key == "au" else "logits"
        if kind == "logits":
            return 1.0 / (1.0 + np.exp(-np.clip(output, -60, 60)))
        if kind == "intensities":
            threshold = task_spec.binarize_at or 1.0
            return np.clip(output / (2.0 * threshold), 0.0, 1.0)
        return np.clip(output, 0.0, 1.0)
    if task_spec.kind == "expression":
        shifted = output - output.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)
    return output


# ----------------------------------------------------------------------------------------- states


def _save_best(model: torch.nn.Module, epoch: int, score: float, path: Path) -> None:
    """The selected weights, with what rebuilds their architecture (read by :func:`load_model_state`)."""
    spec = model.spec
    save_checkpoint({"model": model.state_dict(), "epoch": epoch, "score": score,
                     "encoder": spec.name, "options": dict(spec.options)}, path)


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


# ----------------------------------------------------------------------------------------- loops


def choose_workers(device: torch.device, requested: int | None) -> int:
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return 1 if cores > 2 else 0


def _forward(model, images: torch.Tensor, encoder_spec, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    x = normalise(images, encoder_spec.mean, encoder_spec.std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return model(x)


def evaluation_loader(
    images: ShardImages, rows: np.ndarray, *, batch_size: int, num_workers: int, device: torch.device,
    persistent: bool = True,
) -> torch.utils.data.DataLoader:
    """A deterministic loader over ``rows`` in table order (each row group is read once)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64), kind="stable")
    sampler = RowGroupBatchSampler(rows, images.row_groups, batch_size, shuffle=False)
    return make_loader(images.with_mode(train=False), sampler, num_workers=num_workers,
                       pin_memory=device_of(device).type == "cuda", persistent=persistent)


def predict(
    model: torch.nn.Module,
    images: ShardImages,
    rows: np.ndarray,
    *,
    encoder_spec,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    keys: Sequence[str] | None = None,
    progress: bool = False,
    description: str = "predict",
    loader: torch.utils.data.DataLoader | None = None,
) -> dict[str, np.ndarray]:
    """Model outputs (float32 numpy) for ``rows``, in the order of ``rows``.

    ``keys`` limits which outputs are kept (heatmaps are large). ``loader`` reuses one made by
    :func:`evaluation_loader` for the same rows (its workers stay alive between calls).
    """
    device = device_of(device)
    rows = np.asarray(rows, dtype=np.int64)
    outputs: dict[str, list[np.ndarray]] = {}
    if len(rows) == 0:
        return {}
    order = np.argsort(rows, kind="stable")  # table order reads each row group once
    if loader is None:
        loader = evaluation_loader(images, rows, batch_size=batch_size, num_workers=num_workers, device=device,
                                   persistent=False)
    channels_last = device.type == "cuda"
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in progress_bar(loader, desc=description, unit="batch", enabled=progress, leave=False):
                result = _forward(model, batch["image"], encoder_spec, device, channels_last)
                for key, value in result.items():
                    if keys is not None and key not in keys:
                        continue
                    outputs.setdefault(key, []).append(value.float().cpu().numpy())
    finally:
        model.train(was_training)
    merged = {k: np.concatenate(v) for k, v in outputs.items()}
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return {k: v[inverse] for k, v in merged.items()}


def score_tasks(
    tasks: Sequence[TaskData], role: str, outputs_by_row: Mapping[str, np.ndarray], rows: np.ndarray, encoder_spec,
    *, notes: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of every task on its ``role`` rows, from outputs predicted for ``rows``.

    Warnings raised while scoring (a label without positives, a constant prediction: the value is
    then 0 or undefined by convention) are not shown; with ``notes`` they are collected per task
    name, each once, so that the result record can carry them next to the numbers they qualify.
    """
    import warnings

    from affbench.scoring import evaluate

    position = {int(r): i for i, r in enumerate(rows)}
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        task_rows = task.rows[role]
        if len(task_rows) == 0:
            continue
        index = np.array([position[int(r)] for r in task_rows], dtype=np.int64)
        scores = task_scores(task.spec, encoder_spec, outputs_by_row[task.spec.output_key][index])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results[task.name] = evaluate(task.spec, task.y[task_rows], scores, mask=task.mask[task_rows])
        if notes is not None:
            found = notes.setdefault(task.name, [])
            for warning in caught:
                text = str(warning.message)
                if text not in found:
                    found.append(text)
    return results


def describe_validation(tasks: Sequence[TaskData], metrics: Mapping[str, Mapping[str, float]] | None,
                        score: float) -> str:
    """``validation f1 0.4120`` (one task) or ``validation au-detection f1 0.41, va ccc 0.20 (mean 0.31)``."""
    if not metrics:
        return "validation n/a (no validation rows)"

    def shown(value) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"

    if len(tasks) == 1:
        task = tasks[0]
        return f"validation {task.spec.primary_metric} {shown(metrics.get(task.name, {}).get(task.spec.primary_metric))}"
    parts = [f"{t.name} {t.spec.primary_metric} {shown(metrics.get(t.name, {}).get(t.spec.primary_metric))}" for t in tasks]
    return f"validation {', '.join(parts)} (mean {shown(score)})"


def selection_score(tasks: Sequence[TaskData], metrics: Mapping[str, Mapping[str, float]]) -> float:
    """Mean of each task's primary metric (every registered primary metric is higher-is-better)."""
    values = [metrics[t.name][t.spec.primary_metric] for t in tasks if t.name in metrics]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


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

    Returns
    -------
    FitResult
    """
    device = device_of(device)
    tasks = apply_selection(tasks, settings)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob(".*.tmp"):  # a checkpoint being written when the last run was killed
        stale.unlink(missing_ok=True)
    encoder_spec = model.spec
    losses = build_losses(tasks, encoder_spec, settings, device)
    train_rows = np.unique(np.concatenate([t.rows["train"] for t in tasks]))
    val_rows = np.unique(np.concatenate([t.rows["val"] for t in tasks]))
    if len(train_rows) == 0:
        raise AffbenchError(f"No training rows for task(s) {', '.join(t.name for t in tasks)}.")

    sampler = RowGroupBatchSampler(
        train_rows, images.row_groups, settings.batch_size, shuffle=True, seed=settings.seed,
        drop_last=True, max_batches=settings.max_steps,
    )
    workers = choose_workers(device, settings.num_workers)
    loader = make_loader(images.with_mode(train=True), sampler, num_workers=workers, pin_memory=device.type == "cuda",
                         seed=settings.seed)
    channels_last = device.type == "cuda"
    if device.type == "cuda":
        # Fixed input sizes: let cuDNN pick its fastest kernels. Runs stay seeded, but on a GPU
        # they are not bit-identical (autotuning, atomic adds); on the CPU they are.
        torch.backends.cudnn.benchmark = True
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, settings)
    scheduler = build_scheduler(optimizer, settings, len(sampler))

    history: list[dict[str, Any]] = []
    best_epoch, best_score = None, float("nan")
    steps, start_epoch, resumed_from = 0, 0, None
    last_path, best_path = workdir / "last.pt", workdir / "best.pt"
    state = resume_training_state(workdir, model, optimizer, scheduler, log)
    if state is not None:
        history, steps = state["history"], state["steps"]
        best_epoch, best_score = state["best_epoch"], state["best_score"]
        start_epoch = resumed_from = state["epoch"] + 1
        log(f"resuming after epoch {start_epoch} of {settings.epochs} from {last_path}")

    train_seconds = sum(h.get("seconds", 0.0) for h in history)
    eval_batch = settings.eval_batch_size or 2 * settings.batch_size
    val_loader = (evaluation_loader(images, val_rows, batch_size=eval_batch, num_workers=workers, device=device)
                  if len(val_rows) else None)
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        model.train()
        totals: dict[str, float] = {t.name: 0.0 for t in tasks}
        counts: dict[str, int] = {t.name: 0 for t in tasks}
        bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", enabled=progress,
                           leave=False)
        data_seconds, waited_from = 0.0, time.perf_counter()  # time the loop waits for batches
        for batch in bar:
            data_seconds += time.perf_counter() - waited_from
            rows = batch["row"].to(device)
            outputs = _forward(model, batch["image"], encoder_spec, device, channels_last)
            loss = None
            for task, loss_fn in zip(tasks, losses):
                value = loss_fn(outputs, rows, batch)
                if value is None:
                    continue
                totals[task.name] += float(value.detach())
                counts[task.name] += 1
                loss = value if loss is None else loss + value
            optimizer.zero_grad(set_to_none=True)
            if loss is not None:
                loss.backward()
                if settings.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
                optimizer.step()
            scheduler.step()
            steps += 1
            if loss is not None:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            waited_from = time.perf_counter()
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": {k: (totals[k] / counts[k] if counts[k] else None) for k in totals},
            "lr": float(optimizer.param_groups[0]["lr"]),
            "steps": steps,
            "data_seconds": round(data_seconds, 3),
        }
        if len(val_rows):
            outputs = predict(model, images, val_rows, encoder_spec=encoder_spec, device=device,
                              batch_size=eval_batch, num_workers=workers,
                              keys={t.spec.output_key for t in tasks}, progress=False, loader=val_loader)
            val_notes: dict[str, list[str]] = {}
            val_metrics = score_tasks(tasks, "val", outputs, val_rows, encoder_spec, notes=val_notes)
            score = selection_score(tasks, val_metrics)
            entry["val"] = val_metrics
            if any(val_notes.values()):  # what qualifies this epoch's numbers (a 0 or nan by convention)
                entry["val_warnings"] = {name: notes for name, notes in val_notes.items() if notes}
            entry["val_score"] = score
            improved = not math.isnan(score) and (best_epoch is None or math.isnan(best_score) or score > best_score)
        else:
            score = float("nan")
            improved = True  # no validation rows: the last epoch is kept
        if improved:
            best_epoch, best_score = epoch + 1, score
            _save_best(model, best_epoch, score, best_path)
        entry["seconds"] = round(time.perf_counter() - started, 3)
        train_seconds += entry["seconds"]
        history.append(entry)
        save_checkpoint(
            {"format": TRAIN_STATE_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng_state(), "history": history, "steps": steps, "epoch": epoch,
             "best_epoch": best_epoch, "best_score": best_score},
            last_path,
        )
        losses_text = ", ".join(f"{k} {v:.4f}" for k, v in entry["train_loss"].items() if v is not None)
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {losses_text or 'n/a'}; "
            f"{describe_validation(tasks, entry.get('val'), score)}" + (" (best so far)" if improved else ""))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, entry)

    if best_epoch is None or not best_path.is_file():
        # Validation never gave a usable score: keep the last epoch, and say so.
        best_epoch = len(history)
        _save_best(model, best_epoch, float("nan"), best_path)
    if settings.selection == "reference-last-epoch":
        selection = ("reference protocol: last epoch, trained on the training and validation subjects together "
                     "(no held-out model selection)")
    elif len(val_rows) and not math.isnan(best_score):
        selection = "best validation score (mean of the tasks' primary metrics)"
    else:
        selection = "last epoch (no usable validation score)"
    return FitResult(
        best_epoch=best_epoch, best_score=best_score, selection=selection, history=history, steps=steps,
        epochs_run=len(history), resumed_from=resumed_from,
        losses={t.name: l.describe for t, l in zip(tasks, losses)}, train_seconds=round(train_seconds, 3),
        n_train=int(len(train_rows)),
    )


def evaluate_tasks(
    model: torch.nn.Module,
    tasks: Sequence[TaskData],
    images: ShardImages,
    *,
    role: str = "test",
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: bool = False,
    notes: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of every task on its ``role`` rows (test by default); ``notes`` as :func:`score_tasks`."""
    device = device_of(device)
    rows = [t.rows[role] for t in tasks if len(t.rows[role])]
    if not rows:
        return {}
    all_rows = np.unique(np.concatenate(rows))
    model.to(device)
    outputs = predict(model, images, all_rows, encoder_spec=model.spec, device=device, batch_size=batch_size,
                      num_workers=choose_workers(device, num_workers), keys={t.spec.output_key for t in tasks},
                      progress=progress, description=role)
    return score_tasks(tasks, role, outputs, all_rows, model.spec, notes=notes)

