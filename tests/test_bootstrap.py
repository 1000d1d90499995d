"""Cluster bootstrap intervals and the paired permutation test, against independent computations:
score_task on every resample, scipy.stats.bootstrap, and a permutation test by enumeration."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from scipy import stats

from affbench.scoring.bootstrap import BootstrapSettings, cluster_intervals, fold_intervals, holm, paired_comparison
from affbench.scoring.cluster_statistics import cluster_sums
from affbench.scoring.protocols import TaskSpec
from affbench.scoring.scorer import score_task

AU = TaskSpec(name="au-detection", kind="au-detection", label_columns=("au1", "au2", "au4"), output_key="au",
              n_outputs=3, label_names=("au1", "au2", "au4"), metrics=("f1", "accuracy"), primary_metric="f1")
RATES = TaskSpec(name="happy", kind="au-detection", label_columns=("au6", "au12"), output_key="au", n_outputs=2,
                 label_names=("au6", "au12"), metrics=("all_active_rate", "any_active_rate"),
                 primary_metric="all_active_rate")
INTENSITY = TaskSpec(name="au-intensity", kind="au-intensity", label_columns=("au1", "au2"), output_key="au",
                     n_outputs=2, label_names=("au1", "au2"), metrics=("icc", "ccc"), primary_metric="icc")
EXPRESSION = TaskSpec(name="expression", kind="expression", label_columns=("expression",), output_key="expression",
                      n_outputs=4, label_names=("a", "b", "c", "d"), metrics=("accuracy", "f1"),
                      primary_metric="accuracy")


def synthetic(task: TaskSpec, n_clusters: int, rows: int, seed: int = 0, *, skill: float = 1.0):
    """Labels, outputs related to them by ``skill``, a partial mask and cluster names."""
    rng = np.random.default_rng(seed)
    n = n_clusters * rows
    clusters = np.repeat([f"s{c:02d}" for c in range(n_clusters)], rows)
    if task.kind == "expression":
        y = rng.integers(0, 3, n)  # class "d" never occurs in truth
        scores = rng.normal(size=(n, task.n_outputs))
        scores[np.arange(n), y] += skill
        return y, scores, rng.random(n) > 0.1, clusters
    width = len(task.label_names)
    subject_effect = np.repeat(rng.normal(size=(n_clusters, width)), rows, axis=0)
    if task.kind == "au-detection":
        y = (rng.random((n, width)) < 0.3).astype(float)
        logits = skill * (2 * y - 1) + subject_effect + rng.normal(size=(n, width))
        scores = 1 / (1 + np.exp(-logits))
    else:
        y = rng.integers(0, 6, (n, width)).astype(float)
        scores = y * 0.7 + subject_effect + rng.normal(size=(n, width))
    return y, scores, rng.random((n, width)) > 0.1, clusters


def resampled_rows(clusters: np.ndarray, weights: np.ndarray) -> np.ndarray:
    names = np.unique(clusters)
    return np.concatenate([np.repeat(np.flatnonzero(clusters == name), int(w)) for name, w in zip(names, weights)])


@pytest.mark.parametrize("task", [AU, RATES, INTENSITY, EXPRESSION], ids=lambda t: t.name)
def test_every_resample_equals_score_task_on_the_drawn_rows(task):
    y, scores, mask, clusters = synthetic(task, 8, 15)
    sums = cluster_sums(task, y, scores, clusters, mask=mask)
    assert not sums.generic
    rng = np.random.default_rng(1)
    weights = rng.multinomial(8, np.full(8, 1 / 8), size=12).astype(float)
    weights[0] = 1  # the observed rows
    weights[1] = [8, 0, 0, 0, 0, 0, 0, 0]  # one cluster only: degenerate columns are likely
    found = sums.evaluate(weights)
    for b, w in enumerate(weights):
        index = resampled_rows(clusters, w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = score_task(task, y[index], scores[index], mask=mask[index])
        assert set(found) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(found[key][b], value, rtol=1e-9, atol=1e-12, equal_nan=True,
                                       err_msg=f"{task.name} {key} resample {b}")


def test_degenerate_cells_follow_the_metric_conventions():
    """A constant truth and prediction (CCC and ICC 0/0 -> 0) and a label never annotated (nan)."""
    y = np.zeros((40, 2))
    scores = np.zeros((40, 2))
    mask = np.ones((40, 2), bool)
    mask[:, 1] = False
    clusters = np.repeat(np.arange(10), 4)
    values = cluster_sums(INTENSITY, y, scores, clusters, mask=mask).evaluate(np.ones((1, 10)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = score_task(INTENSITY, y, scores, mask=mask)
    for key, value in expected.items():
        np.testing.assert_allclose(values[key][0], value, equal_nan=True, err_msg=key)
    assert values["ccc/au1"][0] == 0.0 and np.isnan(values["ccc/au2"][0])


def test_one_row_per_cluster_matches_scipy_bootstrap():
    """With one row per cluster the cluster bootstrap is the ordinary one: scipy's percentile
    interval of the same statistic agrees to Monte-Carlo precision."""
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 300)
    predicted = np.where(rng.random(300) < 0.6, truth, rng.integers(0, 3, 300))
    scores = np.eye(4)[predicted]
    settings = BootstrapSettings(resamples=20000, seed=5)
    found = cluster_intervals(EXPRESSION, truth, scores, np.arange(300), settings=settings)
    reference = stats.bootstrap(((truth == predicted).astype(float),), np.mean, n_resamples=20000,
                                method="percentile", confidence_level=0.95, rng=np.random.default_rng(7))
    assert found.low["accuracy"] == pytest.approx(reference.confidence_interval.low, abs=0.006)
    assert found.high["accuracy"] == pytest.approx(reference.confidence_interval.high, abs=0.006)

    x = rng.normal(size=200)
    y = x + rng.normal(scale=0.8, size=200)
    va = TaskSpec(name="va", kind="va", label_columns=("valence",), output_key="va", n_outputs=1,
                  label_names=("valence",), metrics=("ccc",), primary_metric="ccc")
    found = cluster_intervals(va, x[:, None], y[:, None], np.arange(200), settings=settings)

    def ccc(a, b):
        return 2 * np.cov(a, b, ddof=0)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)

    reference = stats.bootstrap((x, y), ccc, paired=True, vectorized=False, n_resamples=20000,
                                method="percentile", rng=np.random.default_rng(7))
    assert found.low["ccc"] == pytest.approx(reference.confidence_interval.low, abs=0.008)
    assert found.high["ccc"] == pytest.approx(reference.confidence_interval.high, abs=0.008)


def test_clusters_widen_the_interval_over_the_rowwise_one():
    """Rows of a cluster share a subject effect: resampling clusters gives a wider interval than
    treating every row as independent (which would be the mistake)."""
    y, scores, mask, clusters = synthetic(INTENSITY, 20, 40, seed=4)
    by_cluster = cluster_intervals(INTENSITY, y, scores, clusters, mask=mask)
    by_row = cluster_intervals(INTENSITY, y, scores, np.arange(len(y)), mask=mask)
    assert by_cluster.high["icc"] - by_cluster.low["icc"] > 1.5 * (by_row.high["icc"] - by_row.low["icc"])


def test_determinism_and_seed():
    y, scores, mask, clusters = synthetic(AU, 12, 10)
    first = cluster_intervals(AU, y, scores, clusters, mask=mask, settings=BootstrapSettings(resamples=300, seed=1))
    again = cluster_intervals(AU, y, scores, clusters, mask=mask, settings=BootstrapSettings(resamples=300, seed=1))
    other = cluster_intervals(AU, y, scores, clusters, mask=mask, settings=BootstrapSettings(resamples=300, seed=2))
    assert first.low == again.low and first.high == again.high
    assert first.low != other.low


def test_too_few_clusters_give_a_note_and_no_interval():
    y, scores, mask, clusters = synthetic(AU, 9, 10)
    found = cluster_intervals(AU, y, scores, clusters, mask=mask)
    assert found.low == {} and found.high == {}
    assert found.note == ("no interval: 9 independent cluster(s) in the test set, fewer than the 10 an honest "
                          "interval needs")
    assert found.to_record()["intervals"] == {}
    assert found.values["f1"] == pytest.approx(score_task(AU, y, scores, mask=mask)["f1"])


def test_folds_are_resampled_within_themselves_and_averaged():
    """Two folds of 9 clusters: each alone too few, together 18; the point value is the fold mean and
    each fold's replicates are the ones it draws alone (SeedSequence([seed, i]))."""
    folds = [cluster_sums(AU, *synthetic(AU, 9, 10, seed=s)[:2], synthetic(AU, 9, 10, seed=s)[3],
                          mask=synthetic(AU, 9, 10, seed=s)[2]) for s in (1, 2)]
    combined = fold_intervals(folds, BootstrapSettings(resamples=500))
    assert combined.n_clusters == 18 and combined.note is None
    single = [f.evaluate(np.ones((1, 9)))["f1"][0] for f in folds]
    assert combined.values["f1"] == pytest.approx(np.mean(single))
    rng = [np.random.default_rng(np.random.SeedSequence([0, i])) for i in (0, 1)]
    replicates = np.mean([f.evaluate(r.multinomial(9, np.full(9, 1 / 9), size=500).astype(float))["f1"]
                          for f, r in zip(folds, rng)], axis=0)
    assert combined.low["f1"] == pytest.approx(np.percentile(replicates, 2.5))


