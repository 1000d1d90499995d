"""The manifest of a prepared dataset: its parameters, its finished units and their shards, its failures.

:class:`DatasetWriter` owns ``manifest.json`` while a pipeline runs: it refuses to mix other
preprocessing parameters into a folder, records each finished unit with its shards' row counts and
hashes, and lists every failure. Readers list shards from the manifest, never by globbing, so
neither a half-written shard nor a finished shard of an unfinished unit is ever read.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from affbench.errors import AffbenchError, ParameterMismatchError
from affbench.runtime.files import json_default, write_text_atomic
from affbench.runtime.locks import LOCK_NAME, FolderLock
from affbench.runtime.version import __version__
from affbench.shards.schema import (
    MANIFEST_NAME,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    SHARD_DIR,
    SHARD_SUFFIX,
)
from affbench.shards.writer import ShardInfo, remove_unit_shards

# ----------------------------------------------------------------------------------------- manifest


@dataclass
class UnitRecord:
    """What the manifest keeps about one unit."""

    status: str  # "done" or "failed"
    shards: list[ShardInfo] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    inputs: str | None = None  # the pipeline's fingerprint of the files the unit was made from

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        data = {
            "status": self.status,
            "rows": self.rows,
            "shards": [asdict(s) for s in self.shards],
            "failures": self.failures,
            "stats": self.stats,
        }
        if self.inputs is not None:
            data["inputs"] = self.inputs
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnitRecord:
        return cls(
            status=data["status"],
            shards=[ShardInfo(**s) for s in data.get("shards", [])],
            failures=list(data.get("failures", [])),
            stats=dict(data.get("stats", {})),
            inputs=data.get("inputs"),
        )


def _canonical(value: Any) -> Any:
    """JSON round trip, so that tuples and lists (and numpy scalars) compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=json_default))


def _describe_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if key not in old or key not in new:
            diffs.append(name)
        elif isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            diffs.extend(_describe_differences(old[key], new[key], f"{name}."))
        elif old[key] != new[key]:
            diffs.append(name)
    return diffs


class DatasetWriter:
    """An output folder being prepared: parameters, schema, manifest and per-unit resume.

    The first run writes ``manifest.json`` with the dataset name and the exact preprocessing
    ``parameters``; later runs into the same folder must pass equal parameters (else
    :class:`~affbench.errors.ParameterMismatchError`) and skip every unit already ``done``.

    ``protocol`` (evaluation splits and tasks, declared by the pipeline) and ``info`` (anything
    else worth recording, e.g. the dataset root) are stored as given.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        dataset: str,
        parameters: Mapping[str, Any],
        schema: pa.Schema,
        protocol: Mapping[str, Any] | None = None,
        info: Mapping[str, Any] | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.dataset = dataset
        self.parameters = _canonical(dict(parameters))
        self.schema = schema
        self.units: dict[str, UnitRecord] = {}
        self.protocol = _canonical(dict(protocol)) if protocol is not None else None
        self.info = _canonical(dict(info or {}))
        self.created_with = __version__
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise AffbenchError(f"{self.out_dir} is a file, not a folder; choose a folder for --out.")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # Held until close(): a second process in this folder would delete this one's units.
            self._lock = FolderLock(self.out_dir)
        except OSError as exc:
            raise _output_error(self.out_dir, exc) from None
        try:
            if self.path.exists():
                self._load_existing()
            elif any(p.name != LOCK_NAME for p in self.out_dir.iterdir()):
                raise AffbenchError(
                    f"{self.out_dir} is not empty and has no {MANIFEST_NAME}; choose an empty or new folder."
                )
            else:
                # Written before any unit starts, so that even a run killed in its first unit resumes.
                self.save()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the output folder for other processes (also done when the writer is collected)."""
        self._lock.release()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_existing(self) -> None:
        manifest = read_manifest(self.out_dir)
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise AffbenchError(
                f"{self.out_dir} was prepared with shard schema version {manifest.get('schema_version')}; this "
                f"affbench writes version {SCHEMA_VERSION} and cannot add to it; choose another --out folder."
            )
        if manifest.get("dataset") != self.dataset:
            raise AffbenchError(
                f"{self.out_dir} holds a prepared {manifest.get('dataset')!r} dataset, not "
                f"{self.dataset!r}; choose another --out folder."
            )
        old_schema = manifest.get("columns")
        new_schema = [[f.name, str(f.type)] for f in self.schema]
        if manifest["parameters"] != self.parameters or (old_schema and old_schema != new_schema):
            diffs = _describe_differences(manifest["parameters"], self.parameters) or ["columns"]
            raise ParameterMismatchError(
                f"{self.out_dir} was prepared with different parameters ({', '.join(diffs)}); "
                "re-run with the same options or choose another --out folder."
            )
        self._check_same_root(manifest.get("info"))
        self.units = {k: UnitRecord.from_json(v) for k, v in manifest.get("units", {}).items()}
        self.created_with = manifest.get("affbench_version", __version__)

    def _check_same_root(self, recorded: Any) -> None:
        """Refuse another dataset root: its units would replace or sit beside the first root's, under
        a manifest that names only the new one."""
        old = recorded.get("root") if isinstance(recorded, Mapping) else None
        new = self.info.get("root")
        if old is None or new is None or _same_path(old, new):
            return
        raise ParameterMismatchError(
            f"{self.out_dir} was prepared from ROOT {old}, not {new}; give that ROOT to resume it, or choose "
            "another --out folder for this one."
        )

    # -- resume

    def is_done(self, unit: str, inputs: str | None = None) -> bool:
        """True if ``unit`` finished before without per-item failures, all its shards are still on
        disk and, where both are known, it was made from the same ``inputs`` fingerprint."""
        record = self.units.get(unit)
        if record is None or record.status != "done" or record.failures:
            return False
        if inputs is not None and record.inputs is not None and inputs != record.inputs:
            return False
        return all((self.out_dir / s.file).is_file() for s in record.shards)

    def inputs_changed(self, unit: str, inputs: str | None) -> bool:
        """True if ``unit`` was finished from other inputs than ``inputs``."""
        record = self.units.get(unit)
        return (record is not None and record.status == "done" and None not in (inputs, record.inputs)
                and inputs != record.inputs)

    def pending(self, units: Iterable[str]) -> list[str]:
        """The units that still need work, in the order given."""
        return [u for u in units if not self.is_done(u)]

    def start_unit(self, unit: str) -> None:
        """Forget a unit and delete whatever an earlier, unfinished attempt left of it."""
        self.units.pop(unit, None)
        remove_unit_shards(self.out_dir, unit)

    def record_unit(
        self,
        unit: str,
        *,
        shards: Sequence[ShardInfo] = (),
        failures: Sequence[Mapping[str, str]] = (),
        stats: Mapping[str, Any] | None = None,
        failed: bool = False,
        inputs: str | None = None,
    ) -> None:
        """Record a unit's outcome and save the manifest at once (so a later kill loses nothing)."""
        self.units[unit] = UnitRecord(
            status="failed" if failed else "done",
            shards=list(shards),
            failures=[dict(f) for f in failures],
            stats=_canonical(dict(stats or {})),
            inputs=inputs,
        )
        self.save()

    # -- manifest

    def manifest(self) -> dict[str, Any]:
        units = {k: self.units[k].to_json() for k in sorted(self.units)}
        failures = [f for k in sorted(self.units) for f in self.units[k].failures]
        done = [u for u in units.values() if u["status"] == "done"]
        return {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "affbench_version": self.created_with,
            "parameters": self.parameters,
            "columns": [[f.name, str(f.type)] for f in self.schema],
            "protocol": self.protocol,
            "info": self.info,
            "totals": {
                "units": len(units),
                "units_failed": len(units) - len(done),
                "rows": sum(u["rows"] for u in done),
                "failures": len(failures),
            },
            "units": units,
            "failures": failures,
        }

    def save(self) -> None:
        # An unchanged manifest is not rewritten: re-running a finished folder changes no byte.
        try:
            write_text_atomic(self.path, json.dumps(self.manifest(), indent=2, default=json_default) + "\n")
        except OSError as exc:
            raise _output_error(self.path, exc) from None

    @property
    def failures(self) -> list[dict[str, str]]:
        return self.manifest()["failures"]


