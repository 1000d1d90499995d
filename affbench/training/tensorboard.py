"""Experiment tracking: each benchmark job's scalars as TensorBoard event files.

With the ``tensorboard`` extra installed, every job writes ``RUNDIR/tensorboard/<job>/`` so that
``tensorboard --logdir RUNDIR`` shows all jobs of all suites side by side. Scalars, per epoch:

* ``loss/<task>``: the mean training loss of the epoch;
* ``validation/<task>/<metric>``: every overall validation metric (``validation/au-detection/f1``),
  and ``validation/selection_score``, the score model selection maximises;
* ``lr``: the learning rate at the end of the epoch;
* ``time/epoch_seconds`` and ``time/data_wait_seconds``: wall time of the epoch and the part of it
  the training loop waited for batches (a large share means the input pipeline is the bottleneck);
  ``time/data_wait_fraction``: that wait as a fraction of the epoch's training loop;

and once per job, at the selected epoch: ``test/<task>/<metric>``. Without tensorboard nothing is
written and nothing fails.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from affbench.runtime.run_folder import RunFolder


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class JobTracker:
    """Writes one job's scalars; :func:`open_tracker` makes one, or None without tensorboard."""

    def __init__(self, folder: str | os.PathLike):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if value is None:
            return
        value = float(value)
        if math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, entry: Mapping[str, Any]) -> None:
        """One epoch's history entry from :func:`affbench.training.fit.fit`."""
        step = int(entry["epoch"])
        for task, loss in (entry.get("train_loss") or {}).items():
            self._scalar(f"loss/{task}", loss, step)
        for task, metrics in (entry.get("val") or {}).items():
            for key, value in metrics.items():
                if "/" not in key:
                    self._scalar(f"validation/{task}/{key}", value, step)
        self._scalar("validation/selection_score", entry.get("val_score"), step)
        self._scalar("lr", entry.get("lr"), step)
        self._scalar("time/epoch_seconds", entry.get("seconds"), step)
        self._scalar("time/data_wait_seconds", entry.get("data_seconds"), step)
        self._scalar("time/data_wait_fraction", entry.get("data_wait_fraction"), step)
        self.writer.flush()

    def log_test(self, metrics: Mapping[str, Mapping[str, Any]], step: int) -> None:
        """The job's test metrics (overall values) at ``step`` (the selected epoch)."""
        for task, values in metrics.items():
            for key, value in values.items():
                if "/" not in key:
                    self._scalar(f"test/{task}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tracker(run_dir: str | os.PathLike, job: str) -> JobTracker | None:
    """A tracker writing to ``run_dir/tensorboard/<job>``, or None when tensorboard is not installed."""
    if not tensorboard_available():
        return None
    return JobTracker(RunFolder(run_dir).tensorboard(job))
