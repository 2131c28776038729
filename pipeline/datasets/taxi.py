"""NYC taxi: input layouts, the canonical trip, cleaning rules, windowed features and ``preprocessing_fn``.

Layouts (detected from the first line, or named with --input_format):
  tlc2009    TLC yellow-cab CSV of 2009 (vendor_name, Trip_Pickup_DateTime, Start_Lon, Fare_Amt, ...);
             a leading unnamed index column (a file re-saved by pandas) is ignored
  tlc2010    TLC yellow-cab CSV of 2010-2014 (vendor_id, pickup_datetime, pickup_longitude, ...); the
             column names of BigQuery's bigquery-public-data.new_york_taxi_trips tables too
  tlc2015    TLC yellow-cab CSV of 2015 to mid-2016 (VendorID, tpep_pickup_datetime, RateCodeID or
             RatecodeID, ...)
  course     the course's already-cleaned CSV, no header: fare_amount, pickup_datetime ("... UTC"),
             pickuplon, pickuplat, dropofflon, dropofflat, passengers, key (detected by the shape of
             its first line). It has no dropoff time and no trip distance: those are missing, and the
             rules that need them do not apply.
  tlc_zones  TLC files from July 2016 on (PULocationID, DOLocationID): refused at plan time, since they
             carry taxi zone IDs, not coordinates
Header names are matched without regard to case or surrounding spaces (2014's files have
" pickup_datetime"; RateCodeID became RatecodeID in 2016).

Times: TLC date-times are the New York wall clock. They become UTC epoch seconds with the offset in
force at that instant (``pipeline.datasets.airports.local_to_utc``: a wall time in the spring-forward gap, or
in the repeated fall-back hour, takes the offset in force before the change, i.e. EST in March and
EDT in November). One exception: a dropoff in the repeated hour that would fall before its pickup
under EDT is read as the second (EST) occurrence. The ``pickup_datetime`` feature is then the
New York wall clock of that instant, "YYYY-MM-DD HH:MM".

The course CSV's times say "UTC", but they read as the New York wall clock: their hour-of-day
counts have the overnight trough at 04-05, as TLC's local times do, where true UTC times of New
York trips would bottom out at 09-10 (tests/test_taxi.py checks this on the shared files). Most
likely the course's BigQuery table stored TLC's local times as TIMESTAMPs, which print as UTC.
``COURSE_UTC_LABEL_IS_LOCAL = False`` takes the label literally instead.

Cleaning (each rejected row has a reason naming the field): fare + tolls >= 2.50, no negative fare
or tolls, coordinates within [-78, -70] x [37, 45] (so (0, 0) is out), passengers >= 1, trip
distance > 0, dropoff after pickup, at most 6 hours and 100 mph; a rule that needs a missing field
(the course rows' dropoff time and distance) does not apply. The ranges live in ``schemas.taxi``.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import logging
import math
import re
from zoneinfo import ZoneInfo

from pipeline.datasets.airports import local_to_utc, utc_to_local_string
from pipeline.datasets.fields import MISSING, csv_fields, number
from pipeline.records.dataset import InputError, Layout, UsageError, split_unit
from pipeline.records.verdicts import Reject
from pipeline.records.windows import Query, WindowFeature
from schemas import transformed_name
from schemas.taxi import (
    DAYS_PER_WEEK,
    DERIVED_FEATURES,
    HOURS_PER_DAY,
    LABEL_KEY,
    LOCATION_FEATURES,
    MAX_SPEED_MPH,
    MAX_TRIP_HOURS,
    MIN_FARE,
    MISSING_INDICATORS,
    NUM_LATLON_BUCKETS,
    NUMERIC_FEATURES,
    SCHEMA,
    TIMEZONE,
)

logger = logging.getLogger(__name__)

COURSE_UTC_LABEL_IS_LOCAL = True  # see the module docstring

# Canonical field -> header name (lower case), per layout. Absent fields are missing, never zero.
_TLC2009 = {
    "pickup_datetime": "trip_pickup_datetime", "dropoff_datetime": "trip_dropoff_datetime",
    "passenger_count": "passenger_count", "trip_distance": "trip_distance",
    "pickup_longitude": "start_lon", "pickup_latitude": "start_lat",
    "dropoff_longitude": "end_lon", "dropoff_latitude": "end_lat",
    "payment_type": "payment_type", "fare_amount": "fare_amt", "tolls_amount": "tolls_amt",
}
_TLC2010 = {
    "pickup_datetime": "pickup_datetime", "dropoff_datetime": "dropoff_datetime",
    "passenger_count": "passenger_count", "trip_distance": "trip_distance",
    "pickup_longitude": "pickup_longitude", "pickup_latitude": "pickup_latitude",
    "dropoff_longitude": "dropoff_longitude", "dropoff_latitude": "dropoff_latitude",
    "payment_type": "payment_type", "fare_amount": "fare_amount", "tolls_amount": "tolls_amount",
}
_TLC2015 = {**_TLC2010, "pickup_datetime": "tpep_pickup_datetime", "dropoff_datetime": "tpep_dropoff_datetime"}
_ZONE_COLUMNS = ("pulocationid", "dolocationid")
_COURSE_FIELDS = 8

# payment_type: TLC codes since 2015, and the words and abbreviations of 2009-2014.
_PAYMENT_CODES = {"1": "credit", "2": "cash", "3": "no_charge", "4": "dispute", "5": "unknown", "6": "voided"}
_PAYMENT_PREFIXES = (("cr", "credit"), ("cas", "cash"), ("csh", "cash"), ("no", "no_charge"),
                     ("dis", "dispute"), ("unk", "unknown"), ("void", "voided"))

_ISO = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?\s*(UTC|Z|[+-]00:?00)?"
)
_US = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s*([AaPp][Mm]))?")

_MILES_PER_DEGREE_LAT = 69.0
_MILES_PER_DEGREE_LON = 69.17 * math.cos(math.radians(40.75))  # at Manhattan's latitude


# ---------------------------------------------------------------- field parsing
def _count(text: str, field: str) -> int | None:
    value = number(text, field)
    if value is None:
        return None
    if value != int(value):
        raise Reject(f"{field}: not a whole number {text!r}")
    return int(value)


def parse_datetime(text: str, field: str) -> tuple[dt.datetime, bool]:
    """Date-time text -> (naive wall-clock datetime, whether the text says it is UTC).

    Accepts "YYYY-MM-DD HH:MM[:SS[.fff]]" (or with "T"), optionally followed by "UTC", "Z" or
    "+00:00", and NYC Open Data's "MM/DD/YYYY hh:mm:ss AM".
    """
    m = _ISO.fullmatch(text)
    try:
        if m:
            y, mo, d, h, mi, s, zone = m.groups()
            value = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0))
            return value, zone is not None
        m = _US.fullmatch(text)
        if m:
            mo, d, y, h, mi, s, ampm = m.groups()
            hour = int(h)
            if ampm:
                if not 1 <= hour <= 12:
                    raise ValueError("hour out of range")
                hour = hour % 12 + (12 if ampm.lower() == "pm" else 0)
            return dt.datetime(int(y), int(mo), int(d), hour, int(mi), int(s or 0)), False
    except ValueError:
        pass
    if text in MISSING:
        raise Reject(f"{field}: missing")
    raise Reject(f"{field}: not a date-time {text!r}")


def new_york_to_utc(local: dt.datetime, fold: int = 0) -> int:
    """UTC epoch seconds of a New York wall-clock time (fold=0: the offset before a DST change)."""
    if fold == 0:
        minutes = local.hour * 60 + local.minute
        return local_to_utc(local.date().isoformat(), minutes, TIMEZONE) + local.second
    return int(local.replace(tzinfo=ZoneInfo(TIMEZONE), fold=1).timestamp())


def _to_utc(text: str, field: str, utc_label_is_local: bool = False) -> tuple[int, dt.datetime]:
    value, is_utc = parse_datetime(text, field)
    if is_utc and not utc_label_is_local:
        return calendar.timegm(value.timetuple()), value
    return new_york_to_utc(value), value


def _payment(text: str) -> str | None:
    if text in MISSING:
        return None
    if text in _PAYMENT_CODES:
        return _PAYMENT_CODES[text]
    lower = text.lower()
    for prefix, name in _PAYMENT_PREFIXES:
        if lower.startswith(prefix):
            return name
    return lower


def canonical_trip(
    *,
    pickup_ts: int,
    dropoff_ts: int | None,
    passenger_count: int | None,
    trip_distance: float | None,
    coordinates: tuple[float | None, float | None, float | None, float | None],
    fare: float | None,
    tolls: float | None,
    payment_type: str | None = None,
) -> dict:
    """The canonical trip from parsed values, with the rules that span fields (ranges: the schema)."""
    if fare is None:
        raise Reject("fare_amount: missing")
    if tolls is None:
        raise Reject("tolls_amount: missing")
    if fare < 0:
        raise Reject(f"fare_amount: negative ({fare})")
    if tolls < 0:
        raise Reject(f"tolls_amount: negative ({tolls})")
    hours = None
    if dropoff_ts is not None:
        if dropoff_ts <= pickup_ts:
            raise Reject("dropoff_datetime: not after pickup_datetime")
        hours = (dropoff_ts - pickup_ts) / 3600.0
        if hours > MAX_TRIP_HOURS:
            raise Reject(f"dropoff_datetime: trip duration above maximum ({hours:.1f} h > {MAX_TRIP_HOURS} h)")
    if trip_distance is not None:
        if trip_distance <= 0:
            raise Reject(f"trip_distance: not positive ({trip_distance})")
        if hours is not None and trip_distance / hours > MAX_SPEED_MPH:
            speed = trip_distance / hours
            raise Reject(f"trip_distance: implied speed above maximum ({speed:.0f} mph > {MAX_SPEED_MPH} mph)")
    label = round(fare + tolls, 2)
    pickup_lon, pickup_lat, dropoff_lon, dropoff_lat = coordinates
    return {
        "pickup_datetime": utc_to_local_string(pickup_ts, TIMEZONE),
        "pickup_longitude": pickup_lon,
        "pickup_latitude": pickup_lat,
        "dropoff_longitude": dropoff_lon,
        "dropoff_latitude": dropoff_lat,
        "passenger_count": passenger_count,
        "trips_ended_last_hour": None,
        "avg_fare_per_mile_last_hour": None,
        LABEL_KEY: label,
        "pickup_ts": pickup_ts,
        "dropoff_ts": dropoff_ts,
        "trip_distance": trip_distance,
        # A fare below the flag drop is rejected (schema range): its fare per mile is no event value either.
        "fare_per_mile": None if trip_distance is None or label < MIN_FARE else label / trip_distance,
        "payment_type": payment_type,
    }


def _cell(row: dict, col: str) -> str:
    value = row.get(col)
    return "" if value is None else str(value).strip()


def tlc_trip(row: dict, cols: dict) -> dict:
    """One TLC row (lower-case column name -> value) of any TLC layout -> the canonical trip.

    Also serves rows of the BigQuery public tables (``bigquery_query``) with ``cols=_TLC2010``.
    """
    text = {field: _cell(row, col) for field, col in cols.items()}
    coordinates = tuple(number(text[f], f) for f in LOCATION_FEATURES)
    passengers = _count(text["passenger_count"], "passenger_count")
    distance = number(text["trip_distance"], "trip_distance")
    fare = number(text["fare_amount"], "fare_amount")
    tolls = number(text["tolls_amount"], "tolls_amount")
    pickup_ts, _ = _to_utc(text["pickup_datetime"], "pickup_datetime")
    dropoff_ts = None
    if text["dropoff_datetime"] not in MISSING:
        dropoff_ts, dropoff_local = _to_utc(text["dropoff_datetime"], "dropoff_datetime")
        if dropoff_ts <= pickup_ts:  # the repeated fall-back hour: the dropoff may be its second pass
            dropoff_ts = max(dropoff_ts, new_york_to_utc(dropoff_local, fold=1))
    return canonical_trip(
        pickup_ts=pickup_ts,
        dropoff_ts=dropoff_ts,
        passenger_count=passengers,
        trip_distance=distance,
        coordinates=coordinates,
        fare=fare,
        tolls=tolls,
        payment_type=_payment(text["payment_type"]),
    )


def _lenient(fn, *args):
    """``fn(*args)``, or None where it fails: one field of a row that a rule rejected."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - the row's own reason comes from tlc_trip
        return None


