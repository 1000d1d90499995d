"""Torch data over prepared shards: row-group-aware batches, decoding in workers.

A prepared dataset stores each face crop as encoded bytes in Parquet row groups. Reading one
random row means reading (and decompressing) its whole row group, so a uniformly shuffled loader
would read every row group once per *row*. This module shuffles at two levels instead: the order of
row groups, then rows inside a window of a few row groups. A DataLoader worker keeps the row groups
it has read in a small cache, so each row group is read a handful of times per epoch at most while
batches stay well mixed.

* :class:`ShardImages` is a map-style dataset whose keys are ``(row, seed)`` pairs; its
  ``__getitems__`` decodes a whole batch in the worker and returns uint8 tensors, so the main
  process only normalises (on the GPU where there is one). Each crop is framed and augmented by
  :func:`affbench.data.augment.transform_crop`.
* :class:`RowGroupBatchSampler` makes the batches, deterministically from a seed and the epoch,
  whatever the number of workers; each sample carries its own augmentation seed.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch

from affbench.data.augment import Augmentation, transform_crop
from affbench.data.prepared import PreparedData, alignment_from_parameters
from affbench.errors import AffbenchError
from affbench.faces.alignment import alignment_matrix, transform_points
from affbench.shards.codec import decode_image
from affbench.shards.reader import ShardReader

#: A dataset key: a ``(row, seed)`` pair (:class:`RowGroupBatchSampler`), or a row alone (seed 0).
SampleKey = int | tuple[int, int]
_Batch = TypeVar("_Batch")


def crop_landmarks(prepared: PreparedData) -> np.ndarray:
    """The five landmarks of every row in crop pixels, shape (n, 5, 2); NaN where a row has none.

    The shards keep landmarks in source pixels; the crop is a similarity transform of them that is
    a pure function of the landmarks and the recorded template (``affbench.faces``), so it is
    recomputed here rather than stored twice.
    """
    found = alignment_from_parameters(prepared.manifest.get("parameters", {}))
    if found is None:
        raise AffbenchError(
            f"{prepared.folder}'s manifest records no alignment template, so landmark positions in the "
            "crops cannot be recomputed (needed for heatmap targets)."
        )
    template, size = found
    if "landmarks" not in prepared.reader.columns:
        raise AffbenchError(f"The {prepared.dataset} shards have no landmarks column (needed for heatmap targets).")
    raw = prepared.reader.table(["landmarks"]).column("landmarks").to_pylist()
    out = np.full((len(raw), 5, 2), np.nan, dtype=np.float32)
    for i, marks in enumerate(raw):
        if marks is None:
            continue
        points = np.asarray(marks, dtype=np.float64).reshape(5, 2)
        if not np.isfinite(points).all():
            continue
        out[i] = transform_points(alignment_matrix(points, size, template), points)
    return out


# ----------------------------------------------------------------------------------------- dataset


def _row_locations(reader: ShardReader) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every row (in :meth:`ShardReader.table` order): shard index, row group, offset in it, and
    a global row-group number."""
    paths = reader.paths
    shard_of, group_of, offset_of, global_group = [], [], [], []
    counter = 0
    for index, path in enumerate(paths):
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            shard_of.append(np.full(rows, index, np.int32))
            group_of.append(np.full(rows, group, np.int32))
            offset_of.append(np.arange(rows, dtype=np.int32))
            global_group.append(np.full(rows, counter, np.int32))
            counter += 1
    if not shard_of:
        empty = np.zeros(0, np.int32)
        return paths, empty, empty, empty, empty
    return paths, np.concatenate(shard_of), np.concatenate(group_of), np.concatenate(offset_of), np.concatenate(global_group)


