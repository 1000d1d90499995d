"""affbench.data.cache: decoded crops equal the shard loader's, and a cache is never trusted when it should not be."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from harness_fixtures import CROP, face_crop, make_caer, make_disfa

from affbench.data.augment import Augmentation
from affbench.data.cache import CACHE_DIR, DecodedImages, cache_folder, cache_side, open_decoded_cache
from affbench.data.loader import ShardImages, crop_landmarks
from affbench.data.prepared import dataset_fingerprint, open_prepared
from affbench.runtime.files import file_sha256
from affbench.runtime.locks import FolderLock
from affbench.shards.codec import encode_image
from affbench.shards.integrity import ShardChangedError
from affbench.shards.reader import ShardReader
from affbench.shards.schema import MANIFEST_NAME

AUGMENT = Augmentation(hflip=0.5, crop=0.875, scale=0.05, rotate=10, brightness=0.3, contrast=0.3, saturation=0.3,
                       hue=0.05, jitter_p=0.8)


@pytest.fixture
def caer(tmp_path) -> Path:
    return make_caer(tmp_path / "caer-s")


def _batches(images: ShardImages, rows, seeds):
    keys = list(zip(rows, seeds))
    return images.with_mode(train=True).__getitems__(keys), images.with_mode(train=False).__getitems__(keys)


def _image_rows(folder: Path, dataset: str = "disfa") -> list[int]:
    meta = open_prepared(folder, dataset).meta
    return [int(r) for r in np.flatnonzero(meta["face_found"].to_numpy())]


def test_cached_pixels_and_points_are_the_shard_loaders_at_the_stored_side(tmp_path):
    folder = make_disfa(tmp_path / "disfa", frames=6, distinct_faces=True)
    prepared = open_prepared(folder, "disfa")
    points = crop_landmarks(prepared)
    input_size = 56  # 0.875 of the stored 64: the cache keeps the stored crops
    cache = open_decoded_cache(folder, input_size=input_size, augmentation=AUGMENT)
    assert cache.side == CROP and cache.exact and cache.built
    shards = ShardImages(folder, input_size, AUGMENT, points=points)
    cached = DecodedImages(folder, input_size, AUGMENT, cache=cache, points=points)
    rows = _image_rows(folder)
    seeds = list(range(100, 100 + len(rows)))
    for ours, theirs in zip(_batches(cached, rows, seeds), _batches(shards, rows, seeds)):
        assert ours["image"].shape == (len(rows), 3, input_size, input_size)
        assert np.array_equal(ours["image"].numpy(), theirs["image"].numpy())
        np.testing.assert_allclose(ours["points"].numpy(), theirs["points"].numpy(), atol=1e-4)
    # A row without a face is refused by both, in the same words.
    faceless = int(np.flatnonzero(~prepared.meta["face_found"].to_numpy())[0])
    for images in (shards, cached):
        with pytest.raises(ValueError, match="has no image"):
            images.__getitems__([(faceless, 0)])


def test_a_smaller_cache_frames_evaluation_exactly_and_moves_points_exactly(tmp_path):
    folder = make_disfa(tmp_path / "disfa", frames=4, distinct_faces=True)
    prepared = open_prepared(folder, "disfa")
    points = crop_landmarks(prepared)
    augmentation = Augmentation(hflip=0.5, rotate=10, scale=0.0)
    cache = open_decoded_cache(folder, input_size=32, augmentation=augmentation)
    assert cache.side == 32 and not cache.exact
    shards = ShardImages(folder, 32, augmentation, points=points)
    cached = DecodedImages(folder, 32, augmentation, cache=cache, points=points)
    rows = _image_rows(folder)
    seeds = list(range(len(rows)))
    (ours_train, ours_eval), (theirs_train, theirs_eval) = _batches(cached, rows, seeds), _batches(shards, rows, seeds)
    assert np.array_equal(ours_eval["image"].numpy(), theirs_eval["image"].numpy())
    np.testing.assert_allclose(ours_train["points"].numpy(), theirs_train["points"].numpy(), atol=1e-3)
    # Training pixels went through a second resampling: close, not equal.
    difference = np.abs(ours_train["image"].numpy().astype(int) - theirs_train["image"].numpy().astype(int))
    assert difference.mean() < 6


def test_cache_side_keeps_the_random_crop_at_unit_scale():
    assert cache_side(256, 224, Augmentation(crop=0.875)) == 256
    assert cache_side(256, 299, Augmentation()) == 256  # never upsampled
    assert cache_side(256, 96, Augmentation()) == 96
    assert cache_side(256, 96, Augmentation(crop=0.5)) == 192
    assert cache_side(256, 112, Augmentation(eval_crop=0.875)) == 128


def test_the_cache_is_reused_and_survives_a_touched_shard(caer):
    first = open_decoded_cache(caer, side=48)
    assert first.built
    shard = ShardReader(caer).paths[0]
    os.utime(shard, ns=(1, 1))  # same bytes, new time: hashed again, still valid
    again = open_decoded_cache(caer, side=48)
    assert not again.built and again.folder == first.folder
    meta = json.loads((again.folder / "cache.json").read_text())
    assert meta["shards"][0]["mtime_ns"] == 1  # remembered, so it is not hashed every time


def _rewrite_first_image(folder: Path, *, update_manifest: bool) -> int:
    """Replace the first crop of the first shard with another face; return its row."""
    reader = ShardReader(folder)
    path = reader.paths[0]
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    row = next(i for i, image in enumerate(images) if image is not None)
    images[row] = {"bytes": encode_image(face_crop(77, tint=(0.5, 1.0, 0.5))), "path": images[row]["path"]}
    index = table.schema.get_field_index("image")
    table = table.set_column(index, table.schema.field(index), pa.array(images, type=table.schema.field(index).type))
    pq.write_table(table, path, row_group_size=8)
    if update_manifest:
        manifest_path = folder / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text())
        for unit in manifest["units"].values():
            for shard in unit.get("shards", []):
                if shard["file"] == reader.shards[0].file:
                    shard["sha256"] = file_sha256(path)
        manifest_path.write_text(json.dumps(manifest))
    return row


def test_a_changed_shard_rebuilds_the_cache_with_the_new_pixels(caer):
    old = open_decoded_cache(caer, side=CROP)
    row = _rewrite_first_image(caer, update_manifest=True)  # as a re-run of prepare would
    new = open_decoded_cache(caer, side=CROP)
    assert new.built and new.folder != old.folder
    assert not old.folder.exists()  # the cache of data that is gone is removed
    shards = ShardImages(caer, CROP)
    cached = DecodedImages(caer, CROP, cache=new)
    assert np.array_equal(cached.__getitems__([(row, 0)])["image"], shards.__getitems__([(row, 0)])["image"])
    assert not np.array_equal(cached.__getitems__([(row, 0)])["image"], cached.__getitems__([(row + 1, 0)])["image"])


def test_a_shard_changed_behind_the_manifest_is_never_served_from_the_cache(caer):
    open_decoded_cache(caer, side=CROP)
    _rewrite_first_image(caer, update_manifest=False)
    with pytest.raises(ShardChangedError, match="has changed since it was prepared"):
        open_decoded_cache(caer, side=CROP)


def test_a_foreign_cache_is_not_used(tmp_path):
    # Same dataset, same shard names and row counts, other faces: only the record tells them apart.
    ours = make_disfa(tmp_path / "ours" / "disfa", frames=5)
    theirs = make_disfa(tmp_path / "theirs" / "disfa", frames=5, distinct_faces=True)
    foreign = open_decoded_cache(theirs, side=CROP)
    # Put their cache under the name ours would have.
    target = cache_folder(ours, dataset_fingerprint(ShardReader(ours).manifest), CROP)
    target.parent.mkdir()
    shutil.copytree(foreign.folder, target)
    cache = open_decoded_cache(ours, side=CROP)
    assert cache.built and cache.folder == target
    shards, cached = ShardImages(ours, CROP), DecodedImages(ours, CROP, cache=cache)
    rows = [(r, 0) for r in _image_rows(ours)]
    assert np.array_equal(cached.__getitems__(rows)["image"], shards.__getitems__(rows)["image"])


@pytest.mark.parametrize("damage", ["truncated", "pickled", "no-metadata"])
def test_a_damaged_or_partial_cache_is_rebuilt(caer, damage):
    cache = open_decoded_cache(caer, side=CROP)
    pixels = cache.folder / "pixels.npy"
    if damage == "truncated":  # e.g. a copy that stopped half-way
        with open(pixels, "r+b") as handle:
            handle.truncate(pixels.stat().st_size // 2)
    elif damage == "pickled":  # an object array would need unpickling: refused, never loaded
        np.save(pixels, np.array([object()] * 3, dtype=object), allow_pickle=True)
    else:
        (cache.folder / "cache.json").unlink()
    again = open_decoded_cache(caer, side=CROP)
    assert again.built
    shards, cached = ShardImages(caer, CROP), DecodedImages(caer, CROP, cache=again)
    assert np.array_equal(cached.__getitems__([(0, 0), (5, 0)])["image"], shards.__getitems__([(0, 0), (5, 0)])["image"])


def test_pixels_written_over_in_place_are_never_trained_on(caer):
    cache = open_decoded_cache(caer, side=CROP)
    pixels = np.load(cache.folder / "pixels.npy", mmap_mode="r+", allow_pickle=False)
    pixels[:] = 0  # black images under the cache's own name, shapes unchanged
    pixels.flush()
    del pixels
    again = open_decoded_cache(caer, side=CROP)
    assert again.built
    shards, cached = ShardImages(caer, CROP), DecodedImages(caer, CROP, cache=again)
    rows = [(r, 0) for r in _image_rows(caer, "caer-s")]
    assert np.array_equal(cached.__getitems__(rows)["image"], shards.__getitems__(rows)["image"])
    assert cached.__getitems__(rows)["image"].any()


def test_touched_cache_arrays_are_hashed_once_and_kept(caer):
    cache = open_decoded_cache(caer, side=CROP)
    os.utime(cache.folder / "pixels.npy", ns=(1, 1))  # same bytes, new time
    again = open_decoded_cache(caer, side=CROP)
    assert not again.built
    assert json.loads((again.folder / "cache.json").read_text())["arrays"]["pixels.npy"]["mtime_ns"] == 1


_CHILD = textwrap.dedent("""
    import os, sys
    import affbench.data.cache as cache
    real = cache._decode_shard
    calls = []
    def dying(*args):
        calls.append(1)
        if len(calls) == 2:
            os._exit(9)  # killed in the middle of the build
        return real(*args)
    cache._decode_shard = dying
    cache.open_decoded_cache(sys.argv[1], side=int(sys.argv[2]), workers=1)
