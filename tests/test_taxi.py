"""NYC taxi: layouts, cleaning rules, New York time, windows, split and a small end-to-end run.

Every row here is written inline for one reason (said beside it); ../shared/data is read only by
tests that skip where it is absent, and the runs over whole shared files are marked slow.
"""

from __future__ import annotations

import calendar
import datetime as dt
import glob
import json
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.datasets import taxi
from pipeline.options import UsageError
from pipeline.records.ids import fingerprint
from pipeline.records.verdicts import EXCLUDED, REJECTED, Reject
from pipeline.stages.parse import ParseRows
from pipeline.stages.read import InputError, InputFile, detect_layout, parser_factory, plan_inputs
from pipeline.stages.split import assign_split
from pipeline.stages.window import ID, LookbackAggregates
from schemas import transformed_name
from schemas.taxi import SCHEMA, TRANSFORMED_SOURCES
from tests.conftest import shared_file

LAYOUTS = taxi.layouts()

HEADER_2009 = (
    ",vendor_name,Trip_Pickup_DateTime,Trip_Dropoff_DateTime,Passenger_Count,Trip_Distance,Start_Lon,Start_Lat,"
    "Rate_Code,store_and_forward,End_Lon,End_Lat,Payment_Type,Fare_Amt,surcharge,mta_tax,Tip_Amt,Tolls_Amt,Total_Amt"
)
# 2014's files put a space after each comma of the header.
HEADER_2014 = (
    "vendor_id, pickup_datetime, dropoff_datetime, passenger_count, trip_distance, pickup_longitude, "
    "pickup_latitude, rate_code, store_and_fwd_flag, dropoff_longitude, dropoff_latitude, payment_type, "
    "fare_amount, surcharge, mta_tax, tip_amount, tolls_amount, total_amount"
)
HEADER_2015 = (
    "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,pickup_longitude,"
    "pickup_latitude,RateCodeID,store_and_fwd_flag,dropoff_longitude,dropoff_latitude,payment_type,fare_amount,"
    "extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount"
)
HEADER_2016 = HEADER_2015.replace("RateCodeID", "RatecodeID")
HEADER_ZONES = (
    "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,RatecodeID,"
    "store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount,extra,mta_tax,tip_amount,"
    "tolls_amount,improvement_surcharge,total_amount"
)


def row2015(
    pickup="2015-01-15 19:05:39", dropoff="2015-01-15 19:23:42", passengers="1", distance="1.59",
    plon="-73.993896", plat="40.750110", dlon="-73.974785", dlat="40.750618", payment="1", fare="12",
    tolls="0", tip="3.25",
) -> str:
    """A 2015-layout line; the defaults are the first row of TLC's January 2015 sample (tip included)."""
    return f"2,{pickup},{dropoff},{passengers},{distance},{plon},{plat},1,N,{dlon},{dlat},{payment},{fare},1,0.5,{tip},{tolls},0.3,17.05"


def course(fare="6.0", pickup="2013-03-27 03:35:00 UTC", plon="-73.977672", plat="40.784052",
           dlon="-73.965332", dlat="40.801025", passengers="2", key="0") -> str:
    """A course CSV line; the defaults are the first row of cleaned_taxi-test.csv."""
    return f"{fare},{pickup},{plon},{plat},{dlon},{dlat},{passengers},{key}"


def utc(text: str) -> int:
    return calendar.timegm(dt.datetime.fromisoformat(text).timetuple())


def parse(layout: str, line: str, header: str = "") -> dict:
    """The parser plus the schema's range checks, as ParseRows applies them; Reject on either."""
    record = LAYOUTS[layout].make_parser(header)(line)
    reason = SCHEMA.check(record)
    if reason:
        raise Reject(reason)
    return record


