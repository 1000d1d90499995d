"""Finding a dataset's folders under the root a user gives, wherever the archive put them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

#: How deep under a root the pipelines look for a dataset's folders.
SEARCH_DEPTH = 4


def search_folders(
    top: Path, names: Iterable[str], *, depth: int = SEARCH_DEPTH, skip: Iterable[str] = (), stop_at_first: bool = False
) -> dict[str, list[Path]]:
    """Breadth-first search for folders called ``names`` under ``top``; the shallowest hits win.

    A folder found is not searched further, nor are the folders named in ``skip`` (those that
    hold images or videos by the thousand), so the search lists a few directories even on a
    complete copy with millions of frames. The search ends at the level where every name has
    been found, or, with ``stop_at_first``, at the first level where any has.
    """
    wanted, skipped = set(names), set(skip)
    found: dict[str, list[Path]] = {}
    level = [top]
    for _ in range(depth):
        below: list[Path] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                if entry.name in wanted:
                    found.setdefault(entry.name, []).append(Path(entry.path))
                elif entry.name not in skipped:
                    below.append(Path(entry.path))
        if wanted <= set(found) or not below or (stop_at_first and found):
            break
        level = below
    return found
