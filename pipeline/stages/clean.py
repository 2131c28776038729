"""The composite stages shared by preprocessing and batch prediction, so both run the very same
parsing, cleaning and windowing (not a copy), and write dead letters the same way."""

from __future__ import annotations

import os

import apache_beam as beam
import pyarrow as pa

from pipeline.records import coder  # noqa: F401 - registers the coder of record batches
from pipeline.records.events import EVENTS
from pipeline.records.verdicts import EXCLUDED, REJECTED, to_json_line
from pipeline.stages import manifest
from pipeline.stages.parse import ParseChunks
from pipeline.stages.read import LINES, READ, ReadRawLines, parser_factory
from pipeline.stages.window import WindowRecords

RECORDS = "records"
PARSED = "parsed"


class CleanAndWindow(beam.PTransform):
    """Reads the planned raw files -> parsed, validated, de-duplicated records with windowed features.

    Returns a dict: ``read`` (chunks of raw lines as read, ``(path, [line, ...])``, to count), ``lines``
    (the same chunks, where they are parsed), ``records``
    (Arrow record batches, :mod:`pipeline.records.model`), ``parsed`` (the batches as parsed, before
    de-duplication and windowing: the same records, copies included, so the same distinct values
    of any column), ``rejected`` and ``excluded`` (one dead-letter entry each). Records move in
    batches from the parse to the end: the runner's cost per element is paid per batch, not per row.
    Exact duplicates are removed in the windowing group, where copies meet.
    """

    def __init__(self, dataset, plan, layouts, window_s: int, labelled: bool = True):
        super().__init__()
        self._labelled = labelled
        self._dataset = dataset
        self._plan = plan
        self._layouts = layouts
        self._window_s = window_s

    def expand(self, pbegin):
        schema = self._dataset.SCHEMA
        read = pbegin | "ReadRawLines" >> ReadRawLines(self._plan, self._layouts)
        lines = read[LINES]
        features = self._dataset.WINDOW_FEATURES
        parsed = lines | "ParseAndValidate" >> beam.ParDo(
            ParseChunks(parser_factory(self._plan, self._layouts), schema, self._labelled, features)
        ).with_output_types(pa.RecordBatch).with_outputs(REJECTED, EXCLUDED, EVENTS, main=RECORDS)
        windowed = {RECORDS: parsed[RECORDS], EVENTS: parsed[EVENTS]} | "DeduplicateAndAddWindowFeatures" >> WindowRecords(
            features, self._window_s, self._dataset.WINDOW_BUCKET_SECONDS
        )
        rejected = (parsed[REJECTED], windowed[REJECTED]) | "FlattenRejected" >> beam.Flatten()
        return {READ: read[READ], LINES: lines, RECORDS: windowed[RECORDS], PARSED: parsed[RECORDS], REJECTED: rejected,
                EXCLUDED: parsed[EXCLUDED]}


class WriteDeadLetters(beam.PTransform):
    """Writes ``rejected`` and ``excluded`` as JSON lines under output_dir; returns their count keys."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._output_dir = output_dir

    def expand(self, outputs):
        count_keys = []
        for tag, key_fn in ((REJECTED, manifest.rejected_key), (EXCLUDED, manifest.excluded_key)):
            name = tag.capitalize()
            pcoll = outputs[tag]
            _ = (
                pcoll
                | f"Format{name}" >> beam.Map(to_json_line)
                | f"Write{name}" >> beam.io.WriteToText(os.path.join(self._output_dir, tag, "part"), file_name_suffix=".jsonl")
            )
            count_keys.append(pcoll | f"Count{name}" >> beam.Map(key_fn))
        return count_keys | "FlattenDeadLetterCounts" >> beam.Flatten()
