"""The windowed features' one definition and their arithmetic, without Beam: the batch window stage,
the server's window store and replay all compute a window with :func:`window_stats`.

A :class:`WindowFeature` says which *event* it averages (or counts): the records' field holding when
the event happened (``event_time``, UTC epoch seconds), the value observed then (``value``), the key
grouping events (an airport; None for one group) and the field holding the querying record's
prediction time (``query_time``). The window of a query at ``t`` is ``[t - window, t)``: the start
inclusive, ``t`` itself excluded, and never an event of the query's own record (told apart by the
natural key, ``pipeline.records.model.KEY``). Every observed event counts, whatever becomes of its
own record (a diverted flight's departure, a row rejected for an unrelated field).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


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


@dataclasses.dataclass(frozen=True)
class EventGroup:
    """The features sharing a key and an event time: one kind of event element."""

    key: str | None
    event_time: str
    features: tuple[WindowFeature, ...]

    @property
    def label(self) -> str:
        return f"events {self.key or '*'} {self.event_time}"


def event_groups(features: Sequence[WindowFeature]) -> list[EventGroup]:
    by_group: dict[tuple, list[WindowFeature]] = {}
    for f in features:
        by_group.setdefault((f.key, f.event_time), []).append(f)
    return [EventGroup(key, event_time, tuple(fs)) for (key, event_time), fs in by_group.items()]


@dataclasses.dataclass(frozen=True)
class Query:
    """A prediction time (UTC epoch seconds), the record's natural-key fingerprint (None: nothing
    to leave out) and its key values (column -> value, e.g. {"origin": "JFK", "dest": "SFO"})."""

    time: int
    own_key: bytes | None
    keys: dict


def fact_columns(features: Sequence[WindowFeature], natural_key: Sequence[str]) -> tuple[str, ...]:
    """The columns an event batch carries: the natural key, then each feature's key, event time and value."""
    names = list(natural_key)
    for f in features:
        names += [c for c in (f.key, f.event_time, f.value) if c is not None]
    return tuple(dict.fromkeys(names))


def first_per_key(key_codes: np.ndarray, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of one event per key code (re-sent or corrected copies of one event count once): the
    earliest, ties by the smallest values (NaN last), so the pick never depends on arrival order."""
    if not len(key_codes):
        return np.zeros(0, dtype=np.int64)
    values = values.reshape(len(key_codes), -1)
    order = np.lexsort((*(values[:, k] for k in reversed(range(values.shape[1]))), times, key_codes))
    sorted_codes = key_codes[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_codes[1:] != sorted_codes[:-1]
    return np.sort(order[first])


def window_stats(event_t, event_id, event_values, query_t, query_id, window_s, event_group=None, query_group=None):
    """Per query: (sums, counts of present values, count of events) over [t - window, t), self excluded.

    event_values is (n_events, n_features) with NaN where a value is missing. With ``event_group``
    and ``query_group`` (integers), many groups are computed at once and a query sees only the
    events of its own group; ids need only be unique within a group. Each sum is added up from its
    own window's values (not a difference of running totals), so a group's results do not depend
    on the other groups computed with it. Pure numpy; the brute-force reference in the tests checks it.
    """
    event_t = np.asarray(event_t, dtype=np.int64)
    query_t = np.asarray(query_t, dtype=np.int64)
    event_id, query_id = np.asarray(event_id), np.asarray(query_id)
    n_e, n_q = len(event_t), len(query_t)
    vals = np.asarray(event_values, dtype=np.float64)
    vals = vals if vals.ndim == 2 else vals.reshape(n_e, -1)
    width = vals.shape[1]
    e_g = np.zeros(n_e, dtype=np.int64) if event_group is None else np.asarray(event_group, dtype=np.int64)
    q_g = np.zeros(n_q, dtype=np.int64) if query_group is None else np.asarray(query_group, dtype=np.int64)
    if not (n_e and n_q):
        return np.zeros((n_q, width)), np.zeros((n_q, width), dtype=np.int64), np.zeros(n_q, dtype=np.int64)
    # One time axis for all groups: group g's times shifted past every earlier group's, windows included.
    low = min(int(event_t.min()), int(query_t.min()) - window_s)
    stride = max(int(event_t.max()), int(query_t.max())) - low + 1
    e_key = e_g * stride + (event_t - low)
    q_key = q_g * stride + (query_t - low)
    # Ties broken by id: the float sums, and so the features, are the same in every run.
    order = np.lexsort((event_id, e_key))
    k_sorted = e_key[order]
    vals = vals[order]
    present = ~np.isnan(vals)
    filled = np.where(present, vals, 0.0)
    ccount = np.vstack([np.zeros((1, width), dtype=np.int64), np.cumsum(present, axis=0)])
    # Queries in time order: searchsorted walks forward, and reduceat, which also sums each gap
    # from one window's end to the next window's start (discarded), passes over the events once
    # (in the queries' own order, as many times as there are queries).
    by_time = np.argsort(q_key, kind="stable")
    lo, hi = np.empty(n_q, dtype=np.int64), np.empty(n_q, dtype=np.int64)
    lo[by_time] = np.searchsorted(k_sorted, q_key[by_time] - window_s, side="left")
    hi[by_time] = np.searchsorted(k_sorted, q_key[by_time], side="left")
    counts = ccount[hi] - ccount[lo]
    n_events = (hi - lo).astype(np.int64)
    # Window sums: reduceat over the (lo, hi) pairs; an empty window gives a value, zeroed after.
    bounds = np.empty(2 * n_q, dtype=np.int64)
    bounds[0::2], bounds[1::2] = lo[by_time], hi[by_time]
    sums = np.empty((n_q, width))
    sums[by_time] = np.add.reduceat(np.vstack([filled, np.zeros((1, width))]), bounds, axis=0)[0::2]
    sums[hi <= lo] = 0.0
    # A record is never its own past: remove its event where it falls inside its own window.
    codes, inverse = np.unique(np.concatenate([query_id, event_id[order]]), return_inverse=True)
    q_code = q_g * len(codes) + inverse[:n_q]
    e_code = e_g[order] * len(codes) + inverse[n_q:]
    _, qi, ei = np.intersect1d(q_code, e_code, return_indices=True)
    inside = (k_sorted[ei] >= q_key[qi] - window_s) & (k_sorted[ei] < q_key[qi])
    qi, ei = qi[inside], ei[inside]
    sums[qi] -= filled[ei]
    counts[qi] -= present[ei]
    n_events[qi] -= 1
    return sums, counts, n_events


def feature_values(features: Sequence[WindowFeature], sums, counts, n_events) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`window_stats`' results -> per feature (values, missing): a count is never missing, a
    mean of an empty window is."""
    out = {}
    for k, f in enumerate(features):
        if f.statistic == "count":
            out[f.name] = (np.asarray(n_events, dtype=np.int64), np.zeros(len(n_events), dtype=bool))
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = sums[:, k] / counts[:, k]
            out[f.name] = (np.where(counts[:, k] == 0, 0.0, mean), counts[:, k] == 0)
    return out
