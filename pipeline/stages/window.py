"""Exact past-only lookback aggregates, computed per key in time buckets, on Arrow record batches.

For each record (the *query*) at its prediction time ``t`` and each :class:`WindowFeature`, the
statistic is taken over the *events* of other records with the same key whose event time lies in
``[t - window, t)``: strictly before ``t``, never the record itself, zeros included.

One shuffle: records are grouped by the time bucket of their prediction time (flights: the UTC
day, every airport of it; taxi: the UTC hour of all NYC), and each record's events go to every
bucket whose queries their window reaches (the previous bucket's last ``window`` of events is a
group's context). Inside a group the key (the airport) separates them: a query sees only its own
key's events. So a group holds at most one bucket of records plus ``window`` of earlier events, set
by the bucket, not by the input's length: no hot key holding a year, no side input of all events.

A group's elements are named: ``("records", batch)`` (the records themselves) and
``("events <key> <event time>", batch)`` (columns ``key``, ``time``, ``id`` and one value column
per feature), each an Arrow record batch of a chunk's rows for that bucket (the shuffle's coder is
:mod:`pipeline.records.coder`). Exact copies of a record share their id (the fingerprint of their
canonical fields) and so their bucket: one is kept there, the others are rejected as duplicates.
Inside a group the work is a sort, a cumulative sum and two ``numpy.searchsorted`` calls
(:func:`window_stats`, checked against a brute force in the tests).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.records import (
    coder,  # noqa: F401 - registers the coder of record batches
    model,
)
from pipeline.records.model import ID, LINE, SOURCE
from pipeline.records.verdicts import REJECTED, dead_letter

RECORDS = "records"
_NO_TIME = "\x00"  # the group of a record without a prediction time: its own (this mark and its id)


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
class _EventGroup:
    """The features sharing a key and an event time: one kind of event element."""

    key: str | None
    event_time: str
    features: tuple[WindowFeature, ...]

    @property
    def label(self) -> str:
        return f"events {self.key or '*'} {self.event_time}"


def _event_groups(features: Sequence[WindowFeature]) -> list[_EventGroup]:
    by_group: dict[tuple, list[WindowFeature]] = {}
    for f in features:
        by_group.setdefault((f.key, f.event_time), []).append(f)
    return [_EventGroup(key, event_time, tuple(fs)) for (key, event_time), fs in by_group.items()]


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


def _split_by(codes: np.ndarray):
    """Row indices grouped by an integer per row: yields (value, rows in order) per distinct value."""
    if not len(codes):
        return
    distinct, inverse = np.unique(codes, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(distinct) == 1:
        yield int(distinct[0]), np.arange(len(codes))
        return
    order = np.argsort(inverse, kind="stable")
    cuts = np.cumsum(np.bincount(inverse, minlength=len(distinct)))[:-1]
    yield from zip(distinct.tolist(), np.split(order, cuts), strict=True)


def _times(column: pa.Array) -> np.ndarray:
    """Epoch seconds as int64 (0 where missing: callers read only the valid rows)."""
    return model.ints(pc.fill_null(column, 0)) if column.null_count else model.ints(column)


def _plain(column: pa.Array) -> pa.Array:
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


class _Route(beam.DoFn):
    """A batch of records -> (bucket, ("records", its records there)) per bucket of their prediction
    times, and (bucket, (event label, events)) at every bucket each event's window reaches (an event
    at te counts for queries in (te, te + window])."""

    def __init__(self, groups: Sequence[_EventGroup], query_time: str, window_s: int, bucket_s: int):
        self._groups, self._query_time, self._window, self._bucket = list(groups), query_time, window_s, bucket_s

    def process(self, batch: pa.RecordBatch):
        query_times = batch.column(self._query_time)
        timed = model.valid(query_times)
        buckets = _times(query_times) // self._bucket
        rows = np.flatnonzero(timed)
        for bucket, sel in _split_by(buckets[rows]):
            yield str(bucket), (RECORDS, model.take(batch, rows[sel]))
        ids = batch.column(ID)
        for i in np.flatnonzero(~timed).tolist():
            own = ids[i].as_py()
            yield _NO_TIME + (own.hex() if isinstance(own, bytes) else str(own)), (RECORDS, model.take(batch, [i]))
        for group in self._groups:
            yield from self._events(batch, group)

    def _events(self, batch: pa.RecordBatch, group: _EventGroup):
        times = batch.column(group.event_time)
        keys = None if group.key is None else batch.column(group.key)
        rows = np.flatnonzero(model.valid(times) if keys is None else model.valid(times, keys))
        if not len(rows):
            return
        te = _times(times)[rows]
        picked = pa.array(rows)
        columns = {"time": pa.array(te), "id": batch.column(ID).take(picked)}
        if keys is not None:
            columns["key"] = keys.take(picked)
        for f in group.features:
            if f.value is not None:
                columns[f.name] = pa.array(model.numbers(batch.column(f.value))[rows])
        events = pa.RecordBatch.from_pydict(columns)
        first, last = te // self._bucket, (te + self._window) // self._bucket
        for offset in range(int((last - first).max()) + 1):
            reach = np.flatnonzero(first + offset <= last)
            for bucket, sel in _split_by(first[reach] + offset):
                yield str(bucket), (group.label, model.take(events, reach[sel]))


def _first_copies(batch: pa.RecordBatch, id_codes: np.ndarray) -> tuple[np.ndarray | None, list]:
    """(rows kept or None when there are no copies, dead letters): of records sharing an id (exact
    copies), the first by (source, line) is kept, the others are rejected as its duplicates."""
    counts = np.bincount(id_codes) if len(id_codes) else np.zeros(0, dtype=np.int64)
    if not len(counts) or counts.max() <= 1:
        return None, []
    copied = np.flatnonzero(counts[id_codes] > 1)
    picked = pa.array(copied)
    sources = batch.column(SOURCE).take(picked).to_pylist() if SOURCE in batch.schema.names else [None] * len(copied)
    lines = batch.column(LINE).take(picked).to_pylist() if LINE in batch.schema.names else [None] * len(copied)
    by_id: dict[int, list[int]] = {}
    for j, row in enumerate(copied.tolist()):
        by_id.setdefault(int(id_codes[row]), []).append(j)
    keep = np.ones(len(id_codes), dtype=bool)
    rejected = []
    for js in by_id.values():
        js.sort(key=lambda j: (sources[j] or "", lines[j] or ""))
        for j in js[1:]:
            keep[copied[j]] = False
            rejected.append(dead_letter("dedupe", f"record: duplicate of a row in {sources[js[0]] or ''}",
                                        sources[j] or "", lines[j] or ""))
    return np.flatnonzero(keep), rejected


class _AddWindowFeatures(beam.DoFn):
    """(bucket, its named elements) -> the bucket's records with their window columns (the raw line
    dropped: nothing after this stage needs it), and ``rejected`` dead letters of exact copies.

    The group's size in rows (records and events) is recorded in the ``window/group_rows``
    distribution, the figure that shows no group grows with the input's length.
    """

    def __init__(self, groups: Sequence[_EventGroup], query_time: str, window_s: int):
        self._groups, self._query_time, self._window = list(groups), query_time, window_s
        self._group_rows = beam.metrics.Metrics.distribution("window", "group_rows")

    def process(self, element):
        bucket, parts = element
        record_parts, event_parts = [], {}
        for kind, part in parts:
            (record_parts if kind == RECORDS else event_parts.setdefault(kind, [])).append(part)
        self._group_rows.update(sum(p.num_rows for p in record_parts) + sum(p.num_rows for ps in event_parts.values() for p in ps))
        if not record_parts:
            return
        batch = model.concat(record_parts)
        id_codes = model.ranks(batch.column(ID))
        keep, rejected = _first_copies(batch, id_codes)
        for entry in rejected:
            yield beam.pvalue.TaggedOutput(REJECTED, entry)
        if keep is not None:
            batch = model.take(batch, keep)
        if LINE in batch.schema.names:
            batch = batch.drop_columns([LINE])
        columns = {}
        if not bucket.startswith(_NO_TIME):
            for group in self._groups:
                columns.update(self._features(batch, group, event_parts.get(group.label, [])))
        for name, column in columns.items():
            at = batch.schema.get_field_index(name)
            if at < 0:
                batch = batch.append_column(name, column)
            else:
                batch = batch.set_column(at, batch.schema.field(at).with_type(column.type), column)
        yield batch

    def _features(self, batch: pa.RecordBatch, group: _EventGroup, parts: list) -> dict[str, pa.Array]:
        n = batch.num_rows
        query_times = batch.column(self._query_time)
        ids = batch.column(ID)
        events = model.concat(parts) if parts else None
        m = 0 if events is None else events.num_rows
        # Ids coded by rank (the same codes for a record and its events, in the same order in every run).
        codes = model.ranks(pa.concat_arrays([ids, events.column("id").cast(ids.type)]) if m else ids)
        q_id, e_id = codes[:n], codes[n:]
        if group.key is None:
            q_key, e_key = np.zeros(n, dtype=np.int64), np.zeros(m, dtype=np.int64)
        else:
            keys = _plain(batch.column(group.key))
            if m:
                keys = pa.concat_arrays([keys, _plain(events.column("key")).cast(keys.type)])
            _, key_codes = model.codes(keys)
            q_key, e_key = key_codes[:n], key_codes[n:]
        queries = np.flatnonzero((q_key >= 0) & model.valid(query_times))
        if m:
            _, once = np.unique(e_id, return_index=True)  # copies send the same event: counted once
            te = events.column("time").to_numpy()[once]
            values = np.column_stack([events.column(f.name).to_numpy(zero_copy_only=False)[once] if f.value else np.full(len(once), np.nan)
                                      for f in group.features])
            e_id, e_key = e_id[once], e_key[once]
        else:
            te, values = np.zeros(0, dtype=np.int64), np.zeros((0, len(group.features)))
        sums, counts, n_events = window_stats(
            te, e_id, values, _times(query_times)[queries], q_id[queries], self._window, e_key, q_key[queries]
        )
        out = {}
        missing = np.ones(n, dtype=bool)
        missing[queries] = False
        for k, f in enumerate(group.features):
            if f.statistic == "count":
                full = np.zeros(n, dtype=np.int64)
                full[queries] = n_events
                out[f.name] = pa.array(full, mask=missing)
            else:
                full = np.zeros(n)
                with np.errstate(invalid="ignore", divide="ignore"):
                    full[queries] = sums[:, k] / counts[:, k]
                empty = missing.copy()
                empty[queries] = counts[:, k] == 0
                out[f.name] = pa.array(full, mask=empty)
        return out


class WindowRecords(beam.PTransform):
    """Record batches (with ``_id``) -> ``records`` (the batches with each :class:`WindowFeature`
    column, exact copies kept once) and ``rejected`` (the other copies, one dead letter each)."""

    def __init__(self, features: Sequence[WindowFeature], window_s: int, bucket_s: int = 86400):
        super().__init__()
        if window_s <= 0:
            raise ValueError("window must be positive")
        self._groups = _event_groups(features)
        if not self._groups:
            raise ValueError("no window features")
        query_times = {f.query_time for f in features}
        if len(query_times) != 1:
            raise ValueError(f"window features must share one query time, got {sorted(query_times)}")
        (self._query_time,) = query_times
        self._window, self._bucket = int(window_s), int(bucket_s)

    def expand(self, batches):
        element = typing.Tuple[str, typing.Tuple[str, pa.RecordBatch]]  # noqa: UP006 - Beam's type hints
        return (
            batches
            | "RouteToTimeBuckets" >> beam.ParDo(_Route(self._groups, self._query_time, self._window, self._bucket))
            .with_output_types(element)
            | "GroupByTimeBucket" >> beam.GroupByKey()
            | "AddWindowFeatures"
            >> beam.ParDo(_AddWindowFeatures(self._groups, self._query_time, self._window))
            .with_output_types(pa.RecordBatch)
            .with_outputs(REJECTED, main=RECORDS)
        )


def _to_batch(records: list) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(records)


def _duplicate_id(entry):
    raise ValueError(f"LookbackAggregates needs a unique _id per record; a record repeats one: {entry}")


class LookbackAggregates(beam.PTransform):
    """Record by record (dicts, ``_id`` unique per record; a repeated one fails the pipeline): each
    :class:`WindowFeature` column added. :class:`WindowRecords` on batches of them."""

    def __init__(self, features: Sequence[WindowFeature], window_s: int, bucket_s: int = 86400):
        super().__init__()
        self._windows = WindowRecords(features, window_s, bucket_s)

    def expand(self, records):
        out = (
            records
            | "BatchRecords" >> beam.BatchElements(min_batch_size=1, max_batch_size=4096)
            | "ToArrow" >> beam.Map(_to_batch).with_output_types(pa.RecordBatch)
            | "WindowRecords" >> self._windows
        )
        _ = out[REJECTED] | "FailOnRepeatedId" >> beam.Map(_duplicate_id)
        return out[RECORDS] | "ToDicts" >> beam.FlatMap(lambda batch: batch.to_pylist())
