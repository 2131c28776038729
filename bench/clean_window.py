"""The Beam half of the pandas comparison: only ``CleanAndWindow`` (read, parse, validate,
de-duplicate, windowed averages), the very stage preprocessing runs, ending in counts instead of
the split, tensorflow-transform and the writes.

    python -m bench.clean_window --input 'DIR/*.csv.gz' [--dump keys.jsonl] [Beam flags]

Prints JSON: wall time of the pipeline, the counts, and (in-memory runs) the runner's processing
time per stage, so the windowed-average part can be compared with the pandas reference's.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
import time

KEYS = ("fl_date", "carrier", "flight_number", "origin", "dest", "dep_ts")
AVERAGES = ("avg_dep_delay", "avg_taxi_out", "avg_arr_delay")


def _stage(step: str) -> str:
    if "AddWindowFeatures" in step:  # since chunked records, de-duplication happens in the window group
        return "dedupe + window" if "Deduplicate" in step else "window"
    if "Deduplicate" in step:
        return "dedupe"
    if "ParseAndValidate" in step:
        return "parse"
    if "ReadRawLines" in step:
        return "read"
    return "counts/other"


def _rows(element) -> list:
    """Records as dicts: from an Arrow record batch, or a list or a dict in older trees (bench.ab runs both)."""
    if hasattr(element, "to_pylist"):
        return element.to_pylist()
    return [element] if isinstance(element, dict) else list(element)


def _size(element) -> int:
    return 1 if isinstance(element, dict) else len(element)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--window_minutes", type=int, default=60)
    ap.add_argument("--dump", help="write the key columns and averages of every record here (JSON lines)")
    ap.add_argument("--json", help="also write the result here")
    args, beam_args = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import apache_beam as beam

    from bench.stages import per_transform_msecs
    from pipeline.datasets import flights
    from pipeline.options import parse_options
    from pipeline.records.verdicts import EXCLUDED, REJECTED
    from pipeline.stages.clean import RECORDS, CleanAndWindow
    from pipeline.stages.read import plan_inputs

    work = tempfile.mkdtemp(prefix="bench_cw_")
    options, ours = parse_options(["--dataset", "flights", "--output_dir", work, *beam_args])
    layouts = flights.make_layouts(ours)
    plan = plan_inputs(args.input, layouts, None)
    started = time.time()
    p = beam.Pipeline(options=options)
    cleaned = p | "CleanAndWindow" >> CleanAndWindow(flights, plan, layouts, args.window_minutes * 60)
    for tag in (RECORDS, REJECTED, EXCLUDED):
        _ = (
            cleaned[tag]
            | f"Size{tag}" >> beam.Map(_size)
            | f"Count{tag}" >> beam.CombineGlobally(sum)
            | f"Write{tag}" >> beam.io.WriteToText(os.path.join(work, f"count_{tag}"), shard_name_template="")
        )
    if args.dump:
        _ = (
            cleaned[RECORDS]
            | "Keys" >> beam.FlatMap(lambda x: [json.dumps([r[k] for k in KEYS + AVERAGES]) for r in _rows(x)])
            | "Dump" >> beam.io.WriteToText(args.dump, shard_name_template="")
        )
    result = p.run()
    result.wait_until_finish()
    wall = time.time() - started
    counts = {}
    for tag in (RECORDS, REJECTED, EXCLUDED):
        with open(os.path.join(work, f"count_{tag}")) as f:
            counts[tag] = int(f.read().strip() or 0)
    stages: dict[str, float] = collections.Counter()
    try:
        for step, ms in per_transform_msecs(result).items():
            stages[_stage(step)] += ms / 1000
    except Exception:  # noqa: BLE001 - multi-processing results carry no per-transform times
        pass
    report = {"wall_s": round(wall, 2), "counts": counts, "stage_cpu_s": {k: round(v, 2) for k, v in stages.items()}}
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
