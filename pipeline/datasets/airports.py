"""Airport latitude, longitude and time zone by IATA code, and local-time -> UTC conversion.

Default table: the PyPI package ``airportsdata`` (IANA time zones). ``--airports FILE`` takes the BTS
master coordinate table (or the "2015 Flight Delays" airports.csv) for coordinates; the time zone
still comes from airportsdata, and only where it lacks the airport does the BTS fixed
UTC offset serve (no daylight saving there: such rows are logged).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import logging
from zoneinfo import ZoneInfo

import numpy as np

from pipeline.datasets.columnar import Coded, combine

logger = logging.getLogger(__name__)

Airport = tuple  # (lat, lon, tz): tz is an IANA name or a fixed offset "+HHMM"/"-HHMM"


def load_airports(path: str | None = None) -> dict[str, Airport]:
    import airportsdata

    iata = airportsdata.load("IATA")
    table = {code: (float(a["lat"]), float(a["lon"]), a["tz"]) for code, a in iata.items() if a.get("tz")}
    if not path:
        return table
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        text = f.read().decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError(f"--airports {path}: no rows")
    fields = rows[0].keys()
    if "AIRPORT" in fields and "UTC_LOCAL_TIME_VARIATION" in fields:
        code_col, latest = "AIRPORT", "AIRPORT_IS_LATEST"
    elif "IATA_CODE" in fields:
        code_col, latest = "IATA_CODE", None
    else:
        raise ValueError(
            f"--airports {path}: expected the BTS master coordinate table (AIRPORT, LATITUDE, LONGITUDE, "
            f"UTC_LOCAL_TIME_VARIATION, ...) or an IATA_CODE,LATITUDE,LONGITUDE table; got columns {list(fields)[:8]}"
        )
    result: dict[str, Airport] = {}
    fixed, no_tz = 0, []
    for row in rows:
        if latest and row.get(latest) not in ("1", ""):
            continue
        try:
            code, lat, lon = row[code_col].strip(), float(row["LATITUDE"]), float(row["LONGITUDE"])
        except (KeyError, ValueError):
            continue  # rows without coordinates cannot place a flight; airports absent here are rejected per flight
        tz = table.get(code, (None, None, None))[2]
        if tz is None and row.get("UTC_LOCAL_TIME_VARIATION", "").strip():
            tz = row["UTC_LOCAL_TIME_VARIATION"].strip()
            fixed += 1
        if not tz:
            no_tz.append(code)  # kept: its flights are rejected naming the missing time zone, not "unknown"
        result[code] = (lat, lon, tz or None)
    if fixed:
        logger.warning("%d airports of %s have no IANA time zone: using their fixed UTC offset", fixed, path)
    if no_tz:
        logger.warning("no time zone for %d airports of %s (their flights are rejected): %s", len(no_tz), path,
                       ", ".join(sorted(no_tz)[:20]))
    logger.info("loaded %d airports from %s", len(result), path)
    return result


@functools.lru_cache(maxsize=4096)
def _zone(tz: str) -> dt.tzinfo:
    if tz[:1] in "+-" and tz[1:].isascii() and tz[1:].isdigit():
        sign = -1 if tz[0] == "-" else 1
        return dt.timezone(sign * dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5] or 0)))
    return ZoneInfo(tz)


@functools.lru_cache(maxsize=1 << 18)
def local_to_utc(date: str, minutes: int, tz: str) -> int:
    """UTC epoch seconds of local wall-clock ``date`` (YYYY-MM-DD) + ``minutes`` at ``tz``.

    The offset is the one in force at that instant (not at local midnight), so times after the
    2 AM daylight-saving change are right. minutes may be 1440 ("2400"): the next day's 00:00.
    A wall time that does not exist (spring-forward gap) or exists twice (fall-back) takes the
    offset in force before the change (PEP 495 fold=0).
    """
    y, m, d = int(date[:4]), int(date[5:7]), int(date[8:10])
    naive = dt.datetime(y, m, d) + dt.timedelta(minutes=minutes)
    return int(naive.replace(tzinfo=_zone(tz)).timestamp())


@functools.lru_cache(maxsize=1 << 16)  # flights leaving the same minute in the same zone repeat it
def utc_to_local_string(ts: int, tz: str) -> str:
    """UTC epoch seconds -> "YYYY-MM-DD HH:MM" wall clock at ``tz``."""
    return dt.datetime.fromtimestamp(ts, _zone(tz)).strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------- many at once (the block parsers)
def local_to_utc_many(days: Coded, minutes: np.ndarray, zones: Coded, ok: np.ndarray) -> np.ndarray:
    """:func:`local_to_utc` of every row: ``days`` and ``zones`` are coded columns, ``minutes`` an int array.

    A (day, zone) without a UTC offset change from its 00:00 to the next day's takes 00:00's time
    plus the minutes; a day with a change (daylight saving) takes :func:`local_to_utc` row by row.
    Rows whose conversion fails are marked False in ``ok`` (in place) and get 0.
    """
    pairs = combine(days, zones)
    start = np.zeros(len(pairs.values), dtype=np.int64)
    uniform = np.zeros(len(pairs.values), dtype=bool)
    for j, (day, tz) in enumerate(pairs.values):
        try:
            start[j] = local_to_utc(day, 0, tz)
            uniform[j] = local_to_utc(day, 1440, tz) - start[j] == 86400
        except Exception:  # noqa: BLE001 - e.g. the first or last day there is: row by row below
            pass
    ts = start[pairs.codes] + minutes * 60
    for i in np.flatnonzero(~uniform[pairs.codes]).tolist():
        day, tz = pairs.values[pairs.codes[i]]
        try:
            ts[i] = local_to_utc(day, int(minutes[i]), tz)
        except Exception:  # noqa: BLE001 - local_to_utc fails the same way row by row
            ts[i] = 0
            ok[i] = False
    return ts


def utc_to_local_string_many(ts: np.ndarray, zones: Coded, ok: np.ndarray) -> list:
    """:func:`utc_to_local_string` of every row: ``ts`` an int array, ``zones`` a coded column.

    A (UTC day, zone) with one UTC offset all day shifts by it and formats the local day once and
    the local "HH:MM" once per distinct value; any other row is formatted one by one. Rows whose
    conversion fails are marked False in ``ok`` (in place) and get None.
    """
    utc_days, day_codes = np.unique(ts // 86400, return_inverse=True)
    pairs = combine(Coded(utc_days.tolist(), day_codes.reshape(-1)), zones)
    offset = np.zeros(len(pairs.values), dtype=np.int64)
    uniform = np.zeros(len(pairs.values), dtype=bool)
    for j, (day, tz) in enumerate(pairs.values):
        zone = _zone(tz)
        try:
            a = dt.datetime.fromtimestamp(day * 86400, zone).utcoffset()
            b = dt.datetime.fromtimestamp(day * 86400 + 86399, zone).utcoffset()
        except Exception:  # noqa: BLE001 - out of range: row by row below, which fails the same way
            continue
        if a == b:
            offset[j], uniform[j] = int(a.total_seconds()), True
    local_day, second = np.divmod(ts + offset[pairs.codes], 86400)
    days, day_inverse = np.unique(local_day, return_inverse=True)
    day_text = np.array([_day_string(d) for d in days.tolist()], dtype=object)
    out = (day_text[day_inverse.reshape(-1)] + _CLOCKS[second // 60]).tolist()
    out_of_range = np.array([not t for t in day_text.tolist()], dtype=bool)[day_inverse.reshape(-1)]
    for i in np.flatnonzero(~uniform[pairs.codes] | out_of_range).tolist():
        try:
            out[i] = utc_to_local_string(int(ts[i]), zones.values[zones.codes[i]])
        except Exception:  # noqa: BLE001
            out[i] = None
            ok[i] = False
    return out


_CLOCKS = np.array([f"{m // 60:02d}:{m % 60:02d}" for m in range(1440)], dtype=object)


def _day_string(day: int) -> str:
    """"YYYY-MM-DD " of a day number since 1970-01-01, as utc_to_local_string writes it ("": out of range)."""
    try:
        return (dt.datetime(1970, 1, 1) + dt.timedelta(days=day)).strftime("%Y-%m-%d ")
    except OverflowError:
        return ""
