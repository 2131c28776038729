"""Replay: the consistency check a user runs between batch and online windowed features.

    python -m pipeline.replay --model_dir MODEL --input RAW --output_dir OUT [--dataset flights]
        [--server http://127.0.0.1:8501 | --window_store redis://HOST:PORT/DB] [--window_minutes 60]

The raw records' events (the parse stage's own, :class:`pipeline.records.events.Events`) are replayed
in event-time order into a window store, in this process (:mod:`pipeline.online`) or a running
server's (``--server``: POST .../events, then POST ...:predict); at each labelled record's prediction
time, the store fills that record's instance (its raw model inputs without the windowed features,
and the context fields the server takes). The batch side is the preprocessing's own CleanAndWindow
stage, run here on the same input. Writes:

- ``OUT/replay.jsonl``, one object per labelled record: ``instance`` (the raw model inputs as the
  store filled them; null where a window is empty), ``filled`` (the names the store filled),
  ``batch`` (the batch pipeline's windowed values), ``prediction`` (the model's, on the instance);
- ``OUT/report.json``: how many records have windowed features bit-identical to batch and
  predictions equal (within 1e-6) to the model's on the batch record; a few mismatches.

Exit status 1 when parity is not 100%.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import urllib.request
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline.online.windows import DATASETS, OnlineWindows, open_store
from pipeline.records import model
from pipeline.records.windows import event_groups
from pipeline.stages.clean import RECORDS, CleanAndWindow
from pipeline.stages.read import ReadRange, plan_inputs, read_lines
from trainer.serve import DEFAULT_SIGNATURE, LoadedModel, format_response, parse_request

logger = logging.getLogger(__name__)

PREDICTION_TOLERANCE = 1e-6


def batch_records(dataset, plan, layouts, window_s: int, work_dir: str, columns) -> list[dict]:
    """The records the batch pipeline's CleanAndWindow stage gives, as dicts of ``columns``."""
    columns = list(dict.fromkeys(columns))
    prefix = os.path.join(work_dir, "batch", "records")
    with beam.Pipeline(runner="FnApiRunner") as p:
        out = p | CleanAndWindow(dataset, plan, layouts, window_s)
        _ = (out[RECORDS]
             | beam.FlatMap(lambda b: [json.dumps(r) for r in b.select([c for c in columns if c in b.schema.names]).to_pylist()])
             | beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))
    folder = os.path.dirname(prefix)
    records = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            records.extend(json.loads(line) for line in f)
    return records


def raw_events(online: OnlineWindows, plan) -> pa.RecordBatch | None:
    """The events of every raw line of the planned files."""
    parts = []
    for spec in plan:
        layout = online.layouts[spec.layout]
        for _, chunk in read_lines(ReadRange(spec.path, 0, None, layout.has_header)):
            lines = [raw.decode("utf-8", errors="replace") for raw in chunk]
            events = online.events.of_lines(layout, spec.header, lines)
            if events is not None:
                parts.append(events)
    return model.concat(parts, online.events.arrow_schema) if parts else None


def by_kind(online: OnlineWindows, events: pa.RecordBatch | None) -> list[tuple[np.ndarray, pa.RecordBatch]]:
    """Per event kind: (times in order, the events of that kind alone, in that order)."""
    groups = event_groups(online.features)
    out = []
    for group in groups:
        if events is None:
            out.append((np.zeros(0, dtype=np.int64), None))
            continue
        times = events.column(group.event_time)
        rows = np.flatnonzero(model.valid(times))
        te = model.ints(times.take(pa.array(rows)))
        order = np.argsort(te, kind="stable")
        kind = model.take(events, rows[order])
        others = {g.event_time: pa.nulls(kind.num_rows, pa.int64()) for g in groups if g.event_time != group.event_time}
        out.append((te[order], model.replace(kind, others)))
    return out


