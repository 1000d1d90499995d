"""affbench.scoring.baselines on hand-made cases; every expected number is worked out by hand below."""

from __future__ import annotations

import numpy as np
import pytest

from affbench.scoring.baselines import trivial_baselines
from affbench.scoring.protocols import TaskSpec


def spec(kind, labels, metrics, n_outputs=None):
    key = {"au-detection": "au", "au-intensity": "au", "expression": "expression", "va": "va"}[kind]
    return TaskSpec(name=kind, kind=kind, label_columns=tuple(labels) if kind != "expression" else ("expression",),
                    output_key=key, n_outputs=n_outputs or len(labels), label_names=tuple(labels),
                    metrics=tuple(metrics), primary_metric=metrics[0])


def test_au_detection_baselines_by_hand():
    #           train rows 0-3          test rows 4-8 (row 8: au2 not annotated)
    au1 = [1, 0, 0, 0,                 1, 1, 0, 0, 1]
    au2 = [1, 1, 1, 0,                 0, 0, 0, 1, -1]
    y = np.array([au1, au2], dtype=np.float32).T
    mask = y >= 0
    rows = {"train": np.arange(4), "test": np.arange(4, 9)}
    found = trivial_baselines(spec("au-detection", ["au1", "au2"], ["f1", "accuracy"]), y, mask, rows)
    assert sorted(found) == ["all-absent", "all-present", "label-frequency"]
    # Test: au1 = 1,1,0,0,1 (3 of 5 present, q = 0.6); au2 = 0,0,0,1 (1 of 4, q = 0.25).
    # All present: au1 TP 3 FP 2 -> F1 6/8 = 0.75, accuracy 0.6; au2 TP 1 FP 3 -> F1 2/5 = 0.4, accuracy 0.25.
    assert found["all-present"]["f1/au1"] == pytest.approx(0.75)
    assert found["all-present"]["f1/au2"] == pytest.approx(0.4)
    assert found["all-present"]["f1"] == pytest.approx(0.575)
    assert found["all-present"]["accuracy"] == pytest.approx((0.6 + 0.25) / 2)
    # All absent: F1 0 for both; accuracy 0.4 and 0.75.
    assert found["all-absent"]["f1"] == 0.0
    assert found["all-absent"]["accuracy/au1"] == pytest.approx(0.4)
    assert found["all-absent"]["accuracy"] == pytest.approx(0.575)
    # Label frequency: train p = 0.25 (au1), 0.75 (au2).
    # au1: F1 = 2 pq / (p + q) = 0.3 / 0.85; accuracy = pq + (1-p)(1-q) = 0.15 + 0.30 = 0.45.
    # au2: F1 = 2 * 0.75 * 0.25 / 1.0 = 0.375; accuracy = 0.1875 + 0.1875 = 0.375.
    frequency = found["label-frequency"]
    assert frequency["f1/au1"] == pytest.approx(0.3 / 0.85)
    assert frequency["f1/au2"] == pytest.approx(0.375)
    assert frequency["f1"] == pytest.approx((0.3 / 0.85 + 0.375) / 2)
    assert frequency["accuracy"] == pytest.approx((0.45 + 0.375) / 2)


def test_majority_class_by_hand():
    # Train classes 0,1,1,2,1: the majority is 1. Test classes 1,0,2,1 and one unannotated row.
    y = np.array([0, 1, 1, 2, 1, 1, 0, 2, 1, 0])
    mask = np.array([True] * 9 + [False])
    rows = {"train": np.arange(5), "test": np.arange(5, 10)}
    found = trivial_baselines(spec("expression", ["anger", "happy", "sad"], ["accuracy", "f1"], 3), y, mask, rows)
    assert list(found) == ["majority-class"]
    # Predict "happy" everywhere: 2 of 4 right; F1 happy = 2*2 / (2*2 + 2 + 0) = 2/3, the others 0.
    assert found["majority-class"]["accuracy"] == pytest.approx(0.5)
    assert found["majority-class"]["f1/happy"] == pytest.approx(2 / 3)
    assert found["majority-class"]["f1"] == pytest.approx(2 / 9)


def test_training_mean_of_valence_arousal_has_zero_ccc():
    y = np.array([[0.2, 0.0], [0.4, 1.0], [0.1, 0.0], [0.5, 1.0]])
    found = trivial_baselines(spec("va", ["valence", "arousal"], ["ccc"]), y, np.ones_like(y, bool),
                              {"train": np.arange(2), "test": np.arange(2, 4)})
    # A constant prediction has no covariance with the truth: CCC = 0.
    assert found["training-mean"] == {"ccc": 0.0, "ccc/valence": 0.0, "ccc/arousal": 0.0}


def test_without_training_rows_only_the_unfitted_baselines():
    y = np.ones((3, 2), np.float32)
    found = trivial_baselines(spec("au-detection", ["au6", "au12"], ["f1"]), y, np.ones_like(y, bool),
                              {"train": np.zeros(0, np.int64), "test": np.arange(3)})
    assert sorted(found) == ["all-absent", "all-present"] and found["all-present"]["f1"] == 1.0
    assert trivial_baselines(spec("va", ["valence", "arousal"], ["ccc"]), y, np.ones_like(y, bool),
                             {"train": np.zeros(0, np.int64), "test": np.arange(3)}) == {}
