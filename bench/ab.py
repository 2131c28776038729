"""Before/after on a shared machine: alternates two source trees run by run, so that load from
other jobs falls on both alike, and reports the medians and their ratio.

    git archive HEAD | tar -x -C /tmp/base_tree        # "before": the committed code
    python -m bench.ab --before /tmp/base_tree --after . --size 100000 --rounds 3 [--mode in_memory]

Each round runs ``python -m pipeline.preprocess`` once per tree (order alternating), on the same
generated input (see bench.preprocess), and compares wall and CPU time (user + sys of all the run's
processes). It imports nothing of pipeline/: each tree runs only as a command, and only its
manifest.json is read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from bench.common import machine, make_flights_input, median, write_report
from bench.preprocess import MODES, run_preprocess


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=".")
    ap.add_argument("--size", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", default="in_memory", choices=list(MODES))
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "bench_flights"))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    paths = make_flights_input(args.size, os.path.join(args.data_dir, f"n{args.size}"))
    pattern = os.path.join(os.path.dirname(paths[0]), "*.csv.gz")
    log_dir = tempfile.mkdtemp(prefix="bench_ab_logs_")
    runs = {"before": [], "after": []}
    for i in range(args.rounds):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for label in order:
            r = run_preprocess(pattern, args.mode, args.timeout, trees[label], log_dir)
            runs[label].append(r)
            print(json.dumps({"round": i, "tree": label, **r}), flush=True)
    summary = {}
    for label, rs in runs.items():
        ok = [r for r in rs if r.get("rc") == 0 and "error" not in r]
        summary[label] = {
            "wall_s_median": median([r["wall_s"] for r in ok]),
            "wall_s_all": [r["wall_s"] for r in ok],
            "cpu_s_median": median([r["cpu_s"] for r in ok if r.get("cpu_s") is not None]),
            "pipeline_wall_s_median": median([r["pipeline_wall_s"] for r in ok]),
            "rows_per_s_median": median([r["rows_per_s"] for r in ok]),
            "max_rss_mib_median": median([r["max_rss_mib"] for r in ok]),
            "load_before": [r["load_before"][0] for r in ok],
        }
    b, a = summary["before"], summary["after"]
    report = {"machine": machine(), "size": args.size, "mode": args.mode, "trees": trees, "summary": summary,
              "speedup_wall": round(b["wall_s_median"] / a["wall_s_median"], 2),
              "speedup_pipeline": round(b["pipeline_wall_s_median"] / a["pipeline_wall_s_median"], 2),
              "cpu_ratio_after_over_before": round(a["cpu_s_median"] / b["cpu_s_median"], 3),
              "runs": runs}
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