def instance_of(record: dict, online: OnlineWindows, schema) -> dict:
    """A batch record as an online caller sends it: its raw model inputs, no windowed feature, and
    the context fields the server takes."""
    instance = {n: record.get(n) for n in schema.feature_names if n not in online.names}
    if "flight_number" in online.context:
        instance["flight_number"] = record.get("flight_number")
    if "pickup_time" in online.context:
        when = dt.datetime.fromtimestamp(record["pickup_ts"], dt.UTC)
        instance["pickup_time"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return instance


class _Server:
    """A running trainer.serve: events posted, instances predicted (and filled) over its REST API."""

    def __init__(self, url: str, name: str):
        self._base = f"{url.rstrip('/')}/v1/models/{name}"

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self._base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def add(self, events: pa.RecordBatch) -> None:
        rows = [{k: v for k, v in r.items() if v is not None and k != model.KEY} for r in events.to_pylist()]
        self._post("/events", {"events": rows})

    def fill_and_predict(self, instance: dict) -> tuple[dict, object]:
        out = self._post(":predict", {"instances": [instance]})
        return out["windows"][0], out["predictions"][0]


def _predict(loaded: LoadedModel, instances: list[dict]) -> list:
    out = []
    for start in range(0, len(instances), 4096):
        part = instances[start:start + 4096]
        columns, n, _ = parse_request({"instances": part}, loaded.inputs[DEFAULT_SIGNATURE])
        out.extend(format_response(loaded.predict(DEFAULT_SIGNATURE, columns), n, True)["predictions"])
    return out


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return abs(a - b) <= PREDICTION_TOLERANCE * max(1.0, abs(a), abs(b))


def replay(dataset_name: str, input_pattern: str, output_dir: str, window_s: int, loaded=None,
           server: str | None = None, model_name: str | None = None, input_format: str | None = None,
           window_store: str = "memory") -> dict:
    """Runs the replay (see the module docstring); returns the report. ``loaded``: the model
    (trainer.serve.LoadedModel) whose predictions are compared, or None."""
    module = DATASETS[dataset_name]
    schema = module.SCHEMA
    store = open_store(window_store, module.WINDOW_FEATURES, window_s, prefix=f"replay:{uuid.uuid4().hex}")
    online = OnlineWindows(dataset_name, window_s, store)
    plan = plan_inputs(input_pattern, online.layouts, input_format)
    os.makedirs(output_dir, exist_ok=True)
    query_time = online.features[0].query_time
    columns = [*schema.feature_names, schema.label, query_time, "flight_number", "pickup_ts"]
    with tempfile.TemporaryDirectory(dir=output_dir) as work:
        records = batch_records(module, plan, online.layouts, window_s, work, columns)
    labelled = sorted((r for r in records if r.get(schema.label) is not None), key=lambda r: r[query_time])
    logger.info("batch: %d records, %d labelled; replaying their events", len(records), len(labelled))
    kinds = by_kind(online, raw_events(online, plan))
    target = _Server(server, model_name or dataset_name) if server else None
    # One time order over all kinds: (time, kind, position in that kind's batch).
    times = np.concatenate([te for te, _ in kinds]) if kinds else np.zeros(0, dtype=np.int64)
    kind_of = np.concatenate([np.full(len(te), k) for k, (te, _) in enumerate(kinds)]) if kinds else times
    at = np.concatenate([np.arange(len(te)) for te, _ in kinds]) if kinds else times
    order = np.lexsort((kind_of, times))
    times, kind_of, at = times[order], kind_of[order], at[order]
    done = 0
    results = []
    for record in labelled:
        t = record[query_time]
        upto = int(np.searchsorted(times, t, side="left"))
        while done < upto:  # the events before t, in time order, a run of one kind at a time
            k = kind_of[done]
            end = done + int(np.argmax(kind_of[done:upto] != k)) if (kind_of[done:upto] != k).any() else upto
            part = model.take(kinds[k][1], at[done:end])
            target.add(part) if target else online.store.add(part)
            done = end
        instance = instance_of(record, online, schema)
        if target:
            meta, prediction = target.fill_and_predict(instance)
            filled_instance = {**online.without_context([instance])[0], **meta.get("values", {})}
        else:
            (filled_instance,), (meta,) = online.fill([instance])
            prediction = None
        results.append({"instance": filled_instance, "filled": meta["filled"],
                        "batch": {n: record.get(n) for n in online.names}, "prediction": prediction})
    if loaded is not None:
        if not target:
            for r, p in zip(results, _predict(loaded, [r["instance"] for r in results]), strict=True):
                r["prediction"] = p
        batch_instances = [{**r["instance"], **r["batch"]} for r in results]
        for r, p in zip(results, _predict(loaded, batch_instances), strict=True):
            r["batch_prediction"] = p
    same = [all(r["instance"][n] == r["batch"][n] and type(r["instance"][n]) is type(r["batch"][n]) for n in online.names)
            for r in results]
    identical = sum(same)
    equal = sum(1 for r in results if "batch_prediction" in r and _close(r["prediction"], r["batch_prediction"]))
    mismatches = [r for r, ok in zip(results, same, strict=True) if not ok][:5]
    report = {"dataset": dataset_name, "input": input_pattern, "window_seconds": window_s,
              "store": server or window_store, "labelled_records": len(results),
              "features_identical": identical, "predictions_compared": sum("batch_prediction" in r for r in results),
              "predictions_equal": equal, "prediction_tolerance": PREDICTION_TOLERANCE,
              "store_status": None if target else online.status(), "mismatches": mismatches}
    if hasattr(store, "clear"):
        store.clear()  # a replay's own keys in a shared store
    with open(os.path.join(output_dir, "replay.jsonl"), "w") as f:
        for r in results:
            f.write(json.dumps({k: r[k] for k in ("instance", "filled", "batch", "prediction")}) + "\n")
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", help="the trainer's --job_dir (or an export): predictions are compared too")
    parser.add_argument("--input", required=True, help="raw records: a path, glob or comma-separated patterns")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="default: the model's")
    parser.add_argument("--input_format", help="force one layout for every input file")
    parser.add_argument("--window_minutes", type=int, help="default: the model's preprocessing run's, else 60")
    parser.add_argument("--server", help="a running trainer.serve (http://HOST:PORT) whose store is replayed into")
    parser.add_argument("--window_store", default="memory", help="without --server: 'memory' or redis://HOST:PORT/DB")
    parser.add_argument("--model_name", help="the server's model name (default: the dataset)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loaded = LoadedModel(args.model_dir) if args.model_dir else None
    info = loaded.info if loaded is not None else {}
    dataset = args.dataset or info.get("dataset")
    if dataset not in DATASETS:
        parser.error("--dataset is needed (the model does not say which dataset it was trained on)")
    window_s = 60 * (args.window_minutes or info.get("window_minutes") or 60)
    report = replay(dataset, args.input, args.output_dir, window_s, loaded, args.server, args.model_name,
                    args.input_format, args.window_store)
    summary = {k: report[k] for k in ("labelled_records", "features_identical", "predictions_compared", "predictions_equal")}
    print(json.dumps(summary))
    full = report["features_identical"] == report["labelled_records"] and report["predictions_equal"] == report["predictions_compared"]
    return 0 if full else 1


if __name__ == "__main__":
    sys.exit(main())
