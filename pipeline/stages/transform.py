"""tensorflow-transform: analyze on the train split only, transform every split, write examples and the graph.

The library path TFX's Transform executor takes: ``tft_beam.AnalyzeDataset`` on the train split's
Arrow record batches, ``tft_beam.TransformDataset(output_record_batches=True)`` per split and
``tft_beam.EncodeTransformedDataset`` to serialized tf.Examples. Raw examples (``OUT/raw/``) are the
raw batches through tfx-bsl's ``RecordBatchToExamplesEncoder``. Both are written in batches by
:mod:`pipeline.stages.shards` (``beam.io.WriteToTFRecord`` costs six times the CPU, see there).

Outputs: ``OUT/transform_fn``, ``OUT/transformed_metadata``, ``OUT/metadata`` (the raw schema, so
that ``tft.TFTransformOutput(OUT).raw_feature_spec()`` works) and the TFRecord shards per split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import apache_beam as beam
import pyarrow as pa

from pipeline.stages.shards import WriteExampleShards

_BATCH = 4096  # records a shard write takes at once


def write_examples(label: str, path_prefix: str):
    """PCollection[list[bytes]] (batches of serialized tf.Examples) -> gzip TFRecord shards
    ``path_prefix-*-of-*.tfrecord.gz``; BENCHMARKS.md weighs gzip's CPU against the storage it saves."""
    return label >> WriteExampleShards(path_prefix)


class EncodeRawExamples(beam.PTransform):
    """PCollection[pa.RecordBatch] of raw columns -> PCollection[list[bytes]], a batch's tf.Examples
    (one a row), by tfx-bsl's encoder for the raw schema (a tensorflow-metadata Schema)."""

    def __init__(self, raw_schema):
        super().__init__()
        self._raw_schema = raw_schema

    def expand(self, batches):
        return batches | "Encode" >> beam.ParDo(_EncodeExamples(self._raw_schema)).with_output_types(list[bytes])


class _EncodeExamples(beam.DoFn):
    def __init__(self, schema):
        self._schema = schema

    def setup(self):
        from tfx_bsl.coders import example_coder

        self._encoder = example_coder.RecordBatchToExamplesEncoder(self._schema)

    def process(self, batch: pa.RecordBatch):
        yield self._encoder.encode(batch)


class AnalyzeAndTransformSplits(beam.PTransform):
    """dict[split, PCollection[RecordBatch]] -> writes OUT/{split}/, the raw and transformed metadata
    and the transform graph. Must be applied inside ``tft_beam.Context``."""

    def __init__(self, preprocessing_fn: Callable, tfxio, raw_schema, output_dir: str):
        super().__init__()
        self._preprocessing_fn = preprocessing_fn
        self._tfxio = tfxio
        self._raw_schema = raw_schema
        self._output_dir = output_dir

    def expand(self, batches_by_split: Mapping[str, beam.PCollection]):
        import tensorflow_transform.beam as tft_beam
        from tensorflow_transform.tf_metadata import dataset_metadata

        config = self._tfxio.TensorAdapterConfig()
        transform_fn = (batches_by_split["train"], config) | "AnalyzeTrainData" >> tft_beam.AnalyzeDataset(
            self._preprocessing_fn
        )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(self._output_dir)
        _ = dataset_metadata.DatasetMetadata(self._raw_schema) | "WriteRawMetadata" >> tft_beam.WriteMetadata(
            os.path.join(self._output_dir, "metadata"), batches_by_split["train"].pipeline
        )
        for split, batches in batches_by_split.items():
            name = split.capitalize()
            transformed = ((batches, config), transform_fn) | f"Transform{name}Data" >> tft_beam.TransformDataset(
                output_record_batches=True
            )
            _ = (
                transformed
                | f"Encode{name}Examples" >> tft_beam.EncodeTransformedDataset()
                | f"Batch{name}Examples" >> beam.BatchElements(min_batch_size=_BATCH, max_batch_size=_BATCH)
                | write_examples(f"Write{name}Examples", os.path.join(self._output_dir, split, "part"))
            )
