"""Train a tf_keras model on a preprocessing output directory, export it with its transform, check skew.

Locally:
    python -m trainer.task --data_dir /tmp/flights --job_dir /tmp/flights_model --model wide_deep
    python -m trainer.task --data_dir /tmp/flights --job_dir /tmp/m --model linear --feature_set ch7 --train_steps 2000

On Vertex AI (custom job; AIP_MODEL_DIR, AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR and, with
several workers, TF_CONFIG are set by the service; run_vertex.sh builds and submits such a job):
    gcloud ai custom-jobs create --region R --display-name flights \
        --worker-pool-spec=machine-type=n1-standard-8,replica-count=2,executor-image-uri=IMAGE,python-module=trainer.task \
        --args=--data_dir=gs://BUCKET/flights,--job-dir=gs://BUCKET/flights_model,--model=wide_deep

The dataset is read from OUT/manifest.json. Writes under --job_dir: checkpoints/ (each epoch),
backup/ (BackupAndRestore: a killed job resumes), logs/ (TensorBoard), export/<timestamp>/ and
model/ (the SavedModel, see trainer.export), metrics.json and model_summary.txt (the layers). The
INFO log says what a user needs (the data, one line per epoch, where the model went) and the run
ends with a one-screen summary on stdout. The run fails (exit 1) when the exported
model's predictions on the raw test examples differ from the in-memory model's on the transformed
ones by more than --skew_tolerance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf_keras
if __name__ == "__main__":  # a command-line run: TensorFlow's C++ INFO notes off, unless the user chose a level
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402

from schemas import get_schema  # noqa: E402
from trainer import data, export  # noqa: E402
from trainer import model as models  # noqa: E402
from trainer.config import TrainConfig, UsageError, configure_logging, parse_config  # noqa: E402

try:  # reports the tuning metric to Vertex AI hyperparameter tuning when installed
    import hypertune
except ImportError:
    hypertune = None

logger = logging.getLogger(__name__)


class SkewError(RuntimeError):
    """The exported model disagrees with the in-memory model."""


# ---------------------------------------------------------------- cluster
@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in TF_CONFIG's cluster (a single worker without TF_CONFIG)."""

    num_workers: int = 1
    task_type: str = "worker"
    task_id: int = 0
    has_chief: bool = False  # else worker 0 is the chief

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_id == 0 and not self.has_chief)

    @classmethod
    def from_env(cls, environ=None) -> Cluster:
        environ = os.environ if environ is None else environ
        raw = environ.get("TF_CONFIG")
        if not raw:
            return cls()
        config = json.loads(raw)
        cluster = config.get("cluster", {})
        task = config.get("task", {})
        n = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        return cls(
            num_workers=max(n, 1),
            task_type=task.get("type", "worker"),
            task_id=int(task.get("index", 0)),
            has_chief=bool(cluster.get("chief")),
        )

    def write_dir(self, path: str) -> str:
        """Where this worker writes ``path``: the chief the real one, others a temporary sibling."""
        if self.is_chief:
            return path
        return os.path.join(os.path.dirname(path), f"workertemp_{self.task_type}_{self.task_id}", os.path.basename(path))


def make_strategy(cluster: Cluster) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy with several workers (made before any other TF op), else the default."""
    if cluster.num_workers > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        logger.info(
            "multi-worker: %s %d of %d workers, %d replicas in sync",
            cluster.task_type, cluster.task_id, cluster.num_workers, strategy.num_replicas_in_sync,
        )
        return strategy
    return tf.distribute.get_strategy()


# ---------------------------------------------------------------- callbacks
class ProgressLog(tf_keras.callbacks.Callback):
    """Logs each epoch and whether training resumed from a backup (BackupAndRestore restores first)."""

    def __init__(self, epochs: int, backup_dir: str):
        super().__init__()
        self.epochs = epochs
        self.backup_dir = backup_dir
        self.initial_epoch: int | None = None
        self.epochs_run = 0

    def on_epoch_begin(self, epoch, logs=None):
        if self.initial_epoch is None:
            self.initial_epoch = epoch
            if epoch > 0:
                logger.info("resumed from backup %s: continuing at epoch %d of %d", self.backup_dir, epoch + 1, self.epochs)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_run += 1
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        logger.info("epoch %d/%d: %s", epoch + 1, self.epochs, shown)


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def make_callbacks(config: TrainConfig, monitor: str, mode: str, progress: ProgressLog) -> list:
    callbacks = [
        tf_keras.callbacks.BackupAndRestore(backup_dir=config.backup_dir),
        progress,
        tf_keras.callbacks.ModelCheckpoint(
            os.path.join(config.checkpoint_dir, "ckpt-{epoch:03d}"), save_weights_only=True, save_freq="epoch"
        ),
        tf_keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=config.early_stopping_patience, restore_best_weights=True
        ),
    ]
    if tensorboard_available():
        callbacks.append(tf_keras.callbacks.TensorBoard(log_dir=config.tensorboard_dir))
    else:  # tf.summary needs the tensorboard package
        logger.warning("tensorboard is not installed: no TensorBoard logs under %s", config.tensorboard_dir)
    return callbacks


# ---------------------------------------------------------------- helpers
def weights_fingerprint(model) -> str:
    """sha256 of every weight's bytes: equal on all workers of a synchronous job."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(w.tobytes())
    return digest.hexdigest()


