"""affbench.data: finding prepared folders, label tables, crop geometry, row-group batches, workers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from harness_fixtures import CROP, DISFA_SUBJECTS, TEMPLATE, make_caer

from affbench.data.augment import Augmentation, transform_crop
from affbench.data.loader import RowGroupBatchSampler, ShardImages, crop_landmarks, make_loader
from affbench.data.prepared import alignment_from_parameters, open_prepared
from affbench.errors import AffbenchError
from affbench.faces.alignment import AlignmentTemplate, alignment_matrix, transform_points
from affbench.shards.codec import decode_image
from affbench.shards.reader import ShardReader


def test_open_prepared_reads_labels_without_images(prepared_root):
    prepared = open_prepared(prepared_root, "disfa", columns=["au6", "au12"])
    assert prepared.dataset == "disfa"
    assert "image" not in prepared.meta.columns
    assert {"subject", "face_found", "au6", "au12"} <= set(prepared.meta.columns)
    assert len(prepared.meta) == len(DISFA_SUBJECTS) * 10
    # The data root may also be the dataset folder itself.
    assert open_prepared(prepared_root / "disfa", "disfa").folder == prepared.folder


def test_missing_folder_is_a_clear_error(prepared_root, tmp_path):
    with pytest.raises(AffbenchError, match=r"No prepared disfa dataset in .*manifest.json is missing; run `affbench prepare disfa"):
        open_prepared(tmp_path, "disfa")
    with pytest.raises(AffbenchError, match="does not exist"):
        open_prepared(tmp_path / "nowhere", "disfa")


def test_folder_of_another_dataset_is_a_clear_error(prepared_root, tmp_path):
    (tmp_path / "disfa").symlink_to(prepared_root / "caer-s")
    with pytest.raises(AffbenchError, match=r"holds a prepared 'caer-s' dataset, not 'disfa'"):
        open_prepared(tmp_path, "disfa")


def test_absent_label_columns_are_named(prepared_root):
    with pytest.raises(AffbenchError, match=r"caer-s shards .* have no column\(s\) au6; their label columns are: expression"):
        open_prepared(prepared_root, "caer-s", columns=["au6"])


def test_fingerprint_changes_with_the_data(tmp_path):
    first = open_prepared(make_caer(tmp_path / "a" / "caer-s"), "caer-s").fingerprint
    again = open_prepared(make_caer(tmp_path / "b" / "caer-s"), "caer-s").fingerprint
    other = open_prepared(make_caer(tmp_path / "c" / "caer-s", train_per_class=5), "caer-s").fingerprint
    assert first == again != other


def test_crop_landmarks_follow_the_recorded_alignment(prepared_root):
    prepared = open_prepared(prepared_root, "disfa")
    points = crop_landmarks(prepared)
    raw = prepared.reader.table(["landmarks"]).column("landmarks").to_pylist()
    for row in (0, 7, 25):
        source = np.asarray(raw[row]).reshape(5, 2)
        expected = transform_points(alignment_matrix(source, CROP, TEMPLATE), source)
        np.testing.assert_allclose(points[row], expected, atol=1e-4)
    faceless = ~prepared.meta["face_found"].to_numpy()
    assert faceless.any() and np.isnan(points[faceless]).all()


def test_crop_landmarks_need_an_alignment_record(tmp_path, prepared_root):
    import shutil

    shutil.copytree(prepared_root / "disfa", tmp_path / "disfa")
    manifest_path = tmp_path / "disfa" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["parameters"] = {"size": CROP}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(AffbenchError, match="records no alignment template"):
        crop_landmarks(open_prepared(tmp_path, "disfa"))


# ----------------------------------------------------------------------------------------- geometry


def _gradient(size: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 5 % 256, y * 5 % 256, (x + y) * 2 % 256], axis=-1).astype(np.uint8)


def test_evaluation_framing_at_the_stored_size_is_the_identity():
    image = _gradient()
    points = np.array([[10.0, 12.0], [30.0, 12.5], [20.0, 25.0], [14.0, 35.0], [28.0, 35.0]], np.float32)
    out, moved = transform_crop(image, 48, Augmentation(hflip=1.0, rotate=30), train=False, points=points)
    np.testing.assert_array_equal(out, image)  # evaluation never augments
    np.testing.assert_allclose(moved, points, atol=1e-4)


def test_resize_keeps_pixel_centres():
    image = _gradient(48)
    out, moved = transform_crop(image, 24, Augmentation(), train=False, points=np.array([[0.5, 0.5], [46.5, 46.5]]))
    # Pixel-centre convention: source pixels 0-1 cover output pixel 0, 46-47 cover output pixel 23.
    np.testing.assert_allclose(moved, [[0.0, 0.0], [23.0, 23.0]], atol=1e-6)
    np.testing.assert_allclose(out[0, 0], image[0:2, 0:2].reshape(-1, 3).mean(0), atol=2)


def test_flip_mirrors_the_image_and_swaps_left_and_right_landmarks():
    image = _gradient()
    points = np.array([[10.0, 12.0], [30.0, 14.0], [20.0, 25.0], [14.0, 35.0], [28.0, 36.0]], np.float32)
    out, moved = transform_crop(image, 48, Augmentation(hflip=1.0), train=True, seed=3, points=points)
    np.testing.assert_array_equal(out, image[:, ::-1])
    mirrored = points.copy()
    mirrored[:, 0] = 47 - mirrored[:, 0]
    np.testing.assert_allclose(moved, mirrored[[1, 0, 2, 4, 3]], atol=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_points_move_with_the_pixels_under_random_augmentation(seed):
    # A bright blob at a known point must end up where the transformed point says.
    size = 64
    image = np.full((size, size, 3), 40, np.uint8)
    point = np.array([[23.0, 37.0]])
    yy, xx = np.mgrid[0:size, 0:size]
    blob = np.exp(-((xx - point[0, 0]) ** 2 + (yy - point[0, 1]) ** 2) / (2 * 2.0**2))
    image[..., 0] = np.clip(40 + 215 * blob, 0, 255).astype(np.uint8)
    augmentation = Augmentation(hflip=0.5, crop=0.8, scale=0.1, rotate=20)
    out, moved = transform_crop(image, 48, augmentation, train=True, seed=seed, points=point)
    red = out[..., 0].astype(float)
    ys, xs = np.mgrid[0:48, 0:48]
    weights = np.clip(red - 40, 0, None)
    centre = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
    assert np.linalg.norm(centre - moved[0]) < 0.75


def test_colour_jitter_changes_colours_not_geometry():
    image = _gradient()
    plain, _ = transform_crop(image, 48, Augmentation(), train=True, seed=1)
    jittered, _ = transform_crop(image, 48, Augmentation(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
                                 train=True, seed=1)
    assert plain.shape == jittered.shape and not np.array_equal(plain, jittered)


def test_augmentation_settings_are_checked():
    with pytest.raises(AffbenchError, match="Unknown augmentation setting 'flip'; the settings are: .*hflip"):
        Augmentation.from_dict({"flip": 0.5})
    with pytest.raises(AffbenchError, match=r"augmentation.crop is a fraction in \(0, 1\]"):
        Augmentation.from_dict({"crop": 1.5})


# ----------------------------------------------------------------------------------------- batches


def test_sampler_covers_every_row_once_and_mixes_only_within_windows():
    row_groups = np.repeat(np.arange(20), 8)  # 20 row groups of 8 rows
    rows = np.arange(0, 160, 2)  # every other row
    sampler = RowGroupBatchSampler(rows, row_groups, batch_size=4, shuffle=True, seed=7, window=2)
    batches = list(sampler)
    drawn = [r for batch in batches for r, _ in batch]
    assert sorted(drawn) == rows.tolist()
    # Windows of 2 row groups: 8 consecutive rows come from at most 2 row groups.
    for start in range(0, len(drawn), 8):
        assert len(set(row_groups[drawn[start:start + 8]])) <= 2
    sampler.set_epoch(1)
    other_epoch = [r for batch in sampler for r, _ in batch]
    assert other_epoch != drawn and sorted(other_epoch) == sorted(drawn)
    again = RowGroupBatchSampler(rows, row_groups, batch_size=4, shuffle=True, seed=7, window=2)
    assert [b for b in again] == batches  # same seed and epoch: same batches and augmentation seeds


def test_sampler_drop_last_and_max_batches():
    groups = np.zeros(10, int)
    sampler = RowGroupBatchSampler(np.arange(10), groups, batch_size=4, shuffle=True, drop_last=True)
    assert len(sampler) == 2 and all(len(b) == 4 for b in sampler)
    capped = RowGroupBatchSampler(np.arange(10), groups, batch_size=4, shuffle=False, max_batches=1)
    assert len(list(capped)) == 1
    tiny = RowGroupBatchSampler(np.arange(3), groups, batch_size=4, shuffle=True, drop_last=True)
    assert len(list(tiny)) == 1  # never drops everything


def test_shard_images_decode_the_stored_crops(prepared_root):
    folder = prepared_root / "caer-s"
    reader = ShardReader(folder)
    stored = reader.table(["image", "face_found"]).to_pylist()
    images = ShardImages(folder, CROP, train=False)
    rows = [0, 9, 30, 61]
    batch = images.__getitems__([(r, 0) for r in rows])
    assert batch["image"].shape == (4, 3, CROP, CROP) and batch["row"].tolist() == rows
    # channels_last memory: each crop lands in the batch as decoded, without a transpose copy
    assert batch["image"].permute(0, 2, 3, 1).is_contiguous()
    for i, row in enumerate(rows):
        expected = decode_image(stored[row]["image"])
        np.testing.assert_array_equal(batch["image"][i].permute(1, 2, 0).numpy(), expected)


def test_workers_give_the_same_augmented_batches_as_the_main_process(prepared_root):
    prepared = open_prepared(prepared_root, "disfa")
    points = crop_landmarks(prepared)
    images = ShardImages(prepared.folder, 48, Augmentation(hflip=0.5, crop=0.9, rotate=10), train=True, points=points)
    usable = np.flatnonzero(prepared.meta["face_found"].to_numpy())

    def epoch(workers: int):
        sampler = RowGroupBatchSampler(usable, images.row_groups, 8, shuffle=True, seed=3)
        sampler.set_epoch(2)
        loader = make_loader(images, sampler, num_workers=workers)
        return [(b["row"].numpy(), b["image"].numpy(), b["points"].numpy()) for b in loader]

    in_process, with_workers = epoch(0), epoch(2)
    assert len(in_process) == len(with_workers) == math.ceil(len(usable) / 8)
    for (rows_a, images_a, points_a), (rows_b, images_b, points_b) in zip(in_process, with_workers):
        np.testing.assert_array_equal(rows_a, rows_b)
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_allclose(points_a, points_b)


def test_a_faceless_row_is_never_decoded_silently(prepared_root):
    prepared = open_prepared(prepared_root, "caer-s")
    faceless = int(np.flatnonzero(~prepared.meta["face_found"].to_numpy())[0])
    with pytest.raises(ValueError, match="has no image"):
        ShardImages(prepared.folder, CROP).__getitems__([(faceless, 0)])


def test_the_recorded_template_is_read_back_whole_weights_included():
    template = AlignmentTemplate(face_scale=0.75, landmark_weights=(4, 4, 1, 1, 1))
    parameters = json.loads(json.dumps({"crop": {"size": 96}, "alignment": template.describe(96)}))
    assert alignment_from_parameters(parameters) == (template, 96)
