"""Sharing one run folder between processes: each job is trained by exactly one of them.

Any number of ``run-benchmark`` processes (on one machine, or on many that share the run folder
on a file system with working ``flock``) may run the same suite into the same ``--out``. Before
a process trains a job it *claims* it: an exclusive lock on ``RUNDIR/locks/<job>.lock`` (see
:mod:`affbench.runtime.locks`), held until the job's records are written. A process that finds a job
claimed goes on to the next one, comes back to it, and when nothing else is left waits for the
holder to let go; a job that starts from another job's weights is not started before that job is
finished. The kernel drops the lock of a process that dies, so a killed holder's job is claimed
by the next process that comes to it, which resumes it from its last finished epoch.

:class:`JobClaims` is the one place that decides whether this process may run a job; a
distributed runner (torchrun ranks, Dask workers) wraps or replaces it and passes it to
:func:`affbench.benchmarks.harness.run_benchmark`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affbench.benchmarks.plan import Job, Plan
from affbench.errors import AffbenchError
from affbench.reporting.records import write_json_atomic
from affbench.runtime.locks import LocksUnsupportedError, lock_holder, locked, try_lock, unlock, wait_for_lock
from affbench.runtime.run_folder import RunFolder

if TYPE_CHECKING:
    from affbench.training.ddp import Distribution

#: In the run folder: one lock file per job being run (removed when the job is done).


class JobClaims:
    """Claims on the jobs of one run folder, for this process.

    ``try_claim(key)`` is the whole decision: True means this process holds the job and must run
    it (or find it finished), then call ``release(key)``; False means another process holds it now.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.folder = RunFolder(run_dir).locks
        self._held: dict[str, int | None] = {}
        self._unlocked = False  # the file system cannot lock: run as before claims existed

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.lock"

    def try_claim(self, key: str) -> bool:
        if key in self._held:
            raise RuntimeError(f"job {key} is already claimed by this process")
        if self._unlocked:
            self._held[key] = None
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = try_lock(self.path(key))
        except LocksUnsupportedError as exc:
            warnings.warn(f"{self.folder} cannot be locked ({exc.strerror}); make sure no other affbench "
                          "run works in this run folder.", stacklevel=2)
            self._unlocked = True
            fd = None
        else:
            if fd is None:
                return False
        self._held[key] = fd
        return True

    def release(self, key: str) -> None:
        fd = self._held.pop(key)
        if fd is not None:
            unlock(fd, self.path(key))

    def holder(self, key: str) -> int | None:
        """The process id holding ``key`` (0 when unknown), None when nobody holds it."""
        if key in self._held:
            return os.getpid()
        return lock_holder(self.path(key))

    def wait(self, key: str) -> None:
        """Return once no other process holds ``key``."""
        wait_for_lock(self.path(key))

    @contextlib.contextmanager
    def holding(self, key: str, log: Callable[[str], None] = print) -> Iterator[None]:
        """Hold ``key`` for the block, waiting while another process holds it."""
        while not self.try_claim(key):
            self.log_wait(key, log)
            self.wait(key)
        try:
            yield
        finally:
            self.release(key)

    def log_wait(self, key: str, log: Callable[[str], None]) -> None:
        holder = self.holder(key)
        log(f"waiting for job {key}, which {f'process {holder}' if holder else 'another process'} runs")



class RankZeroClaims(JobClaims):
    """The claims of the processes that train one model together (torchrun): rank 0 claims, waits
    and releases, and every rank gets its answers, so that all of them run the same job at once.

    ``distribution`` is an :class:`affbench.training.ddp.Distribution` (``decide``, ``is_main``).
    Waiting for another process's job is a poll (rank 0 looks, every rank sleeps), so that no rank
    sits in one collective call longer than a poll: the process group's timeout (NCCL: 10 minutes)
    would end the run.
    """

    def __init__(self, claims: JobClaims, distribution: Distribution, *, poll_seconds: float = 2.0):
        self.claims, self.dist, self.poll_seconds = claims, distribution, poll_seconds

    def path(self, key: str) -> Path:
        return self.claims.path(key)

    def try_claim(self, key: str) -> bool:
        return self.dist.decide(lambda: self.claims.try_claim(key))

    def release(self, key: str) -> None:
        if self.dist.is_main:
            self.claims.release(key)

    def holder(self, key: str) -> int | None:
        return self.dist.decide(lambda: self.claims.holder(key))

    def wait(self, key: str) -> None:
        while self.holder(key) is not None:
            time.sleep(self.poll_seconds)

def run_shared(jobs: Sequence[Job], claims: JobClaims, *, finished: Callable[[Job], bool],
               run: Callable[[Job], None], skip: Callable[[Job], None], log: Callable[[str], None]) -> None:
    """Run every job of ``jobs`` (in dependency order) that is not finished and that no other
    process runs; return when all of them are finished, by this process or by others.

    ``finished(job)`` says whether its records are there; ``skip(job)`` is called once for each
    job found finished without running it here. A job whose source job is not in ``jobs`` (a
    single ``--job``) waits for that source while another process holds it, and is refused
    with one sentence when nobody has run it.
    """
    pending = list(jobs)
    for job in pending:
        source = job.depends
        if source is None or any(other is source for other in pending) or finished(source):
            continue
        if claims.holder(source.key) is not None:
            claims.log_wait(source.key, log)
            claims.wait(source.key)
        if not finished(source):
            raise AffbenchError(f"Job {job.key} starts from job {source.key}, which has not run; "
                                f"run that job first (--job {source.key}).")
    while pending:
        held: Job | None = None  # the first job that another process holds: waited for when nothing else can run
        for job in pending:
            if any(other is job.depends for other in pending):
                continue  # its source is still to be finished, here or elsewhere
            if finished(job):
                claimed = False
                break
            if claims.try_claim(job.key):
                claimed = True
                break
            held = held or job
        else:
            # Pending jobs are in dependency order, so the first one never waits for a source: all
            # that is left is held by other processes.
            assert held is not None  # the first pending job was tried, and it is held
            claims.log_wait(held.key, log)
            claims.wait(held.key)
            continue
        pending.remove(job)
        if not claimed:
            skip(job)
            continue
        try:
            # Finished in the meantime by the process that held it just before us?
            if finished(job):
                skip(job)
            else:
                run(job)
        finally:
            claims.release(job.key)


def append_run(run_dir: Path, entry: Mapping[str, Any], log: Callable[[str], None] = print) -> None:
    """Add one run's summary to ``run_dir/run.json``, under its lock: processes sharing the run
    folder finish at any time, and none may lose another's entry."""
    path = RunFolder(run_dir).runs_file
    with locked(path):
        try:
            runs = json.loads(path.read_text())["runs"] if path.is_file() else []
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
            from affbench.training.checkpoints import set_aside

            runs = []
            log(f"warning: {path} was damaged; moved it to {set_aside(path).name} and started a new one.")
        runs.append(dict(entry))
        write_json_atomic(path, {"runs": runs})


def find_job(plan: Plan, key: str) -> Job:
    for job in plan.jobs:
        if job.key == key:
            return job
    raise AffbenchError(f"Suite {plan.suite.name} has no job {key!r} with these options; --list-jobs lists its jobs "
                        "(give it the same --encoders, --folds, --epochs and --max-steps).")
