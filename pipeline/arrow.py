"""Canonical records <-> Arrow record batches <-> serialized tf.Examples, through tfx-bsl.

tensorflow-transform is fed Arrow record batches (the TFXIO path) rather than instance dicts, and
the same batches are encoded to the raw tf.Examples written to ``OUT/raw``: one conversion, no
per-row Python proto building.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline import wire  # noqa: F401 - wire registers the coders of Block and RecordBatch
from pipeline.rows import Block, as_block


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
    """One batch from a :class:`~pipeline.rows.Block` (or a list of records); a missing (None) value
    becomes an empty list, never a zero.

    Column by column: the present values become one Arrow array and the list offsets count them,
    instead of one Python list per cell.
    """
    block = as_block(records)
    n = len(block)
    arrays = []
    for field in arrow_schema:
        values, value_type = block.get(field.name), field.type.value_type
        offset_type = np.int64 if pa.types.is_large_list(field.type) else np.int32
        present = _present_values(values, value_type)
        if present is None:  # pyarrow would not take the column whole: value by value, as it always did
            present = [v for v in values if v is not None]
            if pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type):
                present = [v.encode("utf-8") for v in present]
            present = pa.array(present, type=value_type)
            valid = np.fromiter((v is not None for v in values), dtype=bool, count=n) if len(present) != n else None
        else:
            present, valid = present
        offsets = np.zeros(n + 1, dtype=offset_type)
        if valid is not None:
            np.cumsum(valid, out=offsets[1:])
        else:
            offsets[1:] = np.arange(1, n + 1, dtype=offset_type)
        list_class = pa.LargeListArray if pa.types.is_large_list(field.type) else pa.ListArray
        arrays.append(list_class.from_arrays(pa.array(offsets), present, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)


def _present_values(values, value_type):
    """(the column's present values as one Arrow array of ``value_type``, a numpy mask of the present
    rows or None when all are), converted by pyarrow in one call; None where it would not take the
    column (then the caller converts the values one by one, which gives the same array or error)."""
    text = pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type)
    packed = _packed_values(values, value_type, text)
    if packed is not None:
        return packed
    try:
        array = pa.array(values if isinstance(values, list) else list(values),
                         type=(pa.large_string() if pa.types.is_large_binary(value_type) else pa.string()) if text else value_type)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    if text:
        array = array.cast(value_type)  # the UTF-8 bytes of each text, as str.encode gives them
    if not array.null_count:
        return array, None
    return array.drop_null(), array.is_valid().to_numpy(zero_copy_only=False)


def _packed_values(values, value_type, text: bool):
    """:func:`_present_values` for a column the windowing's shuffle left packed (see
    :mod:`pipeline.wire`): floats cast from their float64 array (float32 rounds as it does from a
    Python float), int64 as it is, texts from their distinct values; None for any other pairing."""
    if isinstance(values, wire.NumberColumn):
        dtype = values.values.dtype
        if dtype == np.float64 and pa.types.is_floating(value_type):
            array = pa.array(values.values).cast(value_type)
        elif dtype == np.int64 and pa.types.is_int64(value_type):
            array = pa.array(values.values)
        else:
            return None
        if values.missing is None:
            return array, None
        valid = ~values.missing
        return array.filter(pa.array(valid)), valid
    if isinstance(values, wire.TextColumn) and text:
        names = pa.array(values.names, type=pa.large_string() if pa.types.is_large_binary(value_type) else pa.string())
        array = names.take(pa.array(values.codes)).cast(value_type)
        if not array.null_count:
            return array, None
        return array.drop_null(), array.is_valid().to_numpy(zero_copy_only=False)
    return None


def parts_to_record_batch(parts, arrow_schema: pa.Schema) -> pa.RecordBatch:
    """:func:`to_record_batch` of blocks joined (the parts of one batch, as :class:`Rebatch` gives
    them with ``joined=False``)."""
    return to_record_batch(Block.concat(parts), arrow_schema)


class Rebatch(beam.DoFn):
    """Blocks (or lists) of records of any sizes -> blocks of ``max_rows`` records within each bundle,
    the last of a bundle smaller; ``joined=False``: each batch as the list of its parts (slices of
    the blocks that came in), to be joined where that costs less, e.g. in a helper process."""

    def __init__(self, max_rows: int, joined: bool = True):
        self._max = max_rows
        self._joined = joined
        self._buffer: list[Block] = []
        self._rows = 0

    def start_bundle(self):
        self._buffer, self._rows = [], 0

    def process(self, records):
        block = as_block(records)
        if not len(block):
            return
        self._buffer.append(block)
        self._rows += len(block)
        while self._rows >= self._max:
            parts, need = [], self._max
            while need:
                head = self._buffer[0]
                if len(head) <= need:
                    parts.append(self._buffer.pop(0))
                    need -= len(head)
                else:
                    parts.append(head.slice(0, need))
                    self._buffer[0] = head.slice(need, len(head))
                    need = 0
            self._rows -= self._max
            yield self._batch(parts)

    def finish_bundle(self):
        from apache_beam.transforms import window

        if self._rows:
            yield window.GlobalWindows.windowed_value_at_end_of_window(self._batch(self._buffer))
        self._buffer, self._rows = [], 0

    def _batch(self, parts: list[Block]):
        return Block.concat(parts) if self._joined else parts


class ToRecordBatches(beam.PTransform):
    """PCollection of record blocks (or lists) -> PCollection[pa.RecordBatch] with ``arrow_schema``'s
    columns, of ``max_batch_size`` rows (the last of a bundle fewer)."""

    def __init__(self, arrow_schema: pa.Schema, max_batch_size: int = 4096):
        super().__init__()
        self._arrow_schema = arrow_schema
        self._max = max_batch_size

    def expand(self, record_lists):
        return (
            record_lists
            | "Rebatch" >> beam.ParDo(Rebatch(self._max, joined=False)).with_output_types(list[Block])
            | "ToArrow" >> beam.Map(parts_to_record_batch, arrow_schema=self._arrow_schema).with_output_types(pa.RecordBatch)
        )
