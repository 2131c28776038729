"""Raw records -> cleaned, windowed, split TFRecord shards plus the tensorflow-transform graph.

Locally (DirectRunner, the default):
    python -m pipeline.preprocess --dataset flights --output_dir /tmp/flights
    python -m pipeline.preprocess --dataset flights \
        --input ../shared/data/flights/kaggle_2015-01-01_to_04.csv.gz --output_dir /tmp/f

On Dataflow (see run_dataflow.sh, which fills these in and checks them):
    python -m pipeline.preprocess --dataset flights --input gs://BUCKET/raw/*.csv.gz \
        --output_dir gs://BUCKET/flights --runner DataflowRunner --project P --region R \
        --temp_location gs://BUCKET/tmp --setup_file ./setup.py

Outputs under --output_dir: {train,valid,test}/ (transformed tf.Examples), raw/{train,valid,test}/
(the same rows before the transform), transform_fn/, transformed_metadata/, metadata/ (raw schema),
rejected/ and excluded/ (JSON lines with stage and reason), manifest.json (counts that reconcile).
"""

from __future__ import annotations

import logging
import os
import time

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from pipeline.datasets import flights, taxi
from pipeline.options import UsageError, parse_options, run_main
from pipeline.stages import manifest
from pipeline.stages.clean import PARSED, READ, RECORDS, CleanAndWindow, WriteDeadLetters
from pipeline.stages.read import plan_inputs
from pipeline.stages.split import SPLITS, SplitRecords, choose_unit, parse_fractions, unit_keys
from pipeline.stages.tfxio import ToRecordBatches, raw_schema, tfxio_for
from pipeline.stages.transform import AnalyzeAndTransformSplits, EncodeRawExamples, write_examples

logger = logging.getLogger(__name__)


# Each dataset module holds everything dataset-specific: SCHEMA, make_layouts, default_input,
# WINDOW_FEATURES, WINDOW_BUCKET_SECONDS, SPLIT_UNITS and preprocessing_fn.
DATASETS = {"flights": flights, "taxi": taxi}


def load_dataset(name: str):
    """The dataset module named ``name`` (one of :data:`pipeline.options.DATASETS`)."""
    return DATASETS[name]


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuses to mix two runs' shards: a non-empty output directory needs --overwrite."""
    existing = [m.path for r in FileSystems.match([output_dir.rstrip("/") + "/**"]) for m in r.metadata_list]
    if not existing:
        return
    if not overwrite:
        raise UsageError(f"--output_dir {output_dir} is not empty ({len(existing)} files); pass --overwrite to replace it")
    logger.info("--overwrite: deleting %d files under %s", len(existing), output_dir)
    delete_tree(output_dir)


def delete_tree(path: str) -> None:
    """Deletes a directory and everything under it, locally or on gs://.

    Beam's GCS file system deletes a prefix only for a path ending in '/' (``gs://b/dir`` alone
    matches no object and silently deletes nothing), while the local one needs the directory itself.
    """
    if FileSystems.get_scheme(path) in (None, "file"):
        FileSystems.delete([path])
    else:
        FileSystems.delete([path.rstrip("/") + "/"])


def build(
    p: beam.Pipeline, dataset, plan, layouts, output_dir: str, window_s: int, fractions, split_by: str
) -> None:
    """Wires the graph; must run inside ``tft_beam.Context``."""
    schema = dataset.SCHEMA
    optional = [n for n in schema.example_columns if not schema.columns[n].required]
    cleaned = p | "CleanAndWindow" >> CleanAndWindow(dataset, plan, layouts, window_s)
    read, windowed = cleaned[READ], cleaned[RECORDS]
    units = dataset.SPLIT_UNITS
    coarsest = next(iter(units.values()))
    # The distinct split keys, counted on the parsed records: the windowing drops only exact copies, which
    # share their keys. So the split's side input is ready before the windowing ends, and the runner can
    # hand the windowed records to the split as they come, instead of storing them all in between.
    n_coarse = (
        cleaned[PARSED]
        | "CoarseSplitKeys" >> beam.FlatMap(lambda records: set(unit_keys(coarsest, records)))
        | "DistinctCoarseKeys" >> beam.Distinct()
        | "CountCoarseKeys" >> beam.combiners.Count.Globally()
    )
    by_split = windowed | "AssignSplit" >> beam.ParDo(
        SplitRecords(units, split_by, fractions), beam.pvalue.AsSingleton(n_coarse)
    ).with_output_types(pa.RecordBatch, **dict.fromkeys(SPLITS, pa.RecordBatch)).with_outputs(*SPLITS)

    raw = raw_schema(schema)
    tfxio = tfxio_for(schema)
    arrow_schema = tfxio.ArrowSchema()
    batches = {}
    count_keys = [
        read | "CountRead" >> beam.Map(manifest.read_count),
        n_coarse | "CountSplitUnit" >> beam.FlatMap(manifest.split_unit_keys, list(units), split_by),
    ]
    for split in SPLITS:
        name = split.capitalize()
        batches[split] = by_split[split] | f"ToArrow{name}" >> ToRecordBatches(arrow_schema)
        _ = (
            batches[split]
            | f"EncodeRaw{name}Examples" >> EncodeRawExamples(raw)
            | write_examples(f"WriteRaw{name}Examples", os.path.join(output_dir, "raw", split, "part"))
        )
        # Counted per Arrow batch (the same rows), not per record: one element per batch.
        count_keys.append(batches[split] | f"Count{name}" >> beam.FlatMap(manifest.batch_split_keys, split, optional))
    _ = batches | "AnalyzeAndTransform" >> AnalyzeAndTransformSplits(
        dataset.preprocessing_fn, tfxio, raw, output_dir
    )

    count_keys.append(cleaned | "WriteDeadLetters" >> WriteDeadLetters(output_dir))
    _ = count_keys | "FlattenCounts" >> beam.Flatten() | "WriteCounts" >> manifest.WriteCounts(output_dir)


