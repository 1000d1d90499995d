"""Metrics against scikit-learn, independent formulas and a published table; degenerate input; registry."""

from __future__ import annotations

import contextlib
import doctest
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import f_oneway, pearsonr
from sklearn.metrics import accuracy_score, f1_score

from affbench.errors import UnknownNameError
from affbench.scoring import metrics
from affbench.scoring.metrics import (
    TASK_KINDS,
    DegenerateMetricWarning,
    accuracy,
    all_active_rate,
    any_active_rate,
    ccc,
    ccc_loss,
    f1,
    icc,
    icc_ratings,
    torch_ccc,
)
from affbench.scoring.protocols import TaskSpec
from affbench.scoring.registry import get_metric, is_better, list_metrics
from affbench.scoring.scorer import score_task


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@contextlib.contextmanager
def _strict():
    """Turn any DegenerateMetricWarning into an error: well-posed input must not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateMetricWarning)
        yield


# ----------------------------------------------------------------------------------------- ICC


# Shrout & Fleiss (1979), Table 2 (data: 6 targets x 4 judges) and Table 4 (published estimates,
# two decimals). The expected numbers are the paper's, not this code's.
SHROUT_FLEISS_RATINGS = np.array([
    [9, 2, 5, 8],
    [6, 1, 3, 2],
    [8, 4, 6, 8],
    [7, 1, 2, 6],
    [10, 5, 6, 9],
    [6, 2, 4, 7],
])
SHROUT_FLEISS_PUBLISHED = {"1,1": 0.17, "2,1": 0.29, "3,1": 0.71, "1,k": 0.44, "2,k": 0.62, "3,k": 0.91}


@pytest.mark.parametrize("kind", sorted(SHROUT_FLEISS_PUBLISHED))
def test_icc_reproduces_shrout_fleiss_table(kind):
    value = icc_ratings(SHROUT_FLEISS_RATINGS, kind=kind)
    assert value == pytest.approx(SHROUT_FLEISS_PUBLISHED[kind], abs=0.005)


def test_icc_two_raters_equals_covariance_formula(rng):
    # For k = 2, ICC(3,1) reduces to 2 cov(x, y) / (var x + var y) (consistency: means cancel).
    x = rng.normal(size=500)
    y = 0.6 * x + rng.normal(scale=0.5, size=500) + 3.0
    expected = 2 * np.cov(x, y)[0, 1] / (np.var(x, ddof=1) + np.var(y, ddof=1))
    assert icc(x, y) == pytest.approx(expected, rel=1e-10)


def test_icc_1_1_matches_one_way_anova_f(rng):
    # ICC(1,1) = (F - 1) / (F + k - 1) with F the one-way ANOVA F of targets (scipy computes F).
    ratings = rng.normal(size=(40, 3)) + rng.normal(size=(40, 1)) * 2
    f_value = f_oneway(*ratings).statistic  # one group per target
    k = ratings.shape[1]
    assert icc_ratings(ratings, kind="1,1") == pytest.approx((f_value - 1) / (f_value + k - 1), rel=1e-10)


def test_icc_3_k_equals_cronbach_alpha(rng):
    ratings = rng.normal(size=(60, 5)) + rng.normal(size=(60, 1))
    k = ratings.shape[1]
    alpha = k / (k - 1) * (1 - ratings.var(axis=0, ddof=1).sum() / ratings.sum(axis=1).var(ddof=1))
    assert icc_ratings(ratings, kind="3,k") == pytest.approx(alpha, rel=1e-10)


@pytest.mark.parametrize("case", ["1", "2", "3"])
def test_icc_average_forms_follow_spearman_brown(rng, case):
    ratings = rng.normal(size=(30, 4)) + rng.normal(size=(30, 1))
    single = icc_ratings(ratings, kind=f"{case},1")
    k = ratings.shape[1]
    assert icc_ratings(ratings, kind=f"{case},k") == pytest.approx(k * single / (1 + (k - 1) * single), rel=1e-10)


def test_icc_per_column_and_mean(rng):
    truth = rng.integers(0, 6, size=(200, 3)).astype(float)
    pred = truth + rng.normal(scale=[0.3, 1.0, 2.0], size=(200, 3))
    per = icc(truth, pred, per_label=True)
    assert per.shape == (3,)
    for j in range(3):
        assert per[j] == pytest.approx(icc(truth[:, j], pred[:, j]))
    assert per[0] > per[1] > per[2]  # more noise, less agreement
    assert icc(truth, pred) == pytest.approx(per.mean())


def test_icc_consistency_ignores_rater_offset_but_agreement_does_not(rng):
    x = rng.normal(size=100)
    assert icc(x, x + 5.0, kind="3,1") == pytest.approx(1.0)
    assert icc(x, x + 5.0, kind="2,1") < 0.2


def test_icc_rejects_unknown_kind():
    with pytest.raises(ValueError, match="3,1"):
        icc_ratings(SHROUT_FLEISS_RATINGS, kind="4,1")


# ----------------------------------------------------------------------------------------- F1 / accuracy


def test_multilabel_f1_matches_sklearn(rng):
    truth = (rng.random((300, 8)) < 0.3).astype(int)
    prob = np.clip(truth * 0.4 + rng.random((300, 8)) * 0.7, 0, 1)
    decided = (prob >= 0.5).astype(int)
    expected = f1_score(truth, decided, average=None)
    with _strict():
        np.testing.assert_allclose(f1(truth, prob, per_label=True), expected)
        assert f1(truth, prob) == pytest.approx(f1_score(truth, decided, average="macro"))


def test_multilabel_f1_threshold_is_applied(rng):
    truth = np.array([[1], [1], [0], [0]])
    prob = np.array([[0.7], [0.4], [0.45], [0.1]])
    assert f1(truth, prob) == pytest.approx(2 / 3)  # 0.5: TP=1, FN=1, FP=0
    assert f1(truth, prob, threshold=0.4) == pytest.approx(0.8)  # 0.4: TP=2, FP=1


def test_multiclass_macro_f1_matches_sklearn(rng):
    truth = rng.integers(0, 7, size=400)
    pred = np.where(rng.random(400) < 0.6, truth, rng.integers(0, 7, size=400))
    with _strict():
        assert f1(truth, pred, average="macro") == pytest.approx(f1_score(truth, pred, average="macro"))
        np.testing.assert_allclose(
            f1(truth, pred, per_label=True, labels=range(7)), f1_score(truth, pred, average=None, labels=range(7))
        )


def test_binary_f1_matches_sklearn(rng):
    truth = rng.integers(0, 2, size=100)
    pred = rng.integers(0, 2, size=100)
    assert f1(truth, pred, average="binary") == pytest.approx(f1_score(truth, pred))


def _sklearn_f1(truth, pred, average, **options):
    with warnings.catch_warnings():  # sklearn's own warning for an undefined label; affbench's is tested below
        warnings.simplefilter("ignore")
        return f1_score(truth, pred, average=average, **options)


@pytest.mark.parametrize("average", [None, "macro", "micro", "weighted", "samples"])
@pytest.mark.parametrize("zero_division", [0.0, 1.0])
def test_multilabel_f1_matches_sklearn_for_every_average(rng, average, zero_division):
    for trial in range(10):
        n, k = int(rng.integers(1, 60)), int(rng.integers(2, 9))
        truth = (rng.random((n, k)) < rng.uniform(0.05, 0.6)).astype(int)
        prob = np.clip(truth * rng.uniform(0, 0.5) + rng.random((n, k)) * 0.8, 0, 1)
        decided = (prob >= 0.5).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateMetricWarning)  # sparse draws leave a label empty
            value = f1(truth, prob, average=average, zero_division=zero_division)
            columns = sorted(rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False).tolist())
            subset = f1(truth, prob, average=average, labels=columns, zero_division=zero_division)
        expected = _sklearn_f1(truth, decided, average, zero_division=zero_division)
        np.testing.assert_allclose(value, expected, rtol=0, atol=1e-12, err_msg=f"trial {trial}")
        assert np.shape(value) == np.shape(expected)
        np.testing.assert_allclose(subset, _sklearn_f1(truth, decided, average, labels=columns,
                                                       zero_division=zero_division), rtol=0, atol=1e-12)


@pytest.mark.parametrize("average", [None, "macro", "micro", "weighted"])
@pytest.mark.parametrize("zero_division", [0.0, 1.0])
def test_multiclass_f1_matches_sklearn_for_every_average(rng, average, zero_division):
    for trial in range(20):
        n, n_classes = int(rng.integers(1, 80)), int(rng.integers(2, 8))
        truth = rng.integers(0, n_classes, size=n)
        pred = np.where(rng.random(n) < rng.random(), truth, rng.integers(0, n_classes, size=n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateMetricWarning)  # a class may be missing from a draw
            value = f1(truth, pred, average=average, zero_division=zero_division)
            every = f1(truth, pred, average=average, labels=range(n_classes + 1), zero_division=zero_division)
        np.testing.assert_allclose(value, _sklearn_f1(truth, pred, average, zero_division=zero_division),
                                   rtol=0, atol=1e-12, err_msg=f"trial {trial}")
        np.testing.assert_allclose(every, _sklearn_f1(truth, pred, average, labels=range(n_classes + 1),
                                                      zero_division=zero_division), rtol=0, atol=1e-12)
    binary_truth, binary_pred = rng.integers(0, 2, size=50), rng.integers(0, 2, size=50)
    assert f1(binary_truth, binary_pred, average="binary") == pytest.approx(f1_score(binary_truth, binary_pred))


def test_f1_average_none_is_per_label_and_the_default_is_macro(rng):
    truth = (rng.random((100, 4)) < 0.4).astype(int)
    prob = rng.random((100, 4))
    classes, predicted = rng.integers(0, 5, size=100), rng.integers(0, 5, size=100)
    with _strict():
        for y_true, y_pred, n_labels in ((truth, prob, 4), (classes, predicted, 5)):
            per_label = f1(y_true, y_pred, average=None)
            assert isinstance(per_label, np.ndarray) and per_label.shape == (n_labels,)
            # per_label=True is average=None, whatever the (default) macro says; the registry relies on it
            np.testing.assert_array_equal(f1(y_true, y_pred, per_label=True), per_label)
            np.testing.assert_array_equal(f1(y_true, y_pred, average=None, per_label=True), per_label)
            assert f1(y_true, y_pred) == f1(y_true, y_pred, average="macro") == pytest.approx(per_label.mean())


def test_f1_refuses_averages_that_do_not_fit_the_layout():
    multilabel, classes = np.array([[1, 0], [0, 1]]), np.array([0, 1])
    with pytest.raises(ValueError, match="one of None, 'macro'"):
        f1(classes, classes, average="mean")
    with pytest.raises(ValueError, match="binary.*multilabel"):
        f1(multilabel, multilabel, average="binary")
    with pytest.raises(ValueError, match="samples.*multilabel"):
        f1(classes, classes, average="samples")
    for average in ("micro", "weighted", "binary"):
        with pytest.raises(ValueError, match="per_label=True"):
            f1(classes, classes, average=average, per_label=True)


@pytest.mark.parametrize("average", [None, "macro", "micro", "weighted", "samples"])
def test_f1_warnings_point_at_the_caller(average):
    with pytest.warns(DegenerateMetricWarning) as record:
        f1(np.zeros((4, 2), dtype=int), np.zeros((4, 2)), average=average)
    assert {w.filename for w in record} == {__file__}


def test_f1_averages_warn_for_degenerate_input():
    none = np.zeros((6, 3), dtype=int)
    with pytest.warns(DegenerateMetricWarning, match="0/0"):
        assert f1(none, np.zeros((6, 3)), average="micro", zero_division=1.0) == 1.0
    with pytest.warns(DegenerateMetricWarning, match="weight"):
        f1(none, np.ones((6, 3)), average="weighted")
    with pytest.warns(DegenerateMetricWarning, match="6 of 6 samples"):
        assert f1(none, np.zeros((6, 3)), average="samples") == 0.0
    for average in ("micro", "weighted", "samples"):
        with pytest.warns(DegenerateMetricWarning, match="empty"):
            assert np.isnan(f1(np.zeros((0, 3)), np.zeros((0, 3)), average=average))
    for average in ("micro", "weighted"):
        with pytest.warns(DegenerateMetricWarning, match="empty"):
            assert np.isnan(f1(np.zeros(0), np.zeros(0), average=average))
        with pytest.warns(DegenerateMetricWarning, match=r"classes \[3\]"):
            f1([0, 1, 1], [0, 1, 3], average=average, labels=[3])


def test_accuracy_matches_sklearn(rng):
    truth = rng.integers(0, 7, size=250)
    pred = np.where(rng.random(250) < 0.5, truth, rng.integers(0, 7, size=250))
    assert accuracy(truth, pred) == pytest.approx(accuracy_score(truth, pred))

    multi = (rng.random((250, 5)) < 0.4).astype(int)
    prob = rng.random((250, 5))
    per = accuracy(multi, prob, per_label=True)
    expected = [accuracy_score(multi[:, j], prob[:, j] >= 0.5) for j in range(5)]
    np.testing.assert_allclose(per, expected)
    assert accuracy(multi, prob) == pytest.approx(np.mean(expected))


def test_class_labels_must_be_whole_numbers():
    with pytest.raises(ValueError, match="class labels"):
        f1([0, 1, 1], [0.2, 0.9, 0.7])


# ----------------------------------------------------------------------------------------- CCC


def test_ccc_matches_pearson_based_formula(rng):
    x = rng.normal(size=1000)
    y = 0.5 * x + rng.normal(scale=0.8, size=1000) + 0.3
    r = pearsonr(x, y).statistic
    expected = 2 * r * x.std() * y.std() / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert ccc(x, y) == pytest.approx(expected, rel=1e-10)


def test_ccc_properties(rng):
    x = rng.normal(size=500)
    centred = x - x.mean()
    variance = x.var()
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(centred, -centred) == pytest.approx(-1.0)
    # A shift c lowers it to 2 var / (2 var + c^2); a scale a (centred data) to 2a / (1 + a^2).
    for c in (0.1, 0.5, 2.0):
        assert ccc(x, x + c) == pytest.approx(2 * variance / (2 * variance + c**2))
    for a in (0.5, 2.0):
        assert ccc(centred, a * centred) == pytest.approx(2 * a / (1 + a**2))
    assert ccc(x, x + 0.1) > ccc(x, x + 0.5) > ccc(x, x + 2.0)
    # Equal to Pearson's r when means and variances match.
    z = rng.normal(size=500) + 0.7 * x
    z = (z - z.mean()) / z.std() * x.std() + x.mean()
    assert ccc(x, z) == pytest.approx(pearsonr(x, z).statistic, rel=1e-10)
    assert ccc(x, z) == pytest.approx(ccc(z, x))  # symmetric


def test_ccc_per_column(rng):
    truth = rng.normal(size=(300, 2))
    pred = truth + rng.normal(scale=[0.2, 1.0], size=(300, 2))
    per = ccc(truth, pred, per_label=True)
    assert per[0] == pytest.approx(ccc(truth[:, 0], pred[:, 0]))
    assert per[1] == pytest.approx(ccc(truth[:, 1], pred[:, 1]))
    assert ccc(truth, pred) == pytest.approx(per.mean())


def test_torch_ccc_agrees_with_numpy_and_is_differentiable(rng):
    truth = rng.normal(size=(256, 2))
    pred = 0.7 * truth + rng.normal(scale=0.4, size=(256, 2)) + 0.2
    t_truth = torch.tensor(truth, dtype=torch.float64)
    t_pred = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    values = torch_ccc(t_truth, t_pred)
    np.testing.assert_allclose(values.detach().numpy(), ccc(truth, pred, per_label=True), rtol=1e-6)
    loss = ccc_loss(t_truth, t_pred)
    assert float(loss.detach()) == pytest.approx(1 - ccc(truth, pred), rel=1e-6)
    loss.backward()
    assert t_pred.grad is not None and torch.isfinite(t_pred.grad).all() and t_pred.grad.abs().sum() > 0
    # One gradient step on the prediction raises the agreement.
    with torch.no_grad():
        stepped = t_pred - 0.5 * t_pred.grad
    assert ccc(truth, stepped.numpy()) > ccc(truth, pred)


def test_torch_ccc_float32_and_constant_batch_stay_finite():
    truth = torch.zeros(16, 2)
    pred = torch.zeros(16, 2, requires_grad=True)
    loss = ccc_loss(truth, pred)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match=r"\(16, 2\).*\(16,\)"):
        torch_ccc(truth, torch.zeros(16))


# ----------------------------------------------------------------------------------------- degenerate input


@pytest.mark.parametrize("metric", [accuracy, f1, icc, ccc])
def test_empty_input_returns_nan_with_warning(metric):
    with pytest.warns(DegenerateMetricWarning, match="empty"):
        value = metric(np.zeros(0), np.zeros(0))
    assert np.isnan(value)


@pytest.mark.parametrize("metric", [accuracy, f1, icc, ccc])
def test_empty_multilabel_input_returns_nan_with_warning(metric):
    with pytest.warns(DegenerateMetricWarning):
        value = metric(np.zeros((0, 3)), np.zeros((0, 3)), per_label=True)
    assert value.shape == (3,) and np.isnan(value).all()


@pytest.mark.parametrize("metric", [accuracy, f1, icc, ccc, all_active_rate, any_active_rate])
def test_shape_mismatch_names_both_shapes(metric):
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        metric(np.zeros((4, 2)), np.zeros((4, 3)))


def test_f1_without_positives_is_zero_with_warning():
    truth = np.zeros((10, 2), dtype=int)
    with pytest.warns(DegenerateMetricWarning, match="positive sample"):
        assert f1(truth, np.zeros((10, 2))) == 0.0
    with pytest.warns(DegenerateMetricWarning, match="no positive"):
        assert f1(truth, np.ones((10, 2))) == 0.0
    with pytest.warns(DegenerateMetricWarning, match="0/0"):
        assert f1(truth, np.zeros((10, 2)), zero_division=1.0) == 1.0


def test_macro_f1_warns_for_a_class_without_samples():
    with pytest.warns(DegenerateMetricWarning, match=r"\[2\]"):
        value = f1([0, 1, 1, 0], [0, 1, 0, 0], labels=[0, 1, 2])
    assert value == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)


def test_constant_vectors_give_documented_values():
    constant = np.full(20, 3.0)
    with pytest.warns(DegenerateMetricWarning, match="0/0"):
        assert ccc(constant, constant) == 0.0
    with pytest.warns(DegenerateMetricWarning, match="constant"):
        assert ccc(constant, np.arange(20.0)) == 0.0
    with pytest.warns(DegenerateMetricWarning, match="0/0|constant"):
        assert icc(constant, constant) == 0.0
    with pytest.warns(DegenerateMetricWarning, match="constant"):
        value = icc(constant, np.arange(20.0))
    assert np.isfinite(value)
    with pytest.warns(DegenerateMetricWarning, match="two targets"):
        assert np.isnan(icc_ratings([[1.0, 2.0]]))


def test_nan_input_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        ccc([0.1, np.nan, 0.3], [0.1, 0.2, 0.3])


def test_well_posed_input_does_not_warn(rng):
    x = rng.normal(size=50)
    with _strict():
        ccc(x, x + rng.normal(size=50))
        icc(x, x + rng.normal(size=50))
        f1(np.array([[1, 0], [0, 1], [1, 1]]), np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6]]))


# ----------------------------------------------------------------------------------------- AU co-activation


def test_active_rates_against_numpy(rng):
    prob = rng.random((200, 8))
    chosen = [3, 5]
    on = prob[:, chosen] >= 0.5
    assert all_active_rate(None, prob, columns=chosen) == pytest.approx(np.mean(on[:, 0] & on[:, 1]))
    assert any_active_rate(None, prob, columns=chosen) == pytest.approx(np.mean(on[:, 0] | on[:, 1]))
    assert all_active_rate(np.zeros((200, 8)), prob) == pytest.approx(np.mean((prob >= 0.5).all(axis=1)))


# ----------------------------------------------------------------------------------------- registry


def test_registry_lists_metrics_with_valid_kinds():
    assert TASK_KINDS == ("au-detection", "au-intensity", "expression", "va")
    names = [spec.name for spec in list_metrics()]
    assert {"accuracy", "f1", "icc", "ccc", "all_active_rate", "any_active_rate"} <= set(names)
    for spec in list_metrics():
        assert set(spec.task_kinds) <= set(TASK_KINDS) and spec.task_kinds
        assert spec.description and isinstance(spec.higher_is_better, bool)
    assert get_metric("icc").function is icc
    assert [s.name for s in list_metrics("va")] == ["ccc"]


def test_unknown_metric_lists_valid_names():
    with pytest.raises(UnknownNameError, match="ccc.*f1.*icc"):
        get_metric("auc")


def test_is_better_follows_direction():
    assert is_better("f1/au6", 0.6, 0.5)
    assert not is_better("ccc", float("nan"), 0.1)
    assert is_better("icc", 0.1, None)


def test_cli_lists_metrics():
    from affbench.cli import app

    result = CliRunner().invoke(app, ["list", "metrics"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert set(lines) == {spec.name for spec in list_metrics()}
    assert "higher" in lines["icc"] and "au-intensity" in lines["icc"]


# ----------------------------------------------------------------------------------------- score_task


AU_TASK = TaskSpec(
    name="au-detection", kind="au-detection", label_columns=("au1", "au6", "au12"), output_key="au",
    n_outputs=3, label_names=("au1", "au6", "au12"), metrics=("f1", "accuracy", "all_active_rate"),
    primary_metric="f1", metric_options={"all_active_rate": {"labels": ["au6", "au12"]}},
)
EXPR_TASK = TaskSpec(
    name="expression", kind="expression", label_columns=("expression",), output_key="expression",
    n_outputs=4, label_names=("anger", "happy", "neutral", "sad"), metrics=("f1", "accuracy"), primary_metric="f1",
)


def test_evaluate_au_detection_with_mask(rng):
    truth = (rng.random((120, 3)) < 0.4).astype(np.float32)
    prob = np.clip(truth * 0.5 + rng.random((120, 3)) * 0.6, 0, 1)
    mask = rng.random((120, 3)) > 0.2
    scores = score_task(AU_TASK, truth, prob, mask=mask)
    for j, label in enumerate(AU_TASK.label_names):
        rows = mask[:, j]
        assert scores[f"f1/{label}"] == pytest.approx(f1_score(truth[rows, j], prob[rows, j] >= 0.5))
        assert scores[f"accuracy/{label}"] == pytest.approx(accuracy_score(truth[rows, j], prob[rows, j] >= 0.5))
    assert scores["f1"] == pytest.approx(np.mean([scores[f"f1/{n}"] for n in AU_TASK.label_names]))
    all_rows = mask.all(axis=1)
    assert scores["all_active_rate"] == pytest.approx(np.mean((prob[all_rows][:, 1:] >= 0.5).all(axis=1)))
    # A masked-out entry must not matter, whatever it holds.
    flipped = truth.copy()
    flipped[~mask] = 1 - flipped[~mask]
    assert score_task(AU_TASK, flipped, prob, mask=mask) == scores


def test_evaluate_refuses_logits_for_detection(rng):
    with pytest.raises(ValueError, match="sigmoid"):
        score_task(AU_TASK, np.zeros((4, 3)), rng.normal(size=(4, 3)) * 5)


def test_evaluate_expression_scores_and_row_mask(rng):
    truth = rng.integers(0, 4, size=200)
    logits = rng.normal(size=(200, 4))
    logits[np.arange(200), truth] += rng.random(200) * 2
    keep = rng.random(200) > 0.1
    scores = score_task(EXPR_TASK, truth, logits, mask=keep)
    pred = logits.argmax(axis=1)
    assert scores["accuracy"] == pytest.approx(accuracy_score(truth[keep], pred[keep]))
    assert scores["f1"] == pytest.approx(f1_score(truth[keep], pred[keep], average="macro", labels=range(4)))
    assert scores["f1/happy"] == pytest.approx(f1_score(truth[keep] == 1, pred[keep] == 1))
    assert score_task(EXPR_TASK, truth, pred, mask=keep) == scores  # labels work as well as scores


def test_evaluate_va_keys_and_values(rng):
    task = TaskSpec(name="va", kind="va", label_columns=("valence", "arousal"), output_key="va", n_outputs=2,
                    label_names=("valence", "arousal"), metrics=("ccc",), primary_metric="ccc")
    truth = rng.uniform(-1, 1, size=(100, 2))
    pred = truth * 0.8 + rng.normal(scale=0.2, size=(100, 2))
    scores = score_task(task, truth, pred)
    assert set(scores) == {"ccc", "ccc/valence", "ccc/arousal"}
    assert scores["ccc/valence"] == pytest.approx(ccc(truth[:, 0], pred[:, 0]))
    assert scores["ccc"] == pytest.approx((scores["ccc/valence"] + scores["ccc/arousal"]) / 2)


def test_evaluate_names_the_label_in_warnings():
    truth = np.zeros((5, 3))
    truth[:, 0] = 1
    with pytest.warns(DegenerateMetricWarning) as record:
        score_task(AU_TASK, truth, np.full((5, 3), 0.9))
    messages = " ".join(str(w.message) for w in record)
    assert "f1/au6" in messages and "f1/au12" in messages and "column" not in messages


def test_docstring_examples_run():
    from affbench.scoring import protocols

    for module in (metrics, protocols):
        failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert attempted > 0 and failed == 0
