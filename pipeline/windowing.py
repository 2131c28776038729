"""Exact past-only lookback aggregates, computed per key in vectorised time buckets.

For each record (the *query*) at its prediction time ``t`` and each :class:`WindowFeature`, the
statistic is taken over the *events* of other records with the same key whose event time lies in
``[t - window, t)``: strictly before ``t``, never the record itself, zeros included.

Scaling: events and queries are grouped by ``(feature group, key, time bucket)``. An event is also
sent to the following buckets that its window reaches (the "context rows"), so each group holds at
most one bucket of queries plus ``window`` of earlier events: no hot key holding a year, no side
input holding all events. Inside a group the work is a sort, a cumulative sum and two
``numpy.searchsorted`` calls.
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


def _groups(features: Sequence[WindowFeature]) -> list[tuple[tuple, list[WindowFeature]]]:
    groups: dict[tuple, list[WindowFeature]] = {}
    for f in features:
        groups.setdefault(f.group, []).append(f)
    return list(groups.items())


class _EmitEventsAndQueries(beam.DoFn):
    def __init__(self, groups, window_s: int, bucket_s: int):
        self._groups = groups
        self._window = window_s
        self._bucket = bucket_s

    def process(self, record):
        rid = record[ID]
        for g, ((key_field, event_time, query_time), feats) in enumerate(self._groups):
            key = ALL_KEYS if key_field is None else record.get(key_field)
            if key is None:
                continue
            te = record.get(event_time)
            if te is not None:
                values = tuple(np.nan if f.value is None or record.get(f.value) is None else float(record[f.value])
                               for f in feats)
                # An event at te counts for queries in (te, te + window]: every bucket those fall in.
                for b in range(te // self._bucket, (te + self._window) // self._bucket + 1):
                    yield (g, key, b), ("e", te, rid, values)
            tq = record.get(query_time)
            if tq is not None:
                yield (g, key, tq // self._bucket), ("q", tq, rid, None)


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


class _AggregateGroup(beam.DoFn):
    def __init__(self, groups, window_s: int):
        self._groups = groups
        self._window = window_s

    def process(self, element):
        (g, _key, _bucket), items = element
        feats = self._groups[g][1]
        ev_t, ev_id, ev_v, q_t, q_id = [], [], [], [], []
        for kind, t, rid, values in items:
            if kind == "e":
                ev_t.append(t)
                ev_id.append(rid)
                ev_v.append(values)
            else:
                q_t.append(t)
                q_id.append(rid)
        if not q_t:
            return
        if not ev_t:
            sums = np.zeros((len(q_t), len(feats)))
            counts = np.zeros((len(q_t), len(feats)), dtype=np.int64)
            n_events = np.zeros(len(q_t), dtype=np.int64)
        else:
            sums, counts, n_events = window_stats(ev_t, ev_id, ev_v, q_t, q_id, self._window)
        for i, rid in enumerate(q_id):
            out = {}
            for j, f in enumerate(feats):
                if f.statistic == "count":
                    out[f.name] = int(n_events[i])
                else:
                    out[f.name] = float(sums[i, j] / counts[i, j]) if counts[i, j] else None
            yield rid, out


def _merge(element, names):
    _rid, grouped = element
    records = grouped["records"]
    stats = {name: None for name in names}
    for partial in grouped["windows"]:
        stats.update(partial)
    for record in records:  # exactly one after de-duplication
        record.update(stats)
        yield record


class LookbackAggregates(beam.PTransform):
    """Adds each :class:`WindowFeature` column to every record (``_id`` must be unique per record)."""

    def __init__(self, features: Sequence[WindowFeature], window_s: int, bucket_s: int = 86400):
        super().__init__()
        if window_s <= 0:
            raise ValueError("window must be positive")
        self._features = list(features)
        self._groups = _groups(self._features)
        self._window = int(window_s)
        self._bucket = int(bucket_s)

    def expand(self, records):
        windows = (
            records
            | "EmitEventsAndQueries" >> beam.ParDo(_EmitEventsAndQueries(self._groups, self._window, self._bucket))
            | "GroupByKeyAndTimeBucket" >> beam.GroupByKey()
            | "AggregateLookback" >> beam.ParDo(_AggregateGroup(self._groups, self._window))
        )
        names = [f.name for f in self._features]
        return (
            {"records": records | "KeyRecordsById" >> beam.Map(lambda r: (r[ID], r)), "windows": windows}
            | "JoinWindowsToRecords" >> beam.CoGroupByKey()
            | "MergeWindowColumns" >> beam.FlatMap(_merge, names)
        )
