"""Dead-letter and exclusion plumbing shared by every stage and dataset.

A stage never drops a row: it returns the clean record, or tags the row ``rejected`` (bad input,
with the stage and a reason naming the field) or ``excluded`` (valid input that is not labelled
data, e.g. a cancelled flight). Both kinds are written out and counted, so that
rows read = rows in splits + rows rejected + rows excluded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import apache_beam as beam

logger = logging.getLogger(__name__)

REJECTED = "rejected"
EXCLUDED = "excluded"
SOURCE = "_source"  # internal record fields: where the row came from and its original text
LINE = "_line"


class Records(list):
    """A list of records (or of columnar blocks) moving between stages as one element.

    A list subclass on purpose: Beam's default coder writes a plain list of dicts field by field in
    its own format (about 590 bytes and 6 microseconds a flight record, there and back), and hands
    any other type to pickle, which takes half the bytes and half the time. Every shuffle and stage
    boundary of a chunked pipeline pays this once per record.
    """

    __slots__ = ()


class Reject(Exception):
    """Raised by a parser: the row is bad input. The message names the field."""


class Exclude(Exception):
    """Raised by a parser: the row is valid but is not labelled data (e.g. cancelled)."""


def dead_letter(stage: str, reason: str, source: str, line: str) -> dict:
    """The JSON-serialisable dead-letter entry for one row."""
    return {"stage": stage, "reason": reason, "source": source, "record": line}


def from_record(stage: str, reason: str, record: Mapping[str, Any]) -> dict:
    """Dead-letter entry for a row that was already parsed: keeps its original text."""
    return dead_letter(stage, reason, record.get(SOURCE, ""), record.get(LINE, ""))


def reason_key(reason: str) -> str:
    """The countable part of a reason: up to the first ':' after the field, values stripped."""
    head, sep, tail = reason.partition(": ")
    if not sep:
        return reason
    # "dep_delay: 9999 above maximum 3000" -> "dep_delay: above maximum"
    words = [w for w in tail.split() if not _is_value(w)]
    return f"{head}: {' '.join(words[:4])}".strip()


def _is_value(word: str) -> bool:
    if word[:1] in "'\"":  # a quoted input value; the full reason stays in the dead-letter file
        return True
    word = word.strip("'\"(),")
    if not word:
        return True
    try:
        float(word)
        return True
    except ValueError:
        return any(ch.isdigit() for ch in word)


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
            yield beam.pvalue.TaggedOutput(EXCLUDED, dead_letter("parse", str(e), source, line))
            return
        except Reject as e:
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letter("parse", str(e), source, line))
            return
        except Exception as e:  # noqa: BLE001 - a row must never crash the run; it is kept with its error
            reason = f"unparseable: {type(e).__name__}: {e}"
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letter("parse", reason, source, line))
            return
        reason = self._schema.check(record, self._labelled)
        if reason:
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letter("validate", reason, source, line))
            return
        record[SOURCE] = source
        record[LINE] = line
        yield record


class ParseChunks(ParseRows):
    """(source, [line, ...]) -> one list of canonical records per chunk, with ``rejected``/``excluded``
    entries as ParseRows gives them, one by one.

    Each record gets ``id_field``: the fingerprint of its canonical columns, equal for exact copies
    (which the windowing stage, where copies meet, de-duplicates). One element per chunk instead of
    one per row: the runner's per-element work is what a row-by-row graph spends most of its time on.
    """

    def __init__(self, make_parser, schema, labelled: bool = True, id_field: str = "_id"):
        super().__init__(make_parser, schema, labelled)
        self._id_field = id_field
        self._columns = tuple(schema.columns)

    def process(self, element):
        source, lines = element
        records = Records()
        counts = {"rows": 0, REJECTED: 0, EXCLUDED: 0}
        for raw in lines:
            for out in self._process((source, raw)):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    counts[out.tag] += 1
                    yield out
                else:
                    out[self._id_field] = fingerprint(out, self._columns)
                    records.append(out)
        counts["rows"] = len(records)
        for tag, n in counts.items():
            self._counters[tag].inc(n)
        if records:
            yield records


def to_json_line(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


def fingerprint(record: Mapping[str, Any], columns) -> str:
    """Stable id of a canonical record: equal for exact duplicates, whatever file they came from."""
    text = repr(tuple(map(record.get, columns)))  # the values in the schema's column order
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def keep_first(element, id_field):
    """(id, identical records) -> the first by (source, line), with the id and without its raw
    text; the others as ``rejected`` duplicates of it."""
    rid, records = element
    records = sorted(records, key=lambda r: (r.get(SOURCE, ""), r.get(LINE, "")))
    first = records[0]
    first[id_field] = rid
    first.pop(LINE, None)  # nothing downstream needs the raw text; it is a fifth of the record in every later shuffle
    yield first
    for duplicate in records[1:]:
        yield beam.pvalue.TaggedOutput(
            REJECTED, from_record("dedupe", f"record: duplicate of a row in {first.get(SOURCE, '')}", duplicate)
        )
