"""Evaluate an exported model against baselines on the same split, and write an offline HTML report.

    python -m trainer.evaluate --model_dir MODEL_DIR [--data_dir OUT] --report_dir REPORT
        [--threshold max_f1|precision:0.95|0.7] [--min_slice_size 30] [--grid_degrees 0.02]

MODEL_DIR is a trainer job dir (with metrics.json and model/) or the SavedModel itself. The data
dir defaults to the one the trainer wrote to MODEL_DIR/metrics.json (``config.data_dir``).

What is evaluated is exactly what serving serves: the SavedModel's ``serving_tf_example`` signature
on the raw tf.Examples of OUT/raw/test, read in shard order, the same order the baselines
(``trainer.baselines``, fitted on OUT/raw/train) read them in. The decision threshold for
classification is chosen on OUT/raw/valid (never on test), by the --threshold rule, for the model
and for every baseline alike.

Writes REPORT/index.html (no external CSS or JS), REPORT/*.png and REPORT/metrics.json.

The metric functions below are plain numpy (tests check them against scikit-learn):
  roc_auc            area under the ROC curve, ties counted half (the Mann-Whitney statistic)
  pr_auc             average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (no
                     interpolation; Keras's AUC(curve="PR") interpolates and reads a little higher)
  log_loss           mean negative log-likelihood, probabilities clipped to [1e-15, 1 - 1e-15]
  brier              mean squared error of the probability
  ece                expected calibration error over 10 equal-width bins
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf_keras

import numpy as np  # noqa: E402

logger = logging.getLogger(__name__)

CLASSIFICATION = "classification"
REGRESSION = "regression"
EPS = 1e-15


# ---------------------------------------------------------------- metrics (numpy)
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
def slice_keys(split, grid_degrees: float = 0.02) -> dict[str, np.ndarray]:
    """Slice name -> one string key per row: carrier, origin and hour (flights); hour and a
    pickup grid cell (taxi, cells of ``grid_degrees`` named by their south-west corner)."""
    from trainer.baselines import TIME_COLUMNS, hour_and_weekday

    c = split.columns
    hour, _ = hour_and_weekday(c[TIME_COLUMNS[split.dataset]]) if split.dataset in TIME_COLUMNS else (None, None)
    keys = {}
    if split.dataset == "flights":
        keys["carrier"] = c["carrier"].astype(str)
        keys["origin"] = c["origin"].astype(str)
        keys["hour of day"] = np.array([f"{h:02d}" for h in hour])
    elif split.dataset == "taxi":
        keys["hour of day"] = np.array([f"{h:02d}" for h in hour])
        lat = np.floor(c["pickup_latitude"] / grid_degrees) * grid_degrees
        lon = np.floor(c["pickup_longitude"] / grid_degrees) * grid_degrees
        keys["pickup cell"] = np.array([f"{a:.2f}N {-b:.2f}W" for a, b in zip(lat, lon, strict=True)])
    return keys


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


# ---------------------------------------------------------------- model and data
def resolve_model_dir(model_dir: str) -> tuple[str, dict | None]:
    """(the SavedModel dir, the trainer's metrics.json or None) for a job dir or a SavedModel dir."""
    import tensorflow as tf

    model_dir = model_dir.rstrip("/")
    if tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        saved, job = model_dir, os.path.dirname(model_dir)
    else:
        saved, job = os.path.join(model_dir, "model"), model_dir
        if not tf.io.gfile.exists(os.path.join(saved, "saved_model.pb")):
            raise FileNotFoundError(f"no SavedModel at {model_dir} or {saved}")
    metrics_path = os.path.join(job, "metrics.json")
    if tf.io.gfile.exists(metrics_path):
        with tf.io.gfile.GFile(metrics_path) as f:
            return saved, json.load(f)
    return saved, None


def data_dir_of(trainer_metrics: dict | None) -> str | None:
    """The trainer writes its --data_dir as metrics.json's config.data_dir."""
    return ((trainer_metrics or {}).get("config") or {}).get("data_dir")


def model_predictions(saved_model_dir: str, data_dir: str, split: str, task: str, batch_size: int = 1024) -> np.ndarray:
    """The SavedModel's ``serving_tf_example`` primary output over OUT/raw/``split``, in shard order."""
    from trainer import data, export

    return export.exported_predictions(saved_model_dir, data.split_pattern(data_dir, split, raw=True), task, batch_size)


@dataclasses.dataclass
class Scored:
    """One split with the labels and every scorer's predictions, in the same row order."""

    split: object  # baselines.RawSplit
    scores: dict[str, np.ndarray]


def score_splits(saved_model_dir: str | None, data_dir: str, task: str, splits=("valid", "test"),
                 seed: int = 42, baselines_list=None) -> tuple[dict[str, Scored], list]:
    """Fits the baselines on raw train (unless given) and scores the model and each on ``splits``."""
    from trainer import baselines

    if baselines_list is None:
        baselines_list = baselines.fit_baselines(baselines.read_raw(data_dir, "train"), task, seed)
    out = {}
    for split in splits:
        try:
            raw = baselines.read_raw(data_dir, split)
        except FileNotFoundError:
            continue
        if not len(raw):
            continue
        scores = {}
        if saved_model_dir:
            scores["model"] = model_predictions(saved_model_dir, data_dir, split, task).astype(np.float64)
            if scores["model"].shape[0] != len(raw):
                raise RuntimeError(f"{split}: {scores['model'].shape[0]} predictions for {len(raw)} raw rows")
        for b in baselines_list:
            scores[b.name] = np.asarray(b.predict(raw), dtype=np.float64)
        out[split] = Scored(raw, scores)
    return out, baselines_list


# ---------------------------------------------------------------- the evaluation
def evaluate(model_dir: str, report_dir: str, data_dir: str | None = None, threshold_rule: str = "max_f1",
             min_slice_size: int = 30, grid_degrees: float = 0.02, seed: int = 42) -> dict:
    """Scores model and baselines, computes metrics, curves and slices, and writes the report."""
    from trainer import data, report

    started = time.time()
    saved, trainer_metrics = resolve_model_dir(model_dir)
    data_dir = data_dir or data_dir_of(trainer_metrics)
    if not data_dir:
        raise ValueError(f"no --data_dir given and none in {model_dir}/metrics.json (config.data_dir)")
    dataset = data.read_manifest(data_dir)["dataset"]
    from schemas import get_schema

    scored, fitted = score_splits(saved, data_dir, get_schema(dataset).task, seed=seed)
    result = {
        "model_dir": model_dir,
        "saved_model": saved,
        "data_dir": data_dir,
        "signature": "serving_tf_example",
        "trainer": _trainer_summary(trainer_metrics),
        **assemble(dataset, scored, fitted, threshold_rule, min_slice_size, grid_degrees),
    }
    report.write_report(report_dir, result, scored["test"], scored.get("valid"))
    result["wall_seconds"] = round(time.time() - started, 1)
    report.write_json(os.path.join(report_dir, "metrics.json"), result)
    return result


def assemble(dataset: str, scored: dict[str, Scored], fitted: list, threshold_rule: str = "max_f1",
             min_slice_size: int = 30, grid_degrees: float = 0.02) -> dict:
    """Thresholds (chosen on valid), the metrics table on test and the slices, from scored splits."""
    from schemas import get_schema

    schema = get_schema(dataset)
    task = schema.task
    if "test" not in scored:
        raise ValueError("the test split is empty: nothing to evaluate")
    test = scored["test"]
    y = test.split.y
    names = list(test.scores)
    thresholds = {}
    if task == CLASSIFICATION:
        chooser = scored.get("valid", test)
        if "valid" not in scored:
            logger.warning("the valid split is empty: thresholds are chosen on test (optimistic)")
        for name in names:
            thresholds[name] = choose_threshold(chooser.split.y, chooser.scores[name], threshold_rule)
            if "valid" not in scored:
                thresholds[name]["how"] += " (valid empty: chosen on TEST)"
    at = {name: thresholds.get(name, {}).get("value", 0.5) for name in names}
    table = {name: metrics_for(task, y, test.scores[name], at[name]) for name in names}
    valid = scored.get("valid")
    valid_table = {name: metrics_for(task, valid.split.y, valid.scores[name], at[name]) for name in names} if valid else {}
    strong = fitted[-1].name if fitted else None
    slices = {
        slice_name: slice_table(task, key, y, test.scores, at.get("model", 0.5), min_slice_size, reference=strong)
        for slice_name, key in slice_keys(test.split, grid_degrees).items()
    }
    return {
        "dataset": schema.name,
        "task": task,
        "label": schema.label,
        "split": "test",
        "rows": {s: len(v.split) for s, v in scored.items()},
        "baselines": [{"name": b.name, "description": b.description, "params": b.params} for b in fitted],
        "threshold": thresholds,
        "metrics": table,
        "valid_metrics": valid_table,
        "primary_metric": PRIMARY[task][0],
        "slices": slices,
        "min_slice_size": min_slice_size,
    }


def _trainer_summary(m: dict | None) -> dict | None:
    if not m:
        return None
    return {
        "model": m.get("model"),
        "feature_set": (m.get("features") or {}).get("feature_set"),
        "config": {k: m.get("config", {}).get(k) for k in ("learning_rate", "hidden_units", "batch_size", "epochs",
                                                           "train_steps", "seed")},
        "epochs_run": m.get("epochs_run"),
        "best_epoch": m.get("best_epoch"),
        "test": m.get("test"),
        "wall_seconds": m.get("wall_seconds"),
    }


def format_table(result: dict) -> str:
    """A plain-text table of the model vs every baseline (printed at the end)."""
    task = result["task"]
    cols = (["roc_auc", "pr_auc", "log_loss", "brier", "accuracy@0.5", "threshold", "accuracy", "f1"]
            if task == CLASSIFICATION else ["rmse", "mae", "bias", "r2"])
    width = max(len(n) for n in result["metrics"]) + 2
    lines = [f"{'':<{width}}" + "".join(f"{c:>13}" for c in cols)]
    for name, m in result["metrics"].items():
        lines.append(f"{name:<{width}}" + "".join(f"{m[c]:>13.4f}" for c in cols))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="a trainer job dir (metrics.json, model/) or a SavedModel dir")
    p.add_argument("--data_dir", default=None, help="the preprocessing output (default: from MODEL_DIR/metrics.json)")
    p.add_argument("--report_dir", required=True)
    p.add_argument("--threshold", default="max_f1", help="max_f1 | precision:P | a number (classification)")
    p.add_argument("--min_slice_size", type=int, default=30)
    p.add_argument("--grid_degrees", type=float, default=0.02, help="taxi pickup cell size, degrees")
    p.add_argument("--seed", type=int, default=42, help="gradient boosting's random state (the trainer's default seed)")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # tfx-bsl's per-feature parse notes
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(args.model_dir, args.report_dir, args.data_dir, args.threshold, args.min_slice_size,
                          args.grid_degrees, args.seed)
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 2
    print(f"== {result['dataset']} {result['task']}: model vs baselines on test ({result['rows']['test']} rows) ==")
    print(format_table(result))
    print(f"report: {os.path.join(args.report_dir, 'index.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
