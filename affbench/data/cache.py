"""Decoded crops in a memory-mapped file beside the shards, so that training is not bound by PNG decoding.

Decoding a 256x256 PNG crop costs about 1.4 ms of CPU, three times the rest of the per-sample work
(crop, flip, warp); a GPU that trains thousands of images a second would need many cores doing
nothing but decoding. The shards stay the archive and the source of truth; this module derives from
them, once per (dataset fingerprint, cache side), a folder::

    <dataset>/cache/decoded-<fingerprint>-<side>/
        pixels.npy   uint8 (rows, side, side, 3): every crop after the loader's deterministic framing
        sizes.npy    int32 (rows, 2): each crop's stored (height, width); (0, 0) = a row without image
        cache.json   what it was built from (dataset, fingerprint, every shard's name, rows, SHA-256,
                     size and modification time), written last

which every job and every DataLoader worker maps read-only (``np.load(mmap_mode="r",
allow_pickle=False)``: nothing read runs code). Augmentation still happens per sample, on these
pixels, with the same seeds as on the shards.

**Which side.** The loader's random crop (``augmentation.crop`` of the crop) must reach the model
at no less than unit scale, so the cache keeps ``ceil(input_size / (crop * (1 - scale)))`` pixels a
side, and never more than the stored crops have (no upsampling). With ME-GraphAU's recipe (224 of
256) that is the stored crop itself, and the pixels a model sees are bit-identical to the shard
loader's; with evaluation framing at the input size (``eval_crop = 1``) evaluation pixels are
identical too. Otherwise training pixels go through a second (deterministic, at least unit-scale)
resampling and differ from the shard loader's by rounding; :attr:`DecodedCache.exact` says which.

**Trust.** A cache is used only if its ``cache.json`` names the same dataset, fingerprint, side and
shard list (names, row counts, SHA-256) as the manifest now, its arrays have the recorded shapes,
and every shard file and both arrays still have the size and modification time they had when the
cache was built (a file whose stat changed is hashed again: same bytes, still valid; other bytes,
rebuilt, so that pixels written over in place never reach training). The build
hashes every shard against its manifest before decoding it, so a cache is never made from bytes the
manifest does not vouch for.

**Atomic and shared.** A build writes a hidden ``.decoded-...-<random>.tmp`` folder and renames it
into place when complete, so a killed build leaves nothing that looks whole (its leftovers are
removed by the next build). Builds take :class:`affbench.runtime.locks.FolderLock` on ``<dataset>/cache``;
a second process that wants the same cache waits for the first and then uses its result.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from affbench.data.augment import Augmentation, _geometry, centre_square, transform_crop
from affbench.data.loader import ShardImages
from affbench.data.prepared import dataset_fingerprint
from affbench.errors import AffbenchError
from affbench.faces.alignment import transform_points
from affbench.runtime.files import file_sha256, write_text_atomic
from affbench.runtime.locks import FolderBusyError, FolderLock
from affbench.shards.codec import decode_image
from affbench.shards.integrity import ShardChangedError
from affbench.shards.reader import ShardReader
from affbench.shards.schema import MANIFEST_NAME

CACHE_DIR = "cache"
FORMAT = "affbench-decoded-crops/1"
META_NAME = "cache.json"
PIXELS_NAME = "pixels.npy"
SIZES_NAME = "sizes.npy"


class CacheUnavailableError(AffbenchError):
    """The cache cannot be built here (no space, a read-only folder); the shards still work."""


# ----------------------------------------------------------------------------------------- sizes


def stored_side(reader: ShardReader) -> int:
    """The side of the stored crops (the largest short side; every pipeline stores square crops)."""
    table = reader.table(["width", "height"])
    width = table.column("width").to_numpy(zero_copy_only=False)
    height = table.column("height").to_numpy(zero_copy_only=False)
    sides = np.fmin(width.astype(np.float64), height.astype(np.float64))  # null -> NaN, ignored
    if not np.isfinite(sides).any():
        raise AffbenchError(f"{reader.folder} holds no crops (every row is without a face).")
    return int(np.nanmax(sides))


def cache_side(stored: int, input_size: int, augmentation: Augmentation) -> int:
    """Pixels a side that keep the loader's random crop at unit scale or more (see the module notes)."""
    fraction = min(augmentation.crop * (1.0 - augmentation.scale), augmentation.eval_crop)
    return int(min(stored, math.ceil(input_size / fraction - 1e-9)))


