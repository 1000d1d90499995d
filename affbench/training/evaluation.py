"""Predict and score: model outputs for label-table rows, each task's metrics on them, and the
validation score that model selection maximises.

Under torchrun each process predicts its own share of the rows and the outputs are gathered
(:meth:`affbench.training.ddp.Distribution.gather`) before anything is scored, so that every row is
scored exactly once, on every process alike.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from affbench.data.loader import RowGroupBatchSampler, ShardImages, make_loader, normalise
from affbench.runtime.progress import progress_bar
from affbench.scoring.scorer import task_scores
from affbench.training.ddp import SINGLE, Distribution

if TYPE_CHECKING:
    from affbench.training.tasks import TaskData


def device_of(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def choose_workers(device: torch.device, requested: int | None) -> int:
    """DataLoader workers: the requested number, else by device (the GPU needs decoding help), out of
    this process's share of the cores (torchrun's ``LOCAL_WORLD_SIZE`` processes share a machine)."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1)))
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return 1 if cores > 2 else 0


def forward(model, images: torch.Tensor, encoder_spec, device: torch.device, channels_last: bool):
    """The model's outputs for a uint8 batch: normalised on ``device``, bfloat16 autocast on a GPU."""
    images = images.to(device, non_blocking=True)
    x = normalise(images, encoder_spec.mean, encoder_spec.std)
    # Loader batches arrive in channels_last memory (see ShardImages.__getitems__): the GPU path keeps
    # that layout, the CPU path computes on contiguous NCHW as before.
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
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
    keys: Collection[str] | None = None,
    progress: bool = False,
    description: str = "predict",
    loader: torch.utils.data.DataLoader | None = None,
    distribution: Distribution = SINGLE,
) -> dict[str, np.ndarray]:
    """Model outputs (float32 numpy) for ``rows``, in the order of ``rows``.

    ``keys`` limits which outputs are kept (heatmaps are large). ``loader`` reuses one made by
    :func:`evaluation_loader` for the same rows (its workers stay alive between calls); under
    torchrun it must cover this process's share (:meth:`Distribution.share`) of the sorted rows.
    With several processes ``keys`` is required and every process returns the outputs of all rows.
    """
    device = device_of(device)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return {}
    order = np.argsort(rows, kind="stable")  # table order reads each row group once
    local_rows = distribution.share(rows[order])
    outputs: dict[str, list[np.ndarray]] = {}
    if loader is None and len(local_rows):
        loader = evaluation_loader(images, local_rows, batch_size=batch_size, num_workers=num_workers, device=device,
                                   persistent=False)
    channels_last = device.type == "cuda"
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in progress_bar(loader or (), desc=description, unit="batch", enabled=progress, leave=False):
                result = forward(model, batch["image"], encoder_spec, device, channels_last)
                for key, value in result.items():
                    if keys is not None and key not in keys:
                        continue
                    outputs.setdefault(key, []).append(value.float().cpu().numpy())
    finally:
        model.train(was_training)
    merged = {k: np.concatenate(v) for k, v in outputs.items()}
    if distribution.active:
        if keys is None:
            raise ValueError("predict needs keys when several processes share the rows")
        merged = distribution.gather(local_rows, merged, keys=sorted(keys), expected=rows[order])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return {k: v[inverse] for k, v in merged.items()}


def score_tasks(
    tasks: Sequence[TaskData], role: str, outputs_by_row: Mapping[str, np.ndarray], rows: np.ndarray, encoder_spec,
    *, notes: dict[str, list[str]] | None = None, kept: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of every task on its ``role`` rows, from outputs predicted for ``rows``.

    With ``kept``, each task's raw model outputs on its ``role`` rows (in the order of
    ``task.rows[role]``, before :func:`task_scores`) are stored under its name, so that the caller
    can keep them and any metric can be recomputed later.

    Warnings raised while scoring (a label without positives, a constant prediction: the value is
    then 0 or undefined by convention) are not shown; with ``notes`` they are collected per task
    name, each once, so that the result record can carry them next to the numbers they qualify.
    """
    import warnings

    from affbench.scoring.scorer import score_task

    position = {int(r): i for i, r in enumerate(rows)}
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        task_rows = task.rows[role]
        if len(task_rows) == 0:
            continue
        index = np.array([position[int(r)] for r in task_rows], dtype=np.int64)
        raw = outputs_by_row[task.spec.output_key][index]
        if kept is not None:
            kept[task.name] = raw
        scores = task_scores(task.spec, encoder_spec, raw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results[task.name] = score_task(task.spec, task.y[task_rows], scores, mask=task.mask[task_rows])
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


class Validator:
    """Scores the model on the validation rows after each epoch (the loader's workers persist)."""

    def __init__(self, tasks: Sequence[TaskData], images: ShardImages, *, encoder_spec, device: torch.device,
                 batch_size: int, num_workers: int, distribution: Distribution = SINGLE):
        self.tasks, self.images, self.encoder_spec = tasks, images, encoder_spec
        self.device, self.batch_size, self.num_workers = device, batch_size, num_workers
        self.distribution = distribution
        #: The last call's scoring warnings per task (only tasks that had some): they qualify its numbers.
        self.notes: dict[str, list[str]] = {}
        self.rows = np.unique(np.concatenate([t.rows["val"] for t in tasks]))
        local = distribution.share(self.rows)
        self.loader = (evaluation_loader(images, local, batch_size=batch_size, num_workers=num_workers, device=device)
                       if len(local) else None)

    def __call__(self, model: torch.nn.Module) -> tuple[dict[str, dict[str, float]] | None, float]:
        """``(metrics per task, selection score)``; ``(None, nan)`` without validation rows."""
        if not len(self.rows):
            return None, float("nan")
        outputs = predict(model, self.images, self.rows, encoder_spec=self.encoder_spec, device=self.device,
                          batch_size=self.batch_size, num_workers=self.num_workers,
                          keys={t.spec.output_key for t in self.tasks}, progress=False, loader=self.loader,
                          distribution=self.distribution)
        notes: dict[str, list[str]] = {}
        metrics = score_tasks(self.tasks, "val", outputs, self.rows, self.encoder_spec, notes=notes)
        self.notes = {name: found for name, found in notes.items() if found}
        return metrics, selection_score(self.tasks, metrics)


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
    distribution: Distribution = SINGLE,
    kept: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of every task on its ``role`` rows (test by default); ``notes`` and ``kept`` as
    :func:`score_tasks`.

    Under torchrun every process predicts its share and all of them score the gathered outputs.
    """
    device = device_of(device)
    rows = [t.rows[role] for t in tasks if len(t.rows[role])]
    if not rows:
        return {}
    all_rows = np.unique(np.concatenate(rows))
    model.to(device)
    outputs = predict(model, images, all_rows, encoder_spec=model.spec, device=device, batch_size=batch_size,
                      num_workers=choose_workers(device, num_workers), keys={t.spec.output_key for t in tasks},
                      progress=progress, description=role, distribution=distribution)
    return score_tasks(tasks, role, outputs, all_rows, model.spec, notes=notes, kept=kept)
