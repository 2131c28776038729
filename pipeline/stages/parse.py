"""Beam DoFns that turn chunks of raw lines into record batches and dead letters."""

from __future__ import annotations

import logging
from collections.abc import Callable

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline.records import model
from pipeline.records.events import EVENTS, Events, valid_fields
from pipeline.records.ids import fingerprints
from pipeline.records.model import ID, KEY, LINE, SOURCE
from pipeline.records.verdicts import EXCLUDED, REJECTED, Exclude, Reject, Verdicts, dead_letter

logger = logging.getLogger(__name__)


class _Facts(dict):
    """The events of a row that is not a record (its fields as a record holds them), for ParseChunks."""


def _facts_of(error: Exception):
    """The events a parser attached to the Reject or Exclude of a row (``error.facts``), if any."""
    facts = getattr(error, "facts", None)
    if facts:
        yield _Facts(facts)


class ParseRows(beam.DoFn):
    """(source, line) -> canonical record, or a ``rejected``/``excluded`` tagged entry.

    ``make_parser(source)`` returns the function for that file's layout; it may raise
    :class:`Reject` or :class:`Exclude`. Any other exception is a reject too, with its message, so a
    single odd row never stops a run. ``schema.check`` then applies the declared ranges.
    """

    def __init__(self, make_parser: Callable[[str], Callable[[str], dict]], schema, labelled: bool = True):
        self._make_parser = make_parser
        self._schema = schema
        self._labelled = labelled
        self._parsers: dict[str, Callable] = {}
        # Live progress in the runner's UI (Dataflow console); the manifest's exact counts come from data.
        self._counters = {k: beam.metrics.Metrics.counter("parse", k) for k in ("rows", REJECTED, EXCLUDED)}

    def process(self, element):
        for out in self._process(element):
            if isinstance(out, _Facts):
                continue
            tag = out.tag if isinstance(out, beam.pvalue.TaggedOutput) else "rows"
            self._counters[tag].inc()
            yield out

    def _process(self, element):
        source, raw = element
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as e:
            text = raw.decode("utf-8", errors="backslashreplace")
            yield beam.pvalue.TaggedOutput(
                REJECTED, dead_letter("parse", f"line: not valid UTF-8 at byte {e.start}", source, text)
            )
            return
        line = line.lstrip("\ufeff").rstrip("\r\n")
        if not line.strip():
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letter("parse", "line: empty", source, line))
            return
        parser = self._parsers.get(source)
        if parser is None:
            parser = self._parsers[source] = self._make_parser(source)
        try:
            record = parser(line)
        except Exclude as e:
            yield from _facts_of(e)
            yield beam.pvalue.TaggedOutput(EXCLUDED, dead_letter("parse", str(e), source, line))
            return
        except Reject as e:
            yield from _facts_of(e)
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letter(e.stage, str(e), source, line))
            return
        except Exception as e:  # noqa: BLE001 - a row must never crash the run; it is kept with its error
            reason = f"unparseable: {type(e).__name__}: {e}"
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letter("parse", reason, source, line))
            return
        reason = self._schema.check(record, self._labelled)
        if reason:
            yield _Facts(valid_fields(record, self._schema))  # rejected for a range: its valid fields' events happened
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letter("validate", reason, source, line))
            return
        record[SOURCE] = source
        record[LINE] = line
        yield record


