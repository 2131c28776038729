"""Events without Beam: the facts a row gives the windows, for the batch parse stage, the server and replay.

An event batch holds :func:`pipeline.records.windows.fact_columns` (the natural key, then each window
feature's key, event time and value, typed as the records are) and ``_key``, the natural key's
fingerprint. A row gives the events whose own fields are valid, whatever becomes of the row as a
record; a value outside its schema range is missing (the event still happened, its value is not averaged;
an event that is only averaged, such as a departure timed by its own delay, is then no event).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.records import model
from pipeline.records.dataset import Layout
from pipeline.records.ids import fingerprints
from pipeline.records.model import KEY
from pipeline.records.verdicts import Exclude, Reject, Verdicts
from pipeline.records.windows import WindowFeature, fact_columns

EVENTS = "events"  # the tag of event batches between the parse and the window stage


def valid_fields(record: Mapping, schema) -> dict:
    """The fields of a record that pass their own column's check (what a record rejected for a range
    still tells the windows)."""
    columns = schema.columns
    return {k: v for k, v in record.items() if k not in columns or columns[k].check(k, v) is None}


class Events:
    """The event batches of one dataset's window features (see the module docstring)."""

    def __init__(self, schema, features: Sequence[WindowFeature]):
        self.schema = schema
        self.features = tuple(features)
        self.natural_key = tuple(schema.natural_key)
        arrow = model.arrow_schema(schema)
        self.columns = fact_columns(self.features, self.natural_key)
        self.arrow_schema = pa.schema([arrow.field(c) for c in self.columns] + [arrow.field(KEY)])
        self.times = tuple(dict.fromkeys(f.event_time for f in self.features))
        self.values = tuple(dict.fromkeys(f.value for f in self.features if f.value))
        # An event only averaged (no count of it) is no event without a valid value: its time derives
        # from it (a departure's time is the schedule plus the delay).
        counted = {f.event_time for f in self.features if f.value is None}
        self.timed_by = {f.value: f.event_time for f in self.features if f.value and f.event_time not in counted}

    def batch(self, parts: Sequence[pa.RecordBatch | Mapping | list]) -> pa.RecordBatch | None:
        """The events of ``parts`` (batches with the fact columns, dicts of columns, or lists of
        row dicts), each with ``_key``; a value outside its schema range missing; rows without any
        event time left out; None when no row has one."""
        batches = []
        for part in parts:
            if isinstance(part, pa.RecordBatch):
                batches.append(model.batch({c: part.column(c) for c in self.columns if c in part.schema.names},
                                           part.num_rows, self.arrow_schema))
            elif isinstance(part, list):
                if part:
                    batches.append(model.from_records(part, self.arrow_schema))
            else:
                n = len(next(iter(part.values()))) if part else 0
                batches.append(model.batch(part, n, self.arrow_schema))
        events = model.concat(batches, self.arrow_schema)
        if not events.num_rows:
            return None
        happened = np.zeros(events.num_rows, dtype=bool)
        for name in self.times:
            happened |= model.valid(events.column(name))
        if not happened.any():
            return None
        events = model.take(events, np.flatnonzero(happened))
        columns = {KEY: fingerprints(events, self.natural_key)}
        for name in self.values:
            column = self.schema.columns[name]
            x = model.numbers(events.column(name))
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(x)
                if column.min_value is not None:
                    bad |= x < column.min_value
                if column.max_value is not None:
                    bad |= x > column.max_value
            if bad.any():
                columns[name] = pa.array(np.where(bad, 0.0, x), mask=bad)
                time = self.timed_by.get(name)
                if time is not None:
                    t = events.column(time)
                    columns[time] = pa.array(model.ints(pc.fill_null(t, 0)), mask=bad | ~model.valid(t))
        return model.replace(events, columns)

    def of_lines(self, layout: Layout, header: str, lines: Sequence[str]) -> pa.RecordBatch | None:
        """The events of raw ``lines`` of one file of ``layout`` (its header line ``header``), by the
        very parsers and checks preprocessing runs: its block parser's events where it has one, else
        each line's record (its valid fields) or the events its parser attached to the row's Reject."""
        lines = [line.lstrip("\ufeff").rstrip("\r\n") for line in lines]
        lines = [line for line in lines if line.strip() and line != header]
        if layout.make_block_parser is not None:
            _, _, facts = layout.make_block_parser(header)(lines, Verdicts(len(lines)))
            return self.batch([facts] if facts else [])
        parse = layout.make_parser(header)
        rows = []
        for line in lines:
            try:
                rows.append(valid_fields(parse(line), self.schema))
            except (Reject, Exclude) as e:
                rows.append(dict(getattr(e, "facts", None) or {}))
            except Exception:  # noqa: BLE001 - an unreadable row has no events, as in the batch stage
                continue
        return self.batch([rows])
