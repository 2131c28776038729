"""A single-process, vectorised pandas reference for the flights cleaning and windowed averages:
the practical limit of one core of this machine for the same work the Beam pipeline does in
``CleanAndWindow`` (parse, validate, exclude cancelled/diverted, local times to UTC with the
offset in force, de-duplicate, then the three past-only windowed averages).

Kaggle layout only (the benchmark's input). Windowed averages: per key (airport), events sorted by
time, cumulative sums, and ``searchsorted`` for [t - window, t); the record's own event is taken
out where it falls inside its window. Times: the wall clock is localised per time zone with the
PEP 495 fold=0 rule the pipeline uses (an ambiguous fall-back time takes the earlier, daylight
offset; a spring-forward gap time the offset before the change, i.e. it is shifted one hour on).

    python -m bench.pandas_ref --input 'DIR/*.csv.gz' [--dump keys.parquet] [--json timings.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import pandas as pd

MISSING = ("", "NA", "N/A", "null", "NULL", "None")
TRUE = ("1", "1.0", "1.00", "true", "True", "TRUE")
FALSE = ("", "0", "0.0", "0.00", "false", "False", "FALSE", *MISSING)
COLUMNS = {
    "YEAR": "year", "MONTH": "month", "DAY": "day", "AIRLINE": "carrier", "FLIGHT_NUMBER": "flight_number",
    "ORIGIN_AIRPORT": "origin", "DESTINATION_AIRPORT": "dest", "SCHEDULED_DEPARTURE": "crs_dep",
    "DEPARTURE_TIME": "dep_time", "DEPARTURE_DELAY": "dep_delay", "TAXI_OUT": "taxi_out",
    "SCHEDULED_ARRIVAL": "crs_arr", "ARRIVAL_TIME": "arr_time", "ARRIVAL_DELAY": "arr_delay",
    "CANCELLED": "cancelled", "DIVERTED": "diverted", "DISTANCE": "distance",
}
DELAY = (-240.0, 3000.0)
WINDOWS = (  # (name, key, event time, value); the query time is pred_ts for all three
    ("avg_dep_delay", "origin", "dep_ts", "dep_delay"),
    ("avg_taxi_out", "origin", "wheels_off_ts", "taxi_out"),
    ("avg_arr_delay", "dest", "arr_ts", "arr_delay"),
)
KEY_COLUMNS = ("fl_date", "carrier", "flight_number", "origin", "dest", "dep_ts")


def _number(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """text -> (float values, NaN where missing; mask of present-but-invalid)."""
    s = s.str.strip()
    missing = s.isin(MISSING)
    v = pd.to_numeric(s.where(~missing), errors="coerce").astype("float64")
    bad = ~missing & ~np.isfinite(v)
    return v, bad


def _hhmm(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """hhmm text -> (minutes after midnight, mask of invalid)."""
    s = s.str.strip().str.replace(r"\.0$", "", regex=True)
    ok = s.str.fullmatch(r"\d{1,4}").fillna(False).astype(bool)
    v = pd.to_numeric(s.where(ok), errors="coerce").fillna(0).astype("int64")
    h, m = v // 100, v % 100
    ok &= (m < 60) & (h <= 24) & ~((h == 24) & (m > 0))
    return (h * 60 + m).where(ok, 0), ~ok


def _local_to_utc(days: np.ndarray, minutes: np.ndarray, tz: np.ndarray) -> np.ndarray:
    """UTC epoch seconds of local wall clock (days since epoch + minutes) at each tz (fold=0)."""
    naive_s = days.astype("int64") * 86400 + minutes.astype("int64") * 60
    out = np.empty(len(naive_s), dtype="int64")
    for zone in pd.unique(tz):
        idx = np.flatnonzero(tz == zone)
        local = pd.DatetimeIndex(naive_s[idx].astype("datetime64[s]"))
        utc = local.tz_localize(zone, ambiguous=np.ones(len(idx), dtype=bool), nonexistent=pd.Timedelta(hours=1))
        out[idx] = utc.tz_convert("UTC").tz_localize(None).as_unit("s").asi8
    return out


def _utc_to_local_string(ts: np.ndarray, tz: np.ndarray) -> np.ndarray:
    out = np.empty(len(ts), dtype=object)
    for zone in pd.unique(tz):
        idx = np.flatnonzero(tz == zone)
        local = pd.DatetimeIndex(ts[idx].astype("datetime64[s]")).tz_localize("UTC").tz_convert(zone).tz_localize(None)
        text = np.datetime_as_string(local.values.astype("datetime64[m]"))
        out[idx] = np.char.replace(text.astype(str), "T", " ")
    return out


def clean(paths: list[str], airports: dict) -> tuple[pd.DataFrame, dict]:
    """Raw kaggle CSV files -> canonical flights (before windows) and counts."""
    timings = {}
    t0 = time.perf_counter()
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False, usecols=list(COLUMNS)) for p in paths]
    raw = pd.concat(frames, ignore_index=True).rename(columns=COLUMNS)
    timings["read_csv_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = len(raw)
    reject = np.zeros(n, dtype=bool)
    cancelled_t, diverted_t = raw["cancelled"].str.strip(), raw["diverted"].str.strip()
    bad_flag = ~(cancelled_t.isin(TRUE) | cancelled_t.isin(FALSE)) | ~(diverted_t.isin(TRUE) | diverted_t.isin(FALSE))
    excluded = ~bad_flag & (cancelled_t.isin(TRUE) | diverted_t.isin(TRUE))
    dep_delay, bad = _number(raw["dep_delay"])
    reject |= bad
    arr_delay, bad = _number(raw["arr_delay"])
    reject |= bad
    y, m, d = (pd.to_numeric(raw[c].str.strip(), errors="coerce") for c in ("year", "month", "day"))
    dates = pd.to_datetime(pd.DataFrame({"year": y, "month": m, "day": d}), errors="coerce")
    reject |= dates.isna()
    days = (dates.values.astype("datetime64[D]").astype("int64"))
    origin, dest = raw["origin"].str.strip(), raw["dest"].str.strip()
    known = set(airports)
    reject |= ~origin.isin(known) | ~dest.isin(known)
    crs_dep, bad = _hhmm(raw["crs_dep"])
    reject |= bad
    crs_arr, bad = _hhmm(raw["crs_arr"])
    reject |= bad
    taxi_out, bad = _number(raw["taxi_out"])
    reject |= bad
    distance, bad = _number(raw["distance"])
    reject |= bad
    reject |= dep_delay.isna() | arr_delay.isna()
    for text_col, sched, delay in (("dep_time", crs_dep, dep_delay), ("arr_time", crs_arr, arr_delay)):
        text = raw[text_col].str.strip()
        present = ~text.isin(MISSING)
        reported, bad = _hhmm(text)
        expected = sched + np.trunc(delay.fillna(0)).astype("int64")
        reject |= present & (bad | ((reported - expected) % 1440 != 0))
    carrier = raw["carrier"].str.strip()
    reject |= carrier.eq("")
    reject |= ~dep_delay.between(*DELAY) | ~arr_delay.between(*DELAY) | ~distance.between(1.0, 6000.0)
    reject |= taxi_out.notna() & ~taxi_out.between(0.0, 400.0)
    reject &= ~excluded
    keep = ~(reject | excluded)
    reject_parse = int(reject.sum())

    df = pd.DataFrame({
        "fl_date": np.datetime_as_string(days[keep].astype("datetime64[D]")),
        "flight_number": raw["flight_number"].str.strip()[keep].replace("", None).values,
        "carrier": carrier[keep].values, "origin": origin[keep].values, "dest": dest[keep].values,
        "dep_delay": dep_delay[keep].values, "taxi_out": taxi_out[keep].values,
        "distance": distance[keep].values, "arr_delay": arr_delay[keep].values,
    })
    days_k, dep_min, arr_min = days[keep], crs_dep[keep].values, crs_arr[keep].values
    dep_lat = np.array([airports[c][0] for c in df["origin"]]) if len(df) else np.array([])
    tz_of = {c: a[2] for c, a in airports.items()}
    dep_tz = df["origin"].map(tz_of).values
    arr_tz = df["dest"].map(tz_of).values
    df["dep_lat"] = dep_lat
    df["dep_lon"] = df["origin"].map({c: a[1] for c, a in airports.items()}).values
    df["arr_lat"] = df["dest"].map({c: a[0] for c, a in airports.items()}).values
    df["arr_lon"] = df["dest"].map({c: a[1] for c, a in airports.items()}).values
    crs_dep_ts = _local_to_utc(days_k, dep_min, dep_tz)
    dep_ts = crs_dep_ts + np.round(df["dep_delay"].values * 60).astype("int64")
    arr_sched = np.full(len(df), -1, dtype="int64")
    for offset in (2, 1, 0, -1):  # the first candidate after the departure wins: fill latest first
        cand = _local_to_utc(days_k + offset, arr_min, arr_tz)
        arr_sched = np.where(cand > crs_dep_ts, cand, arr_sched)
    no_arrival = arr_sched < 0
    arr_ts = arr_sched + np.round(df["arr_delay"].values * 60).astype("int64")
    taxi = df["taxi_out"].values
    wheels_off = np.where(np.isnan(taxi), -1, dep_ts + np.round(np.nan_to_num(taxi) * 60).astype("int64"))
    df["dep_time_local"] = _utc_to_local_string(dep_ts, dep_tz)
    df["ontime"] = (df["arr_delay"].values < 15.0).astype("int64")
    df["dep_ts"], df["arr_ts"] = dep_ts, arr_ts
    df["wheels_off_ts"] = pd.array(np.where(wheels_off < 0, pd.NA, wheels_off), dtype="Int64")
    df["pred_ts"] = np.where(wheels_off < 0, dep_ts, wheels_off)
    df = df[~no_arrival].reset_index(drop=True)
    timings["parse_validate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    before = len(df)
    df = df.drop_duplicates(ignore_index=True)
    timings["dedupe_s"] = time.perf_counter() - t0
    counts = {
        "rows_read": n,
        "rows_excluded": int(excluded.sum()),
        "rows_rejected": reject_parse + int(no_arrival.sum()) + (before - len(df)),
        "rows_clean": len(df),
    }
    return df, {**timings, **counts}


def window_averages(df: pd.DataFrame, window_s: int = 3600) -> pd.DataFrame:
    """Adds the three windowed averages; every airport at once (key-major composite times)."""
    q_t = df["pred_ts"].to_numpy("int64")
    span = int(max(df["pred_ts"].max(), df["arr_ts"].max()) - min(df["dep_ts"].min(), q_t.min())) + 2 * window_s + 1
    base = int(min(df["dep_ts"].min(), q_t.min())) - window_s
    for name, key, event_time, value in WINDOWS:
        codes, _ = pd.factorize(df[key])
        te = df[event_time].to_numpy("float64", na_value=np.nan) if event_time == "wheels_off_ts" else df[
            event_time].to_numpy("float64")
        has_event = ~np.isnan(te)
        ev_idx = np.flatnonzero(has_event)
        ev_key = codes[ev_idx].astype("int64") * span + (te[ev_idx].astype("int64") - base)
        vals = df[value].to_numpy("float64")[ev_idx]
        order = np.argsort(ev_key, kind="stable")
        ev_key, vals = ev_key[order], vals[order]
        present = ~np.isnan(vals)
        csum = np.concatenate(([0.0], np.cumsum(np.where(present, vals, 0.0))))
        ccount = np.concatenate(([0], np.cumsum(present)))
        qk = codes.astype("int64") * span + (q_t - base)
        lo = np.searchsorted(ev_key, qk - window_s, side="left")
        hi = np.searchsorted(ev_key, qk, side="left")
        sums, counts = csum[hi] - csum[lo], ccount[hi] - ccount[lo]
        own = has_event & (te >= q_t - window_s) & (te < q_t)  # own event inside the own window
        own_value = np.where(own, np.nan_to_num(df[value].to_numpy("float64")), 0.0)
        own_present = own & ~np.isnan(df[value].to_numpy("float64"))
        sums = sums - np.where(own_present, own_value, 0.0)
        counts = counts - own_present
        with np.errstate(invalid="ignore", divide="ignore"):
            df[name] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return df


def reference(paths: list[str], window_s: int = 3600) -> tuple[pd.DataFrame, dict]:
    from pipeline.datasets.airports import load_airports

    airports = load_airports(None)
    t0 = time.perf_counter()
    df, info = clean(paths, airports)
    info["clean_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    df = window_averages(df, window_s)
    info["window_s"] = time.perf_counter() - t1
    info["total_s"] = time.perf_counter() - t0
    return df, {k: round(v, 3) if isinstance(v, float) else v for k, v in info.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="glob of kaggle-layout CSV(.gz) files")
    ap.add_argument("--window_minutes", type=int, default=60)
    ap.add_argument("--dump", help="write key columns and the averages here (parquet) for a comparison")
    ap.add_argument("--json", help="write timings and counts here")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    df, info = reference(sorted(glob.glob(args.input)), args.window_minutes * 60)
    info["wall_in_process_s"] = round(time.perf_counter() - started, 3)
    if args.dump:
        df[list(KEY_COLUMNS) + [w[0] for w in WINDOWS]].to_parquet(args.dump)
    print(json.dumps(info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
