"""The one module that writes and reads Parquet shards (schema version 2, see DESIGN.md).

A prepared dataset is one folder::

    DIR/manifest.json
    DIR/shards/<unit>-<hash>-00000.parquet
    DIR/shards/<unit>-<hash>-00001.parquet ...

(``<unit>`` is the unit's name cut to safe characters, ``<hash>`` a short hash of its exact name,
so that units whose names differ only in other characters or in case never share a file.)

A *unit* is the piece of work a pipeline resumes by: one video, one image folder. Each unit writes
its own shards, so units can be processed by separate processes (or machines) and a unit is either
recorded as finished in the manifest or redone from scratch. Shards are written under a hidden
temporary name and renamed when complete; readers list shards from the manifest, never by globbing,
so neither a half-written shard nor a finished shard of an unfinished unit is ever read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from affbench import __version__
from affbench.errors import AffbenchError, ParameterMismatchError
from affbench.files import file_sha256, json_default, temporary_path, write_text_atomic
from affbench.locks import LOCK_NAME, FolderLock

#: Version 2 added ``landmark_source`` and ``n_faces`` (issue 10). Version 1 folders still read:
#: their rows lack the two columns, and a face_found row's landmarks were detected or tracked.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".parquet"

#: The struct Hugging Face ``datasets`` reads as an ``Image`` feature.
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

BASE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("subject", pa.string()),
    pa.field("source", pa.string()),
    pa.field("frame", pa.int32()),
    pa.field("split", pa.string()),
    pa.field("image", IMAGE_TYPE),
    pa.field("width", pa.int16()),
    pa.field("height", pa.int16()),
    pa.field("face_found", pa.bool_(), nullable=False),
    pa.field("det_score", pa.float32()),
    pa.field("box", pa.list_(pa.float32(), 4)),
    pa.field("landmarks", pa.list_(pa.float32(), 10)),
    # one of LANDMARK_SOURCES; null where no landmarks are computed (Aff-Wild2's crops come aligned)
    pa.field("landmark_source", pa.string()),
    pa.field("n_faces", pa.int16()),  # faces the full detector saw; null where it did not run
)
BASE_COLUMNS = tuple(f.name for f in BASE_FIELDS)

#: How a row's landmarks were obtained (``landmark_source``): found by the full detector, tracked
#: from the previous video frame, taken from neighbouring frames (a fallback crop for a frame
#: without a face), or not at all (no crop).
LANDMARK_SOURCES: tuple[str, ...] = ("detected", "tracked", "interpolated", "carried", "none")
#: The sources of fallback crops: such rows have an image but ``face_found`` false.
FALLBACK_SOURCES: tuple[str, ...] = ("interpolated", "carried")

# Declaring only the image column is enough: datasets derives the other features from Arrow types.
_HF_METADATA = {b"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}}).encode()}

IMAGE_CODECS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def make_schema(label_fields: Sequence[pa.Field] = ()) -> pa.Schema:
    """The current schema: the base columns followed by a dataset's label columns.

    Examples
    --------
    >>> import pyarrow as pa
    >>> schema = make_schema([pa.field("expression", pa.int8())])
    >>> schema.names[-2:]
    ['landmarks', 'expression']
    """
    names = [f.name for f in label_fields]
    clash = sorted(set(names) & set(BASE_COLUMNS))
    if clash or len(set(names)) != len(names):
        raise ValueError(f"label columns must be unique and differ from the base columns: {names}")
    return pa.schema(list(BASE_FIELDS) + list(label_fields), metadata=_HF_METADATA)


# ----------------------------------------------------------------------------------------- images


def encode_image(rgb: np.ndarray, codec: str = "png", *, quality: int = 95) -> bytes:
    """Encode an RGB uint8 image (H, W, 3) as PNG, JPEG or WebP bytes."""
    if codec not in IMAGE_CODECS:
        raise ValueError(f"unknown image codec {codec!r}; choose one of {sorted(IMAGE_CODECS)}")
    params: list[int] = []
    if codec == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif codec == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, buf = cv2.imencode(IMAGE_CODECS[codec], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    return buf.tobytes()


def decode_image(image: Mapping[str, Any] | bytes) -> np.ndarray:
    """Decode the ``image`` column's struct (or its bytes) to an RGB uint8 array."""
    data = image["bytes"] if isinstance(image, Mapping) else image
    if data is None:
        raise ValueError("this row has no image (face_found is false)")
    if not data:
        raise ValueError("the file is empty")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None:
        raise ValueError("the image bytes could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8; ``OSError`` if it cannot be read, ``ValueError`` with a sentence
    a user understands if it is empty or not an image OpenCV can decode."""
    data = Path(path).read_bytes()
    if not data:
        raise ValueError("the file is empty")
    try:
        return decode_image(data)
    except ValueError:
        raise ValueError("OpenCV cannot decode it (corrupt, truncated or not an image)") from None


# ----------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: its path relative to the dataset folder, row count and content hash."""

    file: str
    rows: int
    sha256: str


def unit_prefix(unit: str) -> str:
    """File-name prefix for a unit's shards (``SN001/left`` -> ``SN001-left-5e42e7b4``).

    The readable part keeps only ``[A-Za-z0-9._]``; the hash of the exact name keeps two units
    apart whose names differ only in other characters (``clip 1`` / ``clip-1``, ``vidéo7`` /
    ``vid-o7``) or only in case (which a case-insensitive file system would merge).

    Examples
    --------
    >>> unit_prefix("clip 1") != unit_prefix("clip-1")
    True
    """
    if not unit:
        raise ValueError("a unit needs a non-empty name")
    readable = re.sub(r"[^A-Za-z0-9._]+", "-", unit).strip("-.")[:80] or "unit"
    digest = hashlib.sha256(unit.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{readable}-{digest}"


class ShardWriter:
    """Write one unit's rows into rolling shards of ``rows_per_shard`` rows.

    Rows are buffered into row groups of ``row_group_size``; a shard lives under a hidden temporary
    name until it is complete and is then renamed, so a killed writer never leaves a file that
    looks finished. Use it as a context manager: on an exception the partial shard is removed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> schema = make_schema()
    >>> with ShardWriter(out, "unit", schema, rows_per_shard=2) as w:
    ...     for i in range(3):
    ...         w.write({"sample_id": f"d/u/{i}", "dataset": "d", "face_found": False})
    >>> [s.rows for s in w.shards]
    [2, 1]
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        unit: str,
        schema: pa.Schema,
        *,
        rows_per_shard: int = 1000,
        row_group_size: int = 64,
    ):
        if rows_per_shard < 1 or row_group_size < 1:
            raise ValueError("rows_per_shard and row_group_size must be positive")
        self.dataset_dir = Path(dataset_dir)
        self.shard_dir = self.dataset_dir / SHARD_DIR
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = unit_prefix(unit)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.row_group_size = min(row_group_size, rows_per_shard)
        self.shards: list[ShardInfo] = []
        self._buffer: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp_path: Path | None = None
        self._rows_in_shard = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _final_path(self, index: int) -> Path:
        return self.shard_dir / f"{self.prefix}-{index:05d}{SHARD_SUFFIX}"

    def write(self, row: Mapping[str, Any]) -> None:
        self._buffer.append(dict(row))
        if len(self._buffer) >= self.row_group_size or (
            self._rows_in_shard + len(self._buffer) >= self.rows_per_shard
        ):
            self._flush()

    def write_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        self._buffer = []
        if self._writer is None:
            self._tmp_path = temporary_path(self._final_path(len(self.shards)))
            self._writer = pq.ParquetWriter(self._tmp_path, self.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self._rows_in_shard += table.num_rows
        if self._rows_in_shard >= self.rows_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._writer is not None and self._tmp_path is not None
        self._writer.close()
        final = self._final_path(len(self.shards))
        os.replace(self._tmp_path, final)
        rel = final.relative_to(self.dataset_dir).as_posix()
        self.shards.append(ShardInfo(rel, self._rows_in_shard, file_sha256(final)))
        self._writer, self._tmp_path, self._rows_in_shard = None, None, 0

    def close(self) -> list[ShardInfo]:
        """Flush the last rows, publish the last shard and return every shard written."""
        self._flush()
        if self._writer is not None:
            self._finish_shard()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress; finished shards stay until the unit is redone."""
        self._buffer = []
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)
            self._tmp_path = None


def remove_unit_shards(dataset_dir: str | os.PathLike, unit: str) -> None:
    """Delete every shard and temporary file a unit may have left (before redoing it)."""
    shard_dir = Path(dataset_dir) / SHARD_DIR
    if not shard_dir.is_dir():
        return
    prefix = unit_prefix(unit)
    pattern = re.compile(rf"^\.?{re.escape(prefix)}-\d{{5}}{re.escape(SHARD_SUFFIX)}(-[0-9a-f]{{32}}\.tmp)?$")
    for path in shard_dir.iterdir():
        if pattern.match(path.name):
            path.unlink(missing_ok=True)


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

    def __exit__(self, *exc) -> None:
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
        self.units = {k: UnitRecord.from_json(v) for k, v in manifest.get("units", {}).items()}
        self.created_with = manifest.get("affbench_version", __version__)

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
    return manifest


# ----------------------------------------------------------------------------------------- reading


class ShardReader:
    """Read a prepared dataset folder: the finished shards its manifest lists, nothing else.

    Column selection happens in Parquet, so reading labels or boxes never touches image bytes.

    Examples
    --------
    >>> reader = ShardReader("prepared/disfa")                    # doctest: +SKIP
    >>> labels = reader.table(columns=["subject", "frame", "au12"])  # doctest: +SKIP
    >>> for row in reader.iter_rows(columns=["sample_id", "image"]):  # doctest: +SKIP
    ...     rgb = decode_image(row["image"])
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.dataset: str = self.manifest["dataset"]
        self.parameters: dict[str, Any] = self.manifest["parameters"]
        self.protocol: dict[str, Any] | None = self.manifest.get("protocol")
        self.shards: list[ShardInfo] = [
            ShardInfo(**s)
            for _, unit in sorted(self.manifest["units"].items())
            if unit["status"] == "done"
            for s in unit["shards"]
        ]
        missing = [s.file for s in self.shards if not (self.folder / s.file).is_file()]
        if missing:
            raise AffbenchError(
                f"{self.folder} lists {len(missing)} shard(s) that are missing on disk, e.g. {missing[0]}; "
                "re-run the prepare command to restore them."
            )

    @property
    def paths(self) -> list[Path]:
        return [self.folder / s.file for s in self.shards]

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def schema(self) -> pa.Schema:
        if not self.shards:
            raise AffbenchError(f"{self.folder} has no finished shards yet.")
        return pq.read_schema(self.paths[0])

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def _check_columns(self, columns: Sequence[str] | None) -> None:
        if columns is None:
            return
        unknown = sorted(set(columns) - set(self.columns))
        if unknown:
            raise AffbenchError(
                f"{self.folder} has no column(s) {', '.join(unknown)}; it has: {', '.join(self.columns)}."
            )

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All finished rows as one Arrow table, optionally only ``columns``."""
        self._check_columns(columns)
        if not self.shards:
            return self.schema.empty_table() if columns is None else pa.table({c: [] for c in columns})
        tables = [pq.read_table(p, columns=list(columns) if columns else None) for p in self.paths]
        return pa.concat_tables(tables)

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 256) -> Iterator[pa.RecordBatch]:
        self._check_columns(columns)
        for path in self.paths:
            yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)

    def iter_rows(self, columns: Sequence[str] | None = None, batch_size: int = 256) -> Iterator[dict[str, Any]]:
        """Rows as dicts, streamed shard by shard (memory stays at one batch)."""
        for batch in self.iter_batches(columns, batch_size):
            yield from batch.to_pylist()

    def verify(self) -> list[str]:
        """Recompute every shard's hash; return the files whose content changed."""
        return [s.file for s in self.shards if file_sha256(self.folder / s.file) != s.sha256]