class ShardImages(torch.utils.data.Dataset):
    """The crops of a prepared dataset, as model inputs.

    Keys are ``(row, seed)`` pairs (see :class:`RowGroupBatchSampler`): ``row`` indexes the label
    table (:attr:`PreparedData.meta`), ``seed`` drives that sample's augmentation, so the same
    epoch gives the same pixels with any number of workers.

    A batch is a dict: ``image`` uint8 (B, 3, S, S), ``row`` int64 (B,) and, when ``points`` were
    given, ``points`` float32 (B, k, 2) in input pixels.

    Parameters
    ----------
    folder : path
        The prepared dataset folder.
    input_size : int
        Side of the model input.
    augmentation : Augmentation
    train : bool
        Random augmentation (True) or the deterministic evaluation framing.
    points : ndarray (n_rows, k, 2), optional
        Per-row points in crop pixels (e.g. :func:`crop_landmarks`), moved along with the image.
    cache_row_groups : int
        Row groups each worker keeps decoded-from-Parquet (not image-decoded) in memory.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        input_size: int,
        augmentation: Augmentation = Augmentation(),
        *,
        train: bool = False,
        points: np.ndarray | None = None,
        cache_row_groups: int = 16,
    ):
        self.folder = Path(folder)
        reader = ShardReader(self.folder)
        self._paths, self._shard, self._group, self._offset, self._global_group = _row_locations(reader)
        self.input_size = int(input_size)
        self.augmentation = augmentation
        self.train = train
        self.points = points
        if points is not None and len(points) != len(self._shard):
            raise ValueError(f"points has {len(points)} rows, the shards {len(self._shard)}")
        self.cache_row_groups = max(1, int(cache_row_groups))
        self._files: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[tuple[int, int], list[bytes | None]] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._shard)

    @property
    def row_groups(self) -> np.ndarray:
        """The row group (numbered across all shards) of every row of the label table."""
        return self._global_group

    def with_mode(self, *, train: bool) -> ShardImages:
        """A copy that augments (train) or frames deterministically (evaluation), sharing no state."""
        clone = object.__new__(type(self))  # subclasses (the decoded cache's) stay what they are
        clone.__dict__.update(self.__dict__)
        clone.train = train
        clone._files, clone._cache = {}, OrderedDict()
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_cache"] = {}, OrderedDict()  # open files never cross processes
        return state

    def _images_of(self, shard: int, group: int) -> list[bytes | None]:
        if os.getpid() != self._pid:  # forked into a worker: start with no handles and no cache
            self._files, self._cache, self._pid = {}, OrderedDict(), os.getpid()
        key = (shard, group)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        handle = self._files.get(shard)
        if handle is None:
            handle = self._files[shard] = pq.ParquetFile(self._paths[shard])
        column = handle.read_row_group(group, columns=["image"]).column("image").combine_chunks()
        images = column.field("bytes").to_pylist()
        self._cache[key] = images
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return images

    def _load(self, row: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        data = self._images_of(int(self._shard[row]), int(self._group[row]))[int(self._offset[row])]
        if data is None:
            raise ValueError(f"row {row} of {self.folder} has no image (no face and no fallback crop); it must not be sampled")
        rgb = decode_image(data)
        points = None if self.points is None else self.points[row]
        return transform_crop(rgb, self.input_size, self.augmentation, train=self.train, seed=seed, points=points)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        """A batch of one sample (see :meth:`__getitems__`)."""
        return self.__getitems__([key])

    def __getitems__(self, keys: Sequence[SampleKey]) -> dict[str, Any]:
        rows = [int(k[0]) if isinstance(k, (tuple, list)) else int(k) for k in keys]
        seeds = [int(k[1]) if isinstance(k, (tuple, list)) else 0 for k in keys]
        # Rows of the same row group are decoded together so the cache is hit in a row.
        order = sorted(range(len(rows)), key=lambda i: (self._shard[rows[i]], self._group[rows[i]]))
        images = np.empty((len(rows), self.input_size, self.input_size, 3), np.uint8)
        points = None if self.points is None else np.empty((len(rows), *self.points.shape[1:]), np.float32)
        for i in order:
            image, moved = self._load(rows[i], seeds[i])
            images[i] = image
            if points is not None:
                points[i] = moved
        # (B, 3, H, W) in channels_last memory: no per-crop transpose copy, and the layout the GPU path uses
        batch: dict[str, Any] = {"image": torch.from_numpy(images).permute(0, 3, 1, 2),
                                 "row": torch.as_tensor(rows, dtype=torch.int64)}
        if points is not None:
            batch["points"] = torch.from_numpy(points)
        return batch


def identity_collate(batch: _Batch) -> _Batch:
    """``__getitems__`` already returns a batch."""
    return batch


class RowGroupBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(row, seed)`` keys: row groups in random order, rows mixed within windows.

    Parameters
    ----------
    rows : array of int
        The rows to draw from (positions in the label table).
    row_groups : array of int
        Row group of every row of the table (:attr:`ShardImages.row_groups`).
    batch_size : int
    shuffle : bool
        Training order (True) or table order (evaluation).
    seed : int
        With the epoch (:meth:`set_epoch`), fixes the order and the per-sample augmentation seeds.
    window : int
        Row groups whose rows are mixed together; more mixes better, costs more worker cache.
    drop_last : bool
        Drop a last, smaller batch (training: keeps batch statistics steady).
    max_batches : int, optional
        Stop after this many batches per epoch (``--max-steps``).
    """

    def __init__(
        self,
        rows: np.ndarray,
        row_groups: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        window: int = 8,
        drop_last: bool = False,
        max_batches: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.groups = np.asarray(row_groups)[self.rows] if len(self.rows) else np.zeros(0, np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.window = max(1, int(window))
        self.drop_last = drop_last and len(self.rows) >= batch_size  # never drop everything
        self.max_batches = max_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch, which with ``seed`` fixes :meth:`order` (the batches and augmentation seeds)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.rows) // self.batch_size if self.drop_last else math.ceil(len(self.rows) / self.batch_size)
        return min(n, self.max_batches) if self.max_batches else n

    def order(self) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's rows in batch order, and their augmentation seeds."""
        if not self.shuffle:
            return self.rows, np.zeros(len(self.rows), np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, 0x5EED])
        unique_groups = np.unique(self.groups)
        rng.shuffle(unique_groups)
        chunks = []
        for start in range(0, len(unique_groups), self.window):
            members = self.rows[np.isin(self.groups, unique_groups[start : start + self.window])]
            chunks.append(rng.permutation(members))
        ordered = np.concatenate(chunks) if chunks else self.rows[:0]
        seeds = rng.integers(0, 2**62, size=len(ordered), dtype=np.int64)
        return ordered, seeds

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rows, seeds = self.order()
        for b in range(len(self)):
            chunk = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield list(zip(rows[chunk].tolist(), seeds[chunk].tolist()))