def trip_facts(row: dict, cols: dict) -> dict:
    """The events of a TLC row that is not a record (see pipeline.stages.parse.ParseChunks): the
    trip's end where its pickup and dropoff are valid (dropoff after pickup, at most MAX_TRIP_HOURS
    later), its fare per mile where fare, tolls and distance are valid too (the label in its range,
    the speed at most MAX_SPEED_MPH), and its natural key, each field read on its own."""
    text = {field: _cell(row, col) for field, col in cols.items()}
    facts = {f: _lenient(number, text[f], f) for f in LOCATION_FEATURES}
    pickup = _lenient(_to_utc, text["pickup_datetime"], "pickup_datetime")
    dropoff = _lenient(_to_utc, text["dropoff_datetime"], "dropoff_datetime")
    if pickup is None or dropoff is None:
        return facts
    pickup_ts, (dropoff_ts, dropoff_local) = pickup[0], dropoff
    if dropoff_ts <= pickup_ts:  # the repeated fall-back hour, as tlc_trip reads it
        dropoff_ts = max(dropoff_ts, new_york_to_utc(dropoff_local, fold=1))
    hours = (dropoff_ts - pickup_ts) / 3600.0
    if not 0 < hours <= MAX_TRIP_HOURS:
        return facts
    facts.update(pickup_ts=pickup_ts, dropoff_ts=dropoff_ts)
    fare, tolls, distance = (_lenient(number, text[f], f) for f in ("fare_amount", "tolls_amount", "trip_distance"))
    if None in (fare, tolls, distance) or fare < 0 or tolls < 0 or distance <= 0 or distance / hours > MAX_SPEED_MPH:
        return facts
    label = round(fare + tolls, 2)
    if SCHEMA.columns[LABEL_KEY].check(LABEL_KEY, label) is None:
        facts["fare_per_mile"] = label / distance
    return facts


