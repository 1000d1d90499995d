"""The one guard every command that writes a named file goes through.

A command may replace a file it wrote before (re-running an export or a prediction refreshes it),
but never a file it did not write: a typo in ``--out`` must not cost a user their notes, a
checkpoint or somebody else's table. Each kind of output says how to recognise its own earlier
files (``ours``); anything else is left alone unless the user adds ``--force``. While a command
writes, it holds a lock beside the file, so that two commands writing one file never both report
success over a file that holds only one of their outputs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from affbench.errors import AffbenchError
from affbench.runtime.locks import (
    FolderBusyError,
    LocksUnsupportedError,
    lock_holder,
    shared_lock_path,
    try_lock,
    unlock,
)

#: Recognises an earlier output of the same kind: given an existing plain file, True when it may be replaced.
Recogniser = Callable[[Path], bool]


def check_output(path: str | os.PathLike, ours: Recogniser, *, what: str, option: str = "--out",
                 force: bool = False) -> Path:
    """Refuse, in one sentence, to write ``path`` where that would replace a folder or a file that
    ``ours`` does not recognise (unless ``force``); return the path.

    Parameters
    ----------
    path : path-like
        The file the command is about to write.
    ours : callable
        Given the existing file, whether it is an earlier output of this kind.
    what : str
        What the command writes, for the sentence (``"affbench predictions table"``).
    option : str
        The option that named ``path``, for the sentence.
    force : bool
        Replace a file that is not recognised (never a folder).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> table = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> _ = table.write_text("source,frame\\n")
    >>> check_output(table, lambda p: first_line_starts(p, ("source,",)), what="table") == table
    True
    """
    path = Path(path)
    if path.is_dir():
        raise AffbenchError(f"{option} {path} is a folder; give the name of the file to write.")
    if path.exists() and not path.is_file():
        raise AffbenchError(f"{option} {path} exists and is not a plain file, so it is left alone.")
    if path.is_file() and not force and not _recognised(path, ours):
        raise AffbenchError(f"{path} exists and is not an earlier {what}, so it is left alone; choose another "
                            "file name or add --force to replace it.")
    return path


def _recognised(path: Path, ours: Recogniser) -> bool:
    try:
        return bool(ours(path))
    except (OSError, ValueError):
        return False  # unreadable or foreign: not ours


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of the output file ``path`` while a command makes it; refuse, naming the
    process, when another command is writing the same file.

    The lock is the hidden ``.<name>.lock`` beside ``path`` (the one :func:`affbench.runtime.locks.locked`
    uses for short updates), taken without waiting.
    """
    lock_path = shared_lock_path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = try_lock(lock_path)
    except LocksUnsupportedError:
        yield  # a file system without locks: work as before locks existed
        return
    except OSError as exc:
        exc.filename = os.fspath(path)  # the file the user named, not our hidden lock beside it
        raise
    if fd is None:
        holder = lock_holder(lock_path)
        who = f"process {holder}" if holder else "another process"
        raise FolderBusyError(f"{path} is being written by {who} (another affbench command); wait for it to end "
                              "or choose another file name.")
    try:
        yield
    finally:
        unlock(fd, lock_path)


def first_line_starts(path: Path, prefixes: tuple[str, ...]) -> bool:
    """Whether the file's first line starts with one of ``prefixes`` (a text output's header)."""
    with open(path, "rb") as handle:
        first = handle.readline(4096)
    return first.startswith(tuple(p.encode() for p in prefixes))
