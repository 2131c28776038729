"""Blocks as column buffers, for the elements that cross a shuffle.

A :class:`~pipeline.rows.Block` pickled as it is costs a Python object per value on each side of a
shuffle: at a million flights, decoding the window groups' records alone took about 3 µs a row.
Here each column travels as one buffer where its values allow:

- numbers (all ``float``, or all ``int`` that fit in 64 bits, None where missing): their float64 or
  int64 bytes, plus the positions of the None values;
- texts (``str`` or None): dictionary-encoded by pyarrow, the distinct values and an int32 code a row;
- a column of None only: its length;
- :class:`~pipeline.rows.HexIds` and :class:`~pipeline.rows.PackedText`: as they are (one buffer each);
- anything else (mixed types, bools, bytes, numpy scalars, tuples, ints beyond 64 bits): the values
  themselves, pickled as before.

Every value comes back as it went in, type included (an int stays an int, -0.0 stays -0.0, NaN stays
NaN and distinct from None): the tests in ``tests/test_windowing.py`` check odd columns and mixes.
Columns come back as lists. The cost is per column, not per value, so blocks should be large: the
windowing sends one block a chunk to each time bucket.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline.rows import Block, HexIds, PackedText

_NONE = type(None)
_NUMBERS = {float: ("f", pa.float64(), np.float64), int: ("i", pa.int64(), np.int64)}
_DTYPES = {tag: dtype for tag, _, dtype in _NUMBERS.values()}


def column_wire(values: Sequence):
    """One column of a block, in the form it crosses a shuffle (see the module's docstring)."""
    if isinstance(values, HexIds | PackedText):
        return values
    kinds = set(map(type, values))
    kinds.discard(_NONE)
    if not kinds:
        return ("n", len(values))
    if len(kinds) == 1:
        (kind,) = kinds
        try:
            if kind in _NUMBERS:
                tag, arrow_type, _ = _NUMBERS[kind]
                array = pa.array(values, type=arrow_type)
                nulls = b""
                if array.null_count:
                    nulls = np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)).astype(np.int64).tobytes()
                    array = array.fill_null(0)
                return (tag, array.to_numpy().tobytes(), nulls)
            if kind is str:
                coded = pa.array(values, type=pa.string()).dictionary_encode(null_encoding="encode")
                return ("s", coded.dictionary.to_pylist(), coded.indices.to_numpy().astype(np.int32).tobytes())
        except (OverflowError, pa.ArrowException):  # an int beyond 64 bits, a text pyarrow refuses: as they are
            pass
    return ("o", list(values))


def column_values(wire) -> Sequence:
    """The column back from :func:`column_wire`: a list (HexIds and PackedText as they were)."""
    if not isinstance(wire, tuple):
        return wire
    tag = wire[0]
    if tag == "n":
        return [None] * wire[1]
    if tag in _DTYPES:
        values = np.frombuffer(wire[1], dtype=_DTYPES[tag]).tolist()
        for i in np.frombuffer(wire[2], dtype=np.int64).tolist():
            values[i] = None
        return values
    if tag == "s":
        table = np.empty(len(wire[1]), dtype=object)
        table[:] = wire[1]
        return table[np.frombuffer(wire[2], dtype=np.int32)].tolist()
    if tag == "o":
        return wire[1]
    raise ValueError(f"not a column wire (tag {tag!r})")


def pack_block(block: Block) -> tuple:
    """A block as (rows, column names, column wires)."""
    return (block.n, list(block.columns), [column_wire(v) for v in block.columns.values()])


def unpack_block(packed: tuple) -> Block:
    n, names, wires = packed
    return Block({name: column_values(w) for name, w in zip(names, wires, strict=True)}, n)


# ---------------------------------------------------------------- coders
# Beam samples the encoded size of elements for its metrics: the first elements of every operation's
# output, then fewer. Its default for a Block or a record batch (pickle) encodes the whole element to
# measure it, which for blocks of thousands of rows cost more than a second a million rows, even in the
# in-process runner, where nothing else encodes them. These coders estimate sizes from the buffers
# alone, and encode blocks as column buffers where an element does cross a process.
_FAST = beam.coders.FastPrimitivesCoder()


def estimated_bytes(block: Block) -> int:
    """A cheap estimate of a block's encoded size: its packed buffers, 8 bytes a value elsewhere."""
    size = 0
    for column in block.columns.values():
        if isinstance(column, HexIds):
            size += len(column.raw)
        elif isinstance(column, PackedText):
            size += len(column._blob)  # noqa: SLF001 - its buffer's size, without unpacking it
        else:
            size += 8 * len(column)
    return size


class BlockCoder(beam.coders.Coder):
    """:class:`~pipeline.rows.Block` s as their column buffers (:func:`pack_block`)."""

    def encode(self, block: Block) -> bytes:
        return _FAST.encode(pack_block(block))

    def decode(self, data: bytes) -> Block:
        return unpack_block(_FAST.decode(data))

    def estimate_size(self, block: Block) -> int:
        return estimated_bytes(block)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return Block


class RecordBatchCoder(beam.coders.Coder):
    """Arrow record batches, pickled (Arrow's own buffers) as Beam's fallback would, sized by their buffers."""

    def encode(self, batch: pa.RecordBatch) -> bytes:
        return pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes) -> pa.RecordBatch:
        return pickle.loads(data)  # noqa: S301 - our own elements, between a pipeline's stages

    def estimate_size(self, batch: pa.RecordBatch) -> int:
        return batch.nbytes

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return pa.RecordBatch


beam.coders.registry.register_coder(Block, BlockCoder)
beam.coders.registry.register_coder(pa.RecordBatch, RecordBatchCoder)