def course_trip(values: list[str]) -> dict:
    """One course CSV row (fare+tolls, pickup "... UTC", lon, lat, lon, lat, passengers, key) -> trip."""
    if len(values) != _COURSE_FIELDS:
        raise Reject(f"line: {len(values)} fields where the course layout has {_COURSE_FIELDS}")
    fare_text, pickup_text, *coords, passengers_text, _key = (v.strip() for v in values)
    coordinates = tuple(number(t, f) for t, f in zip(coords, LOCATION_FEATURES, strict=True))
    passengers = _count(passengers_text, "passenger_count")
    fare = number(fare_text, "fare_amount")
    pickup_ts, _ = _to_utc(pickup_text, "pickup_datetime", utc_label_is_local=COURSE_UTC_LABEL_IS_LOCAL)
    return canonical_trip(
        pickup_ts=pickup_ts,
        dropoff_ts=None,
        passenger_count=passengers,
        trip_distance=None,
        coordinates=coordinates,
        fare=fare,
        tolls=0.0,  # the course's fare_amount already includes the tolls
    )


# ---------------------------------------------------------------- layouts
def _header_names(line: str) -> list[str]:
    return [n.strip().lower() for n in next(csv.reader([line]), [])]


def _zone_id_message(what: str) -> str:
    return (
        f"{what} carries taxi zone IDs (PULocationID, DOLocationID), not coordinates: TLC trip records "
        "from July 2016 on locate trips by zone only, and this pipeline's features need pickup and dropoff "
        "longitude and latitude. Use 2009 to June 2016 TLC files, or the course CSV"
    )


