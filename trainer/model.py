"""tf_keras model builders: linear, dnn and wide_deep, for classification or regression. Pure: no I/O.

Inputs are transformed features: float numerics (z-scores, missing indicators) and int64 ids
(vocabularies, buckets, crosses, hour, weekday) whose bucket counts the caller reads from the
transform output. Every model ends in one ``logit`` layer (the bias, initialised to the label's
base rate) and, for classification, a ``probability`` sigmoid; regression outputs ``prediction``.
"""

from __future__ import annotations

import dataclasses
import math
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf_keras

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """The model's inputs: float features, and id features with their bucket counts."""

    numeric: tuple[str, ...]
    categorical: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Objective:
    """The validation metric that early stopping and hyperparameter tuning follow."""

    metric: str
    mode: str  # "max" | "min"

    @property
    def monitor(self) -> str:
        return f"val_{self.metric}"


def objective(task: str) -> Objective:
    return Objective("auc", "max") if task == CLASSIFICATION else Objective("rmse", "min")


@tf_keras.utils.register_keras_serializable(package="trainer")
class OutputBias(tf_keras.layers.Layer):
    """Sums [batch, k] partial logits into [batch, 1] and adds one bias, initialised to ``initial``.

    Outputs and labels keep Keras's [batch, 1] convention: per-example metrics (accuracy, MAE, log
    loss) reduce over the last axis, which on a [batch] output would weigh batches, not examples.
    """

    def __init__(self, initial: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial = float(initial)

    def build(self, input_shape):
        self.bias = self.add_weight(
            name="bias", shape=(), initializer=tf_keras.initializers.Constant(self.initial), trainable=True
        )
        super().build(input_shape)

    def call(self, inputs):
        return tf.reduce_sum(inputs, axis=-1, keepdims=True) + self.bias

    def get_config(self):
        return {**super().get_config(), "initial": self.initial}


def initial_bias(task: str, label_mean: float | None) -> float:
    """The output bias that predicts the base rate: log-odds for classification, the mean for regression."""
    if label_mean is None:
        return 0.0
    if task == CLASSIFICATION:
        p = min(max(label_mean, 1e-6), 1 - 1e-6)
        return math.log(p / (1 - p))
    return float(label_mean)


def _inputs(layout: FeatureLayout) -> dict:
    inputs = {n: tf_keras.Input(shape=(), name=n, dtype=tf.float32) for n in layout.numeric}
    inputs.update({n: tf_keras.Input(shape=(), name=n, dtype=tf.int64) for n in layout.categorical})
    return inputs


def _concat(tensors: list, name: str):
    return tensors[0] if len(tensors) == 1 else tf_keras.layers.Concatenate(name=name)(tensors)


def _numeric_block(inputs: dict, layout: FeatureLayout, prefix: str = ""):
    columns = [tf_keras.layers.Reshape((1,), name=f"{prefix}{n}_column")(inputs[n]) for n in layout.numeric]
    return _concat(columns, f"{prefix}numerics") if columns else None


def _one_hot_linear(inputs: dict, layout: FeatureLayout, max_wide_buckets: int) -> list:
    """One weight per id (an embedding of width 1 is a one-hot linear term); large domains are hashed.

    Linear weights start at zero, so a linear model starts by predicting the base rate.
    """
    terms = []
    for name, buckets in layout.categorical.items():
        ids = inputs[name]
        if buckets > max_wide_buckets:
            ids = tf_keras.layers.Hashing(max_wide_buckets, name=f"{name}_hashed")(ids)
            buckets = max_wide_buckets
        terms.append(tf_keras.layers.Embedding(buckets, 1, embeddings_initializer="zeros", name=f"{name}_wide")(ids))
    return terms


def _linear_logits(inputs: dict, layout: FeatureLayout, max_wide_buckets: int, use_numeric: bool = True) -> list:
    terms = []
    numerics = _numeric_block(inputs, layout, prefix="wide_") if use_numeric else None
    if numerics is not None:
        terms.append(
            tf_keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="linear_numeric")(numerics)
        )
    return terms + _one_hot_linear(inputs, layout, max_wide_buckets)


