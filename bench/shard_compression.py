"""Shard compression: what GZIP costs in CPU and saves in bytes, on a run's transformed and raw examples.

    python -m bench.shard_compression --from_output OUT --work_dir DIR [--rounds 2] [--json R.json]

1. The records of OUT/{train,valid,test}/ and OUT/raw/{train,valid,test}/ are copied once,
   uncompressed, to DIR/plain/ (not timed). Shards are read gzip or uncompressed, by suffix.
2. Beam's own sink, as a user's pipeline would run it: ``ReadFromTFRecord(DIR/plain) ->
   WriteToTFRecord(compression_type=UNCOMPRESSED | GZIP)``, each in a fresh child process (CPU of
   the child, getrusage), and a baseline child that reads the same records and writes nothing. The
   sink's CPU is the child's CPU minus the baseline's. Beam compresses record by record: its gzip
   file object takes one ``zlib.compressobj(Z_DEFAULT_COMPRESSION = level 6).compress`` call per
   record (length, CRCs, payload, CRC: several small writes).
3. The same framed bytes (the uncompressed shards' contents) gzipped in one call each, zlib level 1
   and level 6, and ISA-L level 1 where ``isal`` is installed (what our own sink uses): an estimate of
   what a sink that compresses whole batches could cost. And one gunzip of the level-6 bytes: what
   each reader of the shards (a training epoch) pays.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time
import zlib

from bench.common import machine, median, run_child, write_report
from bench.textbook import _tfrecord_files

KINDS = ("train", "valid", "test", "raw/train", "raw/valid", "raw/test")


def copy_plain(from_output: str, plain_dir: str) -> dict:
    """One uncompressed TFRecord file per kind; records counted."""
    import tensorflow as tf

    counts = {}
    for kind in KINDS:
        files, compression = _tfrecord_files(os.path.join(from_output, kind))
        target = os.path.join(plain_dir, kind)
        os.makedirs(target, exist_ok=True)
        n = 0
        with tf.io.TFRecordWriter(os.path.join(target, "part-00000-of-00001.tfrecord")) as w:
            for batch in tf.data.TFRecordDataset(files, compression_type=compression).batch(4096):
                for r in batch.numpy():
                    w.write(r)
                    n += 1
        counts[kind] = n
    return counts


def beam_write(plain_dir: str, out_dir: str, compression: str) -> None:
    """The child: read every kind's records and write them with WriteToTFRecord (or not, 'none')."""
    import apache_beam as beam
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    with beam.Pipeline(runner=FnApiRunner()) as p:
        for kind in KINDS:
            label = kind.replace("/", "_")
            records = p | f"Read_{label}" >> beam.io.ReadFromTFRecord(
                os.path.join(plain_dir, kind, "*.tfrecord"), compression_type=CompressionTypes.UNCOMPRESSED)
            if compression == "none":
                _ = records | f"Drop_{label}" >> beam.Filter(lambda r: False)
            else:
                ct = {"UNCOMPRESSED": CompressionTypes.UNCOMPRESSED, "GZIP": CompressionTypes.GZIP}[compression]
                _ = records | f"Write_{label}" >> beam.io.WriteToTFRecord(
                    os.path.join(out_dir, kind, "part"), compression_type=ct,
                    file_name_suffix=".tfrecord.gz" if compression == "GZIP" else ".tfrecord")


def _dir_bytes(d: str) -> int:
    return sum(os.path.getsize(f) for f in glob.glob(os.path.join(d, "**", "*.tfrecord*"), recursive=True))


def one_call(plain_dir: str) -> dict:
    """Per kind group (transformed, raw): the framed bytes compressed in one call per file."""
    try:
        from isal import isal_zlib
    except ImportError:
        isal_zlib = None
    out = {}
    for group, kinds in (("transformed", KINDS[:3]), ("raw", KINDS[3:])):
        data = []
        for kind in kinds:
            for f in _tfrecord_files(os.path.join(plain_dir, kind))[0]:
                with open(f, "rb") as fh:
                    data.append(fh.read())
        res = {"uncompressed_bytes": sum(map(len, data))}
        methods = [("zlib_1", lambda b: _gzip(zlib, b, 1)), ("zlib_6", lambda b: _gzip(zlib, b, 6))]
        if isal_zlib is not None:
            methods.append(("isal_1", lambda b: _gzip(isal_zlib, b, 1)))
        level6 = None
        for name, fn in methods:
            t0 = time.process_time()
            comp = [fn(b) for b in data]
            res[f"{name}_cpu_s"] = round(time.process_time() - t0, 3)
            res[f"{name}_bytes"] = sum(map(len, comp))
            if name == "zlib_6":
                level6 = comp
        t0 = time.process_time()
        for c in level6:
            zlib.decompress(c, 31)
        res["gunzip_zlib_6_cpu_s"] = round(time.process_time() - t0, 3)
        out[group] = res
    return out


def _gzip(mod, b: bytes, level: int) -> bytes:
    c = mod.compressobj(level, mod.DEFLATED, 31)  # wbits 31: a gzip member, as Beam and our shards are
    return c.compress(b) + c.flush()


def measure(from_output: str, work_dir: str, rounds: int, timeout: float = 1800) -> dict:
    plain = os.path.join(work_dir, "plain")
    shutil.rmtree(plain, ignore_errors=True)
    counts = copy_plain(from_output, plain)
    runs: dict[str, list[dict]] = {"none": [], "UNCOMPRESSED": [], "GZIP": []}
    sizes: dict[str, dict] = {}
    log_dir = os.path.join(work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    for i in range(rounds):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for comp in order:
            out = os.path.join(work_dir, f"beam_{comp}")
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "bench.shard_compression", "--_child", comp, "--plain", plain, "--out", out]
            r = run_child(cmd, timeout, env={"TF_CPP_MIN_LOG_LEVEL": "2"},
                          log_path=os.path.join(log_dir, f"{comp}_{i}.log"))
            runs[comp].append(r)
            print(json.dumps({"compression": comp, "round": i, **r}), flush=True)
            if comp != "none":
                sizes[comp] = {"transformed": sum(_dir_bytes(os.path.join(out, k)) for k in KINDS[:3]),
                               "raw": sum(_dir_bytes(os.path.join(out, k)) for k in KINDS[3:])}
            shutil.rmtree(out, ignore_errors=True)
    cpu = {c: median([r["cpu_s"] for r in rs if r.get("rc") == 0]) for c, rs in runs.items()}
    beam_sink = {
        c: {"cpu_s_over_read_only": round(cpu[c] - cpu["none"], 2), "bytes": sizes.get(c),
            "cpu_s_all": [r["cpu_s"] for r in runs[c]]}
        for c in ("UNCOMPRESSED", "GZIP")
    }
    beam_sink["read_only_cpu_s"] = {"median": cpu["none"], "all": [r["cpu_s"] for r in runs["none"]]}
    report = {"records": counts, "beam_sink": beam_sink, "one_call": one_call(plain)}
    shutil.rmtree(plain, ignore_errors=True)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from_output")
    ap.add_argument("--work_dir")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--plain", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args._child:
        beam_write(args.plain, args.out, args._child)
        return 0
    if not args.from_output or not args.work_dir:
        ap.error("--from_output and --work_dir are required")
    report = {"machine": machine(), **measure(args.from_output, args.work_dir, args.rounds)}
    report["machine_after"] = machine()
    print(json.dumps(report, indent=1))
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
