"""The online window store: events in, the windowed features of a query out, by the batch code.

Events are those of :class:`pipeline.records.events.Events` (the batch parse stage's own), kept per
(event kind, key) in time order; a query at ``t`` gets, per :class:`WindowFeature`, the statistic of
its key's events in ``[t - window, t)`` from :func:`pipeline.records.windows.window_stats`, with the
events in the order batch sums them (time, then the natural key's bytes), so the values are the
batch pipeline's to the bit. An event re-sent (one natural key and kind) counts once: the earliest
(time, values), as in batch. Events may arrive in any order; one older than its kind's watermark (the
latest time seen of that kind: a record published after its arrival brings an older departure, which
is on time for departures) minus the window and the allowed lateness is *late*: it could only change
windows that are already past, and is counted and dropped. Retention is the window plus the allowed
lateness (default a day), so memory stays flat over a long stream.
"""

from __future__ import annotations

import bisect
import heapq
import math
import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.records import model
from pipeline.records.model import KEY
from pipeline.records.windows import Query, WindowFeature, event_groups, feature_values, window_stats


def event_rows(groups, events: pa.RecordBatch):
    """(kind index, time, key value, natural key, values) of each event of a batch, kind by kind."""
    for g, group in enumerate(groups):
        times = events.column(group.event_time)
        keys = None if group.key is None else events.column(group.key)
        rows = np.flatnonzero(model.valid(times) if keys is None else model.valid(times, keys))
        if not len(rows):
            continue
        picked = pa.array(rows)
        te = model.ints(times.take(picked)).tolist()
        key_values = [None] * len(rows) if keys is None else keys.take(picked).to_pylist()
        ids = events.column(KEY).take(picked).to_pylist()
        columns = [model.numbers(events.column(f.value).take(picked)) if f.value else np.full(len(rows), np.nan)
                   for f in group.features]
        for t, key_value, own, vals in zip(te, key_values, ids, zip(*(c.tolist() for c in columns), strict=True), strict=True):
            yield g, t, key_value, own, vals


def query_window(group, query: Query, window_s: int, times: list, ids: list, values: list) -> dict:
    """A query's values of one kind's features (name -> value, None where missing), from its key's
    events in [t - window, t) given in time order (ties by natural key): :func:`window_stats`, as
    the batch stage computes them, with the events summed in the same order."""
    te = np.array(times, dtype=np.int64)
    vals = np.array(values, dtype=np.float64).reshape(len(ids), len(group.features))
    ranked = sorted(set(ids) | ({query.own_key} if query.own_key is not None else set()))
    code = {b: i for i, b in enumerate(ranked)}
    e_id = np.array([code[b] for b in ids], dtype=np.int64)
    q_id = np.array([code[query.own_key] if query.own_key is not None else -1], dtype=np.int64)
    sums, counts, n_events = window_stats(te, e_id, vals, [query.time], q_id, window_s)
    return {name: None if missing[0] else value[0].item()
            for name, (value, missing) in feature_values(group.features, sums, counts, n_events).items()}


# How long after its kind's latest event an event still counts: a day, so that a day's file posted in its
# own order (sorted by schedule, not by event time) is stored whole; memory holds the window plus this.
DEFAULT_LATENESS_S = 86400


def watermarks(groups, marks: list) -> dict:
    """The status' watermarks: per event kind, and overall the earliest (how far every window is known)."""
    known = [m for m in marks if m is not None]
    return {"watermark": min(known) if len(known) == len(marks) else None,
            "watermarks": {g.event_time: m for g, m in zip(groups, marks, strict=True)}}


def _order(values: tuple) -> tuple:
    return tuple(math.inf if math.isnan(v) else v for v in values)  # NaN last, as first_per_key sorts