def log_model_summary(model, job_dir: str | None) -> None:
    """One INFO line (name, parameters); the layer table at DEBUG and, given ``job_dir``, in JOB/model_summary.txt."""
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    for line in lines:
        logger.debug("%s", line)
    where = ""
    if job_dir:
        path = os.path.join(job_dir, "model_summary.txt")
        tf.io.gfile.makedirs(job_dir)
        with tf.io.gfile.GFile(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        where = f"; layers in {path}"
    logger.info("model %s: %s parameters%s", model.name, f"{model.count_params():,}", where)


def _floats(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()}


def write_json(path: str, payload: dict) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(payload, indent=2, sort_keys=True, default=str))


def report_tuning_metric(obj: models.Objective, value: float, step: int) -> None:
    if hypertune is None:
        return
    hypertune.HyperTune().report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=obj.metric, metric_value=value, global_step=step
    )


@dataclasses.dataclass
class TrainResult:
    model: tf_keras.Model
    metrics: dict
    export_dir: str
    selection: data.FeatureSelection
    tf_transform_output: tft.TFTransformOutput


# ---------------------------------------------------------------- the job
def train_and_export(config: TrainConfig, cluster: Cluster, strategy: tf.distribute.Strategy) -> TrainResult:
    started = time.time()
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(config.seed)
    manifest = data.read_manifest(config.data_dir)
    schema = get_schema(manifest["dataset"])
    task, label = schema.task, schema.label
    rows = manifest.get("splits", {})
    tf_transform_output = tft.TFTransformOutput(config.data_dir)
    selection = data.load_selection(tf_transform_output, manifest, config.feature_set)
    logger.info(
        "dataset %s (%s of %s), feature set %s: %d numeric and %d id features; rows %s",
        schema.name, task, label, selection.feature_set, len(selection.layout.numeric),
        len(selection.layout.categorical), rows,
    )
    if selection.absent_raw_features:
        logger.warning(
            "absent from the data (no value in the train split): %s; left out of the model: %s",
            ", ".join(selection.absent_raw_features), ", ".join(selection.dropped_absent) or "-",
        )

    spec = data.input_spec(tf_transform_output, selection, label)
    global_batch = config.batch_size * strategy.num_replicas_in_sync

    def dataset(split, training=False):
        return data.make_dataset(
            data.split_pattern(config.data_dir, split), spec, label, global_batch,
            shuffle=training, repeat=training and config.train_steps is not None,
            shuffle_buffer=config.shuffle_buffer, seed=config.seed,
        )

    has_valid = rows.get("valid", 1) > 0
    eval_splits = [s for s in ("valid", "test") if rows.get(s, 1) > 0]
    obj = models.objective(task)
    monitor = obj.monitor if has_valid else obj.metric
    if not has_valid:
        logger.warning("the valid split is empty: early stopping follows the training %s", obj.metric)
    mean = data.label_mean(data.split_pattern(config.data_dir, "train"), label, spec[label])
    with strategy.scope():
        model = models.build_model(
            config.model, selection.layout, task,
            hidden_units=config.hidden_units, embedding_dim=config.embedding_dim, dropout=config.dropout,
            max_wide_buckets=config.max_wide_buckets, output_bias=models.initial_bias(task, mean),
        )
        models.compile_model(model, task, config.learning_rate)
    log_model_summary(model, config.job_dir if cluster.is_chief else None)

    progress = ProgressLog(config.epochs, config.backup_dir)
    callbacks = make_callbacks(config, monitor, obj.mode, progress)
    history = model.fit(
        dataset("train", training=True),
        validation_data=dataset("valid") if has_valid else None,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=callbacks,
        verbose=0,
    )
    initial_epoch = progress.initial_epoch or 0
    evaluated = {s: _floats(model.evaluate(dataset(s), return_dict=True, verbose=0)) for s in eval_splits}
    fingerprint = weights_fingerprint(model)
    logger.info("final weights sha256 %s", fingerprint)

    export_dir = export.new_export_dir(os.path.join(config.job_dir, "export"))
    skew_split = next((s for s in ("test", "valid", "train") if rows.get(s, 1) > 0), "test")
    skew = export_and_check_skew(
        config, cluster, model, tf_transform_output, selection, schema, export_dir, skew_split, dataset(skew_split),
        manifest.get("options", {}).get("window_minutes"),
    )
    stopper = next(c for c in callbacks if isinstance(c, tf_keras.callbacks.EarlyStopping))

    metrics = {
        "dataset": schema.name,
        "task": task,
        "label": label,
        "model": config.model,
        "config": dataclasses.asdict(config),
        "features": selection.report(),
        "rows": rows,
        "objective": {"metric": obj.metric, "mode": obj.mode, "monitor": monitor},
        **evaluated,
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "initial_epoch": initial_epoch,
        "epochs_run": progress.epochs_run,
        "best_epoch": stopper.best_epoch + 1 if stopper.best_weights is not None else None,  # 1-based, absolute
        "stopped_early": stopper.stopped_epoch > 0,
        "skew": skew,
        "export_dir": export_dir,
        "model_dir": config.model_dir,
        "tensorboard_dir": config.tensorboard_dir if tensorboard_available() else None,
        "weights_sha256": fingerprint,
        "workers": cluster.num_workers,
        "wall_seconds": round(time.time() - started, 1),
    }
    if cluster.is_chief:
        write_json(os.path.join(config.job_dir, "metrics.json"), metrics)
        tuned = evaluated.get("valid", {}).get(obj.metric)
        if tuned is not None:
            report_tuning_metric(obj, tuned, initial_epoch + progress.epochs_run)
    print(summary(metrics, cluster))
    if not skew["passed"]:
        raise SkewError(
            f"exported vs in-memory predictions on {skew_split}: max |diff| {skew['max_abs_diff']} "
            f"> {config.skew_tolerance} ({skew['method']})"
        )
    return TrainResult(model, metrics, export_dir, selection, tf_transform_output)


