"""Exact past-only lookback aggregates, computed per key in time buckets, on Arrow record batches.

For each record (the *query*) at its prediction time ``t`` and each :class:`WindowFeature`, the
statistic is taken over the *events* with the same key whose event time lies in ``[t - window, t)``:
strictly before ``t``, never the record's own (told apart by its natural key, ``_key``), zeros
included (the definition: :mod:`pipeline.records.windows`). Events are facts, given apart from the
records: the parse stage gives those of every row it could read, whatever becomes of the row.

One shuffle: records are grouped by the time bucket of their prediction time (flights: the UTC
day, every airport of it; taxi: the UTC hour of all NYC), and each event goes to every bucket
whose queries its window reaches (the previous bucket's last ``window`` of events is a group's
context). Inside a group the key (the airport) separates them: a query sees only its own key's
events. So a group holds at most one bucket of records plus ``window`` of earlier events, set by
the bucket, not by the input's length: no hot key holding a year, no side input of all events.

A group's elements are named: ``("records", batch)`` (the records themselves) and
``("events <key> <event time>", batch)`` (columns ``key``, ``time``, ``id`` (the natural key's
fingerprint) and one value column per feature), each an Arrow record batch of a chunk's rows for
that bucket (the shuffle's coder is :mod:`pipeline.records.coder`). Exact copies of a record share
their id (the fingerprint of their canonical fields) and so their bucket: one is kept there, the
others are rejected as duplicates; copies of an event (one natural key) count once.
Inside a group the work is a sort, a cumulative sum and two ``numpy.searchsorted`` calls
(:func:`window_stats`, checked against a brute force in the tests).
"""

from __future__ import annotations

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
from pipeline.records.events import EVENTS
from pipeline.records.model import ID, KEY, LINE, SOURCE
from pipeline.records.verdicts import REJECTED, dead_letter
from pipeline.records.windows import (
    EventGroup,
    WindowFeature,
    event_groups,
    feature_values,
    first_per_key,
    window_stats,
)

RECORDS = "records"
_NO_TIME = "\x00"  # the group of a record without a prediction time: its own (this mark and its id)


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


class _RouteRecords(beam.DoFn):
    """A batch of records -> (bucket, ("records", its records there)) per bucket of their prediction times."""

    def __init__(self, query_time: str, bucket_s: int):
        self._query_time, self._bucket = query_time, bucket_s

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


class _RouteEvents(beam.DoFn):
    """A batch of events -> (bucket, (event label, events)) at every bucket each event's window
    reaches (an event at te counts for queries in (te, te + window])."""

    def __init__(self, groups: Sequence[EventGroup], window_s: int, bucket_s: int):
        self._groups, self._window, self._bucket = list(groups), window_s, bucket_s

    def process(self, batch: pa.RecordBatch):
        for group in self._groups:
            yield from self._events(batch, group)

    def _events(self, batch: pa.RecordBatch, group: EventGroup):
        times = batch.column(group.event_time)
        keys = None if group.key is None else batch.column(group.key)
        rows = np.flatnonzero(model.valid(times) if keys is None else model.valid(times, keys))
        if not len(rows):
            return
        te = _times(times)[rows]
        picked = pa.array(rows)
        own = KEY if KEY in batch.schema.names else ID
        columns = {"time": pa.array(te), "id": batch.column(own).take(picked)}
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

    def __init__(self, groups: Sequence[EventGroup], query_time: str, window_s: int):
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

    def _features(self, batch: pa.RecordBatch, group: EventGroup, parts: list) -> dict[str, pa.Array]:
        n = batch.num_rows
        query_times = batch.column(self._query_time)
        ids = batch.column(KEY if KEY in batch.schema.names else ID)  # a record's own events share its natural key
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
            te = events.column("time").to_numpy()
            values = np.column_stack([model.numbers(events.column(f.name)) if f.value else np.full(m, np.nan)
                                      for f in group.features])
            once = first_per_key(e_id, te, values)  # copies of an event (one natural key) count once
            te, values, e_id, e_key = te[once], values[once], e_id[once], e_key[once]
        else:
            te, values = np.zeros(0, dtype=np.int64), np.zeros((0, len(group.features)))
        sums, counts, n_events = window_stats(
            te, e_id, values, _times(query_times)[queries], q_id[queries], self._window, e_key, q_key[queries]
        )
        out = {}
        for name, (value, empty) in feature_values(group.features, sums, counts, n_events).items():
            full = np.zeros(n, dtype=value.dtype)
            full[queries] = value
            missing = np.ones(n, dtype=bool)
            missing[queries] = empty
            out[name] = pa.array(full, mask=missing)
        return out


class WindowRecords(beam.PTransform):
    """Record batches (with ``_id``) -> ``records`` (the batches with each :class:`WindowFeature`
    column, exact copies kept once) and ``rejected`` (the other copies, one dead letter each)."""

    def __init__(self, features: Sequence[WindowFeature], window_s: int, bucket_s: int = 86400):
        super().__init__()
        if window_s <= 0:
            raise ValueError("window must be positive")
        self._groups = event_groups(features)
        if not self._groups:
            raise ValueError("no window features")
        query_times = {f.query_time for f in features}
        if len(query_times) != 1:
            raise ValueError(f"window features must share one query time, got {sorted(query_times)}")
        (self._query_time,) = query_times
        self._window, self._bucket = int(window_s), int(bucket_s)

    def expand(self, inputs):
        """``inputs``: the record batches (each record's own fields its events), or a dict of
        ``records`` and ``events`` (batches of :func:`pipeline.records.windows.fact_columns` with ``_key``)."""
        records, events = (inputs[RECORDS], inputs[EVENTS]) if isinstance(inputs, dict) else (inputs, inputs)
        element = typing.Tuple[str, typing.Tuple[str, pa.RecordBatch]]  # noqa: UP006 - Beam's type hints
        routed_records = records | "RouteRecordsToTimeBuckets" >> beam.ParDo(
            _RouteRecords(self._query_time, self._bucket)).with_output_types(element)
        routed_events = events | "RouteEventsToTimeBuckets" >> beam.ParDo(
            _RouteEvents(self._groups, self._window, self._bucket)).with_output_types(element)
        return (
            (routed_records, routed_events)
            | "FlattenRecordsAndEvents" >> beam.Flatten()
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
