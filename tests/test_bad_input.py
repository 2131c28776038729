"""Bad input never crashes a run: each bad row lands in rejected/ with a reason naming the field, counts
reconcile, and the valid rows around it come out exactly as they would from a clean file."""

from __future__ import annotations

import gzip
import json

import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.datasets import flights
from pipeline.datasets.airports import load_airports
from pipeline.preprocess import run
from pipeline.records.verdicts import Exclude, Reject
from schemas.flights import SCHEMA
from tests.test_flights_parse import BTS_HEADER, bts_row

GOOD = [  # valid flights on several hours of two days, so every split can receive rows
    bts_row(FL_NUM=str(i), CRS_DEP_TIME=f"{h:02d}00", DEP_TIME=f"{h:02d}05", DEP_DELAY="5.00",
            CRS_ARR_TIME=f"{(h + 3) % 24:02d}30", ARR_TIME=f"{(h + 3) % 24:02d}40", ARR_DELAY="10.00",
            FL_DATE=f"2015-01-0{1 + i % 2}")
    for i, h in enumerate(range(5, 21))
]

# (line, stage, reason it must carry): one row per kind of bad input.
BAD = [
    ("2015-01-01,AA,19805,AA,1,12478,1247802", "parse", "line: 7 fields where the header has 27"),  # truncated
    (bts_row() + ",extra", "parse", "line: 28 fields where the header has 27"),  # an extra column
    (bts_row(DEP_DELAY="five"), "parse", "dep_delay: not a number 'five'"),  # wrong type
    (bts_row(TAXI_OUT="NaN"), "parse", "taxi_out: not a finite number 'NaN'"),
    (bts_row(DISTANCE="inf"), "parse", "distance: not a finite number 'inf'"),
    (bts_row(CRS_DEP_TIME="2460"), "parse", "crs_dep_time: invalid hhmm time '2460'"),
    (bts_row(CRS_ARR_TIME=""), "parse", "crs_arr_time: not an hhmm time ''"),
    (bts_row(FL_DATE="2015-13-45"), "parse", "fl_date: invalid date '2015-13-45'"),
    (bts_row(DEST="QQQ"), "parse", "dest: unknown airport 'QQQ'"),
    (bts_row(DEP_DELAY="-300.00", DEP_TIME="0400"), "validate", "dep_delay: -300.0 below minimum -240.0"),
    (bts_row(UNIQUE_CARRIER='"A,A"'), "validate", None),  # a quoted comma parses into one field, kept
    (BTS_HEADER, "parse", "line: repeated header line"),  # files concatenated with their headers
    ("", "parse", "line: empty"),
]


def _write(path, lines, *, bom=False, crlf=False, gz=False):
    text = ("\ufeff" if bom else "") + ("\r\n" if crlf else "\n").join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


WINDOWED = ("avg_dep_delay", "avg_taxi_out", "avg_arr_delay")


def _raw_rows(out_dir, without=()):
    rows = []
    for split in ("train", "valid", "test"):
        files = tf.io.gfile.glob(str(out_dir / "raw" / split / "*.tfrecord.gz"))
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            f = tf.train.Example.FromString(r.numpy()).features.feature
            rows.append((split, *(str(getattr(f[k], f[k].WhichOneof("kind")).value) for k in sorted(f) if k not in without)))
    return sorted(rows)


def test_bad_input_corpus_goes_to_rejected_with_reasons_and_leaves_good_rows_untouched(tmp_path):
    bad_lines = [line for line, _, _ in BAD]
    mixed = GOOD[:6] + bad_lines[:7] + GOOD[6:12] + bad_lines[7:] + GOOD[12:]
    dirty = tmp_path / "dirty"
    dirty.mkdir()
    _write(dirty / "a.csv", [BTS_HEADER, *mixed], bom=True, crlf=True)  # BOM and CRLF line ends
    _write(dirty / "b.csv.gz", [BTS_HEADER, GOOD[0]], gz=True)  # an exact duplicate of a row of a.csv
    _write(dirty / "c.csv", [BTS_HEADER])  # header only
    (dirty / "d.csv").write_bytes(b"")  # empty file: nothing to read, nothing to detect
    (dirty / "e.csv").write_bytes(BTS_HEADER.encode() + b"\n" + GOOD[0].replace("JFK", "J\xfcK").encode("latin-1") + b"\n")
    clean = _write(tmp_path / "clean.csv", [BTS_HEADER, *GOOD, bad_lines[10]])

    m = run(["--dataset", "flights", "--input", str(dirty / "*"), "--output_dir", str(tmp_path / "dirty_out"),
             "--split_by", "hour"])
    expected_rows = len(mixed) + 1 + 1  # a.csv + the duplicate in b.csv + the non-UTF-8 row of e.csv
    assert m["rows_read"] == expected_rows and m["reconciled"]
    rejected = [json.loads(x) for f in (tmp_path / "dirty_out" / "rejected").glob("*.jsonl") for x in f.read_text().splitlines()]
    reasons = {(r["stage"], r["reason"]) for r in rejected}
    for _line, stage, reason in BAD:
        if reason:
            assert (stage, reason) in reasons, reason
    assert any(stage == "parse" and r.startswith("line: not valid UTF-8 at byte") for stage, r in reasons)
    assert any(r["stage"] == "dedupe" and r["reason"].startswith("record: duplicate") for r in rejected)
    assert m["rows_rejected"] == len(rejected) == len(BAD) - 1 + 2
    assert all(r["record"] is not None and r["source"] for r in rejected)

    # The valid rows come out as from a clean file with the same rows, but for their windows: the events of a
    # rejected row whose own fields are valid (a departure of a flight to an unknown airport) still count there.
    clean_m = run(["--dataset", "flights", "--input", str(clean), "--output_dir", str(tmp_path / "clean_out"),
                   "--split_by", "hour"])
    assert clean_m["rows_written"] == m["rows_written"] == len(GOOD) + 1
    assert _raw_rows(tmp_path / "dirty_out", WINDOWED) == _raw_rows(tmp_path / "clean_out", WINDOWED)
    assert _raw_rows(tmp_path / "dirty_out") != _raw_rows(tmp_path / "clean_out")


