"""Metrics of scores against labels, in plain numpy (tests check them against scikit-learn).

  roc_auc            area under the ROC curve, ties counted half (the Mann-Whitney statistic)
  pr_auc             average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (no
                     interpolation; Keras's AUC(curve="PR") interpolates and reads a little higher)
  log_loss           mean negative log-likelihood, probabilities clipped to [1e-15, 1 - 1e-15]
  brier              mean squared error of the probability
  ece                expected calibration error over 10 equal-width bins

Also the threshold curve (counts at every distinct score), the decision-threshold rules, the metric
sets of a task and the per-slice table. Nothing here imports TensorFlow or another module of ours.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CLASSIFICATION = "classification"
REGRESSION = "regression"
EPS = 1e-15


def _arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} predictions")
    return y, p


@dataclasses.dataclass(frozen=True)
class ThresholdCurve:
    """Counts at every distinct score, thresholds descending; "positive" means score >= threshold.

    Row 0 is the threshold +inf (nothing predicted positive).
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int

    @property
    def fn(self) -> np.ndarray:
        return self.positives - self.tp

    @property
    def tn(self) -> np.ndarray:
        return self.negatives - self.fp

    @property
    def tpr(self) -> np.ndarray:
        return self.tp / self.positives if self.positives else np.zeros_like(self.tp)

    recall = tpr

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.negatives if self.negatives else np.zeros_like(self.fp)

    @property
    def precision(self) -> np.ndarray:
        predicted = self.tp + self.fp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(predicted > 0, self.tp / np.maximum(predicted, 1), 1.0)

    @property
    def accuracy(self) -> np.ndarray:
        return (self.tp + self.tn) / max(self.positives + self.negatives, 1)

    @property
    def f1(self) -> np.ndarray:
        denominator = 2 * self.tp + self.fp + self.fn
        return np.where(denominator > 0, 2 * self.tp / np.maximum(denominator, 1), 0.0)


def threshold_curve(y, p) -> ThresholdCurve:
    y, p = _arrays(y, p)
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last = np.r_[np.nonzero(np.diff(p_sorted))[0], p_sorted.size - 1] if p_sorted.size else np.zeros([0], int)
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    return ThresholdCurve(
        thresholds=np.r_[np.inf, p_sorted[last]],
        tp=np.r_[0.0, tp],
        fp=np.r_[0.0, fp],
        positives=int(y.sum()),
        negatives=int(y.size - y.sum()),
    )


def roc_auc(y, p) -> float:
    curve = threshold_curve(y, p)
    if not curve.positives or not curve.negatives:
        return math.nan
    return float(np.trapezoid(curve.tpr, curve.fpr))


def pr_auc(y, p) -> float:
    """Average precision (scikit-learn's ``average_precision_score``)."""
    curve = threshold_curve(y, p)
    if not curve.positives:
        return math.nan
    return float(np.sum(np.diff(curve.recall) * curve.precision[1:]))


def log_loss(y, p) -> float:
    y, p = _arrays(y, p)
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(y, p) -> float:
    y, p = _arrays(y, p)
    return float(np.mean((p - y) ** 2))


def rmse(y, yhat) -> float:
    y, yhat = _arrays(y, yhat)
    return float(np.sqrt(np.mean((yhat - y) ** 2)))


def mae(y, yhat) -> float:
    y, yhat = _arrays(y, yhat)
    return float(np.mean(np.abs(yhat - y)))


def accuracy_at(y, p, threshold: float) -> float:
    y, p = _arrays(y, p)
    return float(np.mean((p >= threshold) == (y == 1))) if y.size else math.nan


def confusion(y, p, threshold: float) -> np.ndarray:
    """[[tn, fp], [fn, tp]] with "positive" = p >= threshold (scikit-learn's layout)."""
    y, p = _arrays(y, p)
    yes = p >= threshold
    pos = y == 1
    return np.array([[np.sum(~pos & ~yes), np.sum(~pos & yes)], [np.sum(pos & ~yes), np.sum(pos & yes)]], dtype=np.int64)


