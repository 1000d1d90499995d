"""What a prepare command tells its user at the end, and the exit status it ends with.

The status is the output folder's, not only this run's: a folder whose manifest still lists failures
(from this run or an earlier one) ends non-zero, so that a script never mistakes a half-prepared
dataset for a finished one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affbench.preparation.units import RunSummary
from affbench.shards.manifest import read_manifest
from affbench.shards.schema import MANIFEST_NAME


@dataclass(frozen=True)
class PrepareReport:
    """The lines to print (``lines`` on standard output, ``warning`` on standard error) and the exit code."""

    summary: RunSummary
    lines: list[str] = field(default_factory=list)
    warning: str | None = None

    @property
    def exit_code(self) -> int:
        """The command's exit status: 1 while the folder's manifest lists a failure, else 0."""
        return 0 if self.warning is None else 1


def prepare_report(summary: RunSummary, out: str | os.PathLike[str], *, item: str = "rows",
                   notes: Callable[[dict[str, Any]], Sequence[str]] | None = None) -> PrepareReport:
    """The end of a prepare run into ``out``: the run's summary, the dataset's ``notes(manifest)``
    lines, and a warning while the manifest lists any failure.

    Examples
    --------
    >>> report = prepare_report(summary, "prepared/disfa", item="frames")  # doctest: +SKIP
    >>> report.exit_code                                                     # doctest: +SKIP
    0
    """
    manifest_path = Path(out) / MANIFEST_NAME
    manifest = read_manifest(out)
    lines = [*summary.lines(item), *(notes(manifest) if notes else []), f"manifest: {manifest_path}"]
    totals = manifest["totals"]
    warning = None
    if totals["failures"] or totals["units_failed"]:
        earlier = totals["failures"] - len(summary.failures)
        note = f" ({earlier} from earlier runs)" if earlier > 0 else ""
        warning = (f"{manifest_path} lists {totals['failures']} failure(s){note}: see its 'failures'; the units "
                   "they belong to are redone when the same command is run again.")
    return PrepareReport(summary=summary, lines=lines, warning=warning)
