"""Canonical record batches -> TFXIO's record batches (each value a list) -> tf.Examples, through tfx-bsl.

tensorflow-transform is fed Arrow record batches (the TFXIO path) rather than instance dicts, and
the same batches are encoded to the raw tf.Examples written to ``OUT/raw``: one conversion, no
per-row Python proto building.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline.records import (
    coder,  # noqa: F401 - registers the coder of record batches
    model,
)


def raw_schema(schema):
    """The tensorflow-metadata schema of raw tf.Examples of ``schema`` (a ``schemas.DatasetSchema``)."""
    from tensorflow_transform.tf_metadata import schema_utils

    return schema_utils.schema_from_feature_spec(schema.raw_feature_spec())


def tfxio_for(schema):
    """The TFXIO describing raw tf.Examples of ``schema`` (a ``schemas.DatasetSchema``)."""
    from tfx_bsl.tfxio import tf_example_record

    return tf_example_record.TFExampleBeamRecord(
        physical_format="inmem", telemetry_descriptors=["preprocess"], schema=raw_schema(schema)
    )


def to_record_batch(records, arrow_schema: pa.Schema) -> pa.RecordBatch:
    """Canonical records (a record batch, or a list of dicts) -> a batch of TFXIO's form, the
    columns of ``arrow_schema``: each value a list of one, a missing (null) value an empty list,
    never a zero. Column by column: the present values become the list's values and the offsets
    count them."""
    batch = records if isinstance(records, pa.RecordBatch) else pa.RecordBatch.from_pylist(list(records))
    n = batch.num_rows
    arrays = []
    for field in arrow_schema:
        value_type = field.type.value_type
        at = batch.schema.get_field_index(field.name)
        column = pa.nulls(n) if at < 0 else batch.column(at)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else None
        present = column.drop_null() if valid is not None else column
        if pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type):
            present = present.cast(pa.large_string() if pa.types.is_large_binary(value_type) else pa.string())
        present = present.cast(value_type)  # texts: their UTF-8 bytes; numbers: as float32 rounds a float64
        offset_type = np.int64 if pa.types.is_large_list(field.type) else np.int32
        offsets = np.zeros(n + 1, dtype=offset_type)
        if valid is not None:
            np.cumsum(valid, out=offsets[1:])
        else:
            offsets[1:] = np.arange(1, n + 1, dtype=offset_type)
        list_class = pa.LargeListArray if pa.types.is_large_list(field.type) else pa.ListArray
        arrays.append(list_class.from_arrays(pa.array(offsets), present, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)


class Rebatch(beam.DoFn):
    """Record batches of any sizes -> batches of ``max_rows`` rows within each bundle, the last of a
    bundle smaller."""

    def __init__(self, max_rows: int):
        self._max = max_rows
        self._buffer: list[pa.RecordBatch] = []
        self._rows = 0

    def start_bundle(self):
        self._buffer, self._rows = [], 0

    def process(self, batch: pa.RecordBatch):
        if not batch.num_rows:
            return
        self._buffer.append(batch)
        self._rows += batch.num_rows
        if self._rows >= self._max:
            joined = model.concat(self._buffer)
            whole = joined.num_rows // self._max * self._max
            for start in range(0, whole, self._max):
                yield joined.slice(start, self._max)
            rest = joined.slice(whole)
            self._buffer, self._rows = ([rest] if rest.num_rows else []), rest.num_rows

    def finish_bundle(self):
        from apache_beam.transforms import window

        if self._rows:
            yield window.GlobalWindows.windowed_value_at_end_of_window(model.concat(self._buffer))
        self._buffer, self._rows = [], 0


class ToRecordBatches(beam.PTransform):
    """PCollection of canonical record batches -> PCollection[pa.RecordBatch] of TFXIO's form with
    ``arrow_schema``'s columns, of ``max_batch_size`` rows (the last of a bundle fewer)."""

    def __init__(self, arrow_schema: pa.Schema, max_batch_size: int = 4096):
        super().__init__()
        self._arrow_schema = arrow_schema
        self._max = max_batch_size

    def expand(self, batches):
        return (
            batches
            | "Rebatch" >> beam.ParDo(Rebatch(self._max)).with_output_types(pa.RecordBatch)
            | "ToTFXIO" >> beam.Map(to_record_batch, arrow_schema=self._arrow_schema).with_output_types(pa.RecordBatch)
        )
