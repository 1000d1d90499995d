"""Check prepared shards against the SHA-256 their manifest recorded, once, before anything trains.

A shard that changed after prepare (labels edited, a flipped bit, a truncated copy) would otherwise
train silently on other data or crash hours later. Hashing every shard on every run costs seconds
per gigabyte, so what was verified is remembered in a small JSON file (in the run folder) keyed by
the shard's path, size and modification time; a shard whose size or time changed is hashed again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from affbench.errors import AffbenchError
from affbench.runtime.files import file_sha256, write_text_atomic
from affbench.runtime.locks import locked
from affbench.shards.reader import ShardReader
from affbench.shards.schema import MANIFEST_NAME

CACHE_NAME = "verified-shards.json"


class ShardChangedError(AffbenchError):
    """A shard's bytes are not the ones its manifest recorded."""


def _read_cache(path: Path | None) -> dict[str, dict]:
    if path is None or not path.is_file():
        return {}
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # only a memo: a damaged one is rebuilt
    return cache if isinstance(cache, dict) else {}


def verify_shards(reader: ShardReader, cache_file: str | os.PathLike | None = None) -> int:
    """Raise :class:`ShardChangedError` naming the first shard of ``reader`` that differs from its
    manifest; return how many shards had to be hashed (the others were verified before, unchanged)."""
    cache_path = Path(cache_file) if cache_file is not None else None
    cache = _read_cache(cache_path)
    hashed = 0
    for shard in reader.shards:
        path = reader.folder / shard.file
        stat = path.stat()
        key = str(path.resolve())
        seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": shard.sha256}
        if cache.get(key) == seen:
            continue
        hashed += 1
        if file_sha256(path) != shard.sha256:
            raise ShardChangedError(
                f"The shard {path} has changed since it was prepared (its SHA-256 is not the one "
                f"{reader.folder / MANIFEST_NAME} records); delete it and re-run the prepare command "
                "of this dataset to make it again."
            )
        cache[key] = seen
    if hashed and cache_path is not None:
        # Other processes sharing the run folder may have remembered other shards since we read
        # the file: merge under its lock rather than overwrite their entries.
        with locked(cache_path):
            merged = {**_read_cache(cache_path), **cache}
            write_text_atomic(cache_path, json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return hashed
