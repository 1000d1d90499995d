"""Progress display that suits where the output goes.

On a terminal, a tqdm bar. Anywhere else (a log file, a cluster job's captured stderr) a bar's
carriage-return updates turn into one long garbled line, so the progress is a plain line at most
every :data:`PLAIN_INTERVAL` seconds instead, plus one when the work finishes::

    disfa: 1200/4845 frames (24.8%), 41.3 frames/s, 88 s left

``enabled=False`` (``--quiet``) shows nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TextIO

from tqdm.auto import tqdm

#: Seconds between plain progress lines when the output is not a terminal.
PLAIN_INTERVAL = 30.0


class ProgressBar(Protocol):
    """What affbench uses of a progress bar (tqdm's, or :class:`PlainProgress`)."""

    n: float
    total: float | None

    def __iter__(self) -> Iterator[Any]: ...

    def __enter__(self) -> ProgressBar: ...

    def __exit__(self, *exc: object) -> None: ...

    def update(self, n: float = 1) -> None: ...

    def set_postfix(self, **values: Any) -> None: ...

    def close(self) -> None: ...


def progress_bar(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, leave: bool = True, stream: TextIO | None = None,
                 interval: float | None = None) -> ProgressBar:
    """A tqdm bar on a terminal, :class:`PlainProgress` elsewhere, a silent bar when not ``enabled``.

    The result supports what affbench uses of tqdm: iteration, ``update``, ``set_postfix``,
    ``n``, ``total``, ``close`` and use as a context manager.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=stream)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, stream=stream,
                         interval=PLAIN_INTERVAL if interval is None else interval)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """Progress as a plain line every ``interval`` seconds (and at the end), for logs."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", stream: TextIO, interval: float = PLAIN_INTERVAL):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.stream, self.interval = total, desc, unit, stream, interval
        self.n: float = 0
        self.postfix = ""
        self._started = self._shown_at = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more done; a line is written when ``interval`` seconds have passed."""
        self.n += n
        now = time.monotonic()
        if now - self._shown_at >= self.interval:
            self._shown_at = now
            self._write()

    def set_postfix(self, **values: Any) -> None:
        """Show ``key value`` pairs after the counts."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        """Finish: one last line, where the work lasted at least ``interval`` seconds (only the first call)."""
        if self._closed:
            return
        self._closed = True
        if self.n and time.monotonic() - self._started >= self.interval:
            self._write(done=True)  # short work gets no line: the caller reports it

    def line(self, *, done: bool = False) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self.n / elapsed
        count = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        parts = [f"{self.desc + ': ' if self.desc else ''}{count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.1f}%)"
        parts.append(f"{rate:.1f} {self.unit}/s")
        if self.total and rate > 0 and not done:
            parts.append(f"{(self.total - self.n) / rate:.0f} s left")
        if done:
            parts.append(f"done in {elapsed:.0f} s")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _write(self, *, done: bool = False) -> None:
        print(self.line(done=done), file=self.stream, flush=True)