def _zone_id_error(header: str) -> InputError:
    return InputError(_zone_id_message("this TLC file") + f" (header {header[:200]!r})")


def _has_zone_ids(line: str) -> bool:
    return any(c in _header_names(line) for c in _ZONE_COLUMNS)


def _detect_zone_ids(line: str) -> bool:
    """Never matches: raises InputError on a zone-ID header, so the run fails at plan time."""
    if _has_zone_ids(line):
        raise _zone_id_error(line)
    return False


def _refuse_zone_ids(header: str):
    raise _zone_id_error(header)


def _tlc_detect(cols: dict):
    needed = set(cols.values())

    def detect(line: str) -> bool:
        return needed <= set(_header_names(line))

    return detect


def _tlc_parser(cols: dict):
    def make(header: str):
        if _has_zone_ids(header):
            raise _zone_id_error(header)
        names = _header_names(header)
        missing = sorted(c for c in cols.values() if c not in names)
        if missing:
            raise InputError(f"header lacks columns {missing}: {header[:200]!r}")
        width = len(names)

        def parse(line: str) -> dict:
            row = dict(zip(names, csv_fields(line, width), strict=True))
            try:
                return tlc_trip(row, cols)
            except Reject as e:  # the trip still ended: its valid fields are events for the others' windows
                e.facts = trip_facts(row, cols)
                raise

        return parse

    return make


