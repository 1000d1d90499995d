"""A prepared dataset as training sees it: the folder under ``--data``, its label table, its alignment.

:func:`open_prepared` finds a dataset folder under ``--data``, checks that it is the dataset asked
for, verifies its shards (:mod:`affbench.shards.integrity`) and loads its label table
(:class:`PreparedData`; no image bytes are read).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from affbench.errors import AffbenchError
from affbench.faces.alignment import AlignmentTemplate
from affbench.shards.reader import ShardReader
from affbench.shards.schema import MANIFEST_NAME

#: Columns every label table carries when the shards have them.
META_COLUMNS = ("sample_id", "subject", "source", "frame", "split", "face_found", "landmark_source", "n_faces")

# ----------------------------------------------------------------------------------------- folders


@dataclass
class PreparedData:
    """One prepared dataset folder, with its label table loaded (no image bytes).

    Attributes
    ----------
    folder : Path
    dataset : str
        ``manifest["dataset"]``.
    manifest : dict
    meta : pandas.DataFrame
        One row per shard row, in shard order: the columns asked for.
    fingerprint : str
        A hash of the manifest's parameters and shard hashes: results record it, so that
        re-prepared data is never mistaken for the data a result was made on.
    """

    folder: Path
    dataset: str
    manifest: dict[str, Any]
    reader: ShardReader
    meta: pd.DataFrame
    fingerprint: str

    @property
    def protocol_dict(self) -> dict[str, Any]:
        """The evaluation protocol the manifest records; AffbenchError where it records none."""
        protocol = self.manifest.get("protocol")
        if not protocol:
            raise AffbenchError(
                f"{self.folder} holds no evaluation protocol in its {MANIFEST_NAME}; re-run the prepare command."
            )
        return protocol


def dataset_fingerprint(manifest: Mapping[str, Any]) -> str:
    """A short hash of what makes a prepared dataset what it is (parameters, protocol, shard content)."""
    shards = sorted(
        s["sha256"]
        for unit in manifest.get("units", {}).values()
        if unit.get("status") == "done"
        for s in unit.get("shards", [])
    )
    blob = json.dumps(
        {"dataset": manifest.get("dataset"), "parameters": manifest.get("parameters"),
         "protocol": manifest.get("protocol"), "shards": shards},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_dataset_folder(data_root: str | os.PathLike, dataset: str, folder: str | None = None) -> Path:
    """The folder of ``dataset`` under ``data_root`` (``data_root/<folder or dataset>``).

    ``data_root`` may also be the dataset folder itself. The folder must hold a manifest whose
    ``dataset`` is the one asked for; every other case ends in one clear sentence.
    """
    root = Path(data_root)
    candidates = [root / (folder or dataset)]
    if (root / MANIFEST_NAME).is_file():
        candidates.append(root)
    for candidate in candidates:
        manifest_path = candidate / MANIFEST_NAME
        if not manifest_path.is_file():
            continue
        try:
            found = json.loads(manifest_path.read_text()).get("dataset")
        except (OSError, ValueError):  # unreadable, not JSON or not UTF-8
            raise AffbenchError(f"{manifest_path} is not a readable manifest; re-run the prepare command.") from None
        if found == dataset:
            return candidate
        if candidate == candidates[0]:
            raise AffbenchError(
                f"{candidate} holds a prepared {found!r} dataset, not {dataset!r}; "
                f"put the {dataset} shards in {root / (folder or dataset)}."
            )
    if root.exists() and not root.is_dir():
        raise AffbenchError(f"The data folder {root} is a file; give the folder that holds the prepared datasets.")
    if not root.is_dir():
        raise AffbenchError(f"The data folder {root} does not exist.")
    raise AffbenchError(
        f"No prepared {dataset} dataset in {root}: {candidates[0] / MANIFEST_NAME} is missing; "
        f"run `affbench prepare {dataset} ROOT --out {candidates[0]}` first."
    )


def open_prepared(
    data_root: str | os.PathLike,
    dataset: str,
    *,
    columns: Sequence[str] = (),
    folder: str | None = None,
    verify_cache: str | os.PathLike | None = None,
    verify: bool = False,
) -> PreparedData:
    """Find, check and load the label table of one prepared dataset.

    Parameters
    ----------
    data_root : path
        The ``--data`` folder (one sub-folder per dataset) or the dataset folder itself.
    dataset : str
        ``disfa``, ``caer-s`` or ``affwild2`` (the manifest's ``dataset``).
    columns : sequence of str
        Label columns that must exist (a clear error names the missing ones); the base columns of
        :data:`META_COLUMNS` and ``landmarks`` are loaded too where present.
    verify : bool
        Check every shard against the SHA-256 the manifest recorded before reading anything
        (:func:`affbench.shards.integrity.verify_shards`), remembering verified shards in ``verify_cache``.
    """
    path = find_dataset_folder(data_root, dataset, folder)
    reader = ShardReader(path)
    if verify:
        from affbench.shards.integrity import verify_shards

        verify_shards(reader, verify_cache)
    if not reader.shards:
        raise AffbenchError(f"{path} has no finished shards yet; run its prepare command to the end.")
    available = reader.columns
    missing = [c for c in columns if c not in available]
    if missing:
        labels = [c for c in available if c not in META_COLUMNS and c not in
                  ("dataset", "image", "width", "height", "det_score", "box", "landmarks")]
        raise AffbenchError(
            f"The {dataset} shards in {path} have no column(s) {', '.join(missing)}; "
            f"their label columns are: {', '.join(labels) or 'none'}."
        )
    wanted = [c for c in (*META_COLUMNS, *columns) if c in available]
    wanted = list(dict.fromkeys(wanted))
    meta = reader.table(wanted).to_pandas()
    return PreparedData(path, dataset, reader.manifest, reader, meta, dataset_fingerprint(reader.manifest))


# ----------------------------------------------------------------------------------------- landmarks


def alignment_from_parameters(parameters: Mapping[str, Any]) -> tuple[AlignmentTemplate, int] | None:
    """The alignment template and crop size recorded in a manifest's parameters, if any.

    Looks for the dictionary :meth:`affbench.faces.alignment.AlignmentTemplate.describe` writes (it has
    ``face_scale`` and ``size``), wherever the pipeline nested it.
    """
    stack: list[Any] = [parameters]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if "face_scale" in item and "size" in item:
                return AlignmentTemplate.from_description(item), int(item["size"])
            stack.extend(item.values())
    return None
