"""What a benchmark run writes about itself: one result record per cell, and the provenance in it.

A record is the unit :mod:`affbench.results` reads back (tables, plots, export); its fields are
documented in the README ("Result records"). :mod:`affbench.benchmarks.harness` fills the job's
summary while training and scoring, and :func:`cell_record` turns it into each cell's record.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping
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


def task_baselines(tasks) -> dict[str, dict[str, dict[str, float]]]:
    """Each task's trivial predictors on the job's test rows (see affbench.baselines)."""
    from affbench.baselines import trivial_baselines

    return {t.name: trivial_baselines(t.spec, t.y, t.mask, t.rows) for t in tasks}


def cell_record(cell, job: Job, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The result record of one cell (a task of the job, scored on its fold) from the job's summary."""
    experiment, task = job.experiment, cell.task
    return {
        "suite": cell.suite, "dataset": cell.dataset, "task": task, "encoder": cell.encoder, "fold": cell.fold,
        "experiment": experiment.id, "label": experiment.label or experiment.encoder,
        "job_tasks": list(experiment.tasks),
        "variant": experiment.variant or None,
        "kind": summary["kind"][task], "mode": summary["mode"],
        "metrics": summary["metrics"].get(task, {}),
        "baselines": (summary.get("baselines") or {}).get(task, {}),
        "validation_metrics": summary["validation_metrics"].get(task, {}),
        "primary_metric": summary["primary_metric"][task],
        "n": summary["n"][task], "excluded": summary["excluded"][task],
        "fallback_crops": summary.get("fallback_crops", {}).get(task),
        "validation_split": summary["validation_split"][task],
        "test_groups": summary["test_groups"][task],
        "config_hash": job.config_hash, "job": job.key,
        "seed": summary["seed"], "device": summary["device"], "world_size": summary.get("world_size"),
        "global_batch_size": summary.get("global_batch_size"),
        "git_commit": summary["git_commit"],
        "affbench_version": summary["affbench_version"], "wall_seconds": summary["wall_seconds"],
        "train_seconds": summary["train_seconds"], "epochs": summary["epochs"],
        "epochs_planned": summary["epochs_planned"], "selected_epoch": summary["selected_epoch"],
        "selection": summary["selection"],
        # "validation", or "reference-last-epoch": trained on the validation subjects too and
        # kept the last epoch (ME-GraphAU's protocol): not comparable with held-out selection.
        "selection_protocol": summary.get("selection_protocol", "validation"),
        "metric_warnings": (summary.get("metric_warnings") or {}).get(task, []),
        # The same for the selected epoch's validation_metrics.
        "validation_metric_warnings": (summary.get("validation_metric_warnings") or {}).get(task, []),
        "steps": summary["steps"], "resumed_from": summary["resumed_from"],
        "initialisation": summary["initialisation"], "init_from": summary["init_from"],
        "fresh_parameters": summary.get("fresh_parameters", []),
        "loss": summary["loss"].get(task), "training": summary["training"],
        "encoder_options": summary["encoder_options"], "encoder_spec": summary["encoder_spec"],
        "data": summary["data"], "data_loading": summary.get("data_loading"),
        "curve": summary["curve"].get(task, []),
        "finished_at": summary["finished_at"], "notes": experiment.notes,
    }