def _deep_logit(inputs: dict, layout: FeatureLayout, hidden_units, embedding_dim: int, dropout: float):
    parts = []
    numerics = _numeric_block(inputs, layout)
    if numerics is not None:
        parts.append(numerics)
    for name, buckets in layout.categorical.items():
        dim = min(embedding_dim, buckets)
        parts.append(tf_keras.layers.Embedding(buckets, dim, name=f"{name}_embedding")(inputs[name]))
    x = _concat(parts, "deep_inputs")
    for i, units in enumerate(hidden_units):
        x = tf_keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(x)
        if dropout:
            x = tf_keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    return tf_keras.layers.Dense(1, use_bias=False, name="deep_logit")(x)


def build_model(
    kind: str,
    layout: FeatureLayout,
    task: str,
    *,
    hidden_units=(64, 32),
    embedding_dim: int = 8,
    dropout: float = 0.0,
    max_wide_buckets: int = 100_000,
    output_bias: float = 0.0,
) -> tf_keras.Model:
    """An uncompiled model taking a dict of transformed features.

    linear: logistic/linear regression on the numerics and one-hot ids.
    dnn: numerics and id embeddings through ``hidden_units``.
    wide_deep: a one-hot linear part on the ids and crosses (on the numerics when the feature set has
    no ids) plus the dnn; their logits add up.
    """
    if task not in (CLASSIFICATION, REGRESSION):
        raise ValueError(f"unknown task {task!r}")
    if not layout.numeric and not layout.categorical:
        raise ValueError("the model needs at least one feature")
    inputs = _inputs(layout)
    if kind == "linear":
        terms = _linear_logits(inputs, layout, max_wide_buckets)
    elif kind == "dnn":
        terms = [_deep_logit(inputs, layout, hidden_units, embedding_dim, dropout)]
    elif kind == "wide_deep":
        wide = _linear_logits(inputs, layout, max_wide_buckets, use_numeric=not layout.categorical)
        terms = wide + [_deep_logit(inputs, layout, hidden_units, embedding_dim, dropout)]
    else:
        raise ValueError(f"unknown model {kind!r}")
    summed = _concat(terms, "partial_logits")
    if task == CLASSIFICATION:
        logit = OutputBias(output_bias, name="logit")(summed)
        output = tf_keras.layers.Activation("sigmoid", name="probability")(logit)
    else:
        output = OutputBias(output_bias, name="prediction")(summed)
    return tf_keras.Model(inputs=inputs, outputs=output, name=f"{kind}_{task}")


def metrics(task: str) -> list:
    """Validation/test metrics; for classification all are on the predicted probability."""
    if task == CLASSIFICATION:
        return [
            tf_keras.metrics.BinaryAccuracy(name="accuracy"),
            tf_keras.metrics.Precision(name="precision"),
            tf_keras.metrics.Recall(name="recall"),
            tf_keras.metrics.AUC(curve="ROC", num_thresholds=1000, name="auc"),
            tf_keras.metrics.AUC(curve="PR", num_thresholds=1000, name="auc_pr"),
            tf_keras.metrics.BinaryCrossentropy(name="log_loss"),
            tf_keras.metrics.RootMeanSquaredError(name="rmse"),
        ]
    return [
        tf_keras.metrics.RootMeanSquaredError(name="rmse"),
        tf_keras.metrics.MeanAbsoluteError(name="mae"),
    ]


def compile_model(model: tf_keras.Model, task: str, learning_rate: float) -> tf_keras.Model:
    loss = tf_keras.losses.BinaryCrossentropy() if task == CLASSIFICATION else tf_keras.losses.MeanSquaredError()
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics(task))
    return model


def with_named_outputs(model: tf_keras.Model, task: str) -> tf_keras.Model:
    """The same layers and weights, returning a dict of [batch, 1]: {probability, logit} or {prediction}."""
    if task == CLASSIFICATION:
        outputs = {"probability": model.get_layer("probability").output, "logit": model.get_layer("logit").output}
    else:
        outputs = {"prediction": model.get_layer("prediction").output}
    return tf_keras.Model(inputs=model.inputs, outputs=outputs, name=f"{model.name}_named")
