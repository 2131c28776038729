"""Parsing a chunk of lines column by column.

A dataset's block parser turns a chunk of lines into canonical records with a few calls per
*distinct* value (dates, airports, clock times and delays repeat thousands of times in a chunk)
and numpy arithmetic per column, instead of dozens of Python calls per row. Each rule is a plain
function of one value (a field rule) applied here once per distinct value; the rows it fails get
its reason in the chunk's :class:`~pipeline.records.verdicts.Verdicts`.
"""

from __future__ import annotations

import csv
import operator
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from pipeline.records.verdicts import EXCLUDED, REJECTED, Exclude, Reject, Verdicts

BAD = object()  # the result for a distinct value whose conversion failed: its rows go to the row parser


def split_csv(lines: Sequence[str], width: int, indices: Sequence[int], ok: np.ndarray) -> list[tuple]:
    """The ``indices`` columns of CSV lines as one tuple each (values as csv.reader gives them).

    A line whose field count is not ``width``, or that the csv module cannot read, is marked False
    in ``ok`` and gives empty strings.
    """
    pick = operator.itemgetter(*indices)
    blank = ("",) * len(indices)
    rows = []
    append = rows.append
    for i, line in enumerate(lines):
        if '"' in line or "\r" in line or "\n" in line:
            try:
                values = next(csv.reader([line]))
            except (csv.Error, StopIteration):
                values = ()
        else:
            values = line.split(",")
        if len(values) != width:
            ok[i] = False
            append(blank)
            continue
        append(pick(values) if len(indices) > 1 else (pick(values),))
    return list(zip(*rows, strict=True)) if rows else [() for _ in indices]


def csv_columns(lines: Sequence[str], width: int, indices: Sequence[int], ok: np.ndarray) -> list:
    """:func:`split_csv`'s columns, each already :func:`encode` d: the same values and the same
    ``ok``, read by pyarrow's CSV reader (in C) where that is sure to split as ``str.split(",")`` does.

    That is where no line holds a quote or a carriage return (the csv module's quoting rules are
    left to it) and the lines of ``width`` fields are cut at their commas and nothing else. A line
    of another field count is marked False in ``ok`` and gets empty strings, as in split_csv.
    """
    n = len(lines)
    data = "\n".join(lines).encode("utf-8")
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    if not n or len(newlines) != n - 1 or (buf == 34).any() or (buf == 13).any():
        return [encode(column) for column in split_csv(lines, width, indices, ok)]
    bounds = np.concatenate(([0], newlines + 1, [len(buf) + 1]))
    commas = np.diff(np.searchsorted(np.flatnonzero(buf == 44), bounds))
    good = commas == width - 1
    if not good.all():
        ok &= good
        data = "\n".join(line for line, g in zip(lines, good.tolist(), strict=True) if g).encode("utf-8")
    rows = np.flatnonzero(good)
    if not len(rows):
        return [Coded([""], np.zeros(n, dtype=np.int64)) for _ in indices]
    names = [f"f{i}" for i in range(width)]
    table = pa_csv.read_csv(
        pa.py_buffer(data),
        read_options=pa_csv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 1),
        parse_options=pa_csv.ParseOptions(quote_char=False, double_quote=False, escape_char=False, ignore_empty_lines=False),
        convert_options=pa_csv.ConvertOptions(
            column_types={names[i]: pa.string() for i in indices}, include_columns=[names[i] for i in indices],
            strings_can_be_null=False, quoted_strings_can_be_null=False,
        ),
    )
    if table.num_rows != len(rows):  # not expected; the csv module decides
        return [encode(column) for column in split_csv(lines, width, indices, ok)]
    columns = []
    for i in indices:
        coded = table.column(names[i]).combine_chunks().dictionary_encode()
        values = coded.dictionary.to_pylist()
        codes = coded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if len(rows) < n:  # the other lines: empty strings
            blank = values.index("") if "" in values else len(values)
            if blank == len(values):
                values.append("")
            full = np.full(n, blank, dtype=np.int64)
            full[rows] = codes
            codes = full
        columns.append(Coded(values, codes))
    return columns