def _same_path(a: str, b: str) -> bool:
    """Whether two recorded paths name one folder (either may be missing or reached through a link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _output_error(path: Path, exc: OSError) -> AffbenchError:
    """One sentence for a failed write into the output folder (full disk, read-only folder...)."""
    reason = exc.strerror or str(exc)
    hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable or choose another --out"
    return AffbenchError(f"Cannot write {path}: {reason}; {hint}, then run the same command again to resume.")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Load ``manifest.json``, with one clear error where the folder is not a prepared dataset."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise AffbenchError(f"{folder} is not a prepared dataset folder: {MANIFEST_NAME} is missing.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AffbenchError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    except UnicodeDecodeError:
        raise AffbenchError(f"{path} is not valid JSON (it is not UTF-8 text).") from None
    if not isinstance(manifest, dict):
        raise AffbenchError(f"{path} is not an affbench manifest (it holds no JSON object).")
    version = manifest.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise AffbenchError(
            f"{path} has shard schema version {version}; this affbench reads versions "
            f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}"
            + ("; upgrade affbench to read it." if newer else "; prepare the dataset again.")
        )
    for key, kind in (("dataset", str), ("parameters", dict), ("units", dict)):
        if not isinstance(manifest.get(key), kind):
            raise AffbenchError(
                f"{path} has no valid {key!r} entry, so it is damaged or was not written by `affbench prepare`; "
                "prepare the dataset again into a new folder."
            )
    for unit, record in manifest["units"].items():
        problem = _unit_problem(record)
        if problem:
            raise AffbenchError(
                f"{path} is not an affbench manifest: unit {unit!r} {problem}; nothing it names is read or "
                "deleted, so prepare the dataset again into a new folder."
            )
    return manifest


def _unit_problem(record: Any) -> str | None:
    """What is wrong with a unit entry of a manifest read from disk, or None.

    A shard's ``file`` is joined to the dataset folder by every reader and by the integrity check
    (which hashes it and may advise deleting it), so it must name a shard inside ``shards/``: never
    ``..``, an absolute path, or a file elsewhere.
    """
    if not isinstance(record, Mapping) or record.get("status") not in ("done", "failed"):
        return "has no valid status"
    shards = record.get("shards", [])
    if not isinstance(shards, list):
        return "has no valid list of shards"
    for shard in shards:
        if not isinstance(shard, Mapping) or set(shard) != {"file", "rows", "sha256"}:
            return "lists a shard that is not {file, rows, sha256}"
        name = shard["file"]
        folder, _, base = name.partition("/") if isinstance(name, str) else ("", "", "")
        if folder != SHARD_DIR or not base or "/" in base or "\\" in base or base.startswith(".") \
                or not base.endswith(SHARD_SUFFIX):
            return f"names the shard file {name!r}, which is not a file in {SHARD_DIR}/"
        if isinstance(shard["rows"], bool) or not isinstance(shard["rows"], int) or shard["rows"] < 0 \
                or not isinstance(shard["sha256"], str):
            return f"records no valid row count and hash for {name!r}"
    return None
