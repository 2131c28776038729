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

import itertools
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline.rows import Block, HexIds, PackedColumn, PackedText

_NONE = type(None)
_NUMBERS = {float: ("f", pa.float64(), np.float64), int: ("i", pa.int64(), np.int64)}
_DTYPES = {tag: dtype for tag, _, dtype in _NUMBERS.values()}


class NumberColumn(PackedColumn):
    """Numbers of one Python type (float or int) as a numpy array (float64 or int64), None where
    ``missing`` (a bool array, or None when nothing is missing). Values are read as Python numbers,
    made once for the whole column on first read; ``take``, slices and ``concat`` stay packed, and
    :func:`pipeline.arrow.to_record_batch` reads the array itself."""

    __slots__ = ("values", "missing", "_list")

    def __init__(self, values: np.ndarray, missing: np.ndarray | None = None):
        self.values = values
        self.missing = missing if missing is not None and missing.any() else None
        self._list: list | None = None

    def _read(self) -> list:
        if self._list is None:
            values = self.values.tolist()
            if self.missing is not None:
                for i in np.flatnonzero(self.missing).tolist():
                    values[i] = None
            self._list = values
        return self._list

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return NumberColumn(self.values[i], None if self.missing is None else self.missing[i])
        return self._read()[i]

    def __iter__(self):
        return iter(self._read())

    def __contains__(self, value) -> bool:
        if value is None:
            return self.missing is not None
        return value in self._read()

    def present(self) -> np.ndarray:
        """Per row: whether it holds a value (not None)."""
        return np.ones(len(self), dtype=bool) if self.missing is None else ~self.missing

    def take(self, rows) -> NumberColumn:
        rows = np.asarray(rows, dtype=np.int64)
        return NumberColumn(self.values[rows], None if self.missing is None else self.missing[rows])

    @staticmethod
    def concat(parts: Sequence) -> NumberColumn | None:
        if not all(isinstance(p, NumberColumn) for p in parts) or len({p.values.dtype for p in parts}) != 1:
            return None
        missing = None
        if any(p.missing is not None for p in parts):
            missing = np.concatenate([np.zeros(len(p), dtype=bool) if p.missing is None else p.missing for p in parts])
        return NumberColumn(np.concatenate([p.values for p in parts]), missing)

    def __reduce__(self):
        return NumberColumn, (self.values, self.missing)


class TextColumn(PackedColumn):
    """Texts (str, or None) dictionary-coded: the distinct values and an index into them a row. Read
    as a list made once on first read; ``take``, slices and ``concat`` stay coded, and
    :func:`pipeline.arrow.to_record_batch` converts the distinct values only."""

    __slots__ = ("names", "codes", "_list")

    def __init__(self, names: list, codes: np.ndarray):
        self.names, self.codes = names, codes
        self._list: list | None = None

    def _read(self) -> list:
        if self._list is None:
            table = np.empty(len(self.names), dtype=object)
            table[:] = self.names
            self._list = table[self.codes].tolist()
        return self._list

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return TextColumn(self.names, self.codes[i])
        return self._read()[i]

    def __iter__(self):
        return iter(self._read())

    def __contains__(self, value) -> bool:
        return value in self.names and bool(np.any(self.codes == self.names.index(value)))

    def present(self) -> np.ndarray:
        """Per row: whether it holds a value (not None)."""
        none = [i for i, name in enumerate(self.names) if name is None]
        return np.ones(len(self), dtype=bool) if not none else ~np.isin(self.codes, none)

    def take(self, rows) -> TextColumn:
        return TextColumn(self.names, self.codes[np.asarray(rows, dtype=np.int64)])

    @staticmethod
    def concat(parts: Sequence) -> TextColumn | None:
        if not parts or not all(isinstance(p, TextColumn) for p in parts):
            return None
        # One dictionary for all: pyarrow codes every part's names at once, in the order they first occur.
        names = list(itertools.chain.from_iterable(p.names for p in parts))
        try:
            coded = pa.array(names, type=pa.string()).dictionary_encode(null_encoding="encode")
        except (pa.ArrowException, TypeError):  # not texts after all: Python's equality decides
            table: dict = {}
            unified = np.fromiter((table.setdefault(n, len(table)) for n in names), dtype=np.int32, count=len(names))
            table_names = list(table)
        else:
            unified = coded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
            table_names = coded.dictionary.to_pylist()
        starts = np.cumsum([0] + [len(p.names) for p in parts[:-1]])
        codes = [unified[start:][p.codes] for start, p in zip(starts.tolist(), parts, strict=True)]
        return TextColumn(table_names, np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32))

    def __reduce__(self):
        return TextColumn, (self.names, self.codes)


def column_wire(values: Sequence):
    """One column of a block, in the form it crosses a shuffle (see the module's docstring)."""
    if isinstance(values, HexIds | PackedText):
        return values
    if isinstance(values, NumberColumn):
        nulls = b"" if values.missing is None else np.flatnonzero(values.missing).astype(np.int64).tobytes()
        return ("f" if values.values.dtype == np.float64 else "i", values.values.tobytes(), nulls)
    if isinstance(values, TextColumn):
        return ("s", values.names, values.codes.astype(np.int32).tobytes())
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
    """The column back from :func:`column_wire`: numbers as a :class:`NumberColumn`, texts as a
    :class:`TextColumn`, HexIds and PackedText as they were, anything else as a list."""
    if not isinstance(wire, tuple):
        return wire
    tag = wire[0]
    if tag == "n":
        return [None] * wire[1]
    if tag in _DTYPES:
        values = np.frombuffer(wire[1], dtype=_DTYPES[tag])
        missing = None
        if wire[2]:
            missing = np.zeros(len(values), dtype=bool)
            missing[np.frombuffer(wire[2], dtype=np.int64)] = True
        return NumberColumn(values, missing)
    if tag == "s":
        return TextColumn(list(wire[1]), np.frombuffer(wire[2], dtype=np.int32))
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
            size += column.nbytes
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
    """Arrow record batches as an Arrow IPC stream (no pickling), sized by their buffers."""

    def encode(self, batch: pa.RecordBatch) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()

    def decode(self, data: bytes) -> pa.RecordBatch:
        return pa.ipc.open_stream(data).read_next_batch()

    def estimate_size(self, batch: pa.RecordBatch) -> int:
        return batch.nbytes

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return pa.RecordBatch


beam.coders.registry.register_coder(Block, BlockCoder)
beam.coders.registry.register_coder(pa.RecordBatch, RecordBatchCoder)
