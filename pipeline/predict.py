"""Batch prediction on RAW records: the preprocessing's own parse/clean/window stages, then RunInference.

Locally:
    python -m pipeline.predict --model_dir models/flights --input ../shared/data/flights/bts_2015_sample.jsonl \
        --output_dir /tmp/pred
On Dataflow: add --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py
and gs:// paths (the model directory included).

Every input record gets one line in ``PRED/predictions-*.jsonl`` (its key fields and the model's outputs) or,
like in preprocessing, a line in ``PRED/rejected/`` or ``PRED/excluded/`` with its reason; the manifest
reconciles the counts. Records need not be labelled: a flight still in the air is predicted. The windowed
averages come from the events of the same input (every row's, as in preprocessing); online, the server
fills them from its window store (see README, "Windowed features online").
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import PreprocessOptions, UsageError, beam_options, run_main
from pipeline.preprocess import load_dataset, prepare_output_dir
from pipeline.stages import manifest
from pipeline.stages.clean import READ, RECORDS, CleanAndWindow, WriteDeadLetters
from pipeline.stages.read import plan_inputs
from pipeline.stages.tfxio import Rebatch, raw_schema, tfxio_for, to_record_batch

logger = logging.getLogger(__name__)

SIGNATURE = "serving_tf_example"
EXAMPLES = "examples"


class PredictOptions(PipelineOptions):
    """Only what prediction adds: the shared flags (--dataset, --input, --input_format, --output_dir,
    --airports, --window_minutes, --overwrite) are preprocessing's own, so both read records alike."""

    @classmethod
    def _add_argparse_args(cls, parser):  # Beam's hook for a view's flags
        cls.add_flags(parser)

    @classmethod
    def add_flags(cls, parser):
        parser.add_argument("--model_dir", help="the trainer's --job_dir, or an export directory itself")
        parser.add_argument(
            "--output_features", action="store_true",
            help="add each record's raw model inputs (windowed averages included) to its prediction line",
        )


def dataset_of(model_dir: str) -> str | None:
    """The dataset the model was trained on, from the trainer's metrics.json, if it is there."""
    import tensorflow as tf

    path = os.path.join(model_dir, "metrics.json")
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f).get("dataset")


class SavedModelSignatureHandler(ModelHandler[bytes, PredictionResult, object]):
    """Loads a SavedModel with ``tf.saved_model.load`` and calls one signature on serialized raw tf.Examples."""

    def __init__(self, export_dir: str, signature: str = SIGNATURE, input_name: str = EXAMPLES, max_batch: int = 1024):
        super().__init__()
        self._export_dir = export_dir
        self._signature = signature
        self._input_name = input_name
        self._max_batch = max_batch

    def load_model(self):
        import tensorflow as tf

        return tf.saved_model.load(self._export_dir)

    def run_inference(self, batch: Sequence[bytes], model, inference_args=None) -> Iterable[PredictionResult]:
        import tensorflow as tf

        outputs = model.signatures[self._signature](**{self._input_name: tf.constant(list(batch))})
        arrays = {name: value.numpy().reshape(len(batch), -1) for name, value in outputs.items()}
        for i, example in enumerate(batch):
            yield PredictionResult(example, {name: _scalar(a[i]) for name, a in arrays.items()})

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self._max_batch}


def _scalar(row):
    values = row.tolist()
    return values[0] if len(values) == 1 else values


class _KeyAndEncode(beam.DoFn):
    """Batches of records -> (key JSON, serialized raw tf.Example), encoded exactly as OUT/raw is."""

    def __init__(self, raw_schema, arrow_schema, key_columns, feature_columns=()):
        self._raw_schema = raw_schema
        self._arrow_schema = arrow_schema
        self._key_columns = key_columns
        self._feature_columns = feature_columns

    def setup(self):
        from tfx_bsl.coders import example_coder

        self._encoder = example_coder.RecordBatchToExamplesEncoder(self._raw_schema)

    def process(self, batch):
        examples = self._encoder.encode(to_record_batch(batch, self._arrow_schema))
        names = [*self._key_columns, "_source", *self._feature_columns]
        records = batch.select([n for n in dict.fromkeys(names) if n in batch.schema.names]).to_pylist()
        for record, example in zip(records, examples, strict=True):
            key = {c: record.get(c) for c in self._key_columns}
            key["source"] = record.get("_source")
            if self._feature_columns:
                key["features"] = {c: record.get(c) for c in self._feature_columns}
            yield json.dumps(key, sort_keys=True), example


