"""Encoding Arrow record batches as tf.Examples: tfx-bsl's encoder against pipeline.example_encoding,
and encode + TFRecord framing as the pipeline did it (tfx-bsl, then ``frame_tfrecords``) against
``framed_examples`` now. Prints µs a row, medians over alternating rounds.

    python -m bench.encode [--out /tmp/flt_out] [--rows 4096] [--rounds 15]

Batches: the transformed flights examples (``OUT/train``: 23 features, one int64 or float32 each)
and the raw ones (``OUT/raw/train``: strings, floats, an int, empty lists for missing values), read
back from a preprocessed output directory; where that is absent, synthetic batches of the same
shape.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import os
import struct
import time

import numpy as np
import pyarrow as pa

from bench.common import load_average, median


def read_tfrecords(pattern: str, limit: int) -> list[bytes]:
    """Up to ``limit`` records of the gzip TFRecord shards matching ``pattern`` (no CRC checks)."""
    records = []
    for path in sorted(glob.glob(pattern)):
        with gzip.open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data) and len(records) < limit:
            (n,) = struct.unpack_from("<Q", data, pos)
            records.append(data[pos + 12 : pos + 12 + n])
            pos += 16 + n
    return records


def real_batch(pattern: str, rows: int) -> pa.RecordBatch | None:
    from tfx_bsl.coders import example_coder

    records = read_tfrecords(pattern, rows)
    if len(records) < rows:
        return None
    return example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records)


def synthetic_transformed(rows: int, rng: np.random.Generator) -> pa.RecordBatch:
    """23 features of one value each: 12 int64 (small vocabulary ids, a few 2-byte varints), 11 float32."""
    columns, names = [], []
    offsets = pa.array(np.arange(rows + 1, dtype=np.int64))
    for i in range(12):
        values = pa.array(rng.integers(0, 300 if i % 3 == 0 else 60, rows), pa.int64())
        columns.append(pa.LargeListArray.from_arrays(offsets, values))
        names.append(f"int_feature_{i}_xf")
    for i in range(11):
        values = pa.array(rng.standard_normal(rows).astype(np.float32))
        columns.append(pa.LargeListArray.from_arrays(offsets, values))
        names.append(f"float_feature_{i}_xf")
    return pa.RecordBatch.from_arrays(columns, names)


def synthetic_raw(rows: int, rng: np.random.Generator) -> pa.RecordBatch:
    """15 features like the raw flights ones: 4 strings, 10 float32 (3 missing half the time), 1 int64."""
    columns, names = [], []
    for name, width in (("carrier", 2), ("origin", 3), ("dest", 3), ("dep_time_local", 16)):
        values = [bytes(rng.integers(65, 91, width, dtype=np.uint8)) for _ in range(rows)]
        columns.append(pa.array([[v] for v in values], pa.large_list(pa.large_binary())))
        names.append(name)
    for i in range(10):
        present = rng.random(rows) < (0.5 if i < 3 else 1.0)
        offsets = np.concatenate(([0], np.cumsum(present))).astype(np.int64)
        values = pa.array(rng.standard_normal(int(present.sum())).astype(np.float32))
        columns.append(pa.LargeListArray.from_arrays(pa.array(offsets), values))
        names.append(f"float_{i}")
    offsets = pa.array(np.arange(rows + 1, dtype=np.int64))
    columns.append(pa.LargeListArray.from_arrays(offsets, pa.array(rng.integers(0, 2, rows), pa.int64())))
    names.append("ontime")
    return pa.RecordBatch.from_arrays(columns, names)


def per_row_us(fn, batch, repeats: int) -> float:
    """Best of ``repeats`` calls (the least disturbed by other jobs), µs a row."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn(batch)
        best = min(best, time.perf_counter() - started)
    return best / batch.num_rows * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/flt_out", help="a preprocessed flights output directory")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3, help="calls a round, the best kept")
    args = ap.parse_args(argv)

    from pipeline.example_encoding import encode_examples, tfx_bsl_encode
    from pipeline.transform import frame_tfrecords, framed_examples

    rng = np.random.default_rng(0)
    batches = {}
    for label, pattern, synthetic in (
        ("transformed", os.path.join(args.out, "train", "*.tfrecord.gz"), synthetic_transformed),
        ("raw", os.path.join(args.out, "raw", "train", "*.tfrecord.gz"), synthetic_raw),
    ):
        batch = real_batch(pattern, args.rows)
        source = pattern
        if batch is None:
            batch, source = synthetic(args.rows, rng), "synthetic"
        batches[label] = batch
        print(f"{label}: {batch.num_rows} rows, {batch.num_columns} columns, from {source}")

    contenders = {
        "encode tfx-bsl": tfx_bsl_encode,
        "encode ours": encode_examples,
        "encode+frame old": lambda b: frame_tfrecords(tfx_bsl_encode(b)),
        "encode+frame ours+frame_tfrecords": lambda b: frame_tfrecords(encode_examples(b)),
        "encode+frame new (framed_examples)": framed_examples,
    }
    print(f"load average before: {load_average()}")
    for label, batch in batches.items():
        # Same results first: the point of the figures is that they are for the same bytes.
        assert framed_examples(batch) == frame_tfrecords(encode_examples(batch))
        times: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_ in range(args.rounds):
            order = names if round_ % 2 == 0 else names[::-1]  # alternate, so that load falls on all alike
            for name in order:
                times[name].append(per_row_us(contenders[name], batch, args.repeats))
        print(f"\n{label} ({batch.num_rows} rows x {batch.num_columns} features), µs/row, median of {args.rounds} rounds:")
        for name in names:
            print(f"  {name:38s} {median(times[name]):6.3f}   (min {min(times[name]):.3f}, max {max(times[name]):.3f})")
    print(f"\nload average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