def calibration_bins(y, p, n_bins: int = 10) -> dict:
    """Equal-width bins on [0, 1] (scikit-learn's ``calibration_curve`` binning), empty bins dropped.

    Returns mean predicted probability, observed positive rate and count per non-empty bin.
    """
    y, p = _arrays(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(ids, minlength=n_bins)
    sums_p = np.bincount(ids, weights=p, minlength=n_bins)
    sums_y = np.bincount(ids, weights=y, minlength=n_bins)
    keep = counts > 0
    return {
        "edges": edges.tolist(),
        "bin": np.nonzero(keep)[0].tolist(),
        "mean_predicted": (sums_p[keep] / counts[keep]).tolist(),
        "fraction_positive": (sums_y[keep] / counts[keep]).tolist(),
        "count": counts[keep].astype(int).tolist(),
    }


def expected_calibration_error(y, p, n_bins: int = 10) -> float:
    bins = calibration_bins(y, p, n_bins)
    n = max(sum(bins["count"]), 1)
    return float(sum(c / n * abs(f - m) for c, f, m in zip(bins["count"], bins["fraction_positive"],
                                                             bins["mean_predicted"], strict=True)))


# ---------------------------------------------------------------- thresholds
def choose_threshold(y, p, rule: str = "max_f1") -> dict:
    """The decision threshold by ``rule``, on the data given (the valid split):

    max_f1           the threshold with the highest F1 of the positive class
    precision:0.95   the lowest threshold whose precision is at least 0.95 (the most recall at it)
    0.7              a fixed threshold (the DSG book cancels a meeting below 70% on time)
    """
    curve = threshold_curve(y, p)
    finite = np.isfinite(curve.thresholds)
    if rule == "max_f1":
        f1 = np.where(finite, curve.f1, -1.0)
        i = int(np.argmax(f1))
        value = float(curve.thresholds[i]) if finite.any() else 0.5
        how = "maximum F1 of the positive class on the valid split"
    elif rule.startswith("precision:"):
        target = float(rule.split(":", 1)[1])
        ok = np.nonzero(finite & (curve.precision >= target))[0]
        if ok.size:
            value = float(curve.thresholds[ok[-1]])
            how = f"lowest threshold with precision >= {target:g} on the valid split"
        else:
            value = float(np.max(p)) if np.size(p) else 0.5
            how = f"no threshold reaches precision {target:g} on the valid split: the highest score"
    else:
        try:
            value = float(rule)
        except ValueError:
            raise ValueError(f"--threshold must be max_f1, precision:P or a number, not {rule!r}") from None
        how = "fixed"
    return {"rule": rule, "value": value, "how": how}


# ---------------------------------------------------------------- metric sets
def classification_metrics(y, p, threshold: float) -> dict:
    y, p = _arrays(y, p)
    cm = confusion(y, p, threshold)
    (tn, fp), (fn, tp) = cm
    n = max(y.size, 1)
    return {
        "rows": int(y.size),
        "roc_auc": roc_auc(y, p),
        "pr_auc": pr_auc(y, p),
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p),
        "accuracy@0.5": accuracy_at(y, p, 0.5),
        "threshold": float(threshold),
        "accuracy": float((tp + tn) / n),
        "precision": float(tp / (tp + fp)) if tp + fp else math.nan,
        "recall": float(tp / (tp + fn)) if tp + fn else math.nan,
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else math.nan,
        "confusion": cm.tolist(),
    }


def regression_metrics(y, yhat) -> dict:
    y, yhat = _arrays(y, yhat)
    total = np.sum((y - y.mean()) ** 2) if y.size else 0.0
    return {
        "rows": int(y.size),
        "rmse": rmse(y, yhat),
        "mae": mae(y, yhat),
        "bias": float(np.mean(yhat - y)),  # mean of predicted - actual
        "r2": float(1 - np.sum((y - yhat) ** 2) / total) if total else math.nan,
    }


def metrics_for(task: str, y, p, threshold: float = 0.5) -> dict:
    return classification_metrics(y, p, threshold) if task == CLASSIFICATION else regression_metrics(y, p)


PRIMARY = {CLASSIFICATION: ("roc_auc", "max"), REGRESSION: ("rmse", "min")}
# The per-slice loss: slices are sorted worst (highest) first.
SLICE_LOSS = {CLASSIFICATION: "log_loss", REGRESSION: "rmse"}


# ---------------------------------------------------------------- slices
def slice_table(task: str, key: np.ndarray, y, scores: dict[str, np.ndarray], threshold: float,
                min_size: int, model: str = "model", reference: str | None = None) -> dict:
    """Metrics of ``scores[model]`` per value of ``key`` (slices of at least ``min_size`` rows), worst first.

    ``reference`` (a baseline's name) adds its loss on the same slice for comparison.
    """
    y = np.asarray(y, dtype=np.float64)
    loss_name = SLICE_LOSS[task]
    rows, small = [], 0
    values, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    for i, value in enumerate(values):
        if counts[i] < min_size:
            small += 1
            continue
        mask = inverse == i
        ys, ps = y[mask], scores[model][mask]
        if task == CLASSIFICATION:
            row = {
                "slice": str(value), "rows": int(counts[i]), "positive_rate": float(ys.mean()),
                "mean_predicted": float(ps.mean()), "log_loss": log_loss(ys, ps),
                "accuracy": float(np.mean((ps >= threshold) == (ys == 1))), "roc_auc": roc_auc(ys, ps),
            }
        else:
            row = {
                "slice": str(value), "rows": int(counts[i]), "mean_actual": float(ys.mean()),
                "rmse": rmse(ys, ps), "mae": mae(ys, ps), "bias": float(np.mean(ps - ys)),
            }
        if reference:
            ref = scores[reference][mask]
            row[f"{reference} {loss_name}"] = log_loss(ys, ref) if task == CLASSIFICATION else rmse(ys, ref)
        rows.append(row)
    rows.sort(key=lambda r: (-r[loss_name], r["slice"]))
    return {"loss": loss_name, "min_size": min_size, "slices_below_min_size": small, "rows": rows}
