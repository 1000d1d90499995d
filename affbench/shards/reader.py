"""Reading a prepared dataset's shards: rows, columns and single images, as the manifest lists them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from affbench.errors import AffbenchError
from affbench.runtime.files import file_sha256
from affbench.shards.manifest import read_manifest
from affbench.shards.writer import ShardInfo

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