def run(argv=None) -> dict:
    """Parses flags, runs the pipeline, writes and returns the manifest."""
    import tensorflow_transform.beam as tft_beam

    options, ours = parse_options(argv)
    dataset = load_dataset(ours.dataset)
    layouts = dataset.make_layouts(ours)
    if ours.input:
        pattern, input_format = ours.input, ours.input_format
    else:
        pattern, input_format = dataset.default_input(ours)
    plan = plan_inputs(pattern, layouts, input_format)
    fractions = parse_fractions(ours.split_fractions or dataset.SCHEMA.split_fractions)
    choose_unit(list(dataset.SPLIT_UNITS), ours.split_by, 0)  # fail on a wrong --split_by before running
    output_dir = ours.output_dir
    prepare_output_dir(output_dir, ours.overwrite)
    temp_dir = os.path.join(output_dir, "_tmp")

    started = time.time()
    logger.info("preprocessing %s: %d input files -> %s", ours.dataset, len(plan), output_dir)
    p = beam.Pipeline(options=options)
    with tft_beam.Context(temp_dir=temp_dir):
        build(p, dataset, plan, layouts, output_dir, ours.window_minutes * 60, fractions, ours.split_by)
        result = p.run()
        result.wait_until_finish()
    wall = time.time() - started

    summary = manifest.summarize(manifest.read_counts(output_dir), SPLITS)
    result = {
        "dataset": ours.dataset,
        **summary,
        "inputs": [{"path": f.path, "layout": f.layout} for f in plan],
        "options": {
            "window_minutes": ours.window_minutes,
            "split_by": ours.split_by,
            "split_fractions": dict(zip(SPLITS, fractions, strict=True)),
            "airports": ours.airports,
            "runner": options.get_all_options().get("runner"),
        },
        "versions": manifest.package_versions(),
        "wall_seconds": round(wall, 1),
        "largest_window_group": largest_window_group(result),
    }
    manifest.write_json(os.path.join(output_dir, "manifest.json"), result)
    delete_tree(os.path.join(output_dir, manifest.COUNTS_DIR))
    delete_tree(temp_dir)
    _log_summary(result)
    if not result["reconciled"]:
        raise RuntimeError(f"counts do not reconcile, see {output_dir}/manifest.json")
    if not result["splits"]["train"]:
        raise RuntimeError(
            f"the train split is empty (split by {result['split_unit']}; input spans {result['distinct_coarse_split_keys']}): "
            "the transform was analysed on nothing. Give more data, or a finer --split_by or other --split_fractions"
        )
    return result


def largest_window_group(result) -> int | None:
    """The most rows (records and events) one window group held, from the runner's metrics: the
    figure that must not grow with the input's length. None where the runner reports no metrics."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace("window").with_name("group_rows"))
    except NotImplementedError:
        return None
    maxima = [d.committed.max for d in found["distributions"] if d.committed and d.committed.count]
    return max(maxima) if maxima else None


def _log_summary(m: dict) -> None:
    logger.info(
        "read %d rows: %d written (%s), %d rejected, %d excluded in %.1fs",
        m["rows_read"], m["rows_written"], ", ".join(f"{k} {v}" for k, v in m["splits"].items()),
        m["rows_rejected"], m["rows_excluded"], m["wall_seconds"],
    )
    for stage, reasons in m["rejected"].items():
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            logger.info("  rejected at %s: %s x%d", stage, reason, n)
    for reason, n in m["excluded"].items():
        logger.info("  excluded: %s x%d", reason, n)


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