def _format(keyed_result) -> str:
    key, result = keyed_result
    return json.dumps({**json.loads(key), **result.inference}, sort_keys=True)


def build(p, dataset, plan, layouts, export_dir: str, output_dir: str, window_s: int, output_features=False) -> None:
    schema = dataset.SCHEMA
    cleaned = p | "CleanAndWindow" >> CleanAndWindow(dataset, plan, layouts, window_s, labelled=False)
    arrow_schema = tfxio_for(schema).ArrowSchema()
    key_columns = [c for c in schema.key_columns or schema.example_columns if c != schema.label]
    predictions = (
        cleaned[RECORDS]
        | "BatchRecords" >> beam.ParDo(Rebatch(1024)).with_output_types(pa.RecordBatch)
        | "KeyAndEncode" >> beam.ParDo(
            _KeyAndEncode(raw_schema(schema), arrow_schema, key_columns, schema.feature_names if output_features else ())
        )
        | "RunInference" >> RunInference(KeyedModelHandler(SavedModelSignatureHandler(export_dir)))
    )
    _ = (
        predictions
        | "FormatPredictions" >> beam.Map(_format)
        | "WritePredictions" >> beam.io.WriteToText(os.path.join(output_dir, "predictions"), file_name_suffix=".jsonl")
    )
    count_keys = [
        cleaned[READ] | "CountRead" >> beam.Map(manifest.read_count),
        predictions | "CountPredicted" >> beam.Map(lambda _: manifest.SEP.join(("split", "predicted"))),
        cleaned | "WriteDeadLetters" >> WriteDeadLetters(output_dir),
    ]
    _ = count_keys | "FlattenCounts" >> beam.Flatten() | "WriteCounts" >> manifest.WriteCounts(output_dir)


def run(argv=None) -> dict:
    from apache_beam.io.filesystems import FileSystems

    options = beam_options(argv, PreprocessOptions, PredictOptions, prog="python -m pipeline.predict")
    ours = options.view_as(PreprocessOptions)
    predict_options = options.view_as(PredictOptions)
    model_dir = predict_options.model_dir
    for flag, value in (("model_dir", model_dir), ("input", ours.input), ("output_dir", ours.output_dir)):
        if not value:
            raise UsageError(f"--{flag} is required")
    dataset_name = ours.dataset or dataset_of(model_dir)
    if not dataset_name:
        raise UsageError("--dataset is required: the model directory has no metrics.json naming it")
    from trainer.export import resolve_export_dir

    try:
        export_dir = resolve_export_dir(model_dir)
    except FileNotFoundError as e:
        raise UsageError(f"--model_dir {e}") from None
    dataset = load_dataset(dataset_name)
    layouts = dataset.make_layouts(ours, labelled=False)
    plan = plan_inputs(ours.input, layouts, ours.input_format)
    prepare_output_dir(ours.output_dir, ours.overwrite)

    started = time.time()
    logger.info("predicting %s with %s: %d input files -> %s", dataset_name, export_dir, len(plan), ours.output_dir)
    with beam.Pipeline(options=options) as p:
        build(p, dataset, plan, layouts, export_dir, ours.output_dir, ours.window_minutes * 60,
              predict_options.output_features)
    summary = manifest.summarize(manifest.read_counts(ours.output_dir), ["predicted"])
    result = {
        "dataset": dataset_name,
        "export_dir": export_dir,
        **{k: v for k, v in summary.items() if k not in ("present_values", "split_unit", "distinct_coarse_split_keys")},
        "rows_predicted": summary["splits"]["predicted"],
        "inputs": [{"path": f.path, "layout": f.layout} for f in plan],
        "wall_seconds": round(time.time() - started, 1),
    }
    manifest.write_json(os.path.join(ours.output_dir, "manifest.json"), result)
    FileSystems.delete([os.path.join(ours.output_dir, manifest.COUNTS_DIR)])
    logger.info("read %d rows: %d predicted, %d rejected, %d excluded in %.1fs", result["rows_read"],
                result["rows_predicted"], result["rows_rejected"], result["rows_excluded"], result["wall_seconds"])
    if not result["reconciled"]:
        raise RuntimeError(f"counts do not reconcile, see {ours.output_dir}/manifest.json")
    return result


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
