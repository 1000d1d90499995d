"""Errors a user can cause and fix.

Every exception here carries one sentence meant for the person at the terminal; the command line
prints it and exits non-zero instead of showing a traceback. Programming errors stay ordinary
exceptions so that they keep their tracebacks.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable


class AffbenchError(Exception):
    """A problem with the user's input, data or environment, explained in one sentence."""


class DataLayoutError(AffbenchError):
    """A dataset root does not have the layout its pipeline expects."""


class ParameterMismatchError(AffbenchError):
    """An output folder was made with other preprocessing parameters than the ones asked for now."""


class UnknownNameError(AffbenchError):
    """A name (encoder, suite, metric, dataset) that no registry knows."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        valid = sorted(valid)
        super().__init__(f"Unknown {kind} {name!r}; valid {kind}s are: {', '.join(valid)}.")
        self.kind, self.name, self.valid = kind, name, valid


# What the file system says, in one sentence; the user can fix each of these (the rest are bugs
# and keep their tracebacks).
_OS_ERRORS = {
    errno.ENOSPC: "No space left on the device while writing {path}; free some space and run the same command "
                  "again (finished work is kept).",
    errno.EDQUOT: "The disk quota is exceeded while writing {path}; free some space and run the same command again "
                  "(finished work is kept).",
    errno.EROFS: "{path} is on a read-only file system; choose an output folder you can write to.",
    errno.EACCES: "Permission denied for {path}; change its permissions or choose a path you may use.",
    errno.EPERM: "Operation not permitted on {path}; change its permissions or choose a path you may use.",
    errno.ENOTDIR: "{path} is not a folder: a part of that path is a file.",
    errno.EISDIR: "{path} is a folder where a file was expected; give a file name.",
    errno.EEXIST: "{path} already exists and is not a folder; give another path.",
    errno.ENAMETOOLONG: "The file name {path} is too long for the file system.",
    errno.ENOENT: "{path} does not exist, or no file can be made there; check the path.",
}


def os_error_sentence(exc: OSError) -> str | None:
    """The one sentence for a file-system error the user can fix, naming the path; None for others.

    Examples
    --------
    >>> os_error_sentence(PermissionError(errno.EACCES, "Permission denied", "/data/out"))
    'Permission denied for /data/out; change its permissions or choose a path you may use.'
    """
    template = _OS_ERRORS.get(exc.errno) if exc.errno is not None else None
    if template is None:
        return None
    path = exc.filename if exc.filename is not None else "a file"
    return template.format(path=os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else path)
