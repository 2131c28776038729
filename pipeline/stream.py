"""Streaming ingestion: Pub/Sub -> the pipeline's own layouts and event extraction -> the window store.

    python -m pipeline.stream --dataset flights --subscription projects/P/subscriptions/S \\
        --input_format kaggle --header "YEAR,MONTH,DAY,..." --window_store redis://HOST:PORT/DB [--window_minutes 60]
    # on Google Cloud: add --runner DataflowRunner --streaming --project P --region R --temp_location gs://B/tmp
    #   --setup_file ./setup.py, and a Memorystore address as --window_store

Each Pub/Sub message is one raw record, a line of a file in ``--input_format`` (whose header line is
``--header``), or with ``--input_format events`` one JSON object in the event form (see
pipeline.online.windows). A bundle's messages become events by the very code preprocessing runs
(:class:`pipeline.records.events.Events`) and go to the store in one atomic script; the store
counts a re-delivered message's events once (natural key and kind), so Pub/Sub's at-least-once
delivery and Beam's bundle retries change nothing. Counters (``stream/stored``, ``duplicates``,
``late``, ``rejected``) show progress in the runner's UI. Servers reading the same store
(``trainer.serve --window_store redis://...``) fill their windowed features from it.
"""

from __future__ import annotations

import json
import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.online.windows import OnlineWindows
from pipeline.options import LOCAL_RUNNER, PreprocessOptions, UsageError, run_main

logger = logging.getLogger(__name__)


class StreamOptions(PipelineOptions):
    """What streaming adds; --dataset, --input_format (the records' layout, or 'events'), --window_minutes and
    --airports are preprocessing's own flags."""

    @classmethod
    def _add_argparse_args(cls, parser):  # Beam's hook for a view's flags
        parser.add_argument("--subscription", help="projects/P/subscriptions/S to read raw records from")
        parser.add_argument("--topic", help="projects/P/topics/T (Beam makes its own subscription)")
        parser.add_argument("--header", default="", help="the header line of the layout's files")
        parser.add_argument("--window_store", help="redis://HOST:PORT/DB (Memorystore on Google Cloud)")
        parser.add_argument("--allowed_lateness_minutes", type=int,
                            help="how long after its kind's latest event an event is still stored (default: a day). "
                                 "Records published once complete (after the arrival) bring departures hours late: "
                                 "a day covers the longest flight plus its delays")


class AddEventsToStore(beam.DoFn):
    """A bundle of raw messages -> their events -> the window store (one batch per bundle)."""

    def __init__(self, dataset: str, layout: str, header: str, window_store: str, window_s: int,
                 lateness_s: int | None = None):
        self._args = (dataset, layout, header, window_store, window_s, lateness_s)
        self._counters = {k: beam.metrics.Metrics.counter("stream", k)
                          for k in ("messages", "stored", "duplicates", "late", "rejected")}

    def setup(self):
        dataset, layout, header, store, window_s, lateness_s = self._args
        self._online = OnlineWindows(dataset, window_s, store, lateness_s=lateness_s)
        self._layout, self._header = layout, header

    def start_bundle(self):
        self._messages = []

    def process(self, message: bytes):
        self._messages.append(message.decode("utf-8", errors="replace"))

    def finish_bundle(self):
        if not self._messages:
            return
        if self._layout == "events":
            rows = []
            for text in self._messages:
                try:
                    rows.append(json.loads(text))
                except json.JSONDecodeError:
                    self._counters["rejected"].inc()
            body = {"events": [r for r in rows if isinstance(r, dict)]}
        else:
            body = {"records": self._messages, "layout": self._layout, "header": self._header}
        result = self._online.ingest(body)
        self._counters["messages"].inc(len(self._messages))
        for name in ("stored", "duplicates", "late", "rejected"):
            self._counters[name].inc(result[name])
        self._messages = []


def _source(ours: StreamOptions):
    try:
        if ours.subscription:
            return beam.io.ReadFromPubSub(subscription=ours.subscription)
        return beam.io.ReadFromPubSub(topic=ours.topic)
    except ValueError as e:  # Beam's own check of the names
        raise UsageError(f"--subscription / --topic: {e}") from None


def build(p: beam.Pipeline, ours: StreamOptions, shared: PreprocessOptions) -> None:
    _ = (p
         | "ReadFromPubSub" >> _source(ours)
         | "AddEventsToStore" >> beam.ParDo(AddEventsToStore(
             shared.dataset, shared.input_format, ours.header, ours.window_store, shared.window_minutes * 60,
             None if ours.allowed_lateness_minutes is None else ours.allowed_lateness_minutes * 60)))


def check(ours: StreamOptions, shared: PreprocessOptions) -> None:
    """Usage errors before anything runs: the source, the store, the layout and its header."""
    if shared.dataset not in ("flights", "taxi"):
        raise UsageError("--dataset flights|taxi is needed")
    if bool(ours.subscription) == bool(ours.topic):
        raise UsageError("give exactly one of --subscription projects/P/subscriptions/S or --topic projects/P/topics/T")
    _source(ours)
    if not (ours.window_store or "").startswith(("redis://", "rediss://")):
        raise UsageError("--window_store redis://HOST:PORT/DB is needed: the servers read the events from there")
    if shared.input_format != "events":
        layouts = OnlineWindows.layouts_of(shared.dataset)
        if shared.input_format not in layouts:
            raise UsageError(f"--input_format {shared.input_format!r}: one of {sorted(layouts)} or 'events'")
        if layouts[shared.input_format].has_header and not layouts[shared.input_format].detect(ours.header):
            raise UsageError(f"--input_format {shared.input_format} needs its files' header line as --header")


def run(argv=None):
    options = PipelineOptions(argv)
    ours, shared = options.view_as(StreamOptions), options.view_as(PreprocessOptions)
    check(ours, shared)
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    if standard.runner in (None, LOCAL_RUNNER):
        standard.runner = "DirectRunner"  # Beam's Python engine reads Pub/Sub only in its streaming direct runner
    p = beam.Pipeline(options=options)
    build(p, ours, shared)
    logger.info("streaming %s records from Pub/Sub into %s", shared.dataset, ours.window_store)
    result = p.run()
    result.wait_until_finish()
    return result


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
