"""The record model's coder: what crosses a shuffle comes back as it went in, compressed."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from pipeline.records import model
from pipeline.records.coder import RecordBatchCoder
from pipeline.records.ids import fingerprints
from schemas.flights import SCHEMA


def _flights(n: int) -> pa.RecordBatch:
    schema = model.arrow_schema(SCHEMA)
    records = [{"carrier": ("AA", "DL", None)[i % 3], "origin": "JFK", "dep_delay": None if i % 5 == 0 else float(i % 40),
                "dep_ts": 1_420_070_400 + 60 * i, "_source": "a.csv", "_line": f"2015-01-01,AA,{i},JFK,LAX,{i % 40}"}
               for i in range(n)]
    batch = model.from_records(records, schema)
    return model.replace(batch, {model.ID: fingerprints(batch, list(SCHEMA.columns))})


def test_a_batch_crosses_the_coder_whole_and_compressed():
    """Every value comes back (nulls as nulls, dictionaries as dictionaries, ids as 12 bytes), a slice
    as its own rows, and the encoded batch is smaller than Arrow's uncompressed stream of it."""
    batch = _flights(5000)
    coder = RecordBatchCoder()
    back = coder.decode(coder.encode(batch))
    assert back.equals(batch) and back.schema == batch.schema
    part = batch.slice(4990)
    assert coder.decode(coder.encode(part)).to_pylist() == part.to_pylist()
    plain = pa.BufferOutputStream()
    with pa.ipc.new_stream(plain, batch.schema) as writer:
        writer.write_batch(batch)
    assert len(coder.encode(batch)) < plain.getvalue().size / 2
    empty = model.empty(batch.schema)
    assert coder.decode(coder.encode(empty)).num_rows == 0


def test_beam_uses_the_coder_for_batches_and_tuples_holding_them():
    """The coder registered for pa.RecordBatch is what Beam picks for a PCollection of batches and for
    the (bucket, (kind, batch)) elements of the window shuffle: no pickling of batches."""
    from apache_beam.typehints import native_type_compatibility

    assert isinstance(beam.coders.registry.get_coder(pa.RecordBatch), RecordBatchCoder)
    hint = native_type_compatibility.convert_to_beam_type(tuple[str, tuple[str, pa.RecordBatch]])
    coder = beam.coders.registry.get_coder(hint)
    element = ("16436", ("records", _flights(10)))
    bucket, (kind, batch) = coder.decode(coder.encode(element))
    assert (bucket, kind) == element[:1] + ("records",) and batch.equals(element[1][1])
    assert "RecordBatchCoder" in repr(coder)
