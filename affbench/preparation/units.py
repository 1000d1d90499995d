"""Run a pipeline's per-unit work, resumably, on joblib workers, and record it in the manifest.

A pipeline turns a dataset into *units* (a video, an image folder) and gives a pure function that
processes one unit: paths and settings in, shards on disk plus a :class:`UnitOutcome` out. This
module decides which units still need work, runs them in this process, on local joblib workers
(loky) or as one task each on a Dask cluster (:mod:`affbench.runtime.dask_cluster`), records each outcome in the
manifest the moment it arrives, and summarises the run.

Because a unit's outcome is saved as soon as it finishes, a run stopped at any point (Ctrl-C, a
kill, a crash) resumes with the same command and redoes only the units that had not finished, the
units with per-item failures (an unreadable image is retried) and the units whose input files
changed since they were made (see :func:`fingerprint`). Worker processes end with the process that
started them, even when it is killed.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from affbench.errors import AffbenchError
from affbench.runtime.devices import resolve_workers
from affbench.runtime.files import atomic_write, file_sha256
from affbench.runtime.pixels import max_pixels, set_max_pixels
from affbench.runtime.processes import exit_with_parent
from affbench.runtime.progress import ProgressBar, progress_bar
from affbench.shards.manifest import DatasetWriter
from affbench.shards.writer import ShardInfo


class Unit(Protocol):
    """What the runner needs of a pipeline's unit: a unique key and an expected row count.

    A unit may also have ``inputs``, a :func:`fingerprint` of the files it is made from; a finished
    unit whose fingerprint changed is redone. Read-only attributes, so that frozen dataclasses and
    properties qualify.
    """

    @property
    def key(self) -> str: ...

    @property
    def size(self) -> int: ...


def fingerprint(root: str | os.PathLike, files: Iterable[str], *, contents: Iterable[str] = ()) -> str:
    """A short digest of what a unit is made from: the name, size and modification time of each of
    ``files`` and the bytes of each of ``contents`` (small files, such as label files, whose edits
    may keep size and time), all relative to ``root``. A missing file counts as missing."""
    digest = hashlib.sha256()
    for name in sorted(files):
        try:
            info = os.stat(os.path.join(root, name))
            state = f"{info.st_size}:{info.st_mtime_ns}"
        except OSError:
            state = "missing"
        digest.update(f"{name}\0{state}\n".encode("utf-8", "surrogateescape"))
    for name in sorted(contents):
        try:
            state = file_sha256(os.path.join(root, name))
        except OSError:
            state = "missing"
        digest.update(f"{name}\0{state}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


U = TypeVar("U", bound=Unit)


@dataclass
class UnitOutcome:
    """What processing one unit produced."""

    key: str
    shards: list[ShardInfo] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    failed: bool = False  # the unit as a whole could not be processed; it is retried next run


Tick = Callable[[int], None]


def _no_tick(n: int) -> None:
    pass


class OutputWriteError(AffbenchError):
    """The output folder cannot take more data (full disk, quota, read-only): every later unit
    would fail the same way, so the run stops and the unit stays unfinished."""


_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _run_one(process: Callable[[U, Tick], UnitOutcome], unit: U, tick: Tick = _no_tick,
             owner: int | None = None, pixel_limit: int | None = None) -> UnitOutcome:
    """Call ``process`` so that one unit's crash becomes that unit's failure, not the run's.

    ``owner`` is the pid of the process that runs the whole job; a worker process it started
    ends itself when that process is gone (see :func:`_end_with_owner`). ``pixel_limit`` is the
    run's pixel limit, set here because a worker may have started before it was (loky reuses its
    worker processes; a Dask worker has an environment of its own).
    """
    if owner is not None:
        _end_with_owner(owner)
    if pixel_limit is not None:
        set_max_pixels(pixel_limit)
    start = time.perf_counter()
    try:
        outcome = process(unit, tick)
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            outcome = _crashed(unit, exc)
        else:
            hint = "make it writable" if exc.errno == errno.EROFS else "free some space"
            raise OutputWriteError(
                f"Writing {exc.filename or 'the output folder'} failed ({exc.strerror or exc}) while preparing "
                f"{unit.key}; {hint}, then run the same command again to resume."
            ) from None
    except Exception as exc:  # noqa: BLE001 - recorded with its type and last frame, see below
        outcome = _crashed(unit, exc)
    outcome.stats.setdefault("seconds", round(time.perf_counter() - start, 3))
    return outcome


def _crashed(unit: Unit, exc: Exception) -> UnitOutcome:
    where = traceback.extract_tb(exc.__traceback__)[-1]
    reason = f"{type(exc).__name__}: {exc} ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
    return UnitOutcome(key=unit.key, failures=[{"unit": unit.key, "item": unit.key, "reason": reason}], failed=True)


_watching: int | None = None


def _end_with_owner(owner: int, interval: float = 0.2) -> None:
    """In a worker process started by ``owner``, end this process soon after ``owner`` is gone.

    A worker whose parent was killed (SIGKILL, SIGTERM) would otherwise go on for minutes,
    writing shards into a folder that a new run may already be preparing. The parent's death
    shows as a new parent id. Workers that ``owner`` did not start (Dask, Ray) are left alone.
    """
    global _watching
    if os.getpid() == owner or os.getppid() != owner or _watching == owner:
        return
    _watching = owner
    exit_with_parent(owner, interval=interval, name="end-with-owner")  # the next run removes what this unit left


@dataclass
class RunSummary:
    """The numbers a person wants at the end of a prepare run."""

    units_total: int
    units_skipped: int
    units_changed: list[str] = field(default_factory=list)  # finished before, redone: inputs changed
    units_retried: list[str] = field(default_factory=list)  # finished before, redone: item failures
    units_done: int = 0
    units_failed: int = 0
    rows: int = 0
    seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    workers: int | None = None  # local worker processes used; None on a cluster

    @property
    def ok(self) -> bool:
        return not self.failures and self.units_failed == 0

    def add(self, outcome: UnitOutcome) -> None:
        if outcome.failed:
            self.units_failed += 1
        else:
            self.units_done += 1
            self.rows += sum(s.rows for s in outcome.shards)
        self.failures.extend(outcome.failures)
        for key, value in outcome.stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seconds":
                self.stats[key] = self.stats.get(key, 0) + value

    def lines(self, item: str = "rows") -> list[str]:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"units: {self.units_total} ({self.units_skipped} already done, {self.units_done} processed, "
            f"{self.units_failed} failed)",
            f"{item}: {self.rows} written in {self.seconds:.1f} s ({rate:.1f} {item}/s)"
            + (f" by {self.workers} worker process{'es' if self.workers != 1 else ''}" if self.workers else ""),
        ]
        for units, why in ((self.units_changed, "their input files changed"),
                           (self.units_retried, "they had failed items")):
            if units:
                more = f" and {len(units) - 3} more" if len(units) > 3 else ""
                lines.append(f"redone because {why}: {len(units)} ({', '.join(units[:3])}{more})")
        lines += [f"{key}: {value:g}" for key, value in sorted(self.stats.items())]
        lines.append(f"failures: {len(self.failures)}")
        lines += [f"  {f.get('item', f.get('unit'))}: {f['reason']}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more, listed in manifest.json")
        return lines


def run_units(
    writer: DatasetWriter,
    units: Sequence[U],
    process: Callable[[U, Tick], UnitOutcome],
    *,
    workers: int | str = 1,
    progress: bool = True,
    item: str = "frames",
    backend: str | None = None,
    scheduler: Any = None,
    device: str = "cpu",
) -> RunSummary:
    """Process every unfinished unit and record each outcome in ``writer``'s manifest.

    Parameters
    ----------
    writer : DatasetWriter
        The output folder; units it lists as done are skipped.
    units : sequence of units
        Each has a unique ``key`` and an expected ``size`` (rows) for the progress bar.
    process : callable ``(unit, tick) -> UnitOutcome``
        Must be picklable when ``workers > 1`` (a module-level function or a
        :func:`functools.partial` of one). It writes the unit's shards itself (with
        :class:`~affbench.shards.writer.ShardWriter`) and may call ``tick(n)`` as rows are done.
    workers : int or "auto"
        1 runs in this process; more runs units on joblib workers, one unit per task; ``"auto"``
        one worker per CPU core (:func:`~affbench.runtime.devices.resolve_workers`). The number used
        is recorded in the manifest's ``info`` and stated in the progress line and the summary.
    backend : str, optional
        A joblib backend name (``"loky"`` by default, ``"ray"`` once registered); ``"dask"`` means
        the Dask ``Client`` this process made last, as ``scheduler`` does.
    scheduler : str or distributed.Client, optional
        A Dask scheduler address (``tcp://host:8786``) or ``Client``: every unit becomes one task
        on that cluster (``workers`` is then not used). The workers must see ``process``'s input
        and output folders at the same paths (a shared file system).
    device : str
        The resolved device the units' detectors run on: with CUDA, ``"auto"`` workers are also
        limited by the GPU's free memory.
    """
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise ValueError("unit keys must be unique")
    inputs = {u.key: getattr(u, "inputs", None) for u in units}
    pending = [u for u in units if not writer.is_done(u.key, inputs[u.key])]
    summary = RunSummary(units_total=len(units), units_skipped=len(units) - len(pending))
    on_cluster = scheduler is not None or backend == "dask"
    if not on_cluster:
        summary.workers = min(resolve_workers(workers, device), max(len(pending), 1))
        if pending:  # a finished folder's manifest stays byte for byte as it was
            writer.info["workers"] = summary.workers
    for unit in pending:
        record = writer.units.get(unit.key)
        if writer.inputs_changed(unit.key, inputs[unit.key]):
            summary.units_changed.append(unit.key)
        elif record is not None and record.status == "done" and record.failures:
            summary.units_retried.append(unit.key)
        writer.start_unit(unit.key)

    start = time.perf_counter()
    total = sum(max(u.size, 0) for u in pending)
    where = "cluster" if on_cluster else f"{summary.workers} worker{'s' if summary.workers != 1 else ''}"
    with progress_bar(total=total, unit=item[:-1] if item.endswith("s") else item, enabled=progress,
                      desc=f"{writer.dataset} ({where})") as bar:
        if on_cluster:
            _run_on_cluster(writer, summary, pending, process, inputs, bar, scheduler=scheduler, progress=progress)
        elif summary.workers == 1:
            for unit in pending:
                before = bar.n
                outcome = _run_one(process, unit, bar.update)
                bar.update(max(unit.size - (bar.n - before), 0))
                _record(writer, summary, outcome, inputs)
        else:
            from joblib import Parallel, delayed

            jobs = Parallel(n_jobs=summary.workers, backend=backend, return_as="generator_unordered")
            sizes = {u.key: u.size for u in pending}
            with _ProgressBoard(writer.out_dir, bar, sizes, enabled=progress) as board:
                owner = os.getpid()
                calls = (delayed(_run_one)(process, unit, board.tick_for(unit.key), owner, max_pixels())
                         for unit in pending)
                for outcome in jobs(calls):
                    board.finished(outcome.key)
                    _record(writer, summary, outcome, inputs)
    summary.seconds = time.perf_counter() - start
    return summary


def runs_here(backend: str | None = None, scheduler: Any = None) -> bool:
    """Whether units run on this machine (in this process or on loky workers), so that a pipeline
    can settle ``device="auto"`` once, up front; on a cluster each worker settles its own."""
    return scheduler is None and backend in (None, "loky")


def _run_on_cluster(writer: DatasetWriter, summary: RunSummary, pending: Sequence[U],
                    process: Callable[[U, Tick], UnitOutcome], inputs: Mapping[str, str | None], bar: ProgressBar, *,
                    scheduler: Any, progress: bool) -> None:
    """One Dask task per unit; each outcome is recorded here as it arrives."""
    from affbench.runtime import dask_cluster as cluster

    if not pending:
        return
    client = cluster.default_client() if scheduler is None else scheduler
    sizes = {u.key: u.size for u in pending}
    with cluster.session(client) as client, _ProgressBoard(writer.out_dir, bar, sizes, enabled=progress) as board:
        run = functools.partial(_run_with_tick, process, {u.key: board.tick_for(u.key) for u in pending}, max_pixels())
        for _, outcome in cluster.completed(client, run, pending, name=lambda unit: unit.key):
            board.finished(outcome.key)
            _record(writer, summary, outcome, inputs)


def _run_with_tick(process: Callable[[U, Tick], UnitOutcome], ticks: Mapping[str, Tick], pixel_limit: int,
                   unit: U) -> UnitOutcome:
    # No owner pid: Dask's workers are not this process's children and outlive it by design.
    return _run_one(process, unit, ticks[unit.key], pixel_limit=pixel_limit)


class _FileTick:
    """A picklable ``tick`` for a worker process: it keeps the unit's running count in a small file
    in the output folder, which the main process polls. A file works wherever the worker can write
    the unit's shards (loky, or Dask/Ray workers on a shared file system); where it cannot, progress
    simply arrives when the unit finishes."""

    def __init__(self, path: str):
        self.path = path
        self.count = 0
        self._written_at = 0.0

    def __call__(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._written_at < 0.3:
            return
        self._written_at = now
        try:
            with atomic_write(self.path) as tmp:
                tmp.write_text(str(self.count))
        except OSError:
            pass  # a lost progress tick only slows the bar


class _ProgressBoard:
    """The main process's side of :class:`_FileTick`: a thread that adds the workers' counts of
    unfinished units to the bar (finished units count their full size)."""

    PREFIX = ".progress-"

    def __init__(self, out_dir: Path, bar: ProgressBar, sizes: Mapping[str, int], *, enabled: bool = True):
        self.bar = bar
        self.sizes = dict(sizes)
        self.enabled = enabled
        self.done: set[str] = set()
        self.done_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.folder: Path | None = None
        if enabled:
            for stale in Path(out_dir).glob(f"{self.PREFIX}*"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
            self.folder = Path(tempfile.mkdtemp(prefix=self.PREFIX, dir=out_dir))
        self._names = {key: f"{i:06d}" for i, key in enumerate(self.sizes)}
        self._thread = threading.Thread(target=self._poll, name="progress", daemon=True)

    def __enter__(self) -> _ProgressBoard:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def tick_for(self, key: str) -> Tick:
        if self.folder is None:
            return _no_tick
        return _FileTick(str(self.folder / self._names[key]))

    def finished(self, key: str) -> None:
        with self._lock:
            self.done.add(key)
            self.done_rows += max(self.sizes.get(key, 0), 0)
            self._show(self._running())

    def _running(self) -> int:
        if self.folder is None:
            return 0
        running = 0
        for key, name in self._names.items():
            if key in self.done:
                continue
            try:
                running += min(int((self.folder / name).read_text() or 0), max(self.sizes[key], 0))
            except (OSError, ValueError):
                continue
        return running

    def _show(self, running: int) -> None:
        target = min(self.done_rows + running, self.bar.total or 0)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                self._show(self._running())


def _record(writer: DatasetWriter, summary: RunSummary, outcome: UnitOutcome,
            inputs: Mapping[str, str | None]) -> None:
    writer.record_unit(
        outcome.key,
        shards=outcome.shards,
        failures=outcome.failures,
        stats=outcome.stats,
        failed=outcome.failed,
        inputs=inputs.get(outcome.key),
    )
    summary.add(outcome)
