"""Locks on files, so that processes sharing a folder never undo each other's work.

Every lock here is :func:`fcntl.flock` on a small file that names the holder's process id. The
kernel drops such a lock when its holder dies, however it dies, so a killed process never blocks
the next one; the file is removed when the lock is released normally, so a finished folder holds
no trace of it. Three uses:

- :class:`FolderLock`: one ``prepare`` per output folder (two would redo and delete each other's units);
- :func:`try_lock` / :func:`unlock`: one process per benchmark job (see ``affbench.benchmarks.claims``);
- :func:`locked`: a short exclusive section for a read-modify-write of a file that several
  processes update (``run.json``, ``verified-shards.json``), so that none loses another's update.
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, overload

from affbench.errors import AffbenchError

LOCK_NAME = ".affbench.lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class FolderBusyError(AffbenchError):
    """Another process works in the output folder."""


class LocksUnsupportedError(OSError):
    """The file system cannot lock files (some network and FUSE file systems)."""


@overload
def try_lock(path: str | os.PathLike, *, wait: Literal[True]) -> int: ...


@overload
def try_lock(path: str | os.PathLike, *, wait: bool = False) -> int | None: ...


def try_lock(path: str | os.PathLike, *, wait: bool = False) -> int | None:
    """Lock the file ``path`` (created if need be) exclusively; return the descriptor that holds it.

    Returns None when another process holds it and ``wait`` is false; with ``wait`` it blocks until
    that process lets go. Raises :class:`LocksUnsupportedError` where the file system has no locks.
    Release with :func:`unlock`.
    """
    import fcntl  # POSIX only; imported here so that the rest of affbench imports anywhere

    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                raise LocksUnsupportedError(exc.errno, exc.strerror, str(path)) from None
            if exc.errno in _BUSY and not wait:
                return None
            raise
        # The holder before us removes the file as it lets go: we must hold the file that is
        # there now, not an unlinked one, or a third process could lock a new file beside us.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        os.close(fd)
        raise
    return fd


def unlock(fd: int, path: str | os.PathLike) -> None:
    """Release a lock taken with :func:`try_lock`."""
    # Removed while still held, so that no other process can lock the file being removed.
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def lock_holder(path: str | os.PathLike) -> int | None:
    """The process id of whoever holds the lock file ``path`` now (0 when it cannot be read); None
    when nobody holds it. Only probes: takes nothing that another process would wait for long."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            return _read_pid(fd) or 0
        return None  # a file system without locks: nobody can be said to hold it
    finally:
        os.close(fd)  # closing drops our shared lock, if we got it
    return None


def wait_for_lock(path: str | os.PathLike) -> None:
    """Return once nobody holds the lock file ``path`` (at once if nobody does)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # shared: any number of waiters wake together
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def shared_lock_path(path: str | os.PathLike) -> Path:
    """The lock file that guards the shared file ``path``: hidden, beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock that guards the shared file ``path`` for a short read-modify-write of it,
    waiting while another process holds it."""
    lock_path = shared_lock_path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = try_lock(lock_path, wait=True)
    except LocksUnsupportedError as exc:
        warnings.warn(f"{path} cannot be locked ({exc.strerror}); make sure no other affbench run "
                      "updates it at the same time.", stacklevel=3)
        yield
        return
    try:
        yield
    finally:
        unlock(fd, lock_path)


class FolderLock:
    """An exclusive, non-blocking lock on ``folder`` (which must exist); released by :meth:`release`,
    on garbage collection, or by the kernel when the process ends."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self._finalizer: weakref.finalize[..., FolderLock]
        try:
            fd = try_lock(self.path)
        except LocksUnsupportedError as exc:
            # Working unlocked there is what every run did before this lock existed.
            warnings.warn(f"{folder} cannot be locked ({exc.strerror}); make sure no other "
                          "affbench run works in it.", stacklevel=2)
            self._finalizer = weakref.finalize(self, _release_nothing)
            return
        if fd is None:
            holder = lock_holder(self.path)
            who = f"process {holder}" if holder else "another process"
            raise FolderBusyError(
                f"{Path(folder)} is in use by {who} (another affbench run); wait for it to end "
                "or stop it, then run the command again."
            )
        self._finalizer = weakref.finalize(self, _release, fd, str(self.path), os.getpid())

    def release(self) -> None:
        self._finalizer()


def _release_nothing() -> None:
    """The release of a folder that could not be locked."""


def _release(fd: int, path: str, owner: int) -> None:
    if os.getpid() != owner:  # a forked child ending: the lock is its parent's
        return
    unlock(fd, path)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
