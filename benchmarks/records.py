"""What a benchmark run writes about itself: one result record per cell, and the provenance in it.

A record is the unit :mod:`affbench.reporting.records` reads back (tables, plots, export); its fields are
documented in docs/results.md ("Result records"). :mod:`affbench.benchmarks.harness` fills the job's
summary (:class:`JobSummary`) while training and scoring, and :meth:`JobSummary.cell_record` turns it
into each cell's record.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from affbench.benchmarks.plan import Job


def git_commit() -> str | None:
    """The commit of the affbench source tree, with ``+dirty`` for uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def task_baselines(tasks) -> dict[str, dict[str, dict[str, float | None]]]:
    """Each task's trivial predictors on the job's test rows (see affbench.scoring.baselines)."""
    from affbench.scoring.baselines import trivial_baselines

    return {t.name: trivial_baselines(t.spec, t.y, t.mask, t.rows) for t in tasks}


#: done.json keys that older affbench versions did not write: read as their defaults.
_OPTIONAL: dict[str, Callable[[], Any]] = {"fallback_crops": dict, "baselines": dict, "selection_protocol": lambda: "validation",
             "metric_warnings": dict, "validation_metric_warnings": dict, "world_size": lambda: None,
             "global_batch_size": lambda: None, "fresh_parameters": list, "data_loading": lambda: None,
             "test_outputs": dict, "ci": dict, "scoring": dict, "baselines_ci": dict, "leakage": lambda: None}


@dataclass
class JobSummary:
    """A finished job's summary (``RUNDIR/jobs/<job>/done.json``): the one type that result records
    are made from.

    Per-task fields map a task name to its value. :meth:`cell_record` is one cell's record;
    :meth:`to_dict` and :meth:`from_dict` are the done.json form (keys as the field names).
    """

    job: str
    config_hash: str
    mode: str  # "train" or "evaluate"
    metrics: dict[str, dict[str, Any]]
    validation_metrics: dict[str, dict[str, Any]]
    n: dict[str, dict[str, int]]
    excluded: dict[str, Any]
    validation_split: dict[str, Any]
    test_groups: dict[str, Any]
    primary_metric: dict[str, str]
    kind: dict[str, str]
    epochs: int | None
    epochs_planned: int | None
    selected_epoch: int | None
    selection: str | None
    steps: int | None
    resumed_from: int | None
    train_seconds: float
    loss: dict[str, Any]
    curve: dict[str, list[dict[str, Any]]]
    initialisation: str | None
    init_from: dict[str, Any] | None
    seed: int | None
    training: dict[str, Any] | None
    encoder_options: dict[str, Any]
    encoder_spec: dict[str, Any]
    device: str
    git_commit: str | None
    affbench_version: str
    data: dict[str, Any]
    wall_seconds: float
    finished_at: str
    fallback_crops: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    # "validation", or "reference-last-epoch": trained on the validation subjects too and kept the
    # last epoch (ME-GraphAU's protocol): not comparable with held-out selection.
    selection_protocol: str = "validation"
    metric_warnings: dict[str, list[str]] = field(default_factory=dict)
    validation_metric_warnings: dict[str, list[str]] = field(default_factory=dict)
    world_size: int | None = None
    global_batch_size: int | None = None
    fresh_parameters: list[str] = field(default_factory=list)
    data_loading: dict[str, Any] | None = None
    # Weights tested on subjects they were trained on, allowed by the suite (allow_leakage = true).
    leakage: dict[str, Any] | None = None
    # Per task: the kept test outputs (a path relative to the run folder), the confidence intervals
    # (affbench.reporting.outputs.interval_record) and the protocol and metric versions scored with.
    test_outputs: dict[str, str] = field(default_factory=dict)
    ci: dict[str, dict[str, Any]] = field(default_factory=dict)
    scoring: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per task and trivial baseline that predicts a constant: its intervals on the same clusters.
    baselines_ci: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, summary: Mapping[str, Any]) -> JobSummary:
        """The summary a done.json holds; a missing required key is a ``KeyError``."""
        values = {}
        for f in fields(cls):
            if f.name in summary:
                values[f.name] = summary[f.name]
            elif f.name in _OPTIONAL:
                values[f.name] = _OPTIONAL[f.name]()
            else:
                raise KeyError(f.name)
        # None where a file wrote null for a mapping it now always has
        for name in ("baselines", "metric_warnings", "validation_metric_warnings", "fallback_crops", "test_outputs",
                     "ci", "scoring", "baselines_ci"):
            values[name] = values[name] or {}
        return cls(**values)

    def cell_record(self, cell, job: Job) -> dict[str, Any]:
        """The result record of one cell (a task of the job, scored on its fold)."""
        experiment, task = job.experiment, cell.task
        return {
            "suite": cell.suite, "dataset": cell.dataset, "task": task, "encoder": cell.encoder, "fold": cell.fold,
            # Which run of the cell: a seed of the suite's seeds (None: none listed) and the
            # partition of subjects into folds (0: the published one; k: random partition k).
            "run": {"seed": cell.seed, "partition": cell.partition},
            "experiment": experiment.id, "label": experiment.label or experiment.encoder,
            "job_tasks": list(experiment.tasks),
            "variant": experiment.variant or None,
            "kind": self.kind[task], "mode": self.mode,
            "metrics": self.metrics.get(task, {}),
            "ci": self.ci.get(task), "test_outputs": self.test_outputs.get(task),
            "scoring": self.scoring.get(task),
            "baselines": self.baselines.get(task, {}), "baselines_ci": self.baselines_ci.get(task, {}),
            "validation_metrics": self.validation_metrics.get(task, {}),
            "primary_metric": self.primary_metric[task],
            "n": self.n[task], "excluded": self.excluded[task],
            "fallback_crops": self.fallback_crops.get(task),
            "validation_split": self.validation_split[task],
            "test_groups": self.test_groups[task],
            "config_hash": job.config_hash, "job": job.key,
            "seed": self.seed, "device": self.device, "world_size": self.world_size,
            "global_batch_size": self.global_batch_size,
            "git_commit": self.git_commit,
            "affbench_version": self.affbench_version, "wall_seconds": self.wall_seconds,
            "train_seconds": self.train_seconds, "epochs": self.epochs,
            "epochs_planned": self.epochs_planned, "selected_epoch": self.selected_epoch,
            "selection": self.selection,
            "selection_protocol": self.selection_protocol,
            "metric_warnings": self.metric_warnings.get(task, []),
            "validation_metric_warnings": self.validation_metric_warnings.get(task, []),
            "steps": self.steps, "resumed_from": self.resumed_from,
            "initialisation": self.initialisation, "init_from": self.init_from,
            "fresh_parameters": self.fresh_parameters,
            "loss": self.loss.get(task), "training": self.training,
            "encoder_options": self.encoder_options, "encoder_spec": self.encoder_spec,
            "data": self.data, "data_loading": self.data_loading,
            "curve": self.curve.get(task, []),
            "finished_at": self.finished_at, "notes": experiment.notes, "leakage": self.leakage,
        }
