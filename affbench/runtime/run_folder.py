"""The layout of a run folder (``run-benchmark --out RUNDIR``), named once.

::

    RUNDIR/run.json                         every run into the folder, appended
    RUNDIR/locks/<job>.lock                 which process trains which job (affbench.benchmarks.claims)
    RUNDIR/suites/<suite>.toml              the suite text each run used
    RUNDIR/verified-shards.json             which shards were checked against their manifest
    RUNDIR/jobs/<job>/job.json              what the job is (key, configuration, suite, experiment)
    RUNDIR/jobs/<job>/last.pt               resumable training state, removed when the job is done
    RUNDIR/jobs/<job>/best.pt               the selected weights
    RUNDIR/jobs/<job>/model.json            what inference needs to use best.pt (affbench export-model)
    RUNDIR/jobs/<job>/done.json             the finished job's summary, from which its records are made
    RUNDIR/jobs/<job>/test-outputs/<task>.parquet   every test row's labels and raw outputs (rescore, compare)
    RUNDIR/results/<suite>/<cell>.json      one result record per cell (and seed or partition run)
    RUNDIR/plots/<suite>/*.png              plots
    RUNDIR/tensorboard/<job>/               TensorBoard event files

Everything that reads or writes one of these paths takes it from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RUNS_FILE = "run.json"
SUITES_DIR = "suites"
VERIFIED_SHARDS_FILE = "verified-shards.json"
LOCKS_DIR = "locks"
JOBS_DIR = "jobs"
RESULTS_DIR = "results"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
#: Everything a run writes at the top of its folder (hidden lock files aside).
RUN_FOLDER_NAMES = frozenset({RUNS_FILE, SUITES_DIR, VERIFIED_SHARDS_FILE, LOCKS_DIR, JOBS_DIR, RESULTS_DIR, PLOTS_DIR,
                              TENSORBOARD_DIR})

JOB_FILE = "job.json"
LAST_FILE = "last.pt"
WEIGHTS_FILE = "best.pt"
DESCRIPTION_FILE = "model.json"
DONE_FILE = "done.json"
TEST_OUTPUTS_DIR = "test-outputs"


@dataclass(frozen=True)
class JobFolder:
    """One job's folder: ``RUNDIR/jobs/<job>`` (or any folder a fit writes into)."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def job_file(self) -> Path:
        return self.path / JOB_FILE

    @property
    def last(self) -> Path:
        return self.path / LAST_FILE

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def description(self) -> Path:
        return self.path / DESCRIPTION_FILE

    @property
    def done(self) -> Path:
        return self.path / DONE_FILE

    def test_outputs(self, task: str) -> Path:
        """The kept test outputs of one of the job's tasks (affbench.reporting.outputs)."""
        return self.path / TEST_OUTPUTS_DIR / f"{task}.parquet"

    def experiment(self) -> str | None:
        """The suite experiment this job belongs to, from its ``job.json``; None without a readable one."""
        try:
            described = json.loads(self.job_file.read_text())
        except (OSError, ValueError):
            return None
        return described.get("experiment") if isinstance(described, dict) else None


@dataclass(frozen=True)
class RunFolder:
    """A run folder, ``RUNDIR``.

    Examples
    --------
    >>> RunFolder("runs/demo").job("disfa-fan-au-au-intensity-fold1-0123456789").weights.as_posix()
    'runs/demo/jobs/disfa-fan-au-au-intensity-fold1-0123456789/best.pt'
    """

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    def holds_other_files(self) -> bool:
        """Whether the folder exists, is not empty and holds nothing a run writes: someone else's
        folder, which a run must not fill."""
        if not self.path.is_dir():
            return False
        names = {entry.name for entry in os.scandir(self.path)
                 if not (entry.name.startswith(".") and entry.name.endswith((".lock", ".tmp")))}
        return bool(names) and not names & RUN_FOLDER_NAMES

    @property
    def runs_file(self) -> Path:
        return self.path / RUNS_FILE

    @property
    def suites(self) -> Path:
        return self.path / SUITES_DIR

    def suite_copy(self, suite: str) -> Path:
        return self.suites / f"{suite}.toml"

    @property
    def verified_shards(self) -> Path:
        return self.path / VERIFIED_SHARDS_FILE

    @property
    def locks(self) -> Path:
        return self.path / LOCKS_DIR

    @property
    def jobs(self) -> Path:
        return self.path / JOBS_DIR

    def job(self, key: str) -> JobFolder:
        return JobFolder(self.jobs / key)

    @property
    def results(self) -> Path:
        return self.path / RESULTS_DIR

    @property
    def plots(self) -> Path:
        return self.path / PLOTS_DIR

    def tensorboard(self, job: str) -> Path:
        return self.path / TENSORBOARD_DIR / job

    def described_jobs(self) -> Iterator[JobFolder]:
        """The job folders that say what they are (hold a ``job.json``), in name order."""
        if not self.jobs.is_dir():
            return
        for path in sorted(self.jobs.iterdir()):
            folder = JobFolder(path)
            if folder.job_file.is_file():
                yield folder

    def job_of_experiment(self, experiment: str) -> JobFolder | None:
        """The first job folder (in name order) of the suite experiment ``experiment``, if any."""
        return next((job for job in self.described_jobs() if job.experiment() == experiment), None)
