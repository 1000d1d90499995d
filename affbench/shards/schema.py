"""The columns of a prepared dataset's rows (schema version 2) and the names of its files.

A prepared dataset is one folder::

    DIR/manifest.json
    DIR/shards/<unit>-<hash>-00000.parquet
    DIR/shards/<unit>-<hash>-00001.parquet ...

(``<unit>`` is the unit's name cut to safe characters, ``<hash>`` a short hash of its exact name,
so that units whose names differ only in other characters or in case never share a file.) The
columns are documented in ``docs/architecture.md``; a dataset adds its own label columns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

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

# Declaring only the image column is enough: datasets derives the other features from Arrow types.
_HF_METADATA = {b"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}}).encode()}


def make_schema(label_fields: Sequence[pa.Field] = ()) -> pa.Schema:
    """The current schema: the base columns followed by a dataset's label columns.

    Examples
    --------
    >>> import pyarrow as pa
    >>> schema = make_schema([pa.field("expression", pa.int8())])
    >>> schema.names[0], schema.names[-1]
    ('sample_id', 'expression')
    """
    names = [f.name for f in label_fields]
    clash = sorted(set(names) & set(BASE_COLUMNS))
    if clash or len(set(names)) != len(names):
        raise ValueError(f"label columns must be unique and differ from the base columns: {names}")
    return pa.schema(list(BASE_FIELDS) + list(label_fields), metadata=_HF_METADATA)
