"""Evaluation protocols: DISFA folds, CAER-S stratified validation, Aff-Wild2 per-task splits, JSON."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from affbench.errors import AffbenchError, UnknownNameError
from affbench.pipelines import protocol_for, protocols
from affbench.pipelines.affwild2 import PROTOCOL as AFFWILD2
from affbench.pipelines.caer_s import PROTOCOL as CAER_S
from affbench.pipelines.disfa import PROTOCOL as DISFA
from affbench.scoring.protocols import Protocol, TaskSpec
from affbench.scoring.scorer import score_task
from affbench.shards.manifest import DatasetWriter, read_manifest
from affbench.shards.schema import make_schema

# Typed from docs/datasets.md on purpose (not imported), so that the declarations are checked against the source.
DISFA_PARTS = {
    "part1": "SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016".split(),
    "part2": "SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024".split(),
    "part3": "SN003 SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004".split(),
}
DISFA_FOLD_TESTS = {1: "part3", 2: "part2", 3: "part1"}
DISFA_ALL_AUS = [1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26]
DISFA_DETECTION_AUS = [1, 2, 4, 6, 9, 12, 25, 26]
FRAMES = 6


@pytest.fixture(scope="module")
def disfa_meta() -> pd.DataFrame:
    """Every DISFA subject, a few frames each; intensities 0-5, some -1, one faceless frame per subject."""
    rng = np.random.default_rng(7)
    subjects = sorted(s for part in DISFA_PARTS.values() for s in part)
    rows = []
    for subject in subjects:
        for frame in range(FRAMES):
            row = {"subject": subject, "frame": frame, "split": None, "face_found": frame != 2}
            row.update({f"au{au}": int(rng.integers(0, 6)) for au in DISFA_ALL_AUS})
            rows.append(row)
    meta = pd.DataFrame(rows)
    meta.loc[meta.index % 11 == 3, "au6"] = -1  # a few unannotated AU6 entries
    meta.loc[(meta.subject == "SN005") & (meta.frame == 4), [f"au{a}" for a in DISFA_ALL_AUS]] = -1
    for column in (f"au{a}" for a in DISFA_ALL_AUS):
        meta[column] = meta[column].astype("int8")
    return meta


def _subjects(meta, positions) -> set[str]:
    return set(meta.subject.iloc[positions])


# ----------------------------------------------------------------------------------------- DISFA


def test_disfa_declaration_matches_facts():
    assert DISFA.folds == (1, 2, 3)
    assert {name: list(subjects) for name, subjects in DISFA.split.parts.items()} == DISFA_PARTS
    assert {f: DISFA.split.test_parts[f] for f in DISFA.folds} == {f: (p,) for f, p in DISFA_FOLD_TESTS.items()}
    detection, intensity = DISFA.task("au-detection"), DISFA.task("au-intensity")
    assert detection.label_columns == tuple(f"au{a}" for a in DISFA_DETECTION_AUS)
    assert detection.binarize_at == 2 and detection.primary_metric == "f1"
    assert intensity.label_columns == tuple(f"au{a}" for a in DISFA_ALL_AUS)
    assert intensity.binarize_at is None and intensity.metrics == ("icc",)


def test_every_disfa_subject_is_tested_in_exactly_one_fold(disfa_meta):
    tested_in: dict[str, list[int]] = {}
    for fold in DISFA.folds:
        split = DISFA.split_indices(disfa_meta, "au-detection", fold)
        test, train, val = (_subjects(disfa_meta, split[r]) for r in ("test", "train", "val"))
        assert test == set(DISFA_PARTS[DISFA_FOLD_TESTS[fold]])
        assert not test & train and not test & val and not train & val
        training_parts = {s for p, subs in DISFA_PARTS.items() if p != DISFA_FOLD_TESTS[fold] for s in subs}
        assert val and val <= training_parts and train | val == training_parts
        assert len(val) == 3  # 0.15 of 18 training subjects
        assert split["validation"]["groups"] == sorted(val)
        assert split["test_groups"] == sorted(test)
        for subject in test:
            tested_in.setdefault(subject, []).append(fold)
    assert len(tested_in) == 27
    assert all(len(folds) == 1 for folds in tested_in.values())


def test_disfa_validation_is_seeded(disfa_meta):
    first = DISFA.split_indices(disfa_meta, "au-detection", 1, seed=3)
    again = DISFA.split_indices(disfa_meta, "au-detection", 1, seed=3)
    np.testing.assert_array_equal(first["val"], again["val"])
    assert first["validation"]["seed"] == 3 and first["validation"]["fraction"] == 0.15
    held_out = {tuple(DISFA.split_indices(disfa_meta, "au-detection", 1, seed=s)["validation"]["groups"])
                for s in range(6)}
    assert len(held_out) > 1  # the seed matters
    assert len(DISFA.split_indices(disfa_meta, "au-detection", 1, fraction=0.5)["validation"]["groups"]) == 9


def test_disfa_excludes_faceless_and_unannotated_rows_and_counts_them(disfa_meta):
    split = DISFA.split_indices(disfa_meta, "au-intensity", 1)
    chosen = np.concatenate([split[r] for r in ("train", "val", "test")])
    assert len(np.unique(chosen)) == len(chosen)
    assert disfa_meta.face_found.iloc[chosen].all()
    no_face = split["excluded"]["no_face"]
    assert sum(no_face.values()) == 27  # one faceless frame per subject
    assert no_face["test"] == 9 and no_face["val"] == 3 and no_face["train"] == 15
    # SN005 (part3, tested in fold 1) has one frame with every AU unannotated.
    assert split["excluded"]["unannotated"] == {"train": 0, "val": 0, "test": 1}
    assert len(chosen) == len(disfa_meta) - 27 - 1


def test_disfa_scores_fallback_crops_by_default_and_excludes_them_on_request(disfa_meta):
    meta = disfa_meta.copy()
    # prepared data of schema 2: the faceless frames have a crop from their neighbours' landmarks
    meta["landmark_source"] = np.where(meta.face_found, "tracked", "interpolated")
    split = DISFA.split_indices(meta, "au-intensity", 1)
    chosen = np.concatenate([split[r] for r in ("train", "val", "test")])
    assert len(chosen) == len(meta) - 1  # every frame but the unannotated one, as published
    assert split["fallback_crops"] == {"train": 15, "val": 3, "test": 9}
    assert sum(split["excluded"]["no_face"].values()) == 0
    assert split["excluded"]["fallback_crop"] == {"train": 0, "val": 0, "test": 0}

    strict = DISFA.split_indices(meta, "au-intensity", 1, exclude_fallback=True)
    assert strict["excluded"]["fallback_crop"] == {"train": 15, "val": 3, "test": 9}
    assert strict["fallback_crops"] == {"train": 0, "val": 0, "test": 0}
    for role in ("train", "val", "test"):
        assert np.array_equal(strict[role], DISFA.split_indices(disfa_meta, "au-intensity", 1)[role])
    # a faceless row without a fallback crop stays out either way
    first_faceless = int(np.flatnonzero(~meta.face_found.to_numpy())[0])
    meta.loc[meta.index[first_faceless], "landmark_source"] = "none"
    split = DISFA.split_indices(meta, "au-intensity", 1)
    assert first_faceless not in np.concatenate([split[r] for r in ("train", "val", "test")])
    assert sum(split["excluded"]["no_face"].values()) == 1


def test_disfa_targets_apply_occurrence_threshold_and_mask(disfa_meta):
    y, mask = DISFA.targets(disfa_meta, "au-detection")
    raw = disfa_meta[[f"au{a}" for a in DISFA_DETECTION_AUS]].to_numpy()
    assert y.shape == mask.shape == (len(disfa_meta), 8)
    np.testing.assert_array_equal(mask, raw != -1)
    np.testing.assert_array_equal(y[mask], (raw[mask] >= 2).astype(np.float32))
    assert (y[~mask] == 0).all()
    y_int, mask_int = DISFA.targets(disfa_meta, "au-intensity")
    raw_all = disfa_meta[[f"au{a}" for a in DISFA_ALL_AUS]].to_numpy()
    np.testing.assert_array_equal(y_int[mask_int], raw_all[raw_all != -1])


def test_disfa_unknown_subject_and_fold_are_clear_errors(disfa_meta):
    stray = pd.concat([disfa_meta, disfa_meta.iloc[:1].assign(subject="SN099")], ignore_index=True)
    with pytest.raises(AffbenchError, match="SN099"):
        DISFA.split_indices(stray, "au-detection", 1)
    with pytest.raises(AffbenchError, match="fold 4"):
        DISFA.split_indices(disfa_meta, "au-detection", 4)
    with pytest.raises(AffbenchError, match="say which"):
        DISFA.split_indices(disfa_meta, "au-detection")
    with pytest.raises(UnknownNameError, match="au-intensity"):
        DISFA.split_indices(disfa_meta, "expression", 1)


def test_disfa_end_to_end_with_score_task(disfa_meta):
    split = DISFA.split_indices(disfa_meta, "au-detection", 2)
    y, mask = DISFA.targets(disfa_meta, "au-detection")
    test = split["test"]
    scores = score_task(DISFA.task("au-detection"), y[test], y[test], mask=mask[test])  # a perfect predictor
    assert scores["f1"] == pytest.approx(1.0) and scores["accuracy/au6"] == pytest.approx(1.0)
    assert {f"f1/au{a}" for a in DISFA_DETECTION_AUS} <= set(scores)


# ----------------------------------------------------------------------------------------- CAER-S


@pytest.fixture(scope="module")
def caer_meta() -> pd.DataFrame:
    counts = [40, 16, 24, 80, 64, 32, 48]  # unbalanced, as the real classes are
    rows = []
    for label, count in enumerate(counts):
        rows += [{"split": "train", "expression": label, "face_found": True} for _ in range(count)]
        rows += [{"split": "test", "expression": label, "face_found": True} for _ in range(count // 4)]
    meta = pd.DataFrame(rows)
    meta.loc[[5, 300], "face_found"] = False  # one train row of Anger, one row of Happy
    meta["subject"] = [f"img{i}" for i in range(len(meta))]
    return meta


def test_caer_s_declaration():
    task = CAER_S.task("expression")
    assert task.label_names == ("anger", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert CAER_S.folds == (1,)
    assert CAER_S.validation.method == "stratified" and CAER_S.validation.fraction == 0.125


def test_caer_s_validation_is_stratified_and_seeded(caer_meta):
    split = CAER_S.split_indices(caer_meta, "expression")
    pool = np.flatnonzero((caer_meta.split == "train").to_numpy() & caer_meta.face_found.to_numpy())
    assert set(split["val"]) | set(split["train"]) == set(pool) and not set(split["val"]) & set(split["train"])
    assert len(split["val"]) == int(np.ceil(0.125 * len(pool)))
    val_counts = np.bincount(caer_meta.expression.iloc[split["val"]], minlength=7)
    pool_counts = np.bincount(caer_meta.expression.iloc[pool], minlength=7)
    assert np.all(np.abs(val_counts - 0.125 * pool_counts) <= 1)  # stratified to within rounding
    np.testing.assert_array_equal(split["test"], np.flatnonzero((caer_meta.split == "test").to_numpy()
                                                                & caer_meta.face_found.to_numpy()))
    again = CAER_S.split_indices(caer_meta, "expression")
    np.testing.assert_array_equal(split["val"], again["val"])
    other = CAER_S.split_indices(caer_meta, "expression", seed=1)
    assert set(other["val"]) != set(split["val"]) and other["validation"]["seed"] == 1
    assert split["validation"]["method"] == "stratified" and split["validation"]["fraction"] == 0.125
    assert split["excluded"]["no_face"]["test"] == 0 and sum(split["excluded"]["no_face"].values()) == 2


def test_caer_s_fraction_option_is_recorded(caer_meta):
    protocol = protocol_for("caer-s", validation_fraction=0.25, validation_seed=9)
    assert protocol.to_dict()["validation"]["fraction"] == 0.25 and protocol.validation.seed == 9
    split = protocol.split_indices(caer_meta, "expression")
    assert split["validation"]["seed"] == 9
    assert len(split["val"]) == int(np.ceil(0.25 * (len(split["val"]) + len(split["train"]))))


def test_bad_class_label_is_a_clear_error(caer_meta):
    broken = caer_meta.assign(expression=caer_meta.expression.replace({6: 9}))
    with pytest.raises(AffbenchError, match="class index"):
        CAER_S.targets(broken, "expression")


# ----------------------------------------------------------------------------------------- Aff-Wild2


AFF_VIDEOS = {
    # video: (split_au, split_expr, split_va)
    "1-30-1280x720": ("Train_Set", "Validation_Set", None),
    "2-24-1280x720": ("Train_Set", "Train_Set", "Train_Set"),
    "10-60-1280x720_left": ("Train_Set", "Train_Set", "Train_Set"),
    "10-60-1280x720_right": ("Train_Set", "Train_Set", "Train_Set"),
    "video3": ("Train_Set", "Train_Set", "Train_Set"),
    "video4": ("Train_Set", None, "Train_Set"),
    "video5": ("Train_Set", "Train_Set", "Train_Set"),
    "video7": ("Validation_Set", "Validation_Set", "Validation_Set"),
    "video8": (None, "Train_Set", "Validation_Set"),
}


@pytest.fixture(scope="module")
def aff_meta() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for video, (s_au, s_expr, s_va) in AFF_VIDEOS.items():
        for frame in range(10):
            row = {"subject": video, "frame": frame, "split": None, "split_au": s_au, "split_expr": s_expr,
                   "split_va": s_va, "face_found": frame != 7, "expression": int(rng.integers(0, 8)),
                   "valence": float(rng.uniform(-1, 1)), "arousal": float(rng.uniform(-1, 1))}
            row.update({f"au{a}": int(rng.integers(0, 2)) for a in (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)})
            if frame == 3:  # unannotated in every task
                row.update({f"au{a}": -1 for a in (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)},
                           expression=-1, valence=None, arousal=None)
            if frame == 5:  # valence alone missing
                row["valence"] = None
            rows.append(row)
    return pd.DataFrame(rows)


def test_affwild2_uses_each_tasks_split_column(aff_meta):
    for task, column in (("au-detection", "split_au"), ("expression", "split_expr"), ("va", "split_va")):
        assert AFFWILD2.task(task).split_column == column
        split = AFFWILD2.split_indices(aff_meta, task)
        official_val = {v for v, splits in AFF_VIDEOS.items() if splits[("split_au", "split_expr", "split_va").index(column)] == "Validation_Set"}
        train_set = {v for v, splits in AFF_VIDEOS.items() if splits[("split_au", "split_expr", "split_va").index(column)] == "Train_Set"}
        assert _subjects(aff_meta, split["test"]) == official_val
        assert _subjects(aff_meta, split["train"]) | _subjects(aff_meta, split["val"]) == train_set
        assert split["val"].size > 0 and not _subjects(aff_meta, split["train"]) & _subjects(aff_meta, split["val"])
        unassigned = len(AFF_VIDEOS) - len(official_val) - len(train_set)
        assert split["excluded"]["no_split"] == 10 * unassigned
        # frame 3 is unannotated and frame 7 faceless in every video of the task; for VA frame 5 too
        # (valence alone missing: the official evaluation drops the frame)
        per_video = 2 if task == "va" else 1
        assert sum(split["excluded"]["unannotated"].values()) == per_video * len(official_val | train_set)
        assert sum(split["excluded"]["no_face"].values()) == len(official_val | train_set)


def test_affwild2_two_person_halves_stay_together(aff_meta):
    for seed in range(20):
        split = AFFWILD2.split_indices(aff_meta, "va", seed=seed)
        val = _subjects(aff_meta, split["val"])
        assert ("10-60-1280x720_left" in val) == ("10-60-1280x720_right" in val)
        assert not any(g.endswith(("_left", "_right")) for g in split["validation"]["groups"])


def test_affwild2_va_frame_with_one_value_missing_is_dropped_as_the_official_evaluation_does(aff_meta):
    # The official Aff-Wild2 VA annotation reading keeps a frame only when neither value is -5;
    # a frame with valence alone missing was scored for arousal before.
    y, mask = AFFWILD2.targets(aff_meta, "va")
    frame5 = (aff_meta.frame == 5).to_numpy()
    assert not mask[frame5].any()
    split = AFFWILD2.split_indices(aff_meta, "va")
    chosen = np.concatenate([split[r] for r in ("train", "val", "test")])
    frames = aff_meta.frame.to_numpy()[chosen]
    assert not ((frames == 3) | (frames == 5)).any() and (frames == 4).any()
    assert np.isfinite(y).all()
    # The per-label reading stays available as a task option.
    per_label = dataclasses.replace(AFFWILD2.task("va"), joint_annotation=False)
    assert AFFWILD2.task("va").joint_annotation and not AFFWILD2.task("au-detection").joint_annotation
    protocol = dataclasses.replace(AFFWILD2, tasks={**AFFWILD2.tasks, "va": per_label})
    _, mask = protocol.targets(aff_meta, "va")
    assert (~mask[frame5, 0]).all() and mask[frame5, 1].all()


def test_affwild2_raw_va_marker_counts_as_missing(aff_meta):
    raw = aff_meta.assign(valence=aff_meta.valence.fillna(-5.0), arousal=aff_meta.arousal.fillna(-5.0))
    _, mask = AFFWILD2.targets(raw, "va")
    _, expected = AFFWILD2.targets(aff_meta, "va")
    np.testing.assert_array_equal(mask, expected)


def test_affwild2_task_metrics():
    assert AFFWILD2.task("au-detection").n_outputs == 12
    assert AFFWILD2.task("expression").n_outputs == 8 and AFFWILD2.task("expression").primary_metric == "f1"
    va = AFFWILD2.task("va")
    assert va.primary_metric == "ccc" and va.output_key == "va" and va.label_names == ("valence", "arousal")


# ----------------------------------------------------------------------------------------- declarations, JSON


@pytest.mark.parametrize("name", sorted(protocols()))
def test_protocol_round_trips_through_json(name):
    protocol = protocols()[name]
    data = protocol.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-native values only
    restored = Protocol.from_dict(json.loads(json.dumps(data, sort_keys=True)))
    assert restored == protocol and restored.to_dict() == data
    assert list(restored.tasks) == list(protocol.tasks)


def test_protocol_survives_the_manifest(tmp_path):
    protocol = protocol_for("caer-s", validation_seed=5)
    DatasetWriter(tmp_path / "out", dataset="caer-s", parameters={"size": 96}, schema=make_schema(),
                  protocol=protocol.to_dict())
    restored = Protocol.from_dict(read_manifest(tmp_path / "out")["protocol"])
    assert restored == protocol and restored.validation.seed == 5


def test_manifest_without_protocol_is_a_clear_error():
    with pytest.raises(AffbenchError, match="no evaluation protocol"):
        Protocol.from_dict(None)


def test_taskspec_checks_its_metrics():
    with pytest.raises(ValueError, match="does not apply"):
        TaskSpec(name="va", kind="va", label_columns=("valence",), output_key="va", n_outputs=1,
                 label_names=("valence",), metrics=("f1",), primary_metric="f1")
    with pytest.raises(UnknownNameError):
        TaskSpec(name="va", kind="va", label_columns=("valence",), output_key="va", n_outputs=1,
                 label_names=("valence",), metrics=("rmse",), primary_metric="rmse")


def test_library_does_not_import_pipelines():
    code = ("import sys, affbench.scoring.protocols, affbench.scoring.metrics, affbench.scoring; "
            "bad = [m for m in sys.modules if m.startswith('affbench.pipelines') or m.startswith('affbench.benchmarks')]; "
            "assert not bad, bad; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


# ----------------------------------------------------------------------------------------- tiny data (sample datasets)


def test_tiny_caer_s_still_gets_one_validation_row_per_class():
    # The sample dataset's shape: four training images per class, one of them faceless.
    meta = pd.DataFrame({"split": ["train"] * 28 + ["test"] * 14,
                         "expression": [c for c in range(7) for _ in range(4)] + [c for c in range(7) for _ in range(2)],
                         "face_found": True})
    meta.loc[4 * 4, "face_found"] = False  # train/Neutral
    split = CAER_S.split_indices(meta, "expression")
    assert sorted(meta.expression.iloc[split["val"]]) == list(range(7))  # 0.125 * 27 rounds up to 4 < 7 classes
    assert len(split["train"]) == 20 and len(split["test"]) == 14


def test_a_single_training_group_leaves_validation_empty_and_says_so(aff_meta):
    only_one = aff_meta[aff_meta.subject.isin(["10-60-1280x720_left", "video7"])]
    split = AFFWILD2.split_indices(only_one, "va")
    assert split["val"].size == 0 and split["train"].size > 0
    assert "no validation set" in split["validation"]["note"]
