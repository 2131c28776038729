"""Parsing a chunk of lines column by column, with the row parser as the judge.

A dataset's block parser turns a chunk of lines into canonical records with a few calls per
*distinct* value (dates, airports, clock times and delays repeat thousands of times in a chunk)
and numpy arithmetic per column, instead of dozens of Python calls per row. It never decides that
a row is bad: a row that fails or might fail any check is handed back (``None``), and the row
parser, which gives the exact reason, takes it. So the block path may only be faster, never
different; ``tests/test_flights_parse.py`` compares both on real and odd rows.
"""

from __future__ import annotations

import csv
import operator
from collections.abc import Callable, Sequence

import numpy as np

BAD = object()  # a distinct value whose conversion failed: its rows go to the row parser


def lookup(values: Sequence, convert: Callable, ok: np.ndarray) -> list:
    """``convert`` applied once per distinct value of ``values``; returns the per-row results.

    A value whose conversion raises anything (a Reject, an Exclude, an OverflowError...) gives
    :data:`BAD`, and its rows are marked False in ``ok`` (in place).
    """
    table = {}
    failed = False
    for value in set(values):
        try:
            table[value] = convert(value)
        except Exception:  # noqa: BLE001 - the row parser gives the reason
            table[value] = BAD
            failed = True
    out = list(map(table.__getitem__, values))
    if failed:
        ok &= np.fromiter((v is not BAD for v in out), dtype=bool, count=len(out))
    return out


def required(convert: Callable) -> Callable:
    """``convert`` where a missing result (None) fails too."""

    def convert_required(value):
        result = convert(value)
        if result is None:
            raise ValueError("missing")
        return result

    return convert_required


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


def floats(values: Sequence) -> np.ndarray:
    """Numbers (None for missing) -> float64 with NaN for missing."""
    nan = np.nan
    return np.fromiter((nan if v is None else v for v in values), dtype=np.float64, count=len(values))


def ints(values: Sequence) -> np.ndarray:
    """Integers -> int64, with 0 for :data:`BAD` (rows already marked to go to the row parser)."""
    return np.fromiter((0 if v is BAD else v for v in values), dtype=np.int64, count=len(values))


def select(values: Sequence, rows: np.ndarray) -> list:
    """``values`` at ``rows`` (indices: a list or a numpy array), as a list."""
    if isinstance(rows, np.ndarray):
        rows = rows.tolist()
    return [values[i] for i in rows]
