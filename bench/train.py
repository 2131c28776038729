"""Benchmark: is training input-bound? Training examples/s against the rate at which tf.data
alone reads and parses the same shards.

    python -m bench.train --data_dir OUT [--model linear] [--epochs 3] [--repeats 3]
    python -m bench.train                       # preprocesses the kaggle sample into a temp dir first

Three figures, each the median of --repeats:
  * read rate: ``trainer.data.make_dataset`` over OUT/train exactly as the trainer builds it
    (shuffled, batched, parsed, prefetched, the trainer's feature spec), pulled to the end in-graph
    (``Dataset.reduce``) with nothing else to do: what the input pipeline can deliver. (A Python
    loop over the same batches is also timed, for reference.)
  * fit rate: ``model.fit`` of the trainer's own model (``trainer.model.build_model`` and
    ``compile_model``, the trainer's defaults) on that dataset; the first epoch (tracing) is left
    out, the rate is train rows / epoch time for the later ones.
  * the whole job: ``python -m trainer.task`` (fit, evaluation, export, skew check) as a child
    process, its wall time and train rows * epochs / wall.
fit / read close to 1 means training waits on its input; well below 1, the model step dominates.
Also reported: the model step alone (the same batches cached in memory, epochs after the first), and
CPU seconds (process time, all threads) of a read and of a fit epoch: on a machine with few cores the
input pipeline and the model step share them, so a fit epoch costs about read CPU + step CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from bench.common import KAGGLE_SAMPLE, REPO, load_average, machine, median, run_child, write_report


def _prepare(data_dir: str | None, work: str, timeout: float) -> str:
    if data_dir:
        return data_dir
    out = os.path.join(work, "out")
    res = run_child([sys.executable, "-m", "pipeline.preprocess", "--dataset", "flights", "--input", KAGGLE_SAMPLE,
                     "--output_dir", out, "--overwrite"], timeout, env={"PYTHONPATH": REPO})
    if res["rc"] != 0:
        raise SystemExit(f"preprocessing the kaggle sample failed: {res}")
    return out


def measure_in_process(data_dir: str, model_name: str, batch_size: int, epochs: int, repeats: int) -> dict:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras

    from schemas import get_schema
    from trainer import data
    from trainer import model as models
    from trainer.config import TrainConfig

    manifest = data.read_manifest(data_dir)
    schema = get_schema(manifest["dataset"])
    tto = tft.TFTransformOutput(data_dir)
    selection = data.load_selection(tto, manifest, None)
    spec = data.input_spec(tto, selection, schema.label)
    pattern = data.split_pattern(data_dir, "train")
    rows = manifest["splits"]["train"]
    defaults = TrainConfig(data_dir=data_dir, job_dir="unused", model=model_name)

    def dataset():
        return data.make_dataset(pattern, spec, schema.label, batch_size, shuffle=True,
                                 shuffle_buffer=defaults.shuffle_buffer, seed=defaults.seed)

    # Read rate, in-graph: Dataset.reduce pulls every batch through the pipeline in C++, as
    # model.fit's compiled loop does (a Python loop over the batches would time Python instead).
    def count(ds):
        return int(ds.reduce(tf.constant(0, tf.int64), lambda n, batch: n + tf.shape(batch[1], tf.int64)[0]))

    assert count(dataset()) == rows  # the first pass also warms the file cache
    read_s, read_cpu_s = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        count(dataset())
        read_s.append(time.perf_counter() - t)
        read_cpu_s.append(time.process_time() - c)
    python_loop_s = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _batch in dataset():
            pass
        python_loop_s.append(time.perf_counter() - t)

    class EpochTimer(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []
            self.cpu = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._t)
            self.cpu.append(time.process_time() - self._c)

    def fit_epochs(ds) -> tuple[float, float]:
        """(wall, CPU) seconds of a median epoch after the first (tracing, filling a cache)."""
        tf_keras.backend.clear_session()
        tf_keras.utils.set_random_seed(defaults.seed)
        mean = data.label_mean(pattern, schema.label, spec[schema.label])
        model = models.build_model(
            model_name, selection.layout, schema.task, hidden_units=defaults.hidden_units,
            embedding_dim=defaults.embedding_dim, dropout=defaults.dropout,
            max_wide_buckets=defaults.max_wide_buckets, output_bias=models.initial_bias(schema.task, mean),
        )
        models.compile_model(model, schema.task, defaults.learning_rate)
        timer = EpochTimer()
        model.fit(ds, epochs=epochs, callbacks=[timer], verbose=0)
        later = slice(1, None) if len(timer.times) > 1 else slice(None)
        return median(timer.times[later]), median(timer.cpu[later])

    fit = [fit_epochs(dataset()) for _ in range(repeats)]
    # The model step alone: the same batches cached in memory after the first epoch (no read, no parse).
    step = [fit_epochs(dataset().cache()) for _ in range(repeats)]
    fit_epoch_s = [w for w, _ in fit]
    read_rate = rows / median(read_s)
    fit_rate = rows / median(fit_epoch_s)
    return {
        "train_rows": rows,
        "batch_size": batch_size,
        "model": model_name,
        "features": len(selection.feature_names),
        "read_s": [round(x, 3) for x in read_s],
        "read_examples_per_s": round(read_rate),
        "read_python_loop_examples_per_s": round(rows / median(python_loop_s)),
        "read_cpu_s": round(median(read_cpu_s), 3),
        "fit_epoch_s": [round(x, 3) for x in fit_epoch_s],
        "fit_epoch_cpu_s": round(median([c for _, c in fit]), 3),
        "fit_examples_per_s": round(fit_rate),
        "fit_over_read": round(fit_rate / read_rate, 3),
        "step_from_memory_epoch_s": [round(w, 3) for w, _ in step],
        "step_from_memory_cpu_s": round(median([c for _, c in step]), 3),
        "step_from_memory_examples_per_s": round(rows / median([w for w, _ in step])),
        "tf_threads": {"inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                       "intra_op": tf.config.threading.get_intra_op_parallelism_threads()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", help="a preprocessed OUT (default: preprocess the kaggle sample now)")
    ap.add_argument("--model", default="linear", choices=("linear", "dnn", "wide_deep"))
    ap.add_argument("--batch_size", type=int, default=256, help="the trainer's default")
    ap.add_argument("--epochs", type=int, default=3, help="per in-process fit (the first is left out)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--task_epochs", type=int, default=3, help="epochs of the trainer.task child run")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = tempfile.mkdtemp(prefix="bench_train_")
    report = {"machine": machine()}
    try:
        data_dir = _prepare(args.data_dir, work, args.timeout)
        report["data_dir"] = data_dir
        load_before = load_average()
        report["in_process"] = measure_in_process(data_dir, args.model, args.batch_size, args.epochs, args.repeats)
        report["in_process"]["load_before"] = [round(x, 2) for x in load_before]
        report["in_process"]["load_after"] = [round(x, 2) for x in load_average()]
        print(json.dumps(report["in_process"]), flush=True)
        task_runs = []
        with open(os.path.join(data_dir, "manifest.json")) as f:
            train_rows = json.load(f)["splits"]["train"]
        for i in range(args.repeats):
            job = os.path.join(work, f"job{i}")
            r = run_child([sys.executable, "-m", "trainer.task", "--data_dir", data_dir, "--job_dir", job,
                           "--model", args.model, "--epochs", str(args.task_epochs), "--batch_size",
                           str(args.batch_size), "--early_stopping_patience", str(args.task_epochs + 1)],
                          args.timeout, env={"PYTHONPATH": REPO})
            try:
                with open(os.path.join(job, "metrics.json")) as f:
                    m = json.load(f)
                r["trainer_wall_s"] = m["wall_seconds"]
                r["epochs_run"] = m["epochs_run"]
                r["examples_per_s_whole_job"] = round(train_rows * m["epochs_run"] / r["wall_s"])
            except (OSError, KeyError, ValueError):
                r["error"] = "no metrics.json"
            task_runs.append(r)
            print(json.dumps(r), flush=True)
            shutil.rmtree(job, ignore_errors=True)
        ok = [r for r in task_runs if "error" not in r]
        report["trainer_task"] = {
            "runs": task_runs,
            "wall_s_median": median([r["wall_s"] for r in ok]) if ok else None,
            "examples_per_s_whole_job_median": median([r["examples_per_s_whole_job"] for r in ok]) if ok else None,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine_after"] = machine()
    write_report(report, args.json)
    ip = report["in_process"]
    print(f"read {ip['read_examples_per_s']} ex/s, fit {ip['fit_examples_per_s']} ex/s, "
          f"fit/read {ip['fit_over_read']:.0%}, model step from memory {ip['step_from_memory_examples_per_s']} ex/s; "
          f"CPU s read {ip['read_cpu_s']}, fit epoch {ip['fit_epoch_cpu_s']}, step {ip['step_from_memory_cpu_s']}; "
          f"trainer.task wall {report['trainer_task']['wall_s_median']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
