"""Run a suite's jobs on a Dask cluster (``affbench run-benchmark ... --scheduler ADDRESS``).

This process plans the suite and sends every job to the cluster as one task. The worker that takes
a job runs it exactly as ``run-benchmark --job ID`` would (:func:`~affbench.benchmarks.harness.
run_benchmark` with ``job=``): under the job's lock in the run folder, with ``device="auto"``
settled on that worker, writing the job's checkpoints and records into the run folder as a local
run does. ``--data`` and ``--out`` must therefore be on a file system every worker sees at the same
path. A job that starts from another job's weights is sent with that job's task as a dependency:
Dask starts it only once that job has finished, and when that job failed it is not run.

A Dask worker runs as many tasks at once as it has threads, so one worker per GPU started with
``--nthreads 1`` trains one job at a time on its GPU (``CUDA_VISIBLE_DEVICES=N dask worker
ADDRESS --nthreads 1``).
"""

from __future__ import annotations

import functools
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from affbench.benchmarks.harness import RunReport, run_benchmark
from affbench.benchmarks.plan import make_plan
from affbench.benchmarks.suite import Suite, load_suite, validate_encoders
from affbench.errors import AffbenchError
from affbench.runtime import dask_cluster as cluster

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class JobRequest:
    """The run's options, the same for every job (sent with each task)."""

    suite: Suite
    data_root: str
    run_dir: str
    encoders: tuple[str, ...] | None = None
    folds: tuple[int, ...] | None = None
    epochs: int | None = None
    max_steps: int | None = None
    device: str = "auto"
    num_workers: int | None = None
    decoded_cache: bool = True
    weights: str | None = None


@dataclass
class JobOutcome:
    """What one job's task reports back: its run report and log lines, or why it did not finish."""

    key: str
    worker: str = ""
    report: RunReport | None = None
    lines: list[str] = field(default_factory=list)
    error: str | None = None  # one sentence (a problem the user can fix) or, with ``bug``, a traceback
    bug: bool = False
    not_run: str | None = None  # the job it starts from did not finish
    seconds: float = 0.0  # on the worker

    @property
    def ok(self) -> bool:
        return self.report is not None


def run_job(request: JobRequest, key: str, *sources: JobOutcome) -> JobOutcome:
    """On a worker: run job ``key`` of the suite (``sources``: the outcomes of the job it starts from)."""
    where = f"{socket.gethostname()}:{os.getpid()}"
    failed = [s.key for s in sources if not s.ok]
    if failed:
        return JobOutcome(key, where, not_run=f"job {failed[0]}, which it starts from, did not finish")
    _allow_child_processes()
    started = time.perf_counter()
    lines: list[str] = []
    try:
        report = run_benchmark(request.suite, request.data_root, request.run_dir, encoders=request.encoders,
                               folds=request.folds, epochs=request.epochs, max_steps=request.max_steps,
                               device=request.device, num_workers=request.num_workers,
                               decoded_cache=request.decoded_cache, progress=False, log=lines.append, job=key,
                               weights=request.weights)
    except AffbenchError as exc:
        return JobOutcome(key, where, lines=lines, error=str(exc))
    except Exception:  # noqa: BLE001 - a bug: its traceback goes back to the command
        return JobOutcome(key, where, lines=lines, error=traceback.format_exc(), bug=True)
    return JobOutcome(key, where, report=report, lines=lines, seconds=round(time.perf_counter() - started, 1))


def _allow_child_processes() -> None:
    """Let this Dask worker process start DataLoader worker processes.

    Dask starts its worker processes as daemons, and a daemon may not start processes of its own.
    Clearing the flag changes nothing else: the Dask nanny still ends this process, and PyTorch's
    DataLoader workers end themselves when the process that started them is gone.
    """
    import multiprocessing

    process = multiprocessing.current_process()
    if process.daemon:
        process.daemon = False


