"""Exact past-only lookback aggregates, computed per key in vectorised time buckets.

For each record (the *query*) at its prediction time ``t`` and each :class:`WindowFeature`, the
statistic is taken over the *events* of other records with the same key whose event time lies in
``[t - window, t)``: strictly before ``t``, never the record itself, zeros included.

Scaling: events and queries are grouped by ``(key, time bucket)``. An event is also sent to the
following buckets that its window reaches (the "context rows"), so each group holds at most one
bucket of queries plus ``window`` of earlier events: no hot key holding a year, no side input
holding all events. Inside a group the work is a sort, a cumulative sum and two
``numpy.searchsorted`` calls per event time.

Shuffles: the features sharing a key field and query time form a key group (flights: the origin's
departure delay and taxi-out, and the destination's arrival delay). The records themselves travel
once, through the group of the key group with the most event times, carrying their own events of
that bucket; each other key group is computed from small (event) and (query) elements, and its
results are sent to where the record goes, so no join by id is needed afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import apache_beam as beam
import numpy as np

ID = "_id"
ALL_KEYS = "*"


@dataclasses.dataclass(frozen=True)
class WindowFeature:
    """One windowed column.

    name: output column. key: record field whose value groups events and queries (None: one
    group for all records). event_time: field holding when this record's value became known (UTC
    epoch seconds). value: field averaged (None: count the events). query_time: field holding the
    record's own prediction time.
    """

    name: str
    key: str | None
    event_time: str
    query_time: str
    value: str | None = None

    @property
    def statistic(self) -> str:
        return "count" if self.value is None else "mean"

    @property
    def group(self) -> tuple:
        return (self.key, self.event_time, self.query_time)


def window_stats(event_t, event_id, event_values, query_t, query_id, window_s):
    """Per query: (sums, counts of present values, count of events) over [t - window, t), self excluded.

    event_values is (n_events, n_features) with NaN where a value is missing. Pure numpy; the
    brute-force reference in the tests checks it.
    """
    event_t = np.asarray(event_t, dtype=np.int64)
    query_t = np.asarray(query_t, dtype=np.int64)
    vals = np.asarray(event_values, dtype=np.float64).reshape(len(event_t), -1)
    # Ties broken by id: the float sums, and so the features, are the same in every run.
    order = np.lexsort((np.asarray(event_id), event_t))
    t_sorted = event_t[order]
    vals = vals[order]
    present = ~np.isnan(vals)
    csum = np.vstack([np.zeros((1, vals.shape[1])), np.cumsum(np.where(present, vals, 0.0), axis=0)])
    ccount = np.vstack([np.zeros((1, vals.shape[1]), dtype=np.int64), np.cumsum(present, axis=0)])
    lo = np.searchsorted(t_sorted, query_t - window_s, side="left")
    hi = np.searchsorted(t_sorted, query_t, side="left")
    sums = csum[hi] - csum[lo]
    counts = ccount[hi] - ccount[lo]
    n_events = (hi - lo).astype(np.int64)
    # A record is never its own past: remove its event where it falls inside its own window.
    if len(query_id) and len(event_id):
        _, qi, ei = np.intersect1d(np.asarray(query_id), np.asarray(event_id)[order], return_indices=True)
        inside = (t_sorted[ei] >= query_t[qi] - window_s) & (t_sorted[ei] < query_t[qi])
        qi, ei = qi[inside], ei[inside]
        sums[qi] -= np.where(present[ei], vals[ei], 0.0)
        counts[qi] -= present[ei]
        n_events[qi] -= 1
    return sums, counts, n_events


# ---------------------------------------------------------------- the Beam side
# Group elements, by kind. Group keys are (key value, time bucket); a record whose final key or
# query time is missing is routed to (None, its id), where it meets only its own partial results.
_RECORD, _EVENT, _QUERY, _PARTIAL = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class _KeyGroup:
    """The features sharing a key field and a query time, split by event time: one group by key and bucket."""

    key: str | None
    query_time: str
    groups: tuple[tuple[str, tuple[WindowFeature, ...]], ...]  # (event_time, its features in order)

    @property
    def label(self) -> str:
        return f"{self.key or 'all'}_{self.query_time}"


def _key_groups(features: Sequence[WindowFeature]) -> list[_KeyGroup]:
    """(key, query_time) -> event_time -> features, each in order of first appearance."""
    by_key: dict[tuple, dict[str, list[WindowFeature]]] = {}
    for f in features:
        by_key.setdefault((f.key, f.query_time), {}).setdefault(f.event_time, []).append(f)
    return [
        _KeyGroup(key, query_time, tuple((te, tuple(fs)) for te, fs in by_event.items()))
        for (key, query_time), by_event in by_key.items()
    ]


def _key_of(record, key_field):
    return ALL_KEYS if key_field is None else record.get(key_field)


def _route(record, kg: _KeyGroup, bucket_s: int):
    """Where a record meets the events of its final key group, and its partial results."""
    key, tq = _key_of(record, kg.key), record.get(kg.query_time)
    if key is None or tq is None:
        return (None, record[ID])
    return (key, tq // bucket_s)


def _events(record, kg: _KeyGroup, window_s: int, bucket_s: int) -> dict[int, list]:
    """bucket -> per event-time group, (event time, values) or None: every bucket whose queries
    the record's events can reach (an event at te counts for queries in (te, te + window])."""
    out: dict[int, list] = {}
    for j, (event_time, feats) in enumerate(kg.groups):
        te = record.get(event_time)
        if te is None:
            continue
        values = []
        for f in feats:
            v = None if f.value is None else record.get(f.value)
            values.append(np.nan if v is None else float(v))
        event = (te, tuple(values))
        for b in range(te // bucket_s, (te + window_s) // bucket_s + 1):
            slot = out.get(b)
            if slot is None:
                slot = out[b] = [None] * len(kg.groups)
            slot[j] = event
    return out


def _compute(kg: _KeyGroup, events, q_t, q_id, window_s: int) -> list[dict]:
    """Per query, name -> value of every feature of ``kg``; events are (id, per-group (te, values) or None)."""
    out = [{} for _ in q_t]
    for j, (_event_time, feats) in enumerate(kg.groups):
        ev_t, ev_id, ev_v = [], [], []
        for rid, per_group in events:
            event = per_group[j]
            if event is not None:
                ev_t.append(event[0])
                ev_id.append(rid)
                ev_v.append(event[1])
        if not ev_t:
            sums = np.zeros((len(q_t), len(feats)))
            counts = np.zeros((len(q_t), len(feats)), dtype=np.int64)
            n_events = np.zeros(len(q_t), dtype=np.int64)
        else:
            sums, counts, n_events = window_stats(ev_t, ev_id, ev_v, q_t, q_id, window_s)
        # Python floats divide exactly as float64 numpy scalars do; lists avoid per-item numpy indexing.
        sums_l, counts_l, n_l = sums.tolist(), counts.tolist(), n_events.tolist()
        for i, stats in enumerate(out):
            for k, f in enumerate(feats):
                if f.statistic == "count":
                    stats[f.name] = int(n_l[i])
                else:
                    stats[f.name] = float(sums_l[i][k] / counts_l[i][k]) if counts_l[i][k] else None
    return out


class _EmitEventsAndQueries(beam.DoFn):
    """A key group computed apart: small (event) and (query) elements; results go to the record's route."""

    def __init__(self, kg: _KeyGroup, final: _KeyGroup, window_s: int, bucket_s: int):
        self._kg, self._final, self._window, self._bucket = kg, final, window_s, bucket_s

    def process(self, record):
        key = _key_of(record, self._kg.key)
        if key is None:
            return
        rid = record[ID]
        for b, per_group in _events(record, self._kg, self._window, self._bucket).items():
            yield (key, b), (_EVENT, rid, tuple(per_group))
        tq = record.get(self._kg.query_time)
        if tq is not None:
            yield (key, tq // self._bucket), (_QUERY, rid, tq, _route(record, self._final, self._bucket))


class _AggregateQueries(beam.DoFn):
    def __init__(self, kg: _KeyGroup, window_s: int):
        self._kg, self._window = kg, window_s

    def process(self, element):
        _, items = element
        events, queries = [], []
        for item in items:
            if item[0] == _EVENT:
                events.append((item[1], item[2]))
            else:
                queries.append(item)
        if not queries:
            return
        stats = _compute(self._kg, events, [q[2] for q in queries], [q[1] for q in queries], self._window)
        for (_, rid, _tq, route), values in zip(queries, stats, strict=True):
            yield route, (_PARTIAL, rid, values)


class _EmitRecordsAndEvents(beam.DoFn):
    """The final key group: each record (with its events of its own bucket) at its route, and its
    other events to the buckets they reach. Every window column starts as missing (None)."""

    def __init__(self, kg: _KeyGroup, names, window_s: int, bucket_s: int):
        self._kg, self._names, self._window, self._bucket = kg, tuple(names), window_s, bucket_s

    def process(self, record):
        record = dict(record)  # never mutate an input element
        for name in self._names:
            record[name] = None
        rid = record[ID]
        route = _route(record, self._kg, self._bucket)
        key = _key_of(record, self._kg.key)
        by_bucket = _events(record, self._kg, self._window, self._bucket) if key is not None else {}
        own = by_bucket.pop(route[1], None) if route[0] is not None else None
        yield route, (_RECORD, rid, record, None if own is None else tuple(own))
        for b, per_group in by_bucket.items():
            yield (key, b), (_EVENT, rid, tuple(per_group))


class _AggregateRecords(beam.DoFn):
    def __init__(self, kg: _KeyGroup, window_s: int):
        self._kg, self._window = kg, window_s

    def process(self, element):
        (key, _bucket), items = element
        records, events, partials = [], [], {}
        for item in items:
            kind = item[0]
            if kind == _RECORD:
                records.append(item)
                if item[3] is not None:
                    events.append((item[1], item[3]))
            elif kind == _EVENT:
                events.append((item[1], item[2]))
            else:
                partials.setdefault(item[1], []).append(item[2])
        if not records:
            return
        stats = None
        if key is not None:  # else a record without a query here, alone with its partial results
            q_t = [item[2][self._kg.query_time] for item in records]
            stats = _compute(self._kg, events, q_t, [item[1] for item in records], self._window)
        for i, (_, rid, record, _own) in enumerate(records):
            for partial in partials.get(rid, ()):
                record.update(partial)
            if stats is not None:
                record.update(stats[i])
            yield record


class LookbackAggregates(beam.PTransform):
    """Adds each :class:`WindowFeature` column to every record (``_id`` must be unique per record)."""

    def __init__(self, features: Sequence[WindowFeature], window_s: int, bucket_s: int = 86400):
        super().__init__()
        if window_s <= 0:
            raise ValueError("window must be positive")
        self._features = list(features)
        self._window = int(window_s)
        self._bucket = int(bucket_s)
        key_groups = _key_groups(self._features)
        # The records travel with the key group that has the most event times (fewest extra elements).
        final = max(range(len(key_groups)), key=lambda i: (len(key_groups[i].groups), -i)) if key_groups else None
        self._final = key_groups[final] if key_groups else None
        self._others = [kg for i, kg in enumerate(key_groups) if i != final]

    def expand(self, records):
        names = [f.name for f in self._features]
        if self._final is None:
            return records | "NoWindowColumns" >> beam.Map(lambda r: r)
        to_final = [
            records
            | "EmitRecordsAndEvents" >> beam.ParDo(_EmitRecordsAndEvents(self._final, names, self._window, self._bucket))
        ]
        for kg in self._others:
            to_final.append(
                records
                | f"EmitEventsAndQueries_{kg.label}"
                >> beam.ParDo(_EmitEventsAndQueries(kg, self._final, self._window, self._bucket))
                | f"GroupByKeyAndTimeBucket_{kg.label}" >> beam.GroupByKey()
                | f"AggregateLookback_{kg.label}" >> beam.ParDo(_AggregateQueries(kg, self._window))
            )
        grouped = to_final | "FlattenRecordsAndResults" >> beam.Flatten() if len(to_final) > 1 else to_final[0]
        return (
            grouped
            | "GroupByKeyAndTimeBucket" >> beam.GroupByKey()
            | "AggregateLookback" >> beam.ParDo(_AggregateRecords(self._final, self._window))
        )
