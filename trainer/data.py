"""tf.data input over the transformed shards, and which transformed features a feature set uses.

A split directory holds TFRecord shards of tf.Examples, either all gzip (``part-*.tfrecord.gz``) or all
uncompressed (``part-*.tfrecord``); each file's suffix says how it is read.

Everything about the inputs is derived: types and shapes from ``transformed_feature_spec()``,
vocabulary and bucket sizes from ``num_buckets_for_transformed_feature()``, which raw features a
transformed feature reads from the dataset's ``schemas`` module, which raw features are empty from
``OUT/manifest.json``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf_keras

import tensorflow as tf  # noqa: E402

from schemas import DatasetSchema, get_schema  # noqa: E402
from trainer.config import UsageError  # noqa: E402
from trainer.model import FeatureLayout  # noqa: E402

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
TFRECORD_PATTERN = "part-*.tfrecord*"  # both kinds of shard; see SHARD_COMPRESSION
SHARD_COMPRESSION = {".tfrecord.gz": "GZIP", ".tfrecord": ""}  # shard name suffix -> TFRecord compression
READ_CHUNK = 256  # records a reader thread hands over at a time


def split_pattern(data_dir: str, split: str, raw: bool = False) -> str:
    """Glob of one split's TFRecord shards, gzip or not (transformed, or raw with ``raw=True``)."""
    parts = (data_dir, "raw", split) if raw else (data_dir, split)
    return os.path.join(*parts, TFRECORD_PATTERN)


def shard_compression(path: str) -> str:
    """The TFRecord compression of one shard, by its name: "GZIP" for ``.tfrecord.gz``, "" for ``.tfrecord``."""
    for suffix, compression in SHARD_COMPRESSION.items():
        if path.endswith(suffix):
            return compression
    raise UsageError(f"{path} is not a TFRecord shard: its name must end in {' or '.join(SHARD_COMPRESSION)}")


def list_shards(file_pattern: str) -> tuple[list[str], list[str]]:
    """(the shards matching ``file_pattern`` in sorted order, the compression of each).

    FileNotFoundError when nothing matches; UsageError, naming the directory, when one directory
    holds both gzip and uncompressed shards (a split is written one way, so both kinds mean files
    of two different writes).
    """
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {file_pattern}")
    compressions = [shard_compression(f) for f in files]
    kinds: dict[str, set[str]] = {}
    for f, c in zip(files, compressions, strict=True):
        kinds.setdefault(os.path.dirname(f), set()).add(c)
    for directory, found in kinds.items():
        if len(found) > 1:
            raise UsageError(
                f"{directory} holds both gzip (part-*.tfrecord.gz) and uncompressed (part-*.tfrecord) shards; "
                "a split directory must hold one kind"
            )
    return files, compressions


def _shard_dataset(file_pattern: str, shuffle: bool = False, seed: int | None = None) -> tf.data.Dataset:
    """(file name, compression) pairs of the matching shards: sorted, or shuffled with ``seed``."""
    files, compressions = list_shards(file_pattern)
    ds = tf.data.Dataset.from_tensor_slices((files, compressions))
    return ds.shuffle(len(files), seed=seed) if shuffle else ds


def read_manifest(data_dir: str) -> dict:
    with tf.io.gfile.GFile(os.path.join(data_dir, "manifest.json")) as f:
        return json.load(f)


def transformed_sources(dataset: str) -> dict[str, tuple[str, ...]]:
    """Transformed feature name -> the raw features it reads, as the dataset's schema module declares."""
    module = importlib.import_module(f"schemas.{dataset}")
    return dict(module.TRANSFORMED_SOURCES)


@dataclasses.dataclass(frozen=True)
class FeatureSelection:
    """The transformed features one run feeds the model, and why the others are left out."""

    layout: FeatureLayout
    feature_set: str
    raw_features: tuple[str, ...]  # the feature set
    absent_raw_features: tuple[str, ...]  # in the set, but no value in the train split
    dropped_absent: tuple[str, ...]  # transformed features left out because they read an absent raw feature
    not_in_set: tuple[str, ...]  # transformed features reading raw features outside the set

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.layout.numeric + tuple(self.layout.categorical)

    def report(self) -> dict:
        return {
            "feature_set": self.feature_set,
            "raw_features": list(self.raw_features),
            "absent_raw_features": list(self.absent_raw_features),
            "dropped_absent": list(self.dropped_absent),
            "numeric": list(self.layout.numeric),
            "categorical": dict(self.layout.categorical),
            "not_in_feature_set": list(self.not_in_set),
        }


