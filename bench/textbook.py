"""The textbook tensorflow-transform pipeline on our rows: what ours is measured against per row.

Written in the style of tensorflow/transform's ``examples/census_example_v2.py``: ReadFromText of a
CSV -> tfx-bsl's ``BeamRecordCsvTFXIO`` -> ``tft_beam.AnalyzeAndTransformDataset`` with our
``preprocessing_fn`` on the train split, ``tft_beam.TransformDataset`` on valid and test ->
``tft_beam.EncodeTransformedDataset`` -> ``beam.io.WriteToTFRecord`` (GZIP); the raw examples of
every split through tfx-bsl's ``RecordBatchToExamplesEncoder`` -> ``WriteToTFRecord`` (GZIP).

Its input is already cleaned and windowed: ``prepare`` writes one CSV per split from an output of
our own pipeline (OUT/raw/{split}/ tf.Examples, the columns of its raw feature spec, a missing value
as an empty cell), outside any timing. So it skips parsing, cleaning, UTC conversion, windowed
averages, the split, dead letters and the manifest that ours does.

    python -m bench.textbook prepare --from_output OUT --csv_dir CSV
    python -m bench.textbook run --csv_dir CSV --output_dir TB_OUT
    python -m bench.textbook count --output_dir TB_OUT          # rows per split, as JSON

Only ``pipeline.preprocess.load_dataset(name).preprocessing_fn`` is taken from the project, and the
raw feature spec from ``tft.TFTransformOutput(OUT).raw_feature_spec()``. The engine is Beam's
Python FnApiRunner in memory (the one ``DirectRunner`` falls back to, and the one ours runs on),
named directly so that no run tries to download Prism first.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import tempfile

SPLITS = ("train", "valid", "test")


def _tfrecord_files(directory: str) -> tuple[list[str], str]:
    """Shards in ``directory``, and their compression by suffix (gzip or none)."""
    gz = sorted(glob.glob(os.path.join(directory, "*.tfrecord.gz")))
    if gz:
        return gz, "GZIP"
    return sorted(glob.glob(os.path.join(directory, "*.tfrecord"))), ""


# ---------------------------------------------------------------- prepare (not timed)
def prepare(from_output: str, csv_dir: str) -> dict:
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(from_output).raw_feature_spec()
    columns = sorted(spec)
    os.makedirs(csv_dir, exist_ok=True)
    counts = {}
    for split in SPLITS:
        files, compression = _tfrecord_files(os.path.join(from_output, "raw", split))
        ds = tf.data.TFRecordDataset(files, compression_type=compression).batch(8192)
        ds = ds.map(lambda x: tf.io.parse_example(x, spec))
        n = 0
        with open(os.path.join(csv_dir, f"{split}.csv"), "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(columns)
            for batch in ds:
                size = int(tf.shape(batch[next(c for c in columns if not isinstance(spec[c], tf.io.VarLenFeature))])[0])
                cols = []
                for c in columns:
                    t = batch[c]
                    if isinstance(t, tf.sparse.SparseTensor):
                        # A VarLenFeature: at most one value a row here; no value -> empty cell.
                        cells = [""] * size
                        rows = t.indices.numpy()[:, 0]
                        for r, v in zip(rows, t.values.numpy(), strict=True):
                            cells[r] = _cell(v)
                        cols.append(cells)
                    else:
                        a = t.numpy()
                        cols.append([_cell(v) for v in a] if a.dtype != np.float32 else [str(v) for v in a])
                w.writerows(zip(*cols, strict=True))
                n += size
        counts[split] = n
    with open(os.path.join(csv_dir, "columns.json"), "w") as f:
        json.dump({"columns": columns, "rows": counts, "from_output": os.path.abspath(from_output)}, f)
    return counts


def _cell(v) -> str:
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


# ---------------------------------------------------------------- the textbook pipeline (timed)
def run(csv_dir: str, output_dir: str, dataset_name: str = "flights") -> None:
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    from pipeline.preprocess import load_dataset

    with open(os.path.join(csv_dir, "columns.json")) as f:
        meta = json.load(f)
    columns = meta["columns"]
    raw_spec = tft.TFTransformOutput(meta["from_output"]).raw_feature_spec()
    schema = schema_utils.schema_from_feature_spec(raw_spec)
    preprocessing_fn = load_dataset(dataset_name).preprocessing_fn
    csv_tfxio = tfxio.BeamRecordCsvTFXIO(physical_format="text", column_names=columns, schema=schema)

    def write(pcoll, label: str, prefix: str):
        return pcoll | label >> beam.io.WriteToTFRecord(
            os.path.join(output_dir, prefix, "part"), file_name_suffix=".tfrecord.gz",
            compression_type=CompressionTypes.GZIP)

    os.makedirs(output_dir, exist_ok=True)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        with tft_beam.Context(temp_dir=tempfile.mkdtemp(prefix="tft_tmp_", dir=output_dir)):
            raw = {}
            for split in SPLITS:
                name = split.capitalize()
                raw[split] = (
                    p
                    | f"Read{name}Data" >> beam.io.ReadFromText(os.path.join(csv_dir, f"{split}.csv"),
                                                                 skip_header_lines=1, coder=beam.coders.BytesCoder())
                    | f"Decode{name}Data" >> csv_tfxio.BeamSource()
                )
                encoder = tfxio.RecordBatchToExamplesEncoder(schema)
                _ = write(raw[split] | f"EncodeRaw{name}" >> beam.FlatMap(encoder.encode),
                          f"WriteRaw{name}", os.path.join("raw", split))
            transformed_train, transform_fn = (
                (raw["train"], csv_tfxio.TensorAdapterConfig())
                | "AnalyzeAndTransformTrain" >> tft_beam.AnalyzeAndTransformDataset(
                    preprocessing_fn, output_record_batches=True)
            )
            transformed = {"train": transformed_train}
            for split in ("valid", "test"):
                transformed[split] = (
                    ((raw[split], csv_tfxio.TensorAdapterConfig()), transform_fn)
                    | f"Transform{split.capitalize()}" >> tft_beam.TransformDataset(output_record_batches=True)
                )
            for split in SPLITS:
                name = split.capitalize()
                _ = write(transformed[split] | f"Encode{name}" >> tft_beam.EncodeTransformedDataset(),
                          f"Write{name}", split)
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(output_dir)


# ---------------------------------------------------------------- verification (not timed)
def count(output_dir: str) -> dict:
    """Records per split, transformed and raw, of an output (ours or the textbook's)."""
    import tensorflow as tf

    out = {}
    for kind, base in (("transformed", output_dir), ("raw", os.path.join(output_dir, "raw"))):
        for split in SPLITS:
            files, compression = _tfrecord_files(os.path.join(base, split))
            out[f"{kind}_{split}"] = int(
                tf.data.TFRecordDataset(files, compression_type=compression).batch(65536)
                .reduce(tf.constant(0, tf.int64), lambda n, b: n + tf.shape(b, out_type=tf.int64)[0]).numpy()
            ) if files else 0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--from_output", required=True)
    a.add_argument("--csv_dir", required=True)
    b = sub.add_parser("run")
    b.add_argument("--csv_dir", required=True)
    b.add_argument("--output_dir", required=True)
    b.add_argument("--dataset", default="flights")
    c = sub.add_parser("count")
    c.add_argument("--output_dir", required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.cmd == "prepare":
        print(json.dumps(prepare(args.from_output, args.csv_dir)))
    elif args.cmd == "run":
        run(args.csv_dir, args.output_dir, args.dataset)
    else:
        print(json.dumps(count(args.output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