@pytest.mark.parametrize("codec", ["isal", "gzip", "bzip2"])
def test_a_truncated_compressed_input_fails_naming_the_file_instead_of_losing_its_last_rows(tmp_path, monkeypatch,
                                                                                           codec):
    """An interrupted download or copy leaves a gzip (or bzip2) file without its end: Beam's reader
    returns the lines before the cut without a word, so the rest would be neither read nor counted."""
    import bz2
    import sys

    from apache_beam.io.filesystems import FileSystems

    from pipeline.stages.read import InputError, ReadRange, read_lines

    if codec == "gzip":
        monkeypatch.setitem(sys.modules, "isal", None)  # as if not installed: Python's gzip module reads
    suffix, name = (".csv.bz2", "bzip2") if codec == "bzip2" else (".csv.gz", "gzip")
    whole = tmp_path / f"whole{suffix}"
    if codec == "bzip2":
        whole.write_bytes(bz2.compress("\n".join([BTS_HEADER, *GOOD * 300, ""]).encode()))
    else:
        _write(whole, [BTS_HEADER, *GOOD * 300], gz=True)
    cut = tmp_path / "cut" / f"cut{suffix}"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])

    def lines(path):
        return [line for _, chunk in read_lines(ReadRange(str(path), 0, None, True)) for line in chunk]

    assert lines(whole) == [(row + "\n").encode() for row in GOOD * 300]
    with pytest.raises(InputError, match=rf"cut\.csv\.\w+ cannot be decompressed as {name} .*truncated or damaged"):
        lines(cut)
    with FileSystems.open(str(cut)) as f:  # what this guards against: part of the file, and no error
        assert f.read().count(b"\n") < len(GOOD) * 300  # gzip: the lines before the cut; bzip2 (one block): none
    with pytest.raises(Exception, match=rf"cut\.csv\.\w+ cannot be decompressed as {name}"):
        run(["--dataset", "flights", "--input", str(cut), "--output_dir", str(tmp_path / "out"), "--split_by", "hour"])


# ------------------------------------------------------------------ property-based
PARSE = flights.layouts(load_airports())["bts"].make_parser(BTS_HEADER)
FIELD_NAMES = {n for n in SCHEMA.columns} | {"line", "crs_dep_time", "crs_arr_time", "dep_time", "arr_time",
                                             "cancelled", "diverted", "fl_date"}
hhmm = st.one_of(st.integers(0, 2500).map(lambda v: f"{v:04d}"), st.text(max_size=5))
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers(-5000, 5000).map(str),
                   st.text(max_size=6), st.just(""))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    crs_dep=hhmm, dep_time=hhmm, crs_arr=hhmm, arr_time=hhmm, dep_delay=number, arr_delay=number, taxi_out=number,
    distance=number, origin=st.sampled_from(["JFK", "LAX", "ORD", "", "XXX", "jfk"]),
    date=st.one_of(st.dates().map(str), st.text(max_size=10)), flag=st.sampled_from(["0.00", "1.00", "", "2", "x"]),
)
def test_random_rows_parse_to_in_range_values_or_are_rejected_with_a_field(
    crs_dep, dep_time, crs_arr, arr_time, dep_delay, arr_delay, taxi_out, distance, origin, date, flag
):
    line = bts_row(CRS_DEP_TIME=crs_dep, DEP_TIME=dep_time, CRS_ARR_TIME=crs_arr, ARR_TIME=arr_time,
                   DEP_DELAY=dep_delay, ARR_DELAY=arr_delay, TAXI_OUT=taxi_out, DISTANCE=distance, ORIGIN=origin,
                   FL_DATE=date, CANCELLED=flag).replace("\n", " ")
    try:
        record = PARSE(line)
    except (Reject, Exclude) as e:
        assert str(e).split(":")[0] in FIELD_NAMES, str(e)
        return
    reason = SCHEMA.check(record)
    if reason:
        assert reason.split(":")[0] in SCHEMA.columns
        return
    assert -240 <= record["dep_delay"] <= 3000 and -240 <= record["arr_delay"] <= 3000
    assert record["arr_ts"] > record["dep_ts"] - 240 * 60
    assert record["ontime"] == int(record["arr_delay"] < 15)
    assert len(record["dep_time_local"]) == 16
