"""trainer.metrics: the numpy metrics against scikit-learn, threshold rules, slices; imported alone."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from trainer import metrics


# ---------------------------------------------------------------- metrics vs scikit-learn
@pytest.fixture(scope="module")
def scored_arrays():
    rng = np.random.default_rng(7)
    y = (rng.uniform(size=500) < 0.65).astype(float)
    p = np.clip(0.35 * y + rng.uniform(size=500) * 0.65, 0, 1)
    p = np.round(p, 2)  # ties, and values exactly on calibration bin edges
    p[:5] = [0.0, 1.0, 0.1, 0.5, 0.9]
    return y, p


def test_ranking_metrics_match_sklearn(scored_arrays):
    from sklearn import metrics as skm


    y, p = scored_arrays
    assert metrics.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert metrics.pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    curve = metrics.threshold_curve(y, p)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    assert math.isnan(metrics.roc_auc(np.ones(4), [0.1, 0.2, 0.3, 0.4]))  # one class: undefined


def test_probability_and_regression_metrics_match_sklearn(scored_arrays):
    from sklearn import metrics as skm


    y, p = scored_arrays
    q = np.clip(p, 0.01, 0.99)
    assert metrics.log_loss(y, q) == pytest.approx(skm.log_loss(y, q), rel=1e-12)
    assert metrics.brier(y, q) == pytest.approx(skm.brier_score_loss(y, q), rel=1e-12)
    rng = np.random.default_rng(3)
    fares = rng.gamma(2.0, 6.0, size=300)
    predicted = fares + rng.normal(0, 2.5, size=300)
    assert metrics.rmse(fares, predicted) == pytest.approx(math.sqrt(skm.mean_squared_error(fares, predicted)), rel=1e-12)
    assert metrics.mae(fares, predicted) == pytest.approx(skm.mean_absolute_error(fares, predicted), rel=1e-12)
    assert metrics.regression_metrics(fares, predicted)["r2"] == pytest.approx(skm.r2_score(fares, predicted), rel=1e-12)


@pytest.mark.parametrize("threshold", [0.0, 0.33, 0.5, 0.9, 1.0])
def test_confusion_at_threshold_matches_sklearn(scored_arrays, threshold):
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score


    y, p = scored_arrays
    predicted = (p >= threshold).astype(int)
    np.testing.assert_array_equal(metrics.confusion(y, p, threshold), confusion_matrix(y, predicted, labels=[0, 1]))
    m = metrics.classification_metrics(y, p, threshold)
    if predicted.any():
        assert m["precision"] == pytest.approx(precision_score(y, predicted))
        assert m["f1"] == pytest.approx(f1_score(y, predicted))
    assert m["recall"] == pytest.approx(recall_score(y, predicted))


def test_calibration_bins_match_sklearn(scored_arrays):
    from sklearn.calibration import calibration_curve


    y, p = scored_arrays
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    bins = metrics.calibration_bins(y, p, 10)
    np.testing.assert_allclose(bins["fraction_positive"], prob_true)
    np.testing.assert_allclose(bins["mean_predicted"], prob_pred)
    assert sum(bins["count"]) == len(y)
    # Perfectly calibrated bins have no calibration error.
    assert metrics.expected_calibration_error([0, 1, 1, 1], [0.75, 0.75, 0.75, 0.75]) == pytest.approx(0.0)


def test_threshold_rules(scored_arrays):
    from sklearn.metrics import f1_score, precision_score


    y, p = scored_arrays
    chosen = metrics.choose_threshold(y, p, "max_f1")["value"]
    best = max(f1_score(y, (p >= t).astype(int)) for t in np.unique(p))
    assert f1_score(y, (p >= chosen).astype(int)) == pytest.approx(best)
    target = metrics.choose_threshold(y, p, "precision:0.9")["value"]
    assert precision_score(y, (p >= target).astype(int)) >= 0.9
    lower = p[p < target]
    if lower.size:  # the next lower score would fall below the target precision
        assert precision_score(y, (p >= lower.max()).astype(int)) < 0.9
    assert metrics.choose_threshold(y, p, "0.7")["value"] == 0.7
    with pytest.raises(ValueError, match="threshold"):
        metrics.choose_threshold(y, p, "best")


def test_slices_are_worst_first_with_a_minimum_size():

    key = np.array(["a"] * 50 + ["b"] * 50 + ["tiny"] * 3)
    y = np.r_[np.full(50, 10.0), np.full(50, 10.0), np.full(3, 10.0)]
    model = np.r_[np.full(50, 11.0), np.full(50, 14.0), np.full(3, 100.0)]
    table = metrics.slice_table("regression", key, y, {"model": model, "mean": np.full(103, 10.0)}, 0.5, 10,
                           reference="mean")
    assert [r["slice"] for r in table["rows"]] == ["b", "a"]  # "tiny" is too small to list
    assert table["slices_below_min_size"] == 1
    assert table["rows"][0]["rmse"] == pytest.approx(4.0)
    assert table["rows"][0]["mean rmse"] == pytest.approx(0.0)


def test_metrics_import_neither_tensorflow_nor_another_module_of_ours():
    code = ("import sys, trainer.metrics; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'trainer', 'schemas')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "['trainer', 'trainer.metrics']"
