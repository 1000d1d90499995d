"""Finding a dataset's folders under the root a user gives, wherever the archive put them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from affbench.errors import DataLayoutError
from affbench.runtime.files import link_problem

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


def broken_link(entry: str | os.PathLike | os.DirEntry, root: Path) -> str | None:
    """Why the entry is a link to skip (a loop, or a link to nothing), or None to read it; one
    :class:`DataLayoutError` sentence for a link out of ``root``, whose target affbench does not read
    (nothing outside the folder a user names is read)."""
    problem = link_problem(entry, root)
    if problem is None or "out of" not in problem:
        return problem
    path = entry.path if isinstance(entry, os.DirEntry) else os.fspath(entry)
    raise DataLayoutError(
        f"{path} is {problem}, which affbench does not read; copy or hard-link the file into {root}, or give "
        "the folder it points into as ROOT."
    )


def require_root(root: Path, dataset: str) -> None:
    """One :class:`DataLayoutError` sentence where the ROOT a user gives is missing or not a folder."""
    if root.is_dir():
        return
    if root.exists():
        raise DataLayoutError(f"The {dataset} root {root} is a file, not a folder; give the folder that holds the "
                              "dataset.")
    raise DataLayoutError(f"The {dataset} root {root} does not exist.")


def require_inside(path: Path, root: Path) -> None:
    """One :class:`DataLayoutError` sentence where ``path``, with every link on its way followed,
    lies outside ``root`` (a label file reached through a linked folder, for instance)."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        raise DataLayoutError(
            f"{path} leads out of {root} through a symbolic link, and affbench reads nothing outside the folder you "
            f"name; copy or hard-link it into {root}, or give the folder it points into as ROOT."
        )