def export_and_check_skew(
    config, cluster, model, tf_transform_output, selection, schema, export_dir, split, transformed, window_minutes=None
) -> dict:
    """Exports (non-chief workers to a temporary directory) and compares the export on raw/``split``
    with the in-memory model on the ``transformed`` dataset of the same split."""
    write_export = cluster.write_dir(export_dir)
    info = {"dataset": schema.name, "window_minutes": window_minutes}
    export.save(model, tf_transform_output, selection.feature_names, schema.task, schema.label, write_export, info)
    in_memory = export.in_memory_predictions(model, transformed, schema.task)
    exported = export.exported_predictions(
        write_export, data.split_pattern(config.data_dir, split, raw=True), schema.task, config.batch_size
    )
    skew = {"split": split, **export.compare_predictions(in_memory, exported, config.skew_tolerance)}
    if cluster.is_chief:
        export.copy_tree(export_dir, config.model_dir)
    else:
        tf.io.gfile.rmtree(os.path.dirname(write_export))
    return skew


def summary(m: dict, cluster: Cluster) -> str:
    """The one-screen report printed at the end."""
    who = "" if cluster.num_workers == 1 else f" [{cluster.task_type} {cluster.task_id} of {cluster.num_workers}]"
    f = m["features"]
    lines = [
        f"== {m['dataset']} {m['task']}: {m['model']} on feature set {f['feature_set']}{who} ==",
        "rows: " + ", ".join(f"{k} {v}" for k, v in m["rows"].items()),
        f"features: {len(f['numeric'])} numeric, {len(f['categorical'])} ids"
        + (f"; ABSENT in train: {', '.join(f['absent_raw_features'])} (left out: {', '.join(f['dropped_absent'])})"
           if f["absent_raw_features"] else ""),
        f"epochs: {m['epochs_run']} run" + (f", resumed at epoch {m['initial_epoch'] + 1}" if m["initial_epoch"] else "")
        + (", stopped early" if m["stopped_early"] else "") + f"; best epoch {m['best_epoch']}; wall {m['wall_seconds']} s",
    ]
    splits = [s for s in ("valid", "test") if s in m]
    if splits:
        names = list(m[splits[0]])
        lines.append(f"{'metric':<12}" + "".join(f"{s:>12}" for s in splits))
        for name in names:
            lines.append(f"{name:<12}" + "".join(f"{m[s].get(name, float('nan')):>12.4f}" for s in splits))
    s = m["skew"]
    lines.append(
        f"skew ({s['split']}, {s['rows']} rows, {s['method']}): max |exported - in-memory| = {s['max_abs_diff']}"
        f" -> {'OK' if s['passed'] else 'FAILED'}"
    )
    lines.append(f"export: {m['export_dir']}  (copy at {m['model_dir']})")
    return "\n".join(lines)


def run(argv=None) -> TrainResult:
    """Parses flags and the cluster, then trains, evaluates, exports and checks skew."""
    config = parse_config(argv)
    cluster = Cluster.from_env()
    strategy = make_strategy(cluster)
    return train_and_export(config, cluster, strategy)


def main(argv=None) -> int:
    configure_logging()
    try:
        run(argv)
    except UsageError as e:
        logger.error("%s", e)
        return 2
    except SkewError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