class MemoryWindowStore:
    """The window store in this process's memory (one server replica)."""

    def __init__(self, features: Sequence[WindowFeature], window_s: int, lateness_s: int | None = None):
        self.groups = event_groups(features)
        self.window = int(window_s)
        self.lateness = DEFAULT_LATENESS_S if lateness_s is None else int(lateness_s)
        self.watermarks: list[int | None] = [None] * len(self.groups)  # per event kind
        self.counts = {"received": 0, "stored": 0, "duplicates": 0, "late": 0, "evicted": 0}
        self._events: dict[tuple, list] = {}  # (group, key value) -> [(time, natural key, values), ...] sorted
        self._seen: dict[tuple, tuple] = {}  # (group, natural key) -> (time, values, key value)
        self._expiry: list[list] = [[] for _ in self.groups]  # per kind, a heap of (time, natural key)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ events in
    def add(self, events: pa.RecordBatch | None) -> dict:
        """Stores an event batch; returns what became of its events (stored, duplicates, late)."""
        out = {"stored": 0, "duplicates": 0, "late": 0}
        if events is None or not events.num_rows:
            return out
        with self._lock:
            for g, t, key_value, own, vals in event_rows(self.groups, events):
                out[self._add_one(g, t, key_value, own, vals)] += 1
            self.counts["received"] += events.num_rows
            for name, n in out.items():
                self.counts[name] += n
            self._evict()
        return out

    def _add_one(self, g: int, t: int, key_value, own: bytes, vals: tuple) -> str:
        watermark = self.watermarks[g]
        if watermark is not None and t < watermark - self.window - self.lateness:
            return "late"
        if watermark is None or t > watermark:
            self.watermarks[g] = t
        seen = self._seen.get((g, own))
        if seen is not None:
            if (t, _order(vals)) < (seen[0], _order(seen[1])):  # the earliest copy stands, as in batch
                events = self._events[(g, seen[2])]
                events.pop(bisect.bisect_left(events, (seen[0], own)))
                self._insert(g, t, key_value, own, vals)
            return "duplicates"
        self._insert(g, t, key_value, own, vals)
        return "stored"

    def _insert(self, g, t, key_value, own, vals) -> None:
        bisect.insort(self._events.setdefault((g, key_value), []), (t, own, vals))
        self._seen[(g, own)] = (t, vals, key_value)
        heapq.heappush(self._expiry[g], (t, own))

    def _evict(self) -> None:
        for g, expiry in enumerate(self._expiry):
            if self.watermarks[g] is not None:
                self._evict_kind(g, expiry, self.watermarks[g] - self.window - self.lateness)

    def _evict_kind(self, g: int, expiry: list, horizon: int) -> None:
        while expiry and expiry[0][0] < horizon:
            t, own = heapq.heappop(expiry)
            seen = self._seen.get((g, own))
            if seen is None or seen[0] != t:  # replaced by an earlier copy: that one has its own entry
                continue
            del self._seen[(g, own)]
            events = self._events[(g, seen[2])]
            events.pop(bisect.bisect_left(events, (t, own)))
            if not events:
                del self._events[(g, seen[2])]
            self.counts["evicted"] += 1

    # ------------------------------------------------------------------ features out
    def features(self, query: Query) -> dict:
        """The windowed features of one query: feature name -> value (None where the window is empty)."""
        out = {}
        with self._lock:
            for g, group in enumerate(self.groups):
                key_value = None if group.key is None else query.keys.get(group.key)
                events = self._events.get((g, key_value), []) if group.key is None or key_value is not None else []
                lo = bisect.bisect_left(events, (query.time - self.window,))
                hi = bisect.bisect_left(events, (query.time,))
                window = events[lo:hi]
                out.update(query_window(group, query, self.window, [e[0] for e in window], [e[1] for e in window],
                                        [e[2] for e in window]))
        return out

    def watermark(self) -> int | None:
        """How far every kind's events are known: the earliest kind's latest event time (None: a kind unseen)."""
        with self._lock:
            return watermarks(self.groups, self.watermarks)["watermark"]

    def status(self) -> dict:
        with self._lock:
            return {**self.counts, **watermarks(self.groups, self.watermarks), "window_seconds": self.window,
                    "allowed_lateness_seconds": self.lateness, "kept": len(self._seen)}