# ---------------------------------------------------------------- layouts
def test_tlc2009_row_with_leading_index_column():
    # Modelled on the first row of TLC's 2009 sample (leading pandas index column), with a toll.
    line = "16,VTS,2009-01-04 02:52:00,2009-01-04 03:22:00,1.0,12.63,-73.991957,40.721567,,,-73.8703,40.7737,CASH,28.9,0.5,,0.0,4.15,33.55"
    assert detect_layout(HEADER_2009, LAYOUTS).name == "tlc2009"
    r = parse("tlc2009", line, HEADER_2009)
    assert r == {
        "pickup_datetime": "2009-01-04 02:52",
        "pickup_longitude": -73.991957,
        "pickup_latitude": 40.721567,
        "dropoff_longitude": -73.8703,
        "dropoff_latitude": 40.7737,
        "passenger_count": 1,  # "1.0" in 2009
        "trips_ended_last_hour": None,
        "avg_fare_per_mile_last_hour": None,
        "fare_amount": 33.05,  # Fare_Amt 28.9 + Tolls_Amt 4.15; surcharge and tip excluded
        "pickup_ts": utc("2009-01-04 07:52:00"),  # EST: UTC-5
        "dropoff_ts": utc("2009-01-04 08:22:00"),
        "trip_distance": 12.63,
        "fare_per_mile": pytest.approx(33.05 / 12.63),
        "payment_type": "cash",
    }


def test_tlc2010_row_with_spaced_header():
    line = "CMT,2014-06-09 20:45:25,2014-06-09 20:52:31,1,0.7,-73.994770,40.736828,1,N,-73.982227,40.731790,CRD,6.5,0.5,0.5,1.4,0,8.9"
    assert detect_layout(HEADER_2014, LAYOUTS).name == "tlc2010"
    r = parse("tlc2010", line, HEADER_2014)
    assert r["pickup_datetime"] == "2014-06-09 20:45"
    assert r["pickup_ts"] == utc("2014-06-10 00:45:25")  # EDT: UTC-4
    assert r["dropoff_ts"] == utc("2014-06-10 00:52:31")
    assert (r["pickup_longitude"], r["pickup_latitude"]) == (-73.99477, 40.736828)
    assert (r["dropoff_longitude"], r["dropoff_latitude"]) == (-73.982227, 40.73179)
    assert (r["passenger_count"], r["trip_distance"], r["payment_type"]) == (1, 0.7, "credit")
    assert r["fare_amount"] == 6.5  # tip 1.4 excluded


@pytest.mark.parametrize("header", [HEADER_2015, HEADER_2016], ids=["RateCodeID", "RatecodeID"])
def test_tlc2015_row_either_rate_code_spelling(header):
    assert detect_layout(header, LAYOUTS).name == "tlc2015"
    r = parse("tlc2015", row2015(tolls="5.33", payment="2"), header)
    assert r["pickup_datetime"] == "2015-01-15 19:05"
    assert r["pickup_ts"] == utc("2015-01-16 00:05:39")
    assert r["dropoff_ts"] == utc("2015-01-16 00:23:42")
    assert r["fare_amount"] == 17.33  # fare 12 + tolls 5.33; tip 3.25, extra, taxes excluded
    assert r["fare_per_mile"] == pytest.approx(17.33 / 1.59)
    assert (r["passenger_count"], r["trip_distance"], r["payment_type"]) == (1, 1.59, "cash")
    assert (r["pickup_longitude"], r["dropoff_latitude"]) == (-73.993896, 40.750618)


def test_course_headerless_row():
    line = course()
    assert detect_layout(line, LAYOUTS).name == "course"  # by the shape of the first line
    assert not LAYOUTS["course"].has_header
    r = parse("course", line)
    # The "UTC" label is New York wall clock (see pipeline.datasets.taxi): 03:35 EDT is 07:35 UTC.
    assert r["pickup_datetime"] == "2013-03-27 03:35"
    assert r["pickup_ts"] == utc("2013-03-27 07:35:00")
    assert r["fare_amount"] == 6.0  # already fare + tolls
    assert (r["pickup_longitude"], r["pickup_latitude"]) == (-73.977672, 40.784052)
    assert (r["dropoff_longitude"], r["dropoff_latitude"]) == (-73.965332, 40.801025)
    assert r["passenger_count"] == 2
    # No dropoff time, no distance: missing, not zero, and not a reason to reject.
    assert (r["dropoff_ts"], r["trip_distance"], r["fare_per_mile"], r["payment_type"]) == (None, None, None, None)


