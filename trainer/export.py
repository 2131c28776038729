"""The exported SavedModel: the transform graph plus the model, with signatures on RAW inputs.

Signatures (every output a dict):
  serving_default      one [None] tensor per raw feature (label excluded); for an optional raw
                       feature NaN (floats) or "" (strings) means missing (integers have no
                       missing marker: every value given is present)
  serving_tf_example   examples: [None] serialized raw tf.Examples
  transform_features   examples: [None] serialized raw tf.Examples -> the transformed features
Predictions are {"probability", "logit"} for classification and {"prediction"} for regression.
The vocabularies are assets of the SavedModel, so it loads with ``tf.saved_model.load`` alone,
without tensorflow_transform and after the preprocessing output is gone.
"""

from __future__ import annotations

import json
import logging
import os
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf_keras

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer import data  # noqa: E402
from trainer.model import CLASSIFICATION, with_named_outputs  # noqa: E402

logger = logging.getLogger(__name__)

EXAMPLES = "examples"


def primary_output(task: str) -> str:
    return "probability" if task == CLASSIFICATION else "prediction"


def serving_input_spec(raw_spec: dict) -> dict:
    """One dense [None] tensor per raw feature, whatever its parse spec."""
    return {name: tf.TensorSpec([None], spec.dtype, name=name) for name, spec in raw_spec.items()}


def dense_to_raw(features: dict, raw_spec: dict) -> dict:
    """Dense serving tensors -> what parsing raw tf.Examples gives: VarLen features become sparse.

    A missing value (NaN for floats, "" for strings) becomes an absent entry, exactly as an
    optional feature without a value in a tf.Example.
    """
    out = {}
    for name, spec in raw_spec.items():
        x = features[name]
        if not isinstance(spec, tf.io.VarLenFeature):
            out[name] = x
            continue
        if x.dtype.is_floating:
            present = tf.logical_not(tf.math.is_nan(x))
        elif x.dtype == tf.string:
            present = tf.strings.length(x) > 0
        else:  # integers have no missing marker: every value is present
            present = tf.ones_like(x, dtype=tf.bool)
        rows = tf.where(present)
        out[name] = tf.sparse.SparseTensor(
            indices=tf.concat([rows, tf.zeros_like(rows)], axis=1),
            values=tf.boolean_mask(x, present),
            dense_shape=tf.stack([tf.shape(x, out_type=tf.int64)[0], tf.constant(1, tf.int64)]),
        )
    return out


class _Exportable(tf.Module):
    """Holds the model and the transform layer so that both are tracked (weights and vocabulary assets)."""

    def __init__(self, model, tft_layer, raw_spec: dict, feature_names):
        super().__init__(name="exported")
        self.model = model
        self.tft_layer = tft_layer
        self._raw_spec = raw_spec
        self._feature_names = tuple(feature_names)

    def _predict_transformed(self, transformed: dict) -> dict:
        inputs = {n: transformed[n] for n in self._feature_names}
        return {k: tf.squeeze(v, axis=-1) for k, v in self.model(inputs, training=False).items()}

    def signatures(self) -> dict:
        raw_spec = self._raw_spec

        @tf.function(input_signature=[serving_input_spec(raw_spec)])
        def serve_raw(features):
            return self._predict_transformed(self.tft_layer(dense_to_raw(features, raw_spec)))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES)])
        def serve_tf_example(examples):
            return self._predict_transformed(self.tft_layer(tf.io.parse_example(examples, raw_spec)))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES)])
        def transform_features(examples):
            transformed = self.tft_layer(tf.io.parse_example(examples, raw_spec))
            return {k: v for k, v in transformed.items() if isinstance(v, tf.Tensor)}

        return {
            "serving_default": serve_raw.get_concrete_function(),
            "serving_tf_example": serve_tf_example.get_concrete_function(),
            "transform_features": transform_features.get_concrete_function(),
        }


def serving_feature_spec(tf_transform_output, label_key: str) -> dict:
    """The raw parse spec minus the label: what a request carries."""
    spec = dict(tf_transform_output.raw_feature_spec())
    spec.pop(label_key, None)
    return spec


def resolve_export_dir(model_dir: str) -> str:
    """The SavedModel to serve from a job dir: itself, its stable ``model/`` copy, or its newest export."""
    for candidate in (model_dir, os.path.join(model_dir, "model")):
        if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")):
            return candidate
    exports = sorted(tf.io.gfile.glob(os.path.join(model_dir, "export", "*", "saved_model.pb")))
    if not exports:
        raise FileNotFoundError(f"{model_dir}: no SavedModel (saved_model.pb) in it, its model/ or export/*/")
    return os.path.dirname(exports[-1])


