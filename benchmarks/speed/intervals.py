"""Cost of the confidence intervals against scoring itself, on a DISFA-sized test set, in the same run.

The test set is DISFA's whole: 130,814 frames of 27 subjects, 12 AUs, scored as the DISFA
protocol does (3 folds of 9 test subjects, each scored, the folds averaged). The outputs are
synthetic (truth and a noisy prediction with a per-subject offset); the cost does not depend on
their values. Measured, each the best of ``--repeats`` runs:

* **scoring** (the baseline): :func:`~affbench.scoring.scorer.score_task` on each fold, as the
  harness scores a cell;
* **intervals**: :func:`~affbench.scoring.cluster_statistics.cluster_sums` on each fold and
  :func:`~affbench.scoring.bootstrap.fold_intervals` over the three (2000 resamples by default),
  as ``export`` makes the tables' intervals;
* **row-loop reference**: what the intervals would cost calling score_task on every resample,
  timed on a few resamples and extrapolated (the vectorised path exists to avoid it).

Run::

    python -P -m affbench.benchmarks.speed.intervals
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

import numpy as np

from affbench.scoring.bootstrap import BootstrapSettings, fold_intervals
from affbench.scoring.cluster_statistics import cluster_sums
from affbench.scoring.protocols import TaskSpec
from affbench.scoring.scorer import score_task

FRAMES, SUBJECTS, FOLDS = 130_814, 27, 3
AUS = ("au1", "au2", "au4", "au5", "au6", "au9", "au12", "au15", "au17", "au20", "au25", "au26")
TASKS = {
    "au-detection": TaskSpec(name="au-detection", kind="au-detection", label_columns=AUS, output_key="au",
                             n_outputs=12, label_names=AUS, metrics=("f1", "accuracy"), primary_metric="f1",
                             binarize_at=2.0),
    "au-intensity": TaskSpec(name="au-intensity", kind="au-intensity", label_columns=AUS, output_key="au",
                             n_outputs=12, label_names=AUS, metrics=("icc", "ccc"), primary_metric="icc"),
}


def synthetic_folds(kind: str, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(truth, scores, clusters) of each fold: DISFA's frames split over 27 subjects, 9 per fold."""
    rng = np.random.default_rng(seed)
    subject = np.sort(rng.integers(0, SUBJECTS, FRAMES))
    effect = rng.normal(scale=0.5, size=(SUBJECTS, len(AUS)))[subject]
    intensity = np.clip(np.round(rng.gamma(0.4, 1.5, (FRAMES, len(AUS)))), 0, 5)
    noisy = intensity * 0.8 + effect + rng.normal(scale=0.7, size=intensity.shape)
    if kind == "au-detection":
        truth = (intensity >= 2).astype(np.float32)
        scores = 1 / (1 + np.exp(-(noisy - 2)))
    else:
        truth, scores = intensity.astype(np.float32), noisy
    folds = []
    for fold in range(FOLDS):
        rows = subject % FOLDS == fold
        folds.append((truth[rows], scores[rows], subject[rows].astype(str)))
    return folds


def seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def fastest(repeats: int, *works: Callable[[], object]) -> list[float]:
    """The fastest of ``repeats`` timings of each, interleaved so that a busy moment hits all alike."""
    times = [[seconds(work) for work in works] for _ in range(repeats)]
    return [min(column) for column in zip(*times)]


def naive_seconds(task: TaskSpec, folds: list, resamples: int, few: int = 5) -> float:
    """score_task on the rows of each resample: ``few`` resamples per fold timed, extrapolated."""
    rng = np.random.default_rng(0)

    def loop() -> None:
        for y, s, c in folds:
            names = np.unique(c)
            for _ in range(few):
                drawn = rng.choice(names, size=len(names))
                index = np.concatenate([np.flatnonzero(c == d) for d in drawn])
                score_task(task, y[index], s[index])

    return seconds(loop) / few * resamples


def measure(name: str, settings: BootstrapSettings, repeats: int) -> str:
    """One task's line: scoring, intervals and the naive loop, in the same run."""
    task, folds = TASKS[name], synthetic_folds(name)
    scoring, intervals, summing = fastest(
        repeats,
        lambda: [score_task(task, y, s) for y, s, _ in folds],
        lambda: fold_intervals([cluster_sums(task, y, s, c) for y, s, c in folds], settings),
        lambda: [cluster_sums(task, y, s, c) for y, s, c in folds])
    naive = naive_seconds(task, folds, settings.resamples)
    return (f"{name:13s} scoring {scoring * 1000:7.1f} ms | intervals {intervals * 1000:7.1f} ms (cluster sums "
            f"{summing * 1000:5.1f} ms) = {intervals / scoring:5.2f} x scoring | score_task per resample "
            f"~{naive:6.1f} s = {naive / scoring:5.0f} x scoring")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    settings = BootstrapSettings(resamples=args.resamples)
    print(f"{FRAMES} frames, {SUBJECTS} subjects, {len(AUS)} AUs, {FOLDS} folds; {args.resamples} resamples; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} before")
    warnings.simplefilter("ignore")
    for name in TASKS:
        print(measure(name, settings, args.repeats))
    print(f"load {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
