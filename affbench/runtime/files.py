"""Writing files so that a killed process never leaves a half-written file under its final name,
and checking the names that become parts of file names.

Every output of affbench (shards, manifests, result records, CSV exports, checkpoints) is written
to a hidden temporary name beside its destination and renamed over it when complete; a rename
within one folder is atomic on POSIX file systems.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from affbench.errors import AffbenchError


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh hidden ``.tmp`` name beside ``path``.

    Not :func:`tempfile.mkstemp`: the file is not created here, so it gets the user's usual
    permissions (mkstemp's 0600 would survive the rename and lock colleagues out of a shared folder).
    """
    path = Path(path)
    return path.parent / f".{path.name}-{uuid.uuid4().hex}.tmp"


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> with atomic_write(target) as tmp:
    ...     _ = tmp.write_text("a,b\\n1,2\\n")
    >>> target.read_text()
    'a,b\\n1,2\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None or os.fspath(exc.filename) == os.fspath(tmp):
            exc.filename = str(path)  # name the file the user asked for, not our temporary one
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> bool:
    """Write ``text`` to ``path`` atomically and durably; leave the file alone if it already holds
    exactly ``text`` (so that re-running finished work changes no byte). Returns whether it wrote."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    with atomic_write(path) as tmp, open(tmp, "x") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for the numpy scalars, arrays and paths our records hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def link_problem(entry: str | os.PathLike | os.DirEntry, root: str | os.PathLike) -> str | None:
    """Why a symbolic link found inside ``root`` must not be followed, or None (not a link, or a
    link that stays inside ``root``).

    A dataset or input folder is what the user named: a link out of it (to ``/etc``, another
    user's files) is not read, and a link loop is skipped instead of ending the run. Checking a
    :class:`os.DirEntry` costs nothing for the usual entry that is no link.
    """
    is_link = entry.is_symlink() if isinstance(entry, os.DirEntry) else os.path.islink(entry)
    if not is_link:
        return None
    path = os.fspath(entry.path if isinstance(entry, os.DirEntry) else entry)
    try:
        os.stat(path)
    except OSError as exc:
        return "a symbolic link loop" if exc.errno == errno.ELOOP else "a symbolic link to nothing"
    real, top = os.path.realpath(path), os.path.realpath(root)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        return f"a symbolic link out of {os.fspath(root)}"
    return None


#: A name that may become part of a file or folder name: no separators, no leading dot (so never
#: ``..``), nothing a shell or another file system would read differently.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_name(kind: str, name: Any) -> str:
    """Return ``name`` if it is safe to use inside a path; otherwise one clear sentence.

    Suites, experiments, datasets, tasks and encoders name files and folders of a run, so a name
    such as ``../../x`` or ``/etc/x`` must never reach :class:`pathlib.Path`.
    """
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise AffbenchError(
            f"The {kind} {name!r} cannot be used: names become file names, so use 1 to 100 letters, digits, "
            "'.', '_', '+' or '-', starting with a letter or digit."
        )
    return name
