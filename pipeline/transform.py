"""tensorflow-transform: analyze on the train split only, transform every split, write the graph.

Input per split is a PCollection of Arrow record batches of raw columns (the TFXIO path). Output:
``OUT/transform_fn``, ``OUT/transformed_metadata``, ``OUT/metadata`` (the raw schema, so that
``tft.TFTransformOutput(OUT).raw_feature_spec()`` works) and gzip TFRecord shards of transformed
tf.Examples per split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import apache_beam as beam

from pipeline.arrow import encode_examples

TFRECORD_SUFFIX = ".tfrecord.gz"


def write_tfrecords(label: str, path_prefix: str):
    return label >> beam.io.WriteToTFRecord(
        path_prefix, file_name_suffix=TFRECORD_SUFFIX, compression_type=beam.io.filesystem.CompressionTypes.GZIP
    )


class AnalyzeAndTransformSplits(beam.PTransform):
    """dict[split, PCollection[RecordBatch]] -> writes OUT/{split}/ and the transform graph.

    Must be applied inside ``tft_beam.Context``. Returns dict[split, PCollection[bytes]] of the
    transformed, serialized tf.Examples (already written).
    """

    def __init__(self, preprocessing_fn: Callable, tfxio, output_dir: str):
        super().__init__()
        self._preprocessing_fn = preprocessing_fn
        self._tfxio = tfxio
        self._output_dir = output_dir

    def expand(self, batches_by_split: Mapping[str, beam.PCollection]):
        import tensorflow_transform.beam as tft_beam
        from tensorflow_transform.tf_metadata import dataset_metadata

        config = self._tfxio.TensorAdapterConfig()
        transform_fn = (batches_by_split["train"], config) | "AnalyzeTrainData" >> tft_beam.AnalyzeDataset(
            self._preprocessing_fn
        )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(self._output_dir)
        raw_metadata = dataset_metadata.DatasetMetadata(self._tfxio._schema)  # noqa: SLF001 - the raw schema
        _ = raw_metadata | "WriteRawMetadata" >> tft_beam.WriteMetadata(
            os.path.join(self._output_dir, "metadata"), batches_by_split["train"].pipeline
        )
        outputs = {}
        for split, batches in batches_by_split.items():
            name = split.capitalize()
            transformed, _ = ((batches, config), transform_fn) | f"Transform{name}Data" >> tft_beam.TransformDataset(
                output_record_batches=True
            )
            examples = transformed | f"Encode{name}Examples" >> beam.FlatMapTuple(
                lambda record_batch, _passthrough: encode_examples(record_batch)
            )
            _ = examples | write_tfrecords(f"Write{name}Examples", os.path.join(self._output_dir, split, "part"))
            outputs[split] = examples
        return outputs
