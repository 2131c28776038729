"""Records as Arrow record batches: one schema per dataset, built from its ``schemas/`` columns.

Every batch of a dataset has every column of :func:`arrow_schema`, in its order: numbers as
float64 or int64, texts dictionary-encoded (``dictionary<int32, string>``), a missing value as
null (validity, never a sentinel), the record id and the natural key's fingerprint as 12 fixed-size
bytes each, and where the record came
from (``_source``) and its raw text (``_line``, for the dead letter of a duplicate). A stage reads
columns as numpy arrays (:func:`numbers`, :func:`codes`) and builds new batches; it never mutates one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ID = "_id"
KEY = "_key"  # the fingerprint of the record's natural key (schemas' ``natural_key``)
SOURCE = "_source"
LINE = "_line"
ID_BYTES = 12

TEXT = pa.dictionary(pa.int32(), pa.string())
ID_TYPE = pa.binary(ID_BYTES)
_TYPES = {"float": pa.float64(), "int": pa.int64(), "string": TEXT}


def arrow_schema(schema) -> pa.Schema:
    """The record batches' schema of ``schema`` (a ``schemas.DatasetSchema``): its columns, then
    the id, the natural key's fingerprint, the source file and the raw line."""
    fields = [pa.field(name, _TYPES[column.dtype]) for name, column in schema.columns.items()]
    return pa.schema([*fields, pa.field(ID, ID_TYPE), pa.field(KEY, ID_TYPE), pa.field(SOURCE, TEXT), pa.field(LINE, pa.string())])


def array(values, type_: pa.DataType) -> pa.Array:
    """``values`` (an Arrow array, a numpy array, or a sequence with None for missing) as ``type_``."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if values.type == type_:
            return values
        if pa.types.is_dictionary(type_):
            if pa.types.is_dictionary(values.type):
                values = values.dictionary_decode()
            return values.cast(pa.string()).dictionary_encode()
        return values.cast(type_)
    if pa.types.is_dictionary(type_):
        return pa.array(values, type=pa.string()).dictionary_encode()
    return pa.array(values, type=type_)


def batch(columns: Mapping[str, object], n: int, schema: pa.Schema) -> pa.RecordBatch:
    """A batch of ``n`` rows of ``schema`` from ``columns`` (name -> values); a column not given is null."""
    arrays = [array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def from_records(records: Sequence[Mapping], schema: pa.Schema) -> pa.RecordBatch:
    """A batch of ``records`` (dicts); a field a record lacks is null there, one outside ``schema`` is ignored."""
    return batch({f.name: [r.get(f.name) for r in records] for f in schema}, len(records), schema)


def empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def concat(batches: Iterable[pa.RecordBatch], schema: pa.Schema | None = None) -> pa.RecordBatch:
    """The rows of ``batches`` one after the other, as one batch (text dictionaries unified)."""
    batches = [b for b in batches if b.num_rows]
    if len(batches) == 1:
        return batches[0]
    if not batches:
        if schema is None:
            raise ValueError("concat of no rows needs a schema")
        return empty(schema)
    if all(b.schema.equals(batches[0].schema) for b in batches[1:]):
        table = pa.Table.from_batches(batches)
    else:  # batches of inferred types (records given as dicts): a null column takes the others' type
        table = pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")
    return table.unify_dictionaries().combine_chunks().to_batches()[0]


def take(batch_: pa.RecordBatch, rows) -> pa.RecordBatch:
    """The rows at ``rows`` (indices), in that order; the batch itself when that is all of it in order."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == batch_.num_rows and (rows == np.arange(len(rows))).all():
        return batch_
    return batch_.take(pa.array(rows))


def replace(batch_: pa.RecordBatch, columns: Mapping[str, pa.Array]) -> pa.RecordBatch:
    """A batch with ``columns`` replacing those of the same names (each of the column's own type)."""
    arrays = [array(columns[f.name], f.type) if f.name in columns else batch_.column(i) for i, f in enumerate(batch_.schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=batch_.schema)


def numbers(column: pa.Array) -> np.ndarray:
    """A numeric (or all-null) column as float64, NaN where missing."""
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    # Unsafe: an int beyond 2**53 (e.g. a time from an absurd delay) becomes its nearest float, not an error.
    return pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)


def ints(column: pa.Array) -> np.ndarray:
    """An integer column without nulls as int64."""
    return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)


def valid(*columns: pa.Array) -> np.ndarray:
    """Per row: whether every column holds a value."""
    out = np.ones(len(columns[0]), dtype=bool)
    for column in columns:
        if column.null_count:
            out &= column.is_valid().to_numpy(zero_copy_only=False)
    return out


def codes(column: pa.Array) -> tuple[list, np.ndarray]:
    """(the distinct values, per row the index of its own among them, -1 where missing)."""
    coded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    return coded.dictionary.to_pylist(), coded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def ranks(column: pa.Array) -> np.ndarray:
    """Per row, the rank of its value among the column's distinct values in sorted order: int64
    codes that order as the values do, whatever order the rows came in (e.g. ids from a shuffle)."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    distinct = pc.unique(column)
    distinct = distinct.take(pc.sort_indices(distinct))
    return pc.index_in(column, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int64)


def may_fail(columns: Mapping[str, pa.Array], n: int, schema, labelled: bool = True) -> np.ndarray:
    """Per row of ``columns`` (name -> Arrow array): True where it may fail ``schema.check``, the
    rule that gives the reason. A NaN counts as missing, so a row may be flagged that the check
    passes (a required NaN), never the other way round: the caller checks the flagged rows alone."""
    bad = np.zeros(n, dtype=bool)
    for name, column in schema.columns.items():
        values = columns.get(name)
        values = pa.nulls(n) if values is None else values
        may_miss = column.required and not (column.outcome and not labelled)
        if column.dtype in ("float", "int"):
            x = numbers(values)
            if may_miss:
                bad |= np.isnan(x)
            with np.errstate(invalid="ignore"):
                bad |= np.isinf(x)
                if column.min_value is not None:
                    bad |= x < column.min_value
                if column.max_value is not None:
                    bad |= x > column.max_value
        elif column.required:
            text = values.dictionary_decode() if pa.types.is_dictionary(values.type) else values.cast(pa.string())
            bad |= pc.equal(text, "").fill_null(may_miss).to_numpy(zero_copy_only=False)
    return bad
