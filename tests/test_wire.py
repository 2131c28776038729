"""Blocks as column buffers (pipeline.wire): every value comes back as it went in, type included."""

from __future__ import annotations

import math
import pickle

import pytest

from pipeline.rows import Block, HexIds, PackedText
from pipeline.wire import column_values, column_wire, pack_block, unpack_block


def _same(a, b) -> bool:
    """Equal values of the same type; NaN equals NaN, -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b


def _round_trip(values):
    wire = column_wire(values)
    back = column_values(pickle.loads(pickle.dumps(wire)))
    assert len(back) == len(values)
    assert all(_same(x, y) for x, y in zip(back, values, strict=True)), (values, back)
    return wire


@pytest.mark.parametrize(
    ("values", "tag"),
    [
        ([1.5, None, -0.0, float("nan"), float("inf"), 0.0, None], "f"),  # None and NaN stay apart
        ([3.0, 2.0], "f"),
        ([1, None, -(2**63), 2**63 - 1, 0], "i"),
        (["JFK", None, "", "é", "JFK", "a\x00b", None], "s"),  # None among texts, NUL, non-ASCII
        ([None, None, None], "n"),
        ([], "n"),
        ([1, 2.5], "o"),  # int and float mixed: no float buffer may turn 1 into 1.0
        ([True, False, None], "o"),  # bools are not ints here
        ([2**64, 1], "o"),  # beyond int64
        ([b"JFK", "JFK"], "o"),
        ([b"JFK", None], "o"),  # bytes: pyarrow would make them text
        ([(1, 2), None], "o"),
        ([1, True], "o"),
    ],
)
def test_a_column_comes_back_as_it_went_in(values, tag):
    wire = _round_trip(values)
    assert wire[0] == tag


def test_numpy_scalars_are_not_mistaken_for_python_numbers():
    import numpy as np

    values = [np.float64(1.5), 2.5]
    assert column_wire(values)[0] == "o"
    assert [type(v) for v in column_values(column_wire(values))] == [np.float64, float]


def test_packed_columns_travel_as_they_are_and_a_block_comes_back_whole():
    ids = HexIds.of(["00ff" * 6, "ab" * 12, "01" * 12])
    lines = PackedText.of(["2015,1,1", None, "é"])
    block = Block({"_id": ids, "_line": lines, "origin": ["JFK", "LGA", None], "dep_delay": [None, -4.0, 12.0],
                   "ontime": [1, 0, None], "avg": (None, None, None), "odd": [1, "x", None]}, 3)
    packed = pack_block(block)
    assert packed[2][0] is ids and packed[2][1] is lines
    back = unpack_block(pickle.loads(pickle.dumps(packed)))
    assert isinstance(back.columns["_id"], HexIds) and back.columns["_line"]._values is None  # still packed
    assert len(back) == 3 and list(back.columns) == list(block.columns)
    assert list(back) == list(block)


def test_a_wire_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="not a column wire"):
        column_values(("x", b""))
