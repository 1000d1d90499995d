"""One training step and one epoch of them: forward (bfloat16 autocast and channels-last on a GPU),
the tasks' losses summed, backward, gradient clipping, the optimiser and the per-step schedule.

Under torchrun the model is wrapped in DistributedDataParallel, each rank computes the losses of
its slice of the batch, and DDP averages the gradients; the ranks also agree on whether a step
has any loss at all, so that they always take the same optimiser steps.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from affbench.runtime.progress import progress_bar
from affbench.training.ddp import SINGLE, Distribution
from affbench.training.evaluation import forward

if TYPE_CHECKING:
    from affbench.training.settings import TrainSettings
    from affbench.training.tasks import TaskData


def place_model(model: torch.nn.Module, device: torch.device) -> bool:
    """Move ``model`` to ``device``; on a GPU channels-last and cuDNN autotuning. True: channels-last."""
    channels_last = device.type == "cuda"
    if device.type == "cuda":
        # Fixed input sizes: let cuDNN pick its fastest kernels. Runs stay seeded, but on a GPU
        # they are not bit-identical (autotuning, atomic adds); on the CPU they are.
        torch.backends.cudnn.benchmark = True
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return channels_last


@dataclass
class EpochStats:
    """What one epoch of steps measured (over all ranks)."""

    train_loss: dict[str, float | None]  # mean per task over the steps where it had a loss
    steps: int
    data_seconds: float  # time the loop waited for batches (the slowest rank's)


class TrainStep:
    """Applies one batch to the model: losses, backward, clip, optimiser and schedule steps."""

    def __init__(self, model: torch.nn.Module, tasks: Sequence[TaskData], losses: Sequence[Any],
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 settings: TrainSettings, *, device: torch.device, channels_last: bool,
                 distribution: Distribution = SINGLE):
        self.model = model  # the module itself; what runs forward is ``self.network`` (DDP under torchrun)
        self.network = distribution.wrap(model, device)
        self.tasks, self.losses = list(tasks), list(losses)
        self.optimizer, self.scheduler, self.settings = optimizer, scheduler, settings
        self.device, self.channels_last, self.distribution = device, channels_last, distribution

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Train on ``batch``; returns the summed loss (None without one) and each task's value."""
        rows = batch["row"].to(self.device)
        outputs = forward(self.network, batch["image"], self.model.spec, self.device, self.channels_last)
        loss, values = None, {}
        for task, loss_fn in zip(self.tasks, self.losses):
            value = loss_fn(outputs, rows, batch)
            if value is None:
                continue
            values[task.name] = float(value.detach())
            loss = value if loss is None else loss + value
        self.optimizer.zero_grad(set_to_none=True)
        if self._any_rank_has(loss):
            # A rank whose slice annotates no task still joins DDP's gradient average, with zeros.
            backward = loss if loss is not None else sum(v.float().sum() for v in outputs.values()) * 0.0
            backward.backward()
            if self.settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
            self.optimizer.step()
        self.scheduler.step()
        return loss, values

    def _any_rank_has(self, loss: torch.Tensor | None) -> bool:
        if not self.distribution.active:
            return loss is not None
        return self.distribution.max([loss is not None])[0] > 0

    def run_epoch(self, loader: Iterable[dict[str, Any]], *, description: str, progress: bool) -> EpochStats:
        """One pass over ``loader``; the per-task loss means and the data wait, over all ranks."""
        self.model.train()
        totals = {t.name: 0.0 for t in self.tasks}
        counts = {t.name: 0 for t in self.tasks}
        bar = progress_bar(loader, desc=description, unit="batch", enabled=progress, leave=False)
        steps = 0
        data_seconds, waited_from = 0.0, time.perf_counter()  # time the loop waits for batches
        for batch in bar:
            data_seconds += time.perf_counter() - waited_from
            loss, values = self(batch)
            for name, value in values.items():
                totals[name] += value
                counts[name] += 1
            steps += 1
            if loss is not None:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            waited_from = time.perf_counter()
        names = list(totals)
        if self.distribution.active:
            summed = self.distribution.sum([totals[n] for n in names] + [counts[n] for n in names])
            totals = dict(zip(names, summed[: len(names)]))
            counts = {n: int(round(c)) for n, c in zip(names, summed[len(names):])}
            data_seconds = self.distribution.max([data_seconds])[0]
        return EpochStats(train_loss={n: (totals[n] / counts[n] if counts[n] else None) for n in names},
                          steps=steps, data_seconds=data_seconds)