def run_on_cluster(
    scheduler: Any,
    suite: Suite | str | os.PathLike,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    encoders: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    decoded_cache: bool = True,
    log: Callable[[str], None] = print,
    weights: str | os.PathLike | None = None,
) -> RunReport:
    """Run (or resume) a suite with every job as one task on the Dask cluster of ``scheduler`` (an
    address such as ``tcp://host:8786``, or a ``distributed.Client``); see the module's docstring.

    Returns the run's report, summed over the jobs. Jobs that failed (and the jobs that start from
    them) are logged as they come back and then raised as one :class:`AffbenchError`; the other
    jobs' results are kept, and running the same command again retries only what is unfinished.
    """
    started = time.perf_counter()
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    validate_encoders(suite)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise AffbenchError(f"--out {run_dir} is a file, not a folder; give a folder for the run.")
    # Planned here too, so that wrong options are said before anything is sent.
    plan = make_plan(suite, data_root, encoders=encoders, folds=folds, epochs=epochs, max_steps=max_steps,
                     weights=weights)
    request = JobRequest(suite, str(Path(data_root).resolve()), str(run_dir.resolve()),
                         encoders=tuple(encoders) if encoders else None, folds=tuple(folds) if folds else None,
                         epochs=epochs, max_steps=max_steps, device=device, num_workers=num_workers,
                         decoded_cache=decoded_cache, weights=str(Path(weights or ".").resolve()))
    after = {job.key: [job.depends.key] for job in plan.jobs if job.depends is not None}
    report = RunReport(suite.name, run_dir, notes=list(plan.skipped))
    failures: list[JobOutcome] = []
    with cluster.session(scheduler) as client:
        _say_how_jobs_share_workers(client, log)
        log(f"{len(plan.jobs)} job(s) sent to the Dask scheduler at {client.scheduler.address}")
        tasks = cluster.completed(client, functools.partial(run_job, request), [job.key for job in plan.jobs],
                                  after=after)
        for key, outcome in tasks:
            for line in outcome.lines:
                log(f"  [{key}] {line}")
            if outcome.report is not None:  # outcome.ok
                _add(report, outcome.report)
                log(f"finished {key} on {outcome.worker} in {outcome.seconds:.0f} s")
            else:
                failures.append(outcome)
                if outcome.not_run:
                    log(f"not run {key}: {outcome.not_run}")
                else:
                    assert outcome.error is not None  # a job that ran and did not finish says why
                    log(f"failed {key} on {outcome.worker}: {outcome.error.strip().splitlines()[-1]}")
    report.seconds = round(time.perf_counter() - started, 3)
    if failures:
        _raise_failures(failures, len(plan.jobs))
    return report


def _add(total: RunReport, part: RunReport) -> None:
    total.cells_total += part.cells_total
    total.cells_skipped += part.cells_skipped
    total.cells_written += part.cells_written
    total.jobs_trained += part.jobs_trained
    total.jobs_resumed += part.jobs_resumed
    total.notes += [note for note in part.notes if note not in total.notes]


def _say_how_jobs_share_workers(client: Client, log: Callable[[str], None]) -> None:
    threads = client.nthreads()
    if not threads:
        log("no Dask workers yet: the jobs start as workers join the scheduler")
    crowded = {address: n for address, n in threads.items() if n > 1}
    if crowded:
        address, n = next(iter(crowded.items()))
        log(f"note: Dask worker {address} has {n} threads and so trains {n} jobs at once; for one job per GPU "
            "start one worker per GPU with --nthreads 1")


def _raise_failures(failures: list[JobOutcome], jobs: int) -> None:
    bug = next((f for f in failures if f.bug), None)
    if bug is not None:  # a bug in affbench: its traceback, as a local run would show it
        raise RuntimeError(f"job {bug.key} failed on Dask worker {bug.worker}:\n{bug.error}")
    first = next(f for f in failures if f.error)
    raise AffbenchError(
        f"{len(failures)} of {jobs} job(s) did not finish ({first.key}: {first.error}); the others' results are "
        "kept, and running the same command again retries the unfinished jobs."
    )


class _Narrowing(TypedDict):
    """The options :func:`run_suite` hands on to :func:`run_benchmark` or :func:`run_on_cluster` alike."""

    encoders: Sequence[str] | None
    folds: Sequence[int] | None
    epochs: int | None
    max_steps: int | None
    device: str
    num_workers: int | None
    decoded_cache: bool
    log: Callable[[str], None]
    weights: str | os.PathLike | None


def run_suite(
    suite: Suite | str | os.PathLike,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    scheduler: Any = None,
    job: str | None = None,
    encoders: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    decoded_cache: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    weights: str | os.PathLike | None = None,
) -> RunReport:
    """``affbench run-benchmark``: the suite's jobs in this process (all, or only ``job``), or each as
    a task on the Dask cluster of ``scheduler``. ``weights``: where released files are read."""
    narrowing = _Narrowing(encoders=encoders, folds=folds, epochs=epochs, max_steps=max_steps, device=device,
                           num_workers=num_workers, decoded_cache=decoded_cache, log=log, weights=weights)
    if scheduler is None:
        return run_benchmark(suite, data_root, run_dir, progress=progress, job=job, **narrowing)
    if job is not None:
        raise AffbenchError("--job runs one job in this process and --scheduler runs every job on a Dask cluster; "
                            "give one of them.")
    return run_on_cluster(scheduler, suite, data_root, run_dir, **narrowing)
