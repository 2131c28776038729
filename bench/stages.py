"""Where the preprocessing time goes: the real flights graph on DirectRunner, with the runner's own
per-transform processing time (the state sampler's msecs, summed over bundles), grouped by stage.

    python -m bench.stages --input '/tmp/bench_flights/n100000/*.csv.gz' [--runner_flags ...] [--json OUT.json]

The graph is exactly ``pipeline.preprocess.build``; only the driver around it differs (this one
keeps the PipelineResult to read the metrics). In-memory mode only: multi-processing workers do
not report per-transform times back here.
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

# Top-level step name prefix -> the stage reported.
STAGE_OF = (
    ("CleanAndWindow/ReadRawLines", "read lines"),
    ("CleanAndWindow/ParseAndValidate", "parse + validate"),
    ("CleanAndWindow/DeduplicateAndAddWindowFeatures/RouteToTimeBuckets", "window: route records and events"),
    ("CleanAndWindow/DeduplicateAndAddWindowFeatures/GroupByTimeBucket", "window: group by time bucket"),
    ("CleanAndWindow/DeduplicateAndAddWindowFeatures/AddWindowFeatures", "window: dedupe + aggregate (numpy)"),
    ("CleanAndWindow/FlattenRejected", "dead letters"),
    ("WriteDeadLetters", "dead letters"),
    ("CoarseSplitKeys", "split"),
    ("DistinctCoarseKeys", "split"),
    ("CountCoarseKeys", "split"),
    ("AssignSplit", "split"),
    ("ToArrow", "records -> Arrow batches"),
    ("EncodeRaw", "write raw tf.Examples"),
    ("WriteRaw", "write raw tf.Examples"),
    ("AnalyzeAndTransform/AnalyzeTrainData", "tft analyze"),
    ("AnalyzeAndTransform/WriteTransformFn", "tft analyze"),
    ("AnalyzeAndTransform/WriteRawMetadata", "tft analyze"),
    ("AnalyzeAndTransform/Transform", "tft transform"),
    ("AnalyzeAndTransform/Encode", "write transformed tf.Examples"),
    ("AnalyzeAndTransform/Write", "write transformed tf.Examples"),
    ("Count", "manifest counts"),
    ("FlattenCounts", "manifest counts"),
    ("WriteCounts", "manifest counts"),
)


def stage_of(step: str) -> str:
    for prefix, stage in STAGE_OF:
        if step.startswith(prefix):
            return stage
    return "other: " + step.split("/")[0]


def per_transform_msecs(result) -> dict[str, float]:
    """Leaf transform -> summed start/process/finish msecs, from the FnApiRunner's monitoring infos."""
    from apache_beam.metrics import monitoring_infos as mi

    wanted = {mi.START_BUNDLE_MSECS_URN, mi.PROCESS_BUNDLE_MSECS_URN, mi.FINISH_BUNDLE_MSECS_URN}
    totals: dict[str, float] = collections.Counter()
    for info in result.monitoring_infos():
        if info.urn in wanted:
            step = info.labels.get("PTRANSFORM", "")
            totals[step] += mi.extract_counter_value(info)
    return dict(totals)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--json", help="write the breakdown here")
    ap.add_argument("--top", type=int, default=25, help="also print this many slowest leaf transforms")
    args, beam_args = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    from pipeline import preprocess
    from pipeline.options import parse_options
    from pipeline.stages.read import plan_inputs
    from pipeline.stages.split import parse_fractions

    out = tempfile.mkdtemp(prefix="bench_stages_")
    options, ours = parse_options(["--dataset", "flights", "--output_dir", out, *beam_args])
    dataset = preprocess.load_dataset("flights")
    layouts = dataset.make_layouts(ours)
    plan = plan_inputs(args.input, layouts, None)
    fractions = parse_fractions(dataset.SCHEMA.split_fractions)
    started = time.time()
    p = beam.Pipeline(options=options)
    with tft_beam.Context(temp_dir=os.path.join(out, "_tmp")):
        preprocess.build(p, dataset, plan, layouts, out, 3600, fractions, "auto")
    result = p.run()
    result.wait_until_finish()
    wall = time.time() - started
    leaf = per_transform_msecs(result)
    stages: dict[str, float] = collections.Counter()
    for step, ms in leaf.items():
        stages[stage_of(step)] += ms
    counted = sum(stages.values()) / 1000
    report = {
        "input": args.input,
        "wall_s": round(wall, 1),
        "attributed_s": round(counted, 1),
        "stages_s": {k: round(v / 1000, 2) for k, v in sorted(stages.items(), key=lambda kv: -kv[1]) if v >= 1},
        "top_transforms_s": {k: round(v / 1000, 2) for k, v in sorted(leaf.items(), key=lambda kv: -kv[1])[: args.top]},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "stages_s"}, indent=1))
    for stage, secs in report["stages_s"].items():
        if secs >= 0.05:
            print(f"{secs:8.2f} s  {stage}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