def select_features(
    schema: DatasetSchema,
    sources: dict[str, tuple[str, ...]],
    feature_spec: dict,
    num_buckets,
    feature_set: str | None,
    train_present: dict[str, int] | None,
) -> FeatureSelection:
    """Picks the transformed features of ``feature_set``: those all of whose raw sources are in it.

    ``num_buckets(name)`` gives an id feature's bucket count (the transform output's domain).
    ``train_present`` counts, per optional raw column, the train rows with a value; a raw feature
    with none is absent from the data, and the transformed features reading it are dropped (they
    would be constant) and reported.
    """
    set_name = feature_set or ("all" if "all" in schema.feature_sets else next(iter(schema.feature_sets)))
    if set_name not in schema.feature_sets:
        raise UsageError(f"unknown feature set {set_name!r}; {schema.name} has {sorted(schema.feature_sets)}")
    raw = tuple(schema.feature_sets[set_name])
    present = train_present or {}
    absent = tuple(
        n for n in raw if not schema.columns[n].required and present.get(n, 0) == 0
    )
    unknown = sorted(n for n in feature_spec if n != schema.label and n not in sources)
    if unknown:
        raise ValueError(
            f"transformed features {unknown} have no entry in schemas.{schema.name}.TRANSFORMED_SOURCES"
        )
    numeric, categorical, dropped, not_in_set = [], {}, [], []
    for name in sorted(n for n in feature_spec if n != schema.label):
        reads = sources[name]
        if not all(s in raw for s in reads):
            not_in_set.append(name)
            continue
        if any(s in absent for s in reads):
            dropped.append(name)
            continue
        spec = feature_spec[name]
        if not isinstance(spec, tf.io.FixedLenFeature) or tuple(spec.shape) != ():
            raise ValueError(f"transformed feature {name} is {spec}; the trainer takes scalar FixedLenFeatures")
        if spec.dtype == tf.float32:
            numeric.append(name)
        elif spec.dtype == tf.int64:
            categorical[name] = int(num_buckets(name))
        else:
            raise ValueError(f"transformed feature {name} has dtype {spec.dtype.name}; expected float32 or int64")
    if not numeric and not categorical:
        raise ValueError(f"feature set {set_name!r} selects no transformed feature")
    return FeatureSelection(
        layout=FeatureLayout(numeric=tuple(numeric), categorical=categorical),
        feature_set=set_name,
        raw_features=raw,
        absent_raw_features=absent,
        dropped_absent=tuple(dropped),
        not_in_set=tuple(not_in_set),
    )


def load_selection(tf_transform_output, manifest: dict, feature_set: str | None) -> FeatureSelection:
    schema = get_schema(manifest["dataset"])
    return select_features(
        schema,
        transformed_sources(schema.name),
        tf_transform_output.transformed_feature_spec(),
        tf_transform_output.num_buckets_for_transformed_feature,
        feature_set,
        manifest.get("present_values", {}).get("train", {}),
    )


def make_dataset(
    file_pattern: str,
    feature_spec: dict,
    label_key: str | None,
    batch_size: int,
    *,
    shuffle: bool = False,
    repeat: bool = False,
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of (features, label) parsed from the TFRecord shards of tf.Examples matching ``file_pattern``.

    Without ``shuffle`` the order is the sorted shard order, row by row, so two reads agree.
    ``label_key=None`` yields features only. The label becomes float32 [batch, 1], like the model's output.
    """
    files = _shard_dataset(file_pattern, shuffle=shuffle, seed=seed)
    # Shards are read in parallel in chunks of records, then unbatched: a parallel interleave hands
    # each element between threads, and per record that costs twice the whole read (bench/train.py).
    ds = files.interleave(
        lambda f, compression: tf.data.TFRecordDataset(f, compression_type=compression).batch(READ_CHUNK),
        cycle_length=tf.data.AUTOTUNE if shuffle else 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    ).unbatch()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)

    def parse(serialized):
        features = tf.io.parse_example(serialized, feature_spec)
        if label_key is None:
            return features
        label = features.pop(label_key)
        return features, tf.expand_dims(tf.cast(label, tf.float32), -1)

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # Few, unevenly sized shards: each worker reads everything and keeps its share of batches.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def input_spec(tf_transform_output, selection: FeatureSelection, label_key: str) -> dict:
    """The parse spec of the selected transformed features and the label."""
    spec = tf_transform_output.transformed_feature_spec()
    keep = set(selection.feature_names) | {label_key}
    return {k: v for k, v in spec.items() if k in keep}


def serialized_batches(file_pattern: str, batch_size: int) -> tf.data.Dataset:
    """Batches of serialized tf.Examples in sorted shard order (for the exported model)."""
    files = _shard_dataset(file_pattern)
    ds = files.interleave(
        lambda f, compression: tf.data.TFRecordDataset(f, compression_type=compression), cycle_length=1
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def label_mean(file_pattern: str, label_key: str, label_spec, max_batches: int = 200, batch_size: int = 1024) -> float:
    """Mean label over (up to ``max_batches`` batches of) a split: the output bias to start from."""
    ds = make_dataset(file_pattern, {label_key: label_spec}, None, batch_size).take(max_batches)
    total, count = 0.0, 0
    for batch in ds:
        values = tf.cast(batch[label_key], tf.float64)
        total += float(tf.reduce_sum(values))
        count += int(tf.size(values))
    if not count:
        raise ValueError(f"no rows match {file_pattern}")
    return total / count
