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

Writes REPORT/index.html (no external CSS or JS), REPORT/*.png and REPORT/metrics.json. The metrics
themselves are ``trainer.metrics`` (plain numpy); the figures and the page are ``trainer.report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf_keras
if __name__ == "__main__":  # a command-line run: TensorFlow's C++ INFO notes off, unless the user chose a level
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from schemas import get_schema  # noqa: E402
from trainer import baselines, data, export, report  # noqa: E402
from trainer.baselines import TIME_COLUMNS, hour_and_weekday  # noqa: E402
from trainer.config import configure_logging  # noqa: E402
from trainer.metrics import CLASSIFICATION, PRIMARY, choose_threshold, metrics_for, slice_table  # noqa: E402

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- slices
def slice_keys(split, grid_degrees: float = 0.02) -> dict[str, np.ndarray]:
    """Slice name -> one string key per row: carrier, origin and hour (flights); hour and a
    pickup grid cell (taxi, cells of ``grid_degrees`` named by their south-west corner)."""
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


# ---------------------------------------------------------------- model and data
def resolve_model_dir(model_dir: str) -> tuple[str, dict | None]:
    """(the SavedModel dir, the trainer's metrics.json or None) for a job dir or a SavedModel dir."""
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
    return export.exported_predictions(saved_model_dir, data.split_pattern(data_dir, split, raw=True), task, batch_size)


@dataclasses.dataclass
class Scored:
    """One split with the labels and every scorer's predictions, in the same row order."""

    split: object  # baselines.RawSplit
    scores: dict[str, np.ndarray]


def score_splits(saved_model_dir: str | None, data_dir: str, task: str, splits=("valid", "test"),
                 seed: int = 42, baselines_list=None) -> tuple[dict[str, Scored], list]:
    """Fits the baselines on raw train (unless given) and scores the model and each on ``splits``."""
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
    started = time.time()
    saved, trainer_metrics = resolve_model_dir(model_dir)
    data_dir = data_dir or data_dir_of(trainer_metrics)
    if not data_dir:
        raise ValueError(f"no --data_dir given and none in {model_dir}/metrics.json (config.data_dir)")
    dataset = data.read_manifest(data_dir)["dataset"]
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
    configure_logging()
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