def cache_folder(dataset_folder: str | os.PathLike, fingerprint: str, side: int) -> Path:
    return Path(dataset_folder) / CACHE_DIR / f"decoded-{fingerprint}-{side}"


def estimated_bytes(rows: int, side: int) -> int:
    return int(rows) * side * side * 3


# ----------------------------------------------------------------------------------------- the cache


@dataclass
class DecodedCache:
    """An opened, verified cache folder.

    Attributes
    ----------
    folder : Path
    side : int
    stored_side : int
        Side of the crops in the shards; the cache is exact (pixels identical to the shard
        loader's, training and evaluation) when ``side == stored_side``.
    rows : int
    built : bool
        True when this call built it; False when an existing cache was reused.
    build_seconds : float
        How long the build took (this call's, or the recorded one of a reused cache).
    """

    folder: Path
    side: int
    stored_side: int
    rows: int
    fingerprint: str
    built: bool
    build_seconds: float

    @property
    def exact(self) -> bool:
        return self.side == self.stored_side

    @property
    def nbytes(self) -> int:
        return estimated_bytes(self.rows, self.side)

    def describe(self) -> dict[str, Any]:
        """What a result record says about the cache."""
        return {"folder": str(self.folder), "side": self.side, "stored_side": self.stored_side,
                "rows": self.rows, "bytes": self.nbytes, "exact": self.exact, "built": self.built,
                "build_seconds": round(self.build_seconds, 3)}


def _expected_shards(reader: ShardReader) -> list[list[Any]]:
    return [[s.file, int(s.rows), s.sha256] for s in reader.shards]


