"""``affbench rescore RUNDIR``: every record recomputed from its kept test outputs.

After a metric's convention changes (its version in :mod:`affbench.scoring.registry` is bumped),
or to draw the intervals with other settings, the records are made again from the outputs each
cell kept (:mod:`affbench.reporting.outputs`), with no model run. The job's ``done.json`` is
updated alike, so that a record made again from it later agrees. A record whose every value comes
out the same is left untouched: on an unchanged affbench, rescore reproduces a run's records
exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affbench.reporting.outputs import (
    KeptOutputs,
    baseline_intervals,
    interval_record,
    outputs_intervals,
    read_outputs,
    score_outputs,
    scoring_versions,
    settings_of,
)
from affbench.reporting.records import (
    CellKey,
    _clean,
    _require,
    load_records,
    write_json_atomic,
    write_record,
)
from affbench.runtime.files import json_default
from affbench.runtime.run_folder import RunFolder
from affbench.scoring.bootstrap import BootstrapSettings

#: The record fields rescore recomputes (``baselines_ci`` only from outputs that keep the fitted
#: baselines' constants).
RESCORED = ("metrics", "ci", "scoring", "metric_warnings", "baselines_ci")


@dataclass
class RescoreReport:
    """What :func:`rescore` did: records checked, those that changed (and which values), those
    made before test outputs were kept."""

    checked: int = 0
    changed: list[tuple[str, list[str]]] = field(default_factory=list)
    without_outputs: list[str] = field(default_factory=list)
    baselines_kept: list[str] = field(default_factory=list)
    markdown: str = ""

    def lines(self) -> list[str]:
        out = [f"changed  {cell}: {', '.join(keys)}" for cell, keys in self.changed]
        out += [f"skipped  {cell}: no test outputs kept (made by an affbench before they were)"
                for cell in self.without_outputs]
        out += [f"kept     {cell}: baseline intervals as recorded (its outputs predate the kept baseline "
                "constants, so they cannot be drawn again)" for cell in self.baselines_kept]
        out.append(f"{self.checked} record(s) rescored from their test outputs, {len(self.changed)} changed, "
                   f"{self.checked - len(self.changed)} reproduced exactly"
                   + (f"; {len(self.without_outputs)} without outputs" if self.without_outputs else "") + ".")
        return out


def _normal(value: Any) -> Any:
    """``value`` as a record stores it (JSON, NaN as null), for comparing old and new."""
    return _clean(json.loads(json.dumps(value, default=json_default)))


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Which values changed: metric keys by name, the other rescored fields by field name."""
    found = []
    old_metrics, new_metrics = old.get("metrics") or {}, new["metrics"]
    found += [k for k in dict.fromkeys([*old_metrics, *new_metrics]) if old_metrics.get(k) != new_metrics.get(k)]
    found += [name for name in RESCORED[1:] if name in new and old.get(name) != new[name]]
    return found


def rescored_fields(outputs: KeptOutputs, settings: BootstrapSettings) -> dict[str, Any]:
    """The :data:`RESCORED` fields of a record, recomputed from one cell's kept outputs
    (``baselines_ci`` absent where the outputs predate the kept baseline constants)."""
    metrics, warnings = score_outputs(outputs)
    fields = {
        "metrics": metrics,
        "ci": interval_record(outputs_intervals([outputs], settings), outputs.cluster_unit),
        "scoring": scoring_versions(outputs.task, outputs.protocol_version),
        "metric_warnings": warnings,
    }
    baselines = baseline_intervals(outputs, settings)
    if baselines is not None:
        fields["baselines_ci"] = baselines
    return _normal(fields)


def rescore(run_dir: str | os.PathLike, *, settings: BootstrapSettings | None = None) -> RescoreReport:
    """Recompute every record of ``run_dir`` (metrics, intervals, versions) from its test outputs.

    Parameters
    ----------
    run_dir : path
        A run folder.
    settings : BootstrapSettings, optional
        Draw the intervals with these settings; by default each record's own (as its ``ci`` states).

    Returns
    -------
    RescoreReport
        Which records changed and how; the paper-style tables of the rescored records as Markdown.
    """
    from affbench.reporting.export import paper_tables_of, published_for
    from affbench.reporting.tables import markdown

    run_dir = Path(run_dir)
    records = load_records(run_dir)
    _require(records, run_dir)
    report = RescoreReport()
    for record in records:
        cell = CellKey.of(record)
        if not record.get("test_outputs"):
            report.without_outputs.append(str(cell))
            continue
        outputs = read_outputs(run_dir / record["test_outputs"])
        new = rescored_fields(outputs, settings or settings_of(record.get("ci")))
        report.checked += 1
        if "baselines_ci" not in new and record.get("baselines_ci"):
            report.baselines_kept.append(str(cell))
        changed = _differences(record, new)
        if not changed:
            continue
        report.changed.append((str(cell), changed))
        write_record(run_dir, {**record, **new})
        _update_done(run_dir, record, new)
    records = load_records(run_dir)
    report.markdown = markdown(paper_tables_of(run_dir, records,
                                               published_for(run_dir, dict.fromkeys(r["suite"] for r in records))))
    return report


def _update_done(run_dir: Path, record: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """The job's done.json says the same as the rescored record (a record made from it later agrees)."""
    job = record.get("job")
    if not job:
        return
    path = RunFolder(run_dir).job(job).done
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(summary, dict):
        return
    task = record["task"]
    for name in (n for n in RESCORED if n in new):
        summary.setdefault(name, {})
        if isinstance(summary[name], dict):
            summary[name][task] = new[name]
    write_json_atomic(path, summary)
