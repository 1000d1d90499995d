"""Writing one unit's rows as Parquet shards under temporary names, renamed when complete.

A *unit* is the piece of work a pipeline resumes by: one video, one image folder. Each unit writes
its own shards, so units can be processed by separate processes (or machines) and a unit is either
recorded as finished in the manifest (:mod:`affbench.shards.manifest`) or redone from scratch.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from affbench.runtime.files import file_sha256, temporary_path
from affbench.shards.schema import SHARD_DIR, SHARD_SUFFIX

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
    >>> from affbench.shards.schema import make_schema
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
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp_path: Path | None = None
        self._rows_in_shard = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _final_path(self, index: int) -> Path:
        return self.shard_dir / f"{self.prefix}-{index:05d}{SHARD_SUFFIX}"

    def write(self, row: Mapping[str, Any]) -> None:
        """Add one row (column -> value, in the schema's types); full row groups and shards are written."""
        self._buffer.append(dict(row))
        if len(self._buffer) >= self.row_group_size or (
            self._rows_in_shard + len(self._buffer) >= self.rows_per_shard
        ):
            self._flush()

    def write_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add each of ``rows`` in order (see :meth:`write`)."""
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