def test_course_utc_label_taken_literally_when_switched(monkeypatch):
    monkeypatch.setattr(taxi, "COURSE_UTC_LABEL_IS_LOCAL", False)
    r = parse("course", course())
    assert r["pickup_ts"] == utc("2013-03-27 03:35:00")
    assert r["pickup_datetime"] == "2013-03-26 23:35"  # New York wall clock of that instant


def test_unknown_header_names_the_known_layouts():
    with pytest.raises(InputError, match="tlc2009, tlc2010, tlc2015, course"):
        detect_layout("a,b,c", LAYOUTS, "x.csv")


def test_zone_id_layout_fails_at_plan_time(tmp_path):
    path = tmp_path / "yellow_tripdata_2017-01.csv"
    path.write_text(HEADER_ZONES + "\n1,2017-01-09 11:13:28,2017-01-09 11:25:45,1,3.30,1,N,263,161,1,12.5,0,0.5,2,0,0.3,15.3\n")
    with pytest.raises(InputError, match=r"zone IDs \(PULocationID, DOLocationID\), not coordinates"):
        plan_inputs(str(path), LAYOUTS)
    with pytest.raises(InputError, match="zone IDs"):  # named with --input_format: refused as well
        LAYOUTS["tlc_zones"].make_parser(HEADER_ZONES)
    with pytest.raises(InputError, match="zone IDs"):  # forced as another layout
        LAYOUTS["tlc2015"].make_parser(HEADER_ZONES)


