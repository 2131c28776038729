"""Online windowed features for one dataset: events in (raw records or the event form), features out.

The server (``trainer.serve``) and replay (``pipeline.replay``) use this; it runs the dataset's own
layouts, parsers and checks (:class:`pipeline.records.events.Events`) and a window store
(:mod:`pipeline.online.store`), so an instance gets the very window values batch gives its record.

Events are posted as ``{"records": [line, ...], "layout": NAME, "header": LINE}`` (raw lines of one
file in any layout preprocessing reads; ``header`` for layouts with one) or ``{"events": [{...}, ...]}``
(the event form: the fact columns, e.g. for flights ``carrier, flight_number, origin, crs_dep_ts,
dep_ts, dep_delay, wheels_off_ts, taxi_out, dest, arr_ts, arr_delay``, times in UTC epoch seconds,
any of them missing).
"""

from __future__ import annotations

from pipeline.datasets import flights, taxi
from pipeline.datasets.airports import load_airports
from pipeline.online.redis_store import RedisWindowStore
from pipeline.online.store import MemoryWindowStore
from pipeline.records.events import Events

DATASETS = {"flights": flights, "taxi": taxi}
MAX_EVENT_ROWS = 100_000


class BadEvents(ValueError):
    """A client error in posted events; the message names the problem."""


def open_store(spec: str, features, window_s: int, prefix: str | None = None, lateness_s: int | None = None):
    """The window store ``spec`` names: "memory" (this process) or "redis://HOST:PORT/DB"; events may
    arrive ``lateness_s`` (default: one window) after their kind's watermark."""
    if spec == "memory":
        return MemoryWindowStore(features, window_s, lateness_s)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisWindowStore(features, window_s, spec, lateness_s, prefix=prefix)
    raise ValueError(f"window store {spec!r}: 'memory' or redis://HOST:PORT/DB")


class OnlineWindows:
    def __init__(self, dataset: str, window_s: int, store=None, tolerance_s: int = 300, airports: str | None = None,
                 lateness_s: int | None = None):
        if dataset not in DATASETS:
            raise ValueError(f"no online windows for dataset {dataset!r}; known: {sorted(DATASETS)}")
        self.module = DATASETS[dataset]
        self.features = self.module.WINDOW_FEATURES
        self.names = tuple(f.name for f in self.features)
        self.context = tuple(self.module.ONLINE_CONTEXT)
        if store is None or isinstance(store, str):
            store = open_store(store or "memory", self.features, window_s, lateness_s=lateness_s)
        self.store = store
        self.tolerance = int(tolerance_s)
        self.events = Events(self.module.SCHEMA, self.features)
        self.airports = load_airports(airports) if dataset == "flights" else None
        self.layouts = self.layouts_of(dataset, self.airports)
        self.rejected = 0

    @staticmethod
    def layouts_of(dataset: str, airports: dict | None = None) -> dict:
        """The layouts the dataset's raw records may come in (preprocessing's own)."""
        module = DATASETS[dataset]
        return module.layouts(airports or load_airports()) if dataset == "flights" else module.layouts()

    # ------------------------------------------------------------------ events in
    def ingest(self, body) -> dict:
        """A posted body of events -> what became of them: rows, events stored, duplicates and late, and
        rows rejected (that gave no valid event: unreadable, or no event's fields valid, e.g. cancelled)."""
        if not isinstance(body, dict) or set(body) - {"records", "layout", "header", "events"}:
            raise BadEvents("the body must be {'records': [...], 'layout': ..., 'header': ...} or {'events': [...]}")
        if ("records" in body) == ("events" in body):
            raise BadEvents("the body must have exactly one of 'records' (raw lines) or 'events'")
        rows = body.get("records", body.get("events"))
        if not isinstance(rows, list):
            raise BadEvents("'records' / 'events' must be a list")
        if len(rows) > MAX_EVENT_ROWS:
            raise BadEvents(f"{len(rows)} rows in one request; the limit is {MAX_EVENT_ROWS}")
        if "records" in body:
            layout = self.layouts.get(body.get("layout"))
            if layout is None:
                raise BadEvents(f"layout {body.get('layout')!r} unknown; known: {sorted(self.layouts)}")
            header = body.get("header", "")
            if layout.has_header and not (isinstance(header, str) and layout.detect(header)):
                raise BadEvents(f"layout {layout.name!r} needs its file's header line as 'header'")
            if not all(isinstance(r, str) for r in rows):
                raise BadEvents("'records' must be raw lines (strings)")
            try:
                batch = self.events.of_lines(layout, header, rows)
            except Exception as e:  # noqa: BLE001 - e.g. a header lacking columns: the client's input
                raise BadEvents(f"cannot read the records as {layout.name!r}: {e}") from None
        else:
            if not all(isinstance(r, dict) for r in rows):
                raise BadEvents("'events' must be objects of field -> value")
            unknown = sorted({k for r in rows for k in r} - set(self.events.columns))
            if unknown:
                raise BadEvents(f"unknown event field(s) {unknown}; expected some of {list(self.events.columns)}")
            try:
                batch = self.events.batch([[dict(r) for r in rows]])
            except Exception as e:  # noqa: BLE001 - a value of the wrong type
                raise BadEvents(f"events: {e}") from None
        got = batch.num_rows if batch is not None else 0
        out = self.store.add(batch)
        rejected = len(rows) - got
        self.rejected += rejected
        return {"rows": len(rows), **out, "rejected": rejected}

    # ------------------------------------------------------------------ features out
    def fill(self, instances: list) -> tuple[list, list]:
        """Instances -> (the model's instances: windowed features filled where absent, context
        fields removed; per instance what was filled, the watermark and whether its windows may be
        incomplete). A windowed feature the caller sent is kept as sent."""
        watermark = self.store.watermark()
        model_rows, meta = [], []
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                model_rows.append(instance)
                meta.append({"filled": []})
                continue
            row = {k: v for k, v in instance.items() if k not in self.context}
            wanted = [n for n in self.names if n not in instance]
            entry = {"filled": wanted, "watermark": watermark}
            if wanted:
                try:
                    query = self.module.online_query(instance, self.airports)
                except (ValueError, TypeError) as e:  # e.g. a b64 object where the origin's code belongs
                    raise BadEvents(f"instances[{i}]: cannot place it in time to fill {wanted}: {e}") from None
                values = self.store.features(query)
                row.update({n: values[n] for n in wanted})
                entry["values"] = {n: values[n] for n in wanted}
                entry["prediction_time"] = query.time
                entry["incomplete"] = watermark is None or query.time - watermark > self.tolerance
            model_rows.append(row)
            meta.append(entry)
        return model_rows, meta

    def without_context(self, instances: list) -> list:
        """The instances as the model takes them, nothing filled (to judge the client's input first)."""
        return [{k: v for k, v in r.items() if k not in self.context} if isinstance(r, dict) else r for r in instances]

    def status(self) -> dict:
        return {**self.store.status(), "rejected": self.rejected, "tolerance_seconds": self.tolerance}

