"""Causal windows: every observed event counts, whatever becomes of its own record, and a record's own
events never count in its windows. Checked on real rows against a reference written from the README's
definitions alone (its own CSV reading, time zones and arithmetic), and on a few inline rows."""

from __future__ import annotations

import bisect
import collections
import csv
import datetime as dt
import gzip
import json
import math
from zoneinfo import ZoneInfo

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline.datasets import flights, taxi
from pipeline.datasets.airports import load_airports
from pipeline.stages.clean import RECORDS, CleanAndWindow
from pipeline.stages.read import InputFile, plan_inputs
from tests.conftest import shared_file
from tests.test_flights_parse import BTS_HEADER, bts_row
from tests.test_taxi import HEADER_2015, row2015

WINDOW = 3600
FEATURES = [f.name for f in flights.WINDOW_FEATURES]
KEY_FIELDS = ("carrier", "flight_number", "origin", "crs_dep_ts")


def _windowed(path, out_dir, plan=None, dataset=flights, columns=(*KEY_FIELDS, "pred_ts", "dest", *FEATURES)) -> list[dict]:
    """The records CleanAndWindow gives for ``path``, as dicts of ``columns``."""
    layouts = flights.layouts(load_airports()) if dataset is flights else dataset.layouts()
    plan = plan or plan_inputs(str(path), layouts)
    columns = list(columns)
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | CleanAndWindow(dataset, plan, layouts, WINDOW)
        _ = (out[RECORDS]
             | beam.FlatMap(lambda batch: [json.dumps(r) for r in batch.select(columns).to_pylist()])
             | beam.io.WriteToText(str(out_dir / "records"), file_name_suffix=".jsonl"))
    return [json.loads(line) for part in sorted(out_dir.glob("records*.jsonl")) for line in part.read_text().splitlines()]


# ------------------------------------------------------------------ the reference, from the definitions
def _number(text):
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _minutes(hhmm):
    if not (hhmm.isdigit() and len(hhmm) <= 4):
        return None
    h, m = divmod(int(hhmm), 100)
    return h * 60 + m if m < 60 and (h < 24 or (h == 24 and m == 0)) else None


def _utc(day: dt.date, minutes: int, tz: str) -> int:
    local = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=minutes)
    return int(local.replace(tzinfo=ZoneInfo(tz)).timestamp())


def _agrees(clock_text, scheduled, delay):
    """README: a reported clock time, where there is one, must be the scheduled time plus the delay."""
    if clock_text == "":
        return True
    clock = _minutes(clock_text)
    return clock is not None and (clock - scheduled - math.trunc(delay)) % 1440 == 0


def reference_events(path) -> dict[str, list]:
    """Per kind, (key airport, time, natural key, value) of every kaggle row, record or not, whose
    fields that event needs are valid: departures (origin, DEPARTURE_DELAY at the departure),
    wheels-off (origin, TAXI_OUT at wheels-off) and arrivals (destination, ARRIVAL_DELAY at the arrival)."""
    import airportsdata

    tz = {code: a["tz"] for code, a in airportsdata.load("IATA").items() if a.get("tz")}
    delay_ok = lambda x: x is not None and -240 <= x <= 3000  # noqa: E731 - schemas/flights.py's range
    events = {"dep": [], "taxi": [], "arr": []}
    with gzip.open(path, "rt") as f:
        for row in csv.DictReader(f):
            origin, dest = row["ORIGIN_AIRPORT"], row["DESTINATION_AIRPORT"]
            crs_dep = _minutes(row["SCHEDULED_DEPARTURE"])
            dep_delay = _number(row["DEPARTURE_DELAY"])
            if origin not in tz or crs_dep is None or dep_delay is None:
                continue
            day = dt.date(int(row["YEAR"]), int(row["MONTH"]), int(row["DAY"]))
            scheduled = _utc(day, crs_dep, tz[origin])
            key = (row["AIRLINE"], row["FLIGHT_NUMBER"], origin, scheduled)
            if not _agrees(row["DEPARTURE_TIME"], crs_dep, dep_delay):
                continue
            dep_ts = scheduled + round(dep_delay * 60)
            events["dep"].append((origin, dep_ts, key, dep_delay if delay_ok(dep_delay) else None))
            taxi = _number(row["TAXI_OUT"])
            if taxi is not None:
                events["taxi"].append((origin, dep_ts + round(taxi * 60), key, taxi if 0 <= taxi <= 400 else None))
            arr_delay, crs_arr = _number(row["ARRIVAL_DELAY"]), _minutes(row["SCHEDULED_ARRIVAL"])
            if dest not in tz or arr_delay is None or crs_arr is None or not _agrees(row["ARRIVAL_TIME"], crs_arr, arr_delay):
                continue
            candidates = [_utc(day + dt.timedelta(days=k), crs_arr, tz[dest]) for k in (-1, 0, 1, 2)]
            after = [t for t in candidates if t > scheduled]
            if after:
                events["arr"].append((dest, after[0] + round(arr_delay * 60), key, arr_delay if delay_ok(arr_delay) else None))
    return events