class Coded:
    """A column as its distinct values and, per row, the index of its value among them."""

    __slots__ = ("codes", "values")

    def __init__(self, values: list, codes: np.ndarray):
        self.values = values
        self.codes = codes

    def map(self, fn: Callable) -> Coded:
        """``fn`` of each distinct value (which must not fail: use :func:`convert` for that)."""
        return Coded([fn(v) for v in self.values], self.codes)

    def subset(self, rows: np.ndarray) -> Coded:
        """The column at ``rows`` only (the same distinct values)."""
        return Coded(self.values, self.codes[rows])

    def rows(self, rows: np.ndarray | None = None) -> list:
        """The per-row values (of ``rows`` only, when given), as a list."""
        table = np.empty(len(self.values), dtype=object)
        for i, value in enumerate(self.values):  # one by one: a tuple value must stay one object
            table[i] = value
        return table[self.codes if rows is None else self.codes[rows]].tolist()

    def array(self, dtype, missing) -> np.ndarray:
        """The per-row values as a numpy array, ``missing`` where a value is None or :data:`BAD`."""
        table = np.array([missing if v is None or v is BAD else v for v in self.values], dtype=dtype)
        return table[self.codes]

    def present(self) -> np.ndarray:
        """Per row: whether its value is there (neither None nor :data:`BAD`)."""
        table = np.array([v is not None and v is not BAD for v in self.values], dtype=bool)
        return table[self.codes]


def encode(values: Sequence[str]) -> Coded:
    """Texts -> :class:`Coded` (dictionary-encoded by pyarrow)."""
    encoded = pa.array(values, type=pa.string()).dictionary_encode()
    return Coded(encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64))


def convert(column: Coded, fn: Callable, verdicts: Verdicts, where: np.ndarray | None = None) -> Coded:
    """``fn`` once per distinct value. A value it rejects (:class:`Reject`, :class:`Exclude`, or any
    other exception, "unparseable" as a row parser would say) fails its rows in ``verdicts`` (only
    those in ``where``) and gives :data:`BAD`."""
    results, errors = [], {}
    for i, value in enumerate(column.values):
        try:
            results.append(fn(value))
        except (Reject, Exclude) as e:
            results.append(BAD)
            errors[i] = (EXCLUDED if isinstance(e, Exclude) else REJECTED, str(e))
        except Exception as e:  # noqa: BLE001 - a row must never stop the run: rejected with its error
            results.append(BAD)
            errors[i] = (REJECTED, f"unparseable: {type(e).__name__}: {e}")
    for kind in (REJECTED, EXCLUDED):
        bad = np.zeros(len(results), dtype=bool)
        bad[[i for i, (k, _) in errors.items() if k == kind]] = True
        mask = bad[column.codes] if where is None else bad[column.codes] & where
        verdicts.fail(mask, lambda row: errors[column.codes[row]][1], kind=kind)
    return Coded(results, column.codes)


def combine(*columns: Coded) -> Coded:
    """The distinct combinations of several columns' values, as tuples."""
    code = columns[0].codes.astype(np.int64)
    for column in columns[1:]:
        code = code * max(len(column.values), 1) + column.codes
    distinct, inverse = np.unique(code, return_inverse=True)
    parts = []
    for column in reversed(columns[1:]):
        size = max(len(column.values), 1)
        parts.append(distinct % size)
        distinct = distinct // size
    parts.append(distinct)
    parts.reverse()
    values = [
        tuple(column.values[k] for column, k in zip(columns, ks, strict=True))
        for ks in zip(*(part.tolist() for part in parts), strict=True)
    ]
    return Coded(values, inverse.reshape(-1))


def floats(values: Sequence) -> np.ndarray:
    """Numbers (None for missing) -> float64 with NaN for missing."""
    nan = np.nan
    return np.fromiter((nan if v is None else v for v in values), dtype=np.float64, count=len(values))


def packed(column: Coded, rows: np.ndarray) -> pa.Array:
    """The column's values at ``rows`` as an Arrow array, with a call per distinct value instead of
    per row: dictionary-encoded where every value is a text or None, float64 where every value is a
    float or None (some float); else as pyarrow converts the values."""
    used, codes = np.unique(column.codes[rows], return_inverse=True)
    codes = codes.reshape(-1)
    values = [column.values[i] for i in used.tolist()]
    kinds = set(map(type, values))
    kinds.discard(type(None))
    missing = np.array([v is None for v in values], dtype=bool)
    if kinds == {str}:
        names = pa.array(["" if v is None else v for v in values], type=pa.string())
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32), mask=missing[codes]), names)
    if kinds == {float}:
        table = np.array([0.0 if v is None else v for v in values], dtype=np.float64)
        return pa.array(table[codes], mask=missing[codes])
    return pa.array(Coded(values, codes).rows())


def select(values: Sequence, rows: np.ndarray) -> list:
    """``values`` at ``rows`` (indices: a list or a numpy array), as a list."""
    if isinstance(rows, np.ndarray):
        rows = rows.tolist()
    return [values[i] for i in rows]