""")


def test_a_killed_build_leaves_nothing_that_looks_whole(caer):
    result = subprocess.run([sys.executable, "-c", _CHILD, str(caer), str(CROP)], cwd="/", capture_output=True,
                            text=True)
    assert result.returncode == 9, result.stderr
    root = caer / CACHE_DIR
    leftovers = [p.name for p in root.iterdir() if p.is_dir()]
    assert leftovers and all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)
    cache = open_decoded_cache(caer, side=CROP)
    assert cache.built
    assert [p.name for p in root.iterdir() if p.is_dir()] == [cache.folder.name]  # leftovers removed
    shards, cached = ShardImages(caer, CROP), DecodedImages(caer, CROP, cache=cache)
    rows = [(r, 0) for r in _image_rows(caer, "caer-s")]
    assert np.array_equal(cached.__getitems__(rows)["image"], shards.__getitems__(rows)["image"])


def test_two_builders_at_once_build_the_cache_once(caer):
    # Threads, not processes, to keep the test quick: each FolderLock opens its own file
    # description, and flock excludes between those exactly as between processes.
    (caer / CACHE_DIR).mkdir()
    lock = FolderLock(caer / CACHE_DIR)  # both wait until the lock is free, then one builds
    results: list[bool] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(open_decoded_cache(caer, side=40).built)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    builders = [threading.Thread(target=build) for _ in range(2)]
    for builder in builders:
        builder.start()
    try:
        time.sleep(1.0)
        assert all(builder.is_alive() for builder in builders)  # they wait, not fail
    finally:
        lock.release()
    for builder in builders:
        builder.join(timeout=120)
    assert not errors and sorted(results) == [False, True]
    assert not open_decoded_cache(caer, side=40).built


# ----------------------------------------------------------------------------------------- harness

CACHED_SUITE = """
[suite]
name = "cached"
description = "the decoded cache in the harness"