def new_export_dir(export_root: str) -> str:
    """export_root/<unix seconds>, one past the newest when two exports share a second."""
    stamp = int(time.time())
    while tf.io.gfile.exists(os.path.join(export_root, str(stamp))):
        stamp += 1
    return os.path.join(export_root, str(stamp))


def save(model, tf_transform_output, feature_names, task: str, label_key: str, export_dir: str,
         info: dict | None = None) -> str:
    """Writes the SavedModel to ``export_dir`` and returns it; ``info`` goes into serving.json too."""
    module = _Exportable(
        with_named_outputs(model, task),
        tf_transform_output.transform_features_layer(),
        serving_feature_spec(tf_transform_output, label_key),
        feature_names,
    )
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    write_serving_info(export_dir, serving_feature_spec(tf_transform_output, label_key), task, label_key, info)
    logger.info("exported the model with its transform to %s", export_dir)
    return export_dir


SERVING_INFO = os.path.join("assets.extra", "serving.json")


def write_serving_info(export_dir: str, raw_spec: dict, task: str, label_key: str, extra: dict | None = None) -> None:
    """assets.extra/serving.json (TF Serving's place for extra files): which raw inputs may be missing,
    and ``extra`` (the dataset, the preprocessing run's window length).

    Servers read it to accept a request that leaves an optional feature out and to fill the windowed
    features as preprocessing computed them; nothing else needs it.
    """
    info = {
        **(extra or {}),
        "task": task,
        "label": label_key,
        "outputs": [primary_output(task)] + (["logit"] if task == CLASSIFICATION else []),
        "required_features": sorted(n for n, s in raw_spec.items() if not isinstance(s, tf.io.VarLenFeature)),
        "optional_features": sorted(n for n, s in raw_spec.items() if isinstance(s, tf.io.VarLenFeature)),
    }
    tf.io.gfile.makedirs(os.path.join(export_dir, "assets.extra"))
    with tf.io.gfile.GFile(os.path.join(export_dir, SERVING_INFO), "w") as f:
        f.write(json.dumps(info, indent=2, sort_keys=True))


def copy_tree(src: str, dst: str) -> None:
    """Replaces ``dst`` with a copy of ``src`` (local or gs://)."""
    if tf.io.gfile.exists(dst):
        tf.io.gfile.rmtree(dst)
    for dirpath, _dirs, files in tf.io.gfile.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else os.path.join(dst, rel)  # GCS keeps a literal "./" in object names
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(target, name), overwrite=True)


def in_memory_predictions(model, dataset, task: str) -> np.ndarray:
    """The model's primary output over (features, label) batches, called eagerly batch by batch."""
    key = primary_output(task)
    named = with_named_outputs(model, task)
    parts = [named(features, training=False)[key].numpy()[:, 0] for features, _label in dataset]
    return np.concatenate(parts) if parts else np.zeros([0], np.float32)


def exported_predictions(export_dir: str, raw_pattern: str, task: str, batch_size: int) -> np.ndarray:
    """The exported model's ``serving_tf_example`` output over raw tf.Examples."""
    loaded = tf.saved_model.load(export_dir)
    serve = loaded.signatures["serving_tf_example"]
    key = primary_output(task)
    parts = [serve(**{EXAMPLES: batch})[key].numpy() for batch in data.serialized_batches(raw_pattern, batch_size)]
    return np.concatenate(parts) if parts else np.zeros([0], np.float32)


def compare_predictions(in_memory: np.ndarray, exported: np.ndarray, tolerance: float) -> dict:
    """Max |difference|, row by row when the two reads line up, else of the sorted predictions.

    The raw and the transformed shards are written by separate sinks, so their row order may
    differ; sorting is order-free and can only shrink the difference, so a pass here is necessary
    for a skew-free export, and row-order agreement is reported when it holds.
    """
    if in_memory.shape != exported.shape:
        return {"rows": int(in_memory.size), "rows_exported": int(exported.size), "max_abs_diff": None,
                "method": "row counts differ", "tolerance": tolerance, "passed": False}
    if not in_memory.size:
        return {"rows": 0, "max_abs_diff": 0.0, "method": "no rows", "tolerance": tolerance, "passed": True}
    in_order = float(np.max(np.abs(in_memory.astype(np.float64) - exported.astype(np.float64))))
    if in_order <= tolerance:
        diff, method = in_order, "row order"
    else:
        diff = float(np.max(np.abs(np.sort(in_memory.astype(np.float64)) - np.sort(exported.astype(np.float64)))))
        method = "sorted predictions"
    return {
        "rows": int(in_memory.size),
        "max_abs_diff": diff,
        "method": method,
        "tolerance": tolerance,
        "passed": bool(np.isfinite(diff) and diff <= tolerance),
    }