def exact_permutation_p(task, key, y, scores_a, scores_b, mask, clusters):
    """The two-sided permutation p-value by enumerating every swap of clusters, scored by score_task."""
    names = np.unique(clusters)

    def difference(a, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return score_task(task, y, a, mask=mask)[key] - score_task(task, y, b, mask=mask)[key]

    observed = difference(scores_a, scores_b)
    hits = 0
    patterns = list(itertools.product((False, True), repeat=len(names)))
    for pattern in patterns:
        swapped = np.isin(clusters, names[list(pattern)])
        a = np.where(swapped[:, None], scores_b, scores_a)
        b = np.where(swapped[:, None], scores_a, scores_b)
        hits += abs(difference(a, b)) >= abs(observed) - 1e-12
    return hits / len(patterns), observed


@pytest.mark.parametrize("task,key", [(AU, "f1"), (AU, "accuracy/au2"), (INTENSITY, "icc"), (EXPRESSION, "f1")])
def test_permutation_p_value_equals_enumeration(task, key):
    y, scores_a, mask, clusters = synthetic(task, 7, 6, seed=8, skill=1.5)
    _, scores_b, _, _ = synthetic(task, 7, 6, seed=9, skill=0.5)
    if task.kind == "expression":
        scores_a, scores_b = scores_a.copy(), scores_b.copy()
    a = [cluster_sums(task, y, scores_a, clusters, mask=mask)]
    b = [cluster_sums(task, y, scores_b, clusters, mask=mask)]
    found = paired_comparison(a, b, key)
    expected_p, expected_difference = exact_permutation_p(task, key, y, scores_a, scores_b, mask, clusters)
    assert found.exact and found.permutations == 2**7
    assert found.difference == pytest.approx(expected_difference)
    assert found.p_value == pytest.approx(expected_p)
    assert found.low is None and "7 independent cluster(s)" in found.note


def test_compare_tells_a_real_difference_from_none():
    """Cell A clearly better than B; cell C the same model as B on other noise: A-B is found at the
    5% level with an interval above 0, B-C is not and its interval holds 0."""
    y, better, mask, clusters = synthetic(AU, 30, 20, seed=10, skill=2.5)
    _, worse, _, _ = synthetic(AU, 30, 20, seed=11, skill=0.8)
    _, same, _, _ = synthetic(AU, 30, 20, seed=12, skill=0.8)
    fold = [cluster_sums(AU, y, s, clusters, mask=mask) for s in (better, worse, same)]
    real = paired_comparison([fold[0]], [fold[1]], "f1", permutations=2000)
    null = paired_comparison([fold[1]], [fold[2]], "f1", permutations=2000)
    assert real.p_value < 0.01 and real.low > 0
    assert null.p_value > 0.05 and null.low < 0 < null.high
    assert not real.exact and real.permutations == 2000


def test_holm_against_hand_computation():
    # sorted 0.01, 0.02, 0.04, 0.30 -> 4*0.01, 3*0.02, max(2*0.04, .06), max(1*0.30, .08)
    assert holm([0.30, 0.01, 0.04, 0.02]) == pytest.approx([0.30, 0.04, 0.08, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_a_metric_without_a_sums_form_is_resampled_through_score_task(monkeypatch):
    """A metric with no sums form (here CCC, its form removed) falls back to score_task on every
    resample, and its values still follow score_task on the drawn rows; a permutation test refuses it."""
    from affbench.scoring import cluster_statistics

    monkeypatch.delitem(cluster_statistics._LABEL_STATISTICS, "ccc")
    y, scores, mask, clusters = synthetic(INTENSITY, 6, 10)
    sums = cluster_sums(INTENSITY, y, scores, clusters, mask=mask)
    assert sums.generic == ["ccc"] and list(sums.sums) == ["icc"]
    weights = np.random.default_rng(2).multinomial(6, np.full(6, 1 / 6), size=4).astype(float)
    found = sums.evaluate(weights)
    for b, w in enumerate(weights):
        index = resampled_rows(clusters, w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = score_task(INTENSITY, y[index], scores[index], mask=mask[index])
        for key in ("ccc", "ccc/au1", "icc"):
            assert found[key][b] == pytest.approx(expected[key])
    with pytest.raises(ValueError, match="no per-cluster sums form"):
        paired_comparison([sums], [sums], "ccc")