def _check(folder: Path, reader: ShardReader, fingerprint: str, side: int) -> tuple[dict | None, str]:
    """The cache's metadata if ``folder`` is a whole cache of exactly these shards, else (None, why)."""
    meta_path = folder / META_NAME
    if not meta_path.is_file():
        return None, "there is none"
    try:
        meta = json.loads(meta_path.read_text())
        recorded = [[m["file"], int(m["rows"]), m["sha256"]] for m in meta["shards"]]
        ok = (meta["format"] == FORMAT and meta["dataset"] == reader.dataset and meta["fingerprint"] == fingerprint
              and int(meta["side"]) == side and int(meta["rows"]) == reader.num_rows)
    except (OSError, ValueError, KeyError, TypeError):
        return None, "its cache.json is unreadable"
    if not ok or recorded != _expected_shards(reader):
        return None, "it was built from other data"
    restat = False
    for entry in meta["shards"]:
        path = reader.folder / entry["file"]
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) == (entry.get("size"), entry.get("mtime_ns")):
            continue
        # Touched or copied: still valid if the bytes are the ones the cache was decoded from.
        if file_sha256(path) != entry["sha256"]:
            return None, f"the shard {entry['file']} changed after it was built"
        entry["size"], entry["mtime_ns"], restat = stat.st_size, stat.st_mtime_ns, True
    try:
        pixels = np.load(folder / PIXELS_NAME, mmap_mode="r", allow_pickle=False)
        sizes = np.load(folder / SIZES_NAME, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None, "its arrays are damaged or incomplete"
    arrays = meta.get("arrays")
    if not isinstance(arrays, dict):
        arrays = meta["arrays"] = {}  # a cache built before arrays were hashed: hashed now, once
    for name in (PIXELS_NAME, SIZES_NAME):
        recorded = arrays.get(name)
        stat = (folder / name).stat()
        if isinstance(recorded, dict) and (stat.st_size, stat.st_mtime_ns) == (recorded.get("size"),
                                                                               recorded.get("mtime_ns")):
            continue
        # Touched, copied or written to: still valid only if its bytes are the ones the build wrote.
        now = _array_stamp(folder / name)
        if isinstance(recorded, dict) and now["sha256"] != recorded.get("sha256"):
            return None, f"its {name} changed after it was built"
        arrays[name], restat = now, True
    if (pixels.dtype != np.uint8 or pixels.shape != (reader.num_rows, side, side, 3)
            or sizes.dtype != np.int32 or sizes.shape != (reader.num_rows, 2)):
        return None, "its arrays have the wrong shape"
    if restat:
        try:
            write_text_atomic(meta_path, json.dumps(meta, indent=1) + "\n")
        except OSError:
            pass  # only saves hashing again next time
    return meta, ""


def _array_stamp(path: Path) -> dict[str, Any]:
    """Size, modification time and SHA-256 of a cache array: the stat says when to hash again, the
    hash whether the pixels are still the ones decoded from the shards."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}


def _frame(rgb: np.ndarray, side: int) -> np.ndarray:
    """The loader's deterministic framing (centre square, resized to ``side``): no-op at the stored side."""
    return transform_crop(rgb, side, Augmentation(), train=False)[0]


def _decode_shard(shard: Path, sha256: str, rows: int, pixels_path: Path, start: int, side: int) -> dict[str, Any]:
    """Decode one shard into rows ``start:start+rows`` of the pixel file (one joblib task).

    Returns the shard's stat as hashed, and each row's stored (height, width).
    """
    stat = shard.stat()
    if file_sha256(shard) != sha256:
        raise ShardChangedError(
            f"The shard {shard} has changed since it was prepared (its SHA-256 is not the one its "
            f"{MANIFEST_NAME} records); delete it and re-run the prepare command of this dataset."
        )
    pixels = np.load(pixels_path, mmap_mode="r+", allow_pickle=False)
    sizes = np.zeros((rows, 2), np.int32)
    row = 0
    for batch in pq.ParquetFile(shard).iter_batches(columns=["image"], batch_size=256):
        for data in batch.column("image").field("bytes").to_pylist():
            if row >= rows:
                break
            if data is not None:
                rgb = decode_image(data)
                sizes[row] = rgb.shape[:2]
                pixels[start + row] = _frame(rgb, side)
            row += 1
    if row != rows:
        raise AffbenchError(f"The shard {shard} holds {row} rows, its manifest says {rows}; re-run prepare.")
    pixels.flush()
    del pixels
    after = shard.stat()
    if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        raise AffbenchError(f"The shard {shard} changed while its crops were being decoded; run the command again.")
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sizes": sizes}


def _reserve(path: Path) -> None:
    """Allocate the sparse pixel file's blocks now: a full disk is then an OSError here, not a
    SIGBUS when a worker writes through its mapping half-way through the build."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # file systems without it
                raise


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _prune(root: Path, fingerprint: str) -> None:
    """Remove leftovers of killed builds and caches of data that is no longer there (under the lock)."""
    for entry in root.iterdir():
        name = entry.name
        if not entry.is_dir():
            continue
        if name.startswith(".decoded-") and name.endswith(".tmp"):
            _remove_tree(entry)
        elif name.startswith("decoded-") and not name.startswith(f"decoded-{fingerprint}-"):
            _remove_tree(entry)  # a mapped file stays readable for a process that still has it open


def _build(folder: Path, reader: ShardReader, fingerprint: str, side: int, stored: int, workers: int | None,
           log: Callable[[str], None]) -> float:
    started = time.perf_counter()
    rows = reader.num_rows
    needed = estimated_bytes(rows, side)
    root = folder.parent
    free = shutil.disk_usage(root).free
    if needed > free:
        raise CacheUnavailableError(
            f"The decoded cache of {reader.folder} needs {needed / 2**30:.1f} GiB and {root} has "
            f"{free / 2**30:.1f} GiB free."
        )
    log(f"building the decoded cache {folder} ({rows} crops at {side}x{side}, {needed / 2**30:.2f} GiB)")
    tmp = root / f".{folder.name}-{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        pixels_path = tmp / PIXELS_NAME
        # A sparse file of the final size; every task fills its own rows through its own mapping.
        pixels = np.lib.format.open_memmap(pixels_path, mode="w+", dtype=np.uint8, shape=(rows, side, side, 3))
        del pixels
        _reserve(pixels_path)
        starts = np.concatenate([[0], np.cumsum([s.rows for s in reader.shards])[:-1]]).astype(int).tolist()
        tasks = [(reader.folder / s.file, s.sha256, s.rows, pixels_path, start, side)
                 for s, start in zip(reader.shards, starts)]
        n_jobs = workers if workers is not None else min(len(tasks), os.cpu_count() or 1, 8)
        if workers is None and rows < 5000:
            n_jobs = 1  # starting worker processes costs more than decoding a few thousand crops
        if n_jobs <= 1 or len(tasks) <= 1:
            results = [_decode_shard(*task) for task in tasks]
        else:
            from joblib import Parallel, delayed

            results = Parallel(n_jobs=n_jobs)(delayed(_decode_shard)(*task) for task in tasks)
        np.save(tmp / SIZES_NAME, np.concatenate([r["sizes"] for r in results]) if results
                else np.zeros((0, 2), np.int32), allow_pickle=False)
        for name in (PIXELS_NAME, SIZES_NAME):  # on disk before cache.json says the folder is whole
            with open(tmp / name, "rb+") as handle:
                os.fsync(handle.fileno())
        arrays = {name: _array_stamp(tmp / name) for name in (PIXELS_NAME, SIZES_NAME)}
        seconds = time.perf_counter() - started
        meta = {
            "format": FORMAT, "dataset": reader.dataset, "fingerprint": fingerprint, "side": side,
            "stored_side": stored, "rows": rows,
            "shards": [{"file": s.file, "rows": int(s.rows), "sha256": s.sha256, "size": r["size"],
                        "mtime_ns": r["mtime_ns"]} for s, r in zip(reader.shards, results)],
            "arrays": arrays,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(seconds, 3),
        }
        write_text_atomic(tmp / META_NAME, json.dumps(meta, indent=1) + "\n")  # written last
        if folder.exists():  # an invalid cache under the final name: set it aside, then replace it
            aside = root / f".{folder.name}-{uuid.uuid4().hex}.tmp"
            os.rename(folder, aside)
            _remove_tree(aside)
        os.rename(tmp, folder)
    except BaseException:
        _remove_tree(tmp)
        raise
    return seconds


def _locked(root: Path, log: Callable[[str], None]) -> FolderLock:
    """Wait for the cache folder's lock (its holder is building a cache; the kernel frees it if it dies)."""
    told = False
    while True:
        try:
            return FolderLock(root)
        except FolderBusyError as exc:
            if not told:
                log(f"waiting: {exc}")
                told = True
            time.sleep(0.5)


def open_decoded_cache(
    dataset_folder: str | os.PathLike,
    side: int | None = None,
    *,
    input_size: int | None = None,
    augmentation: Augmentation = Augmentation(),
    workers: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> DecodedCache:
    """The verified decoded cache of a prepared dataset, built first if there is no valid one.

    Parameters
    ----------
    dataset_folder : path
        The prepared dataset folder (with ``manifest.json``).
    side : int, optional
        Pixels a side; by default :func:`cache_side` of ``input_size`` and ``augmentation``.
    workers : int, optional
        Processes that decode shards in a build (default: one per core, at most 8).

    Raises
    ------
    CacheUnavailableError
        Not enough disk space, or the dataset folder cannot be written.
    affbench.shards.integrity.ShardChangedError
        A shard's bytes are not the ones its manifest records.
    """
    reader = ShardReader(dataset_folder)
    if not reader.shards:
        raise AffbenchError(f"{reader.folder} has no finished shards yet; run its prepare command to the end.")
    stored = stored_side(reader)
    if side is None:
        if input_size is None:
            raise ValueError("give side or input_size")
        side = cache_side(stored, input_size, augmentation)
    fingerprint = dataset_fingerprint(reader.manifest)
    folder = cache_folder(reader.folder, fingerprint, side)
    meta, why = _check(folder, reader, fingerprint, side)
    if meta is not None:
        return DecodedCache(folder, side, stored, reader.num_rows, fingerprint, False, float(meta.get("build_seconds", 0.0)))
    try:
        folder.parent.mkdir(exist_ok=True)
        lock = _locked(folder.parent, log)
    except OSError as exc:
        raise CacheUnavailableError(f"The decoded cache cannot be written in {folder.parent}: {exc.strerror}.") from None
    try:
        meta, why = _check(folder, reader, fingerprint, side)  # another process may have built it meanwhile
        if meta is not None:
            return DecodedCache(folder, side, stored, reader.num_rows, fingerprint, False,
                                float(meta.get("build_seconds", 0.0)))
        if folder.exists():
            log(f"not using the decoded cache {folder}: {why}")
        _prune(folder.parent, fingerprint)
        try:
            seconds = _build(folder, reader, fingerprint, side, stored, workers, log)
        except OSError as exc:
            raise CacheUnavailableError(f"The decoded cache could not be written in {folder.parent}: "
                                        f"{exc.strerror or exc}.") from None
        return DecodedCache(folder, side, stored, reader.num_rows, fingerprint, True, seconds)
    finally:
        lock.release()


# ----------------------------------------------------------------------------------------- dataset


def _framing_matrix(height: int, width: int, side: int) -> np.ndarray:
    """Crop pixels -> cache pixels under :func:`_frame` (centre square, resized)."""
    x0, y0, square = centre_square(height, width)
    matrix, _ = _geometry(square, side, Augmentation(), False, None)
    matrix = matrix.copy()
    matrix[:, 2] -= matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return matrix


class DecodedImages(ShardImages):
    """:class:`~affbench.data.loader.ShardImages` that reads decoded pixels from a :class:`DecodedCache`.

    Same keys, batches, row groups (so the same batch order) and per-sample augmentation seeds as
    the shard loader; only the source of the pixels differs. Points (landmarks in crop pixels) are
    moved into cache pixels once, here.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        input_size: int,
        augmentation: Augmentation = Augmentation(),
        *,
        cache: DecodedCache,
        train: bool = False,
        points: np.ndarray | None = None,
    ):
        super().__init__(folder, input_size, augmentation, train=train, points=points)
        if len(self) != cache.rows:
            raise AffbenchError(f"The decoded cache {cache.folder} has {cache.rows} rows, the shards {len(self)}.")
        self.cache = cache
        self._pixels: np.ndarray | None = None
        self._sizes = np.load(cache.folder / SIZES_NAME, allow_pickle=False)
        self._cache_points = None if points is None else self._points_in_cache(np.asarray(points, np.float32))

    def _points_in_cache(self, points: np.ndarray) -> np.ndarray:
        moved = np.full_like(points, np.nan)
        matrices: dict[tuple[int, int], np.ndarray] = {}
        for row, (height, width) in enumerate(self._sizes.tolist()):
            if height == 0:
                continue
            key = (height, width)
            if key not in matrices:
                matrices[key] = _framing_matrix(height, width, self.cache.side)
            moved[row] = transform_points(matrices[key], points[row].astype(np.float64))
        return moved

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_pixels"] = None  # a mapping never crosses processes; each opens its own
        return state

    def _pixel_array(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.load(self.cache.folder / PIXELS_NAME, mmap_mode="r", allow_pickle=False)
        return self._pixels

    def _load(self, row: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self._sizes[row, 0] == 0:
            raise ValueError(f"row {row} of {self.folder} has no image (no face and no fallback crop); it must not be sampled")
        points = None if self._cache_points is None else self._cache_points[row]
        return transform_crop(self._pixel_array()[row], self.input_size, self.augmentation, train=self.train,
                              seed=seed, points=points)


def images_with_cache(
    folder: str | os.PathLike,
    input_size: int,
    augmentation: Augmentation = Augmentation(),
    *,
    points: np.ndarray | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[ShardImages, DecodedCache | None]:
    """The crops for a model: from the decoded cache when ``use_cache`` and it can be had, else the shards.

    A cache that cannot be written (no space, a read-only data folder) is not an error: the shard
    loader gives the same batches, only slower, and the reason is logged.
    """
    if use_cache:
        try:
            cache = open_decoded_cache(folder, input_size=input_size, augmentation=augmentation, workers=workers,
                                       log=log)
        except CacheUnavailableError as exc:
            log(f"warning: {exc} Reading the PNG shards instead (slower).")
        else:
            return DecodedImages(folder, input_size, augmentation, cache=cache, points=points), cache
    return ShardImages(folder, input_size, augmentation, points=points), None


def describe_loading(cache: DecodedCache | None, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How the crops reached the model: the decoded cache (None: the PNG shards), and the share of
    the training loop's time spent waiting for batches (the mean over the epochs)."""
    timed = [h["data_wait_fraction"] for h in history if h.get("data_wait_fraction") is not None]
    return {"decoded_cache": None if cache is None else cache.describe(),
            "data_wait_seconds": round(sum(h.get("data_seconds", 0.0) for h in history), 3),
            "data_wait_fraction": round(float(np.mean(timed)), 4) if timed else None}


__all__: Sequence[str] = ("CacheUnavailableError", "DecodedCache", "DecodedImages", "cache_side", "describe_loading",
                          "images_with_cache", "open_decoded_cache", "stored_side")
