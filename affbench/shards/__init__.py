"""The one on-disk format of a prepared dataset: row schema, image codec, shard writer and reader,
manifest, integrity check.

May import :mod:`affbench.faces` (the face and its landmark sources) and :mod:`affbench.runtime`.
The names below are the documented way to read a prepared folder from outside affbench
(``from affbench.shards import ShardReader, decode_image``); affbench's own modules import each
name from its home module.
"""

from affbench.shards.codec import decode_image
from affbench.shards.manifest import read_manifest
from affbench.shards.reader import ShardReader

__all__ = ["ShardReader", "decode_image", "read_manifest"]