def reference_windows(events, queries) -> list[tuple]:
    """Per query: the mean value of its key's events in [t - 1 h, t), one per natural key (the
    earliest), never its own."""
    indexed = {}
    for kind, rows in events.items():
        once = {}
        for airport, t, key, value in sorted(rows, key=lambda e: (e[1], math.inf if e[3] is None else e[3])):
            once.setdefault(key, (airport, t, key, value))
        by_airport = collections.defaultdict(list)
        for airport, t, key, value in sorted(once.values(), key=lambda e: e[1]):
            by_airport[airport].append((t, key, value))
        indexed[kind] = {a: ([t for t, _, _ in es], es) for a, es in by_airport.items()}
    out = []
    for q in queries:
        t, own = q["pred_ts"], tuple(q[k] for k in KEY_FIELDS)
        means = []
        for kind, airport in (("dep", q["origin"]), ("taxi", q["origin"]), ("arr", q["dest"])):
            times, es = indexed[kind].get(airport, ([], []))
            lo, hi = bisect.bisect_left(times, t - WINDOW), bisect.bisect_left(times, t)
            values = [v for _, key, v in es[lo:hi] if key != own and v is not None]
            means.append(sum(values) / len(values) if values else None)
        out.append(tuple(means))
    return out


def test_windows_count_every_observed_event_on_real_rows(tmp_path):
    """The kaggle sample (55k flights, 1,232 cancelled, 122 diverted): every window value of every
    record equals the reference's, computed from the raw rows with the diverted, cancelled and
    rejected flights' events included; and those events do change thousands of values."""
    path = shared_file("flights", "kaggle_2015-01-01_to_04.csv.gz")
    got = _windowed(path, tmp_path)
    assert len(got) > 53_000
    events = reference_events(path)
    expected = reference_windows(events, got)
    records = {tuple(r[k] for k in KEY_FIELDS) for r in got}
    records_only = {kind: [e for e in es if e[2] in records] for kind, es in events.items()}
    without = reference_windows(records_only, got)
    wrong = []
    for record, want in zip(got, expected, strict=True):
        actual = tuple(record[name] for name in FEATURES)
        for name, a, w in zip(FEATURES, actual, want, strict=True):
            if (a is None) != (w is None) or (a is not None and not math.isclose(a, w, rel_tol=1e-9, abs_tol=1e-9)):
                wrong.append((name, record, a, w))
    assert not wrong, f"{len(wrong)} window values differ from the reference, e.g. {wrong[:3]}"
    changed = sum(e != w for e, w in zip(expected, without, strict=True))
    assert changed > 2000, changed  # the events of rows that are not records matter: the test can fail


# ------------------------------------------------------------------ a few inline rows
def _chunk_windows(tmp_path, rows: list[str]) -> dict[str, dict]:
    path = tmp_path / "flights.csv"
    path.write_text("\n".join([BTS_HEADER, *rows]) + "\n")
    got = _windowed(path, tmp_path, [InputFile(str(path), "bts", BTS_HEADER, path.stat().st_size)])
    return {r["flight_number"]: r for r in got}