def _looks_like_course(line: str) -> bool:
    values = next(csv.reader([line]), [])
    if len(values) != _COURSE_FIELDS:
        return False
    try:
        [float(values[i]) for i in (0, 2, 3, 4, 5, 6)]
    except ValueError:
        return False
    return _ISO.fullmatch(values[1].strip()) is not None


def _course_parser(_header: str):
    def parse(line: str) -> dict:
        return course_trip(csv_fields(line, _COURSE_FIELDS, "the course layout"))

    return parse


def layouts() -> dict[str, Layout]:
    return {
        "tlc_zones": Layout("tlc_zones", True, _detect_zone_ids, _refuse_zone_ids,
                            "TLC CSV from July 2016 on: zone IDs, not coordinates (refused)"),
        "tlc2009": Layout("tlc2009", True, _tlc_detect(_TLC2009), _tlc_parser(_TLC2009), "TLC yellow CSV, 2009"),
        "tlc2010": Layout("tlc2010", True, _tlc_detect(_TLC2010), _tlc_parser(_TLC2010),
                          "TLC yellow CSV, 2010-2014 (and BigQuery column names)"),
        "tlc2015": Layout("tlc2015", True, _tlc_detect(_TLC2015), _tlc_parser(_TLC2015),
                          "TLC yellow CSV, 2015 to June 2016"),
        "course": Layout("course", False, _looks_like_course, _course_parser,
                         "the course's cleaned CSV, no header"),
    }


def make_layouts(options, labelled: bool = True) -> dict[str, Layout]:
    """TLC and course layouts. Batch prediction (labelled=False) reads the same completed-trip records:
    their cleaning rules need the dropoff and the fare, so booking-time records are not read yet."""
    del options, labelled
    return layouts()


def default_input(options) -> tuple[str, str]:
    raise UsageError(
        "--dataset taxi needs --input PATTERN (no data is embedded): NYC TLC yellow-cab trip records, "
        "2009 to June 2016 (later files have zone IDs, not coordinates), as CSV from the TLC trip record "
        "data page (https://www.nyc.gov/site/tlc/about/tlc-trip-record-data.page), or exported from the "
        "BigQuery public dataset bigquery-public-data.new_york_taxi_trips (tlc_yellow_trips_YYYY; see "
        "pipeline.datasets.taxi.bigquery_query), or the course's cleaned CSV. Several files: a glob or "
        "comma-separated patterns, e.g. --input 'data/yellow_tripdata_2015-*.csv'"
    )


# ---------------------------------------------------------------- BigQuery (query text only)
BIGQUERY_DATASET = "bigquery-public-data.new_york_taxi_trips"
BIGQUERY_COLUMNS = (
    "pickup_datetime", "dropoff_datetime", "pickup_longitude", "pickup_latitude", "dropoff_longitude",
    "dropoff_latitude", "passenger_count", "trip_distance", "fare_amount", "tolls_amount", "payment_type",
)
_TABLE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
_YEAR_TABLE = re.compile(r"tlc_yellow_trips_(\d{4})$")


def bigquery_query(table: str, limit: int | None = None) -> str:
    """Standard SQL reading a BigQuery TLC yellow table with the columns ``tlc_trip`` takes (layout tlc2010).

    ``table`` is "project.dataset.table", e.g. f"{BIGQUERY_DATASET}.tlc_yellow_trips_2015". No
    filtering in SQL: the pipeline's cleaning rules reject (and count) bad rows.
    """
    if not _TABLE.fullmatch(table):
        raise UsageError(f"BigQuery table must be project.dataset.table, got {table!r}")
    year = _YEAR_TABLE.search(table)
    if year and int(year.group(1)) >= 2017:
        raise InputError(_zone_id_message(f"BigQuery table {table}"))
    sql = f"SELECT {', '.join(BIGQUERY_COLUMNS)} FROM `{table}`"
    if limit is not None:
        if int(limit) != limit or limit <= 0:
            raise UsageError(f"limit must be a positive integer, got {limit!r}")
        sql += f" LIMIT {int(limit)}"
    return sql