[training]
epochs = 1
max_steps = 3
batch_size = 8
optimizer = "adamw"
lr = 1e-3
num_workers = 0
seed = 1

[training.augmentation]
hflip = 0.5
rotate = 10

[[experiment]]
id = "fan"
dataset = "disfa"
tasks = ["au-intensity"]
encoder = "fan-au"
options = { input_size = 64 }
folds = [1]
"""


def test_the_harness_trains_from_the_cache_by_default_and_gets_the_shard_loaders_results(data_copy, tmp_path):
    from affbench.benchmarks.harness import run_benchmark
    from affbench.reporting.records import load_records

    suite = tmp_path / "cached.toml"
    suite.write_text(CACHED_SUITE)  # fan-au: heatmap targets from landmarks, so points go through the cache too
    logs: list[str] = []
    run_benchmark(suite, data_copy, tmp_path / "on", device="cpu", progress=False, log=logs.append)
    run_benchmark(suite, data_copy, tmp_path / "off", device="cpu", progress=False, log=lambda m: None,
                  decoded_cache=False)
    (on,), (off,) = load_records(tmp_path / "on"), load_records(tmp_path / "off")
    cache = on["data_loading"]["decoded_cache"]
    assert Path(cache["folder"]).parent == data_copy / "disfa" / CACHE_DIR
    assert cache["exact"] and cache["side"] == CROP and cache["build_seconds"] >= 0
    assert any(cache["folder"] in line and "decoded cache" in line for line in logs)  # in the run log too
    assert off["data_loading"]["decoded_cache"] is None
    assert 0.0 <= on["data_loading"]["data_wait_fraction"] <= 1.0
    # The same pixels, batches and seeds: the same training and the same scores.
    assert on["curve"] == off["curve"] and on["metrics"] == off["metrics"]


@pytest.mark.parametrize("shortage", ["free-space", "allocation"])
def test_without_room_for_the_cache_the_shards_are_read_and_nothing_is_left_behind(caer, monkeypatch, shortage):
    import errno

    import affbench.data.cache as cache_module
    from affbench.data.cache import images_with_cache

    if shortage == "free-space":
        monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 0))
    else:  # the free space shrank after the check: the blocks cannot be allocated
        def no_space(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(cache_module.os, "posix_fallocate", no_space, raising=False)
    logs: list[str] = []
    images, cache = images_with_cache(caer, CROP, log=logs.append)
    assert cache is None and type(images) is ShardImages
    assert any(line.startswith("warning:") and "PNG shards instead" in line for line in logs)
    assert not [p for p in (caer / CACHE_DIR).iterdir() if p.is_dir()]  # no partial cache, no temporary folder