def test_a_diverted_or_rejected_flights_departure_counts_and_a_flight_never_counts_itself(tmp_path):
    """JFK, 2015-01-01. Flight 1 departs 08:00 (delay 0) and is the query at wheels-off (08:17).
    Flight 2 departed 07:50 with a 10-minute delay and was diverted: excluded as an example, its
    departure counts. Flight 3 departed 07:55 with a 20-minute delay and is rejected for an unknown
    destination: its departure counts too. Flight 4 is flight 2 sent again: counted once. Flight 5
    departed 06:59 (before the window). Flight 1's own departure (08:00 < 08:17) never counts."""
    rows = [
        bts_row(FL_NUM="1", CRS_DEP_TIME="0800", DEP_TIME="0800", DEP_DELAY="0.00", TAXI_OUT="17.00"),
        bts_row(FL_NUM="2", CRS_DEP_TIME="0740", DEP_TIME="0750", DEP_DELAY="10.00", DIVERTED="1.00",
                ARR_TIME="", ARR_DELAY=""),
        bts_row(FL_NUM="3", CRS_DEP_TIME="0735", DEP_TIME="0755", DEP_DELAY="20.00", DEST="QQQ"),
        bts_row(FL_NUM="2", CRS_DEP_TIME="0740", DEP_TIME="0750", DEP_DELAY="10.00", DIVERTED="1.00",
                ARR_TIME="", ARR_DELAY=""),
        bts_row(FL_NUM="5", CRS_DEP_TIME="0659", DEP_TIME="0659", DEP_DELAY="0.00"),
    ]
    got = _chunk_windows(tmp_path, rows)
    assert sorted(got) == ["1", "5"]
    assert got["1"]["avg_dep_delay"] == 15.0  # (10 + 20) / 2: flights 2 and 3, once each; not itself, not 5
    assert got["5"]["avg_dep_delay"] is None  # nothing departed JFK in the hour before 06:59 + its taxi-out


def test_a_rejected_trips_end_counts_and_its_fare_per_mile_where_valid(tmp_path):
    """Trips ending before a 19:30 pickup (window 18:30-19:30): A (a record, $12 over 2 miles), B (rejected:
    no passengers; $30 over 3 miles), C (rejected: pickup longitude not a number; $5 over 1 mile) and D
    (rejected: $1 fare, below the flag drop: its end counts, its fare per mile does not). E ended at 18:29,
    before the window. Q is the query."""
    rows = [
        row2015(pickup="2015-01-15 18:40:00", dropoff="2015-01-15 19:00:00", distance="2", fare="12"),
        row2015(pickup="2015-01-15 18:41:00", dropoff="2015-01-15 19:01:00", distance="3", fare="30", passengers="0"),
        row2015(pickup="2015-01-15 18:42:00", dropoff="2015-01-15 19:02:00", distance="1", fare="5", plon="x"),
        row2015(pickup="2015-01-15 18:43:00", dropoff="2015-01-15 19:03:00", distance="1", fare="1"),
        row2015(pickup="2015-01-15 18:00:00", dropoff="2015-01-15 18:29:00", distance="1", fare="9"),
        row2015(pickup="2015-01-15 19:30:00", dropoff="2015-01-15 19:45:00", distance="1", fare="7"),
    ]
    path = tmp_path / "trips.csv"
    path.write_text("\n".join([HEADER_2015, *rows]) + "\n")
    got = _windowed(path, tmp_path, dataset=taxi,
                    columns=("pickup_datetime", "trips_ended_last_hour", "avg_fare_per_mile_last_hour"))
    by_pickup = {r["pickup_datetime"]: r for r in got}
    assert sorted(by_pickup) == ["2015-01-15 18:00", "2015-01-15 18:40", "2015-01-15 19:30"]
    q = by_pickup["2015-01-15 19:30"]
    assert q["trips_ended_last_hour"] == 4  # A, B, C, D
    assert math.isclose(q["avg_fare_per_mile_last_hour"], (6.0 + 10.0 + 5.0) / 3)  # A, B, C