# ---------------------------------------------------------------- windows and split
WINDOW_FEATURES = (
    WindowFeature("trips_ended_last_hour", key=None, event_time="dropoff_ts", query_time="pickup_ts"),
    WindowFeature(
        "avg_fare_per_mile_last_hour", key=None, event_time="dropoff_ts", query_time="pickup_ts",
        value="fare_per_mile",
    ),
)
WINDOW_BUCKET_SECONDS = 3600  # (all NYC, UTC hour) groups, the previous hour's events as context


# Online (pipeline.online): what an instance may carry beside the model's inputs, and its query.
ONLINE_CONTEXT = ("pickup_time",)


def online_query(instance: dict, airports=None) -> Query:
    """An instance's window query: the prediction time is the pickup in UTC, read as preprocessing
    reads a TLC date-time, from ``pickup_time`` (the record's own text, to the second) where given,
    else from pickup_datetime (to the minute). Its own trip has not ended: nothing to leave out."""
    del airports
    text = instance.get("pickup_time", instance.get("pickup_datetime"))
    if not isinstance(text, str):
        raise ValueError(f"pickup_time: not a date-time {text!r}")
    try:
        pickup_ts, _ = _to_utc(text.strip(), "pickup_time")
    except Reject as e:
        raise ValueError(str(e)) from None
    return Query(int(pickup_ts), None, {})


@split_unit("pickup_ts")
def pickup_time_key(record: dict) -> str:
    """The split key: the pickup instant, "YYYY-MM-DD HH:MM:SS UTC"."""
    return dt.datetime.fromtimestamp(record["pickup_ts"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


SPLIT_UNITS = {"pickup_time": pickup_time_key}


# ---------------------------------------------------------------- tensorflow-transform
def preprocessing_fn(inputs):
    """Raw trip features -> model inputs. Analysed on the train split only."""
    import tensorflow as tf

    from pipeline.datasets import features as fx  # TensorFlow: imported where the graph is built, not by a parse helper

    out = {}
    for name in NUMERIC_FEATURES:
        out[transformed_name(name)] = fx.z_score(tf.cast(inputs[name], tf.float32))
    for name in MISSING_INDICATORS:
        out[transformed_name(f"{name}_missing")] = fx.is_missing(inputs[name])
    plon, plat, dlon, dlat = (tf.cast(inputs[n], tf.float32) for n in LOCATION_FEATURES)
    derived = {
        "delta_lon": dlon - plon,
        "delta_lat": dlat - plat,
        "euclidean": tf.sqrt(
            tf.square((dlat - plat) * _MILES_PER_DEGREE_LAT) + tf.square((dlon - plon) * _MILES_PER_DEGREE_LON)
        ),
    }
    for name in DERIVED_FEATURES:
        out[transformed_name(name)] = fx.z_score(derived[name])
    n = NUM_LATLON_BUCKETS
    buckets = {name: fx.bucketize(inputs[name], n) for name in LOCATION_FEATURES}
    for name, ids in buckets.items():
        out[transformed_name(f"{name}_bucket")] = ids
    pickup_loc = fx.cross(buckets["pickup_latitude"], buckets["pickup_longitude"], n, n)
    dropoff_loc = fx.cross(buckets["dropoff_latitude"], buckets["dropoff_longitude"], n, n)
    out[transformed_name("pickup_loc")] = pickup_loc
    out[transformed_name("dropoff_loc")] = dropoff_loc
    out[transformed_name("pickup_dropoff")] = fx.cross(pickup_loc, dropoff_loc, n * n, n * n)
    hour, weekday = fx.local_hour_and_weekday(inputs["pickup_datetime"])
    out[transformed_name("pickup_hour")] = hour
    out[transformed_name("pickup_weekday")] = weekday
    out[transformed_name("pickup_hour_weekday")] = fx.cross(weekday, hour, DAYS_PER_WEEK, HOURS_PER_DAY)
    out[LABEL_KEY] = inputs[LABEL_KEY]
    return out
