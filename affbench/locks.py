"""One process at a time per output folder.

Two ``prepare`` runs in the same folder would redo and delete each other's units, so the folder is
locked with :func:`fcntl.flock` on a small file that names the holder's process id. The kernel
drops the lock when its holder dies, however it dies, so a killed run never blocks the next one;
the file is removed when the lock is released normally, so a finished folder holds no trace of it.
"""

from __future__ import annotations

import errno
import os
import warnings
import weakref
from pathlib import Path

from affbench.errors import AffbenchError

LOCK_NAME = ".affbench.lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderBusyError(AffbenchError):
    """Another process works in the output folder."""


class FolderLock:
    """An exclusive, non-blocking lock on ``folder`` (which must exist); released by :meth:`release`,
    on garbage collection, or by the kernel when the process ends."""

    def __init__(self, folder: str | os.PathLike):
        import fcntl  # POSIX only; imported here so that the rest of affbench imports anywhere

        self.path = Path(folder) / LOCK_NAME
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in _UNSUPPORTED:
                    # Some network and FUSE file systems have no locks; working unlocked there
                    # is what every run did before this lock existed.
                    warnings.warn(f"{folder} cannot be locked ({exc.strerror}); make sure no other "
                                  "affbench run works in it.", stacklevel=2)
                    break
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = f"process {holder}" if holder else "another process"
                raise FolderBusyError(
                    f"{Path(folder)} is in use by {who} (another affbench run); wait for it to end "
                    "or stop it, then run the command again."
                ) from None
            # The holder before us may have removed the file while we waited for it: lock the
            # file that is there now, not an unlinked one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
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
        self._finalizer = weakref.finalize(self, _release, fd, str(self.path), os.getpid())

    def release(self) -> None:
        self._finalizer()


def _release(fd: int, path: str, owner: int) -> None:
    if os.getpid() != owner:  # a forked child ending: the lock is its parent's
        return
    # Removed while still held, so that no other process can lock the file being removed.
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