def test_zone_id_input_stops_the_run_before_the_pipeline(tmp_path):
    from pipeline.preprocess import run

    path = tmp_path / "zones.csv"
    path.write_text(HEADER_ZONES + "\n1,2017-01-09 11:13:28,2017-01-09 11:25:45,1,3.30,1,N,263,161,1,12.5,0,0.5,2,0,0.3,15.3\n")
    with pytest.raises(InputError, match="zone IDs"):
        run(["--dataset", "taxi", "--input", str(path), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_no_input_says_where_the_data_comes_from(tmp_path):
    from pipeline.preprocess import run

    with pytest.raises(UsageError) as e:
        run(["--dataset", "taxi", "--output_dir", str(tmp_path / "out")])
    message = str(e.value)
    assert "--input PATTERN" in message
    assert "tlc-trip-record-data" in message
    assert "bigquery-public-data.new_york_taxi_trips" in message


def test_bigquery_query_text():
    table = f"{taxi.BIGQUERY_DATASET}.tlc_yellow_trips_2015"
    columns = (
        "pickup_datetime, dropoff_datetime, pickup_longitude, pickup_latitude, dropoff_longitude, "
        "dropoff_latitude, passenger_count, trip_distance, fare_amount, tolls_amount, payment_type"
    )
    assert taxi.bigquery_query(table) == f"SELECT {columns} FROM `bigquery-public-data.new_york_taxi_trips.tlc_yellow_trips_2015`"
    assert taxi.bigquery_query(table, limit=1000).endswith("tlc_yellow_trips_2015` LIMIT 1000")
    # The selected names are the tlc2010 layout's, so BigQuery rows parse with the same code.
    assert set(taxi.BIGQUERY_COLUMNS) == set(taxi._TLC2010.values())
    with pytest.raises(UsageError):
        taxi.bigquery_query("trips; DROP TABLE x")
    with pytest.raises(UsageError):
        taxi.bigquery_query(table, limit=0)
    with pytest.raises(InputError, match="zone IDs"):
        taxi.bigquery_query(f"{taxi.BIGQUERY_DATASET}.tlc_yellow_trips_2018")


def test_bigquery_row_parses_as_tlc2010():
    row = {
        "pickup_datetime": "2015-01-15T19:05:39", "dropoff_datetime": "2015-01-15T19:23:42",
        "pickup_longitude": -73.993896, "pickup_latitude": 40.75011, "dropoff_longitude": -73.974785,
        "dropoff_latitude": 40.750618, "passenger_count": 1, "trip_distance": 1.59, "fare_amount": 12.0,
        "tolls_amount": 0.0, "payment_type": "1",
    }
    r = taxi.tlc_trip(row, taxi._TLC2010)
    assert (r["pickup_ts"], r["fare_amount"], r["payment_type"]) == (utc("2015-01-16 00:05:39"), 12.0, "credit")


# ---------------------------------------------------------------- cleaning rules
# (reason the line is here, line): each is rejected for exactly one rule, with a reason naming the field.
REJECTS = [
    ("fare_amount: 2.0 below minimum 2.5", row2015(fare="2", tolls="0")),
    ("fare_amount: negative (-3.0)", row2015(fare="-3", tolls="6")),
    ("tolls_amount: negative (-5.33)", row2015(tolls="-5.33")),
    ("trip_distance: not positive (0.0)", row2015(distance="0")),
    ("pickup_longitude: 0.0 above maximum -70.0", row2015(plon="0", plat="0")),
    ("pickup_latitude: 36.5 below minimum 37.0", row2015(plat="36.5")),
    ("dropoff_longitude: -78.5 below minimum -78.0", row2015(dlon="-78.5")),
    ("dropoff_latitude: 45.5 above maximum 45.0", row2015(dlat="45.5")),
    ("passenger_count: 0 below minimum 1", row2015(passengers="0")),
    ("passenger_count: not a whole number '1.5'", row2015(passengers="1.5")),
    ("dropoff_datetime: not after pickup_datetime", row2015(dropoff="2015-01-15 19:05:39")),  # zero duration
    ("dropoff_datetime: not after pickup_datetime", row2015(dropoff="2015-01-15 18:05:39")),
    ("dropoff_datetime: trip duration above maximum (7.0 h > 6.0 h)", row2015(dropoff="2015-01-16 02:05:39")),
    ("trip_distance: implied speed above maximum (166 mph > 100.0 mph)", row2015(distance="50")),  # 50 mi in 18 min
    ("fare_amount: not a number '12,50'", row2015(fare='"12,50"')),
    ("pickup_latitude: not a number 'N/K'", row2015(plat="N/K")),
    ("pickup_datetime: not a date-time '2015-13-15 19:05:39'", row2015(pickup="2015-13-15 19:05:39")),
    ("pickup_datetime: missing", row2015(pickup="")),
    ("line: 18 fields where the header has 19", row2015().rsplit(",", 1)[0]),
]
ACCEPTED = [
    row2015(),  # the template itself
    row2015(fare="1.0", tolls="2.5"),  # fare 1.0 alone is under 2.50, fare + tolls is not
    row2015(dropoff=""),  # no dropoff time: duration and speed rules do not apply
    row2015(distance=""),  # no distance: the distance and speed rules do not apply
]


@pytest.mark.parametrize("reason,line", REJECTS, ids=[r for r, _ in REJECTS])
def test_cleaning_rule(reason, line):
    with pytest.raises(Reject) as e:
        parse("tlc2015", line, HEADER_2015)
    assert str(e.value) == reason


@pytest.mark.parametrize("line", ACCEPTED)
def test_rows_that_pass_the_rules(line):
    assert parse("tlc2015", line, HEADER_2015)["fare_amount"] >= 2.5


def test_course_rules_that_apply():
    assert parse("course", course(fare="2.5"))["fare_amount"] == 2.5
    with pytest.raises(Reject, match=r"^fare_amount: 2.4 below minimum 2.5$"):
        parse("course", course(fare="2.4"))
    with pytest.raises(Reject, match=r"^passenger_count: 0 below minimum 1$"):
        parse("course", course(passengers="0"))
    with pytest.raises(Reject, match=r"^dropoff_longitude: 0.0 above maximum -70.0$"):
        parse("course", course(dlon="0", dlat="0"))
    with pytest.raises(Reject, match=r"^line: 7 fields where the course layout has 8$"):
        parse("course", course().rsplit(",", 1)[0])


def test_parse_rows_stage_routes_rejects_with_reasons():
    """The Beam stage: accepted rows come out as records, each reject tagged with stage and reason."""
    plan = [InputFile("t2015.csv", "tlc2015", HEADER_2015), InputFile("course.csv", "course", "")]
    lines = [("t2015.csv", line.encode()) for _, line in REJECTS] + [("t2015.csv", line.encode()) for line in ACCEPTED]
    lines += [("course.csv", course().encode()), ("t2015.csv", HEADER_2015.encode())]  # a repeated header line
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(lines)
            | beam.ParDo(ParseRows(parser_factory(plan, LAYOUTS), SCHEMA)).with_outputs(REJECTED, EXCLUDED, main="records")
        )
        assert_that(
            out.records | "Labels" >> beam.Map(lambda r: (r["_source"], r["fare_amount"])),
            equal_to([("t2015.csv", 12.0), ("t2015.csv", 3.5), ("t2015.csv", 12.0), ("t2015.csv", 12.0), ("course.csv", 6.0)]),
            label="records",
        )
        # The schema's declared ranges are checked at the "validate" stage, after the parser.
        range_rules = {r for r, _ in REJECTS if r.split(": ")[1].split()[1:3] in (["below", "minimum"], ["above", "maximum"])}
        assert_that(
            out[REJECTED] | "Reasons" >> beam.Map(lambda e: (e["stage"], e["reason"])),
            equal_to([("validate" if r in range_rules else "parse", r) for r, _ in REJECTS] + [("parse", "line: repeated header line")]),
            label="rejected",
        )
        assert_that(out[EXCLUDED], equal_to([]), label="excluded")


# ---------------------------------------------------------------- New York time
def test_spring_forward_day_near_midnight():
    # 2015-03-08: clocks go 02:00 EST -> 03:00 EDT.
    before_midnight = parse("tlc2015", row2015(pickup="2015-03-07 23:50:00", dropoff="2015-03-08 00:10:00"), HEADER_2015)
    assert before_midnight["pickup_ts"] == utc("2015-03-08 04:50:00")  # already the 8th in UTC ...
    assert before_midnight["pickup_datetime"] == "2015-03-07 23:50"  # ... still Saturday the 7th in New York
    across = parse("tlc2015", row2015(pickup="2015-03-08 01:50:00", dropoff="2015-03-08 03:10:00"), HEADER_2015)
    assert across["pickup_ts"] == utc("2015-03-08 06:50:00")  # EST, UTC-5
    assert across["dropoff_ts"] == utc("2015-03-08 07:10:00")  # EDT, UTC-4
    assert across["dropoff_ts"] - across["pickup_ts"] == 20 * 60  # a 20-minute ride, not 80
    # 02:30 does not exist that night: it takes EST (the offset before the change), i.e. 03:30 EDT.
    gap = parse("tlc2015", row2015(pickup="2015-03-08 02:30:00", dropoff="2015-03-08 03:45:00"), HEADER_2015)
    assert gap["pickup_ts"] == utc("2015-03-08 07:30:00")
    assert gap["pickup_datetime"] == "2015-03-08 03:30"


def test_fall_back_day_ambiguous_hour():
    # 2015-11-01: 01:00-01:59 happens twice (EDT, then EST). A pickup in it is read as the first
    # (EDT) occurrence; a dropoff that would then precede its pickup is the second (EST) one.
    r = parse("tlc2015", row2015(pickup="2015-11-01 01:30:00", dropoff="2015-11-01 01:45:00"), HEADER_2015)
    assert r["pickup_ts"] == utc("2015-11-01 05:30:00")
    assert r["dropoff_ts"] == utc("2015-11-01 05:45:00")
    crossing = parse("tlc2015", row2015(pickup="2015-11-01 01:50:00", dropoff="2015-11-01 01:10:00"), HEADER_2015)
    assert crossing["pickup_ts"] == utc("2015-11-01 05:50:00")  # 01:50 EDT
    assert crossing["dropoff_ts"] == utc("2015-11-01 06:10:00")  # 01:10 EST, 20 minutes later
    after = parse("tlc2015", row2015(pickup="2015-11-01 02:10:00", dropoff="2015-11-01 02:30:00"), HEADER_2015)
    assert after["pickup_ts"] == utc("2015-11-01 07:10:00")  # EST from 02:00 on


def test_hour_and_weekday_of_local_pickup():
    import tensorflow as tf

    from pipeline.datasets.features import local_hour_and_weekday

    # In a graph of its own: the helper records schema overrides in the graph it runs in.
    with tf.Graph().as_default():
        hour, weekday = local_hour_and_weekday(tf.constant(["2015-03-07 23:50", "2015-03-08 03:30", "2015-01-15 19:05"]))
        with tf.compat.v1.Session() as session:
            hours, weekdays = session.run([hour, weekday])
    assert hours.tolist() == [23, 3, 19]
    assert weekdays.tolist() == [5, 6, 3]  # Saturday, Sunday, Thursday (0 = Monday)


# ---------------------------------------------------------------- windows
def _trip(pickup: str, dropoff: str, distance: str, fare: str) -> dict:
    return parse("tlc2015", row2015(pickup=f"2015-01-20 {pickup}", dropoff=f"2015-01-20 {dropoff}", distance=distance, fare=fare), HEADER_2015)


def test_window_features_count_trips_that_ended_in_the_hour_before_pickup():
    records = {
        # name: trip (pickup, dropoff, miles, fare -> fare per mile)
        "Q": _trip("12:00:00", "12:20:00", "2", "10"),  # the query of interest; fare/mile 5
        "A": _trip("11:10:00", "11:30:00", "1", "8"),  # ended 30 min before Q's pickup: counts; 8
        "E": _trip("10:40:00", "11:00:00", "2", "12"),  # ended exactly 60 min before: counts (window [t-60, t)); 6
        "D": _trip("10:30:00", "10:59:59", "3", "9"),  # ended 60 min 1 s before: does not; 3
        "B": _trip("11:45:00", "12:00:00", "1", "4"),  # ended exactly at Q's pickup: does not; 4
        "C": _trip("11:50:00", "12:10:00", "1", "20"),  # ended after Q's pickup: does not; 20
        # Course row (its "UTC" is local time): no dropoff, so no event of its own, but a query.
        "K": parse("course", course(fare="7", pickup="2015-01-20 12:30:00 UTC")),
    }
    expected = {
        "Q": (2, 7.0),  # A, E; Q's own dropoff (12:20) is after its pickup, never in its window
        "A": (2, 4.5),  # E, D
        "E": (0, None),
        "D": (0, None),
        "B": (3, round(17 / 3, 6)),  # D, E, A
        "C": (3, round(17 / 3, 6)),
        "K": (4, 9.25),  # A (11:30, the window's first second), B, C, Q
    }
    for name, record in records.items():
        record["name"] = name
    with TestPipeline() as p:
        for record in records.values():
            record[ID] = fingerprint(record, SCHEMA.columns)
        windowed = (
            p
            | beam.Create(list(records.values()))
            | LookbackAggregates(taxi.WINDOW_FEATURES, 3600, taxi.WINDOW_BUCKET_SECONDS)
        )
        assert_that(
            windowed
            | beam.Map(
                lambda r: (
                    r["name"],
                    (
                        r["trips_ended_last_hour"],
                        None if r["avg_fare_per_mile_last_hour"] is None else round(r["avg_fare_per_mile_last_hour"], 6),
                    ),
                )
            ),
            equal_to(list(expected.items())),
        )


# ---------------------------------------------------------------- split
def test_split_is_a_stable_hash_of_the_pickup_time():
    record = parse("tlc2015", row2015(), HEADER_2015)
    again = parse("tlc2015", row2015(payment="2", fare="30"), HEADER_2015)  # same pickup, other trip
    assert list(taxi.SPLIT_UNITS) == ["pickup_time"]
    key = taxi.SPLIT_UNITS["pickup_time"](record)
    assert key == "2015-01-16 00:05:39 UTC"
    assert taxi.SPLIT_UNITS["pickup_time"](again) == key
    fractions = SCHEMA.split_fractions
    assert fractions == (0.7, 0.15, 0.15)
    # Fixed expectations: the same key lands in the same split in every process and every rerun.
    assert [assign_split(f"2016-02-01 05:00:{s:02d} UTC", fractions) for s in (7, 8, 20)] == ["train", "test", "valid"]
    assert assign_split(key, fractions) == "train"
    splits = [assign_split(f"2016-02-01 05:{m:02d}:{s:02d} UTC", fractions) for m in range(60) for s in range(60)]
    assert splits.count("train") / len(splits) == pytest.approx(0.7, abs=0.03)


# ---------------------------------------------------------------- schema
def test_schema_contract_for_the_trainer():
    assert SCHEMA.task == "regression"
    assert SCHEMA.label == "fare_amount"
    features = set(SCHEMA.feature_names)
    assert features == {
        "pickup_datetime", "pickup_longitude", "pickup_latitude", "dropoff_longitude", "dropoff_latitude",
        "passenger_count", "trips_ended_last_hour", "avg_fare_per_mile_last_hour",
    }  # nothing known only after the trip (distance, duration, payment) is a feature
    assert SCHEMA.feature_sets["all"] == SCHEMA.feature_names
    assert set(SCHEMA.feature_sets["course"]) == features - {"trips_ended_last_hour", "avg_fare_per_mile_last_hour"}
    for name, sources in TRANSFORMED_SOURCES.items():
        assert name.endswith("_xf") and set(sources) <= features, name


# ---------------------------------------------------------------- end to end
def _e2e_inputs(tmp_path):
    lines_2015 = [HEADER_2015]
    # 24 good trips on Tuesday 2015-01-20, one every 5 minutes from 08:00, 10 minutes each.
    for i in range(24):
        start = dt.datetime(2015, 1, 20, 8, 0, 7) + dt.timedelta(minutes=5 * i)
        end = start + dt.timedelta(minutes=10)
        lines_2015.append(row2015(pickup=str(start), dropoff=str(end), distance=f"{1 + i / 10:.1f}", fare=f"{8 + i}.5"))
    lines_2015 += [
        row2015(pickup="2015-01-20 09:17:00", dropoff="2015-01-20 09:40:00", fare="31.17", tolls="5.33"),  # looked up below
        row2015(pickup="2015-01-20 09:17:00", dropoff="2015-01-20 09:40:00", fare="31.17", tolls="5.33"),  # exact duplicate
        row2015(plon="0", plat="0"),  # (0, 0) coordinates
        row2015(distance="0"),  # zero distance
        row2015(dropoff="2015-01-15 19:05:39"),  # zero duration
        row2015(fare="0"),  # fare under 2.50
        row2015(passengers="0"),  # no passengers
        row2015(fare="twelve"),  # non-numeric
    ]
    lines_course = [
        course(fare=f"{5 + i}.0", pickup=f"2015-01-20 {8 + i // 6:02d}:{(i % 6) * 10 + 3:02d}:00 UTC", key=str(i))
        for i in range(10)
    ]
    lines_course.append(course(fare="2.0", key="10"))  # under 2.50
    (tmp_path / "t2015.csv").write_text("\n".join(lines_2015) + "\n")
    (tmp_path / "course.csv").write_text("\n".join(lines_course) + "\n")
    return f"{tmp_path / 't2015.csv'},{tmp_path / 'course.csv'}"


def _read_examples(pattern: str, spec: dict) -> list[dict]:
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    out = []
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        parsed = tf.io.parse_single_example(raw, spec)
        row = {}
        for k, v in parsed.items():
            value = (tf.sparse.to_dense(v) if isinstance(v, tf.sparse.SparseTensor) else v).numpy()
            row[k] = value.tolist() if hasattr(value, "tolist") else value
        out.append(row)
    return out


def test_end_to_end_run(tmp_path):
    import tensorflow_transform as tft

    from pipeline.preprocess import run

    out = tmp_path / "out"
    manifest = run(["--dataset", "taxi", "--input", _e2e_inputs(tmp_path), "--output_dir", str(out)])
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["rows_read"] == 24 + 8 + 11
    assert manifest["rows_read"] == manifest["rows_written"] + manifest["rows_rejected"] + manifest["rows_excluded"]
    assert manifest["reconciled"]
    assert manifest["rows_written"] == 24 + 1 + 10
    assert manifest["rows_excluded"] == 0
    assert manifest["rejected"] == {
        "parse": {
            "dropoff_datetime: not after pickup_datetime": 1,
            "fare_amount: not a number": 1,  # the value is in the dead-letter entry
            "trip_distance: not positive": 1,
        },
        "validate": {
            "fare_amount: below minimum": 2,  # the TLC row and the course row
            "passenger_count: below minimum": 1,
            "pickup_longitude: above maximum": 1,
        },
        "dedupe": {"record: duplicate of a row": 1},
    }
    assert sum(manifest["splits"].values()) == 35 and manifest["splits"]["train"] > 0
    assert manifest["split_unit"] == "pickup_time"
    assert {i["layout"] for i in manifest["inputs"]} == {"tlc2015", "course"}
    rejected = [json.loads(line) for f in glob.glob(str(out / "rejected" / "*.jsonl")) for line in open(f)]
    assert all(e["reason"] and e["record"] for e in rejected) and len(rejected) == 8

    tf_output = tft.TFTransformOutput(str(out))
    transformed = tf_output.transformed_feature_spec()
    assert set(transformed) == set(TRANSFORMED_SOURCES) | {"fare_amount"}
    rows = _read_examples(str(out / "*" / "part-*.tfrecord.gz"), transformed)
    assert len(rows) == 35
    (tolled,) = [r for r in rows if r["fare_amount"] == pytest.approx(36.5)]  # 31.17 + 5.33
    assert (tolled[transformed_name("pickup_hour")], tolled[transformed_name("pickup_weekday")]) == (9, 1)
    assert tolled[transformed_name("pickup_hour_weekday")] == 1 * 24 + 9
    raw_rows = _read_examples(str(out / "raw" / "*" / "part-*.tfrecord.gz"), tf_output.raw_feature_spec())
    (raw,) = [r for r in raw_rows if r["fare_amount"] == pytest.approx(36.5)]
    # Its window is [08:17, 09:17): of the 24 trips ending 08:10:07, 08:15:07, ... every 5 minutes, those
    # ending 08:20:07 .. 09:15:07 are in it (12); the course rows have no dropoff, so none of theirs.
    assert raw["trips_ended_last_hour"] == [12]
    assert raw["pickup_datetime"] == b"2015-01-20 09:17"


# ---------------------------------------------------------------- shared sample data
SHARED = {
    "yellow_tripdata_sample_2009-01.csv": "tlc2009",
    "yellow_tripdata_2015-01.csv": "tlc2015",
    "yellow_tripdata_2016-01.csv": "tlc2015",
    "yellow_tripdata_2016-02.csv": "tlc2015",
    "cleaned_taxi-train.csv": "course",
    "cleaned_taxi-valid.csv": "course",
    "cleaned_taxi-test.csv": "course",
}


@pytest.mark.parametrize("name,layout", SHARED.items())
def test_shared_file_layout_and_first_rows(name, layout):
    path = shared_file("taxi", name)
    (planned,) = plan_inputs(str(path), LAYOUTS)
    assert planned.layout == layout
    parse_line = LAYOUTS[layout].make_parser(planned.header)
    kept = 0
    with open(path) as f:
        lines = f.read().splitlines()[1 if planned.header else 0:][:200]
    for line in lines:
        try:
            record = parse_line(line)
        except Reject as e:
            assert ": " in str(e)  # a reason naming the field
            continue
        if SCHEMA.check(record) is None:
            kept += 1
    assert kept > 0.8 * len(lines)


def test_course_times_are_new_york_wall_clock():
    """Why COURSE_UTC_LABEL_IS_LOCAL: the labelled hours' overnight trough is New York's, 04-05."""
    counts = [0] * 24
    for name in ("cleaned_taxi-train.csv", "cleaned_taxi-valid.csv", "cleaned_taxi-test.csv"):
        with open(shared_file("taxi", name)) as f:
            for line in f:
                counts[int(line.split(",")[1][11:13])] += 1
    trough = sorted(range(24), key=counts.__getitem__)[:2]
    assert set(trough) == {4, 5}  # true UTC times of New York trips would bottom out at 09-10 UTC


@pytest.mark.slow
@pytest.mark.parametrize("names", [[n] for n in SHARED] + [list(SHARED)], ids=[*SHARED, "all"])
def test_shared_files_end_to_end(names, tmp_path):
    from pipeline.preprocess import run

    pattern = ",".join(str(shared_file("taxi", n)) for n in names)
    m = run(["--dataset", "taxi", "--input", pattern, "--output_dir", str(tmp_path / "out")])
    assert m["reconciled"] and m["rows_rejected"] < 0.1 * m["rows_read"]
    assert all(m["splits"].values())
    reasons = [r for stage in m["rejected"].values() for r in stage]
    assert not [r for r in reasons if r.startswith("unparseable")], reasons
    assert os.path.exists(tmp_path / "out" / "transform_fn")