def _worker_init(_worker_id: int) -> None:
    # Each worker decodes one batch at a time; extra threads would only fight over the cores.
    # (OpenCV's pool is switched off in the parent before the fork, see make_loader: tearing down
    # an inherited pool in the child waits forever on the parent's threads.)
    torch.set_num_threads(1)


def make_loader(
    dataset: ShardImages,
    sampler: torch.utils.data.Sampler[list[SampleKey]],
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 4,
    persistent: bool = True,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader that decodes in ``num_workers`` processes (kept alive across epochs when
    ``persistent``).

    The loader draws its worker seeds from its own generator (``seed``), never from torch's global
    one, so that creating a loader does not shift the random stream of the training itself (a
    resumed run then sees the same dropout masks as an uninterrupted one).
    """
    options: dict[str, Any] = {}
    if num_workers > 0:
        # A forked worker inherits OpenCV's thread pool without its threads; using (or resizing)
        # it there deadlocks. With one thread OpenCV keeps no pool, in this process or the workers;
        # the workers are the parallelism.
        cv2.setNumThreads(1)
        options.update(persistent_workers=persistent, prefetch_factor=prefetch_factor, worker_init_fn=_worker_init)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=identity_collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float normalised ``(x / 255 - mean) / std`` on the images' device."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - mean_t) / std_t