class ParseChunks(ParseRows):
    """(source, [line, ...]) -> one record batch (:mod:`pipeline.records.model`) per chunk, with
    ``rejected``/``excluded`` entries as ParseRows gives them, one by one, and (given window
    features) an ``events`` batch per chunk.

    Each record gets its id, the fingerprint of its canonical columns (equal for exact copies, which
    the windowing stage, where copies meet, de-duplicates), and ``_key``, the fingerprint of its
    natural key. The events are facts: those of every row the layout could read, record or not (a
    diverted flight's departure, a row rejected for an unrelated field), each where the fields it
    needs are valid (:class:`pipeline.records.events.Events`). Where the layout has a block parser (see ``pipeline.datasets.columnar``), it takes
    the chunk column by column and hands back to the row parser only the lines it does not judge
    (not UTF-8, empty).
    """

    def __init__(self, make_parser, schema, labelled: bool = True, window_features=()):
        super().__init__(make_parser, schema, labelled)
        self._columns = tuple(schema.columns)
        self._natural_key = tuple(schema.natural_key)
        self._arrow_schema = model.arrow_schema(schema)
        self._blocks: dict[str, Callable | None] = {}
        self._block_rows = beam.metrics.Metrics.counter("parse", "block_rows")
        self._events_counter = beam.metrics.Metrics.counter("parse", EVENTS)
        self._windowed = bool(window_features)
        self._event_batches = Events(schema, window_features)

    def process(self, element):
        yield from self.outputs_of(self.parse_chunk(element))

    def outputs_of(self, parsed):
        batch, dead_letters, counts, block_rows, events = parsed
        for tag, entry in dead_letters:
            yield beam.pvalue.TaggedOutput(tag, entry)
        for tag, n in counts.items():
            self._counters[tag].inc(n)
        self._block_rows.inc(block_rows)
        if events is not None:
            self._events_counter.inc(events.num_rows)
            yield beam.pvalue.TaggedOutput(EVENTS, events)
        if batch is not None:
            yield batch

    def parse_chunk(self, element) -> tuple[pa.RecordBatch | None, list, dict, int, pa.RecordBatch | None]:
        """(source, [line, ...]) -> (the batch of its records or None, [(tag, dead letter), ...],
        counts by tag, rows the block parser took, the batch of its events or None). Pure, with no
        Beam output or metric, so that a unit test can call it."""
        source, lines = element
        fast, taken, dead_letters, block_facts = self._parse_block(source, lines)
        counts = {"rows": 0, REJECTED: len([1 for tag, _ in dead_letters if tag == REJECTED]),
                  EXCLUDED: len([1 for tag, _ in dead_letters if tag == EXCLUDED])}
        records, facts = [], []
        for i, raw in enumerate(lines):
            if i in taken:
                continue
            for out in self._process((source, raw)):
                if isinstance(out, _Facts):
                    facts.append(out)
                elif isinstance(out, beam.pvalue.TaggedOutput):
                    counts[out.tag] += 1
                    dead_letters.append((out.tag, out.value))
                else:
                    records.append(out)
        batches = [fast] if fast is not None else []
        by_row = None
        if records:
            by_row = self._with_ids(model.from_records(records, self._arrow_schema))
            batches.append(by_row)
        batch = model.concat(batches, self._arrow_schema)
        counts["rows"] = batch.num_rows
        events = self._events(block_facts, by_row, facts) if self._windowed else None
        return (batch if batch.num_rows else None), dead_letters, counts, len(taken), events

    def _with_ids(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = fingerprints(batch, self._columns)
        keys = fingerprints(batch, self._natural_key) if self._natural_key else ids
        return model.replace(batch, {ID: ids, KEY: keys})

    def _events(self, block_facts: dict | None, records: pa.RecordBatch | None, facts: list) -> pa.RecordBatch | None:
        """The chunk's events: of the block parser's rows, of the row parser's records and of the rows it failed."""
        return self._event_batches.batch([p for p in (block_facts, records) if p is not None] + [facts])

    def _parse_block(self, source: str, lines) -> tuple[pa.RecordBatch | None, set, list, dict | None]:
        """The batch of the records the layout's block parser gave, the indices in ``lines`` of the
        lines it judged, [(tag, dead letter), ...] of those it failed, and the events of all the
        lines it judged (columns); (None, empty, empty, None) where the layout has none. Lines that
        are not UTF-8 or are empty are left to :meth:`_process`."""
        if source not in self._blocks:
            make = getattr(self._make_parser, "block", None)
            self._blocks[source] = make(source) if make else None
        parse = self._blocks[source]
        if parse is None:
            return None, set(), [], None
        texts, at = [], []
        for i, raw in enumerate(lines):
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue
            text = raw.lstrip("\ufeff").rstrip("\r\n")
            if text.strip():
                texts.append(text)
                at.append(i)
        verdicts = Verdicts(len(texts))
        try:
            columns, rows, facts = parse(texts, verdicts)
        except Exception:  # a bug in the block parser must not lose rows: each is parsed alone, with its error
            logger.exception("block parser failed on a chunk of %s; parsing it row by row", source)
            return None, set(), [], None
        dead_letters = [(kind, dead_letter(stage, reason, source, texts[j]))
                        for j, (kind, stage, reason) in sorted(verdicts.failures.items())]
        sources = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(rows), dtype=np.int32)), pa.array([source]))
        batch = model.batch({**columns, SOURCE: sources, LINE: [texts[j] for j in rows]}, len(rows), self._arrow_schema)
        return self._with_ids(batch), {at[j] for j in rows} | {at[j] for j in verdicts.failures}, dead_letters, facts
