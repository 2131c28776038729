"""What a run costs at scale: CPU seconds and shuffled bytes per row, ours against the textbook.

    python -m bench.cost --rows 100000,1000000 [--rounds 2] [--compression] [--json R.json]

For each size N (time-shifted flights inputs, see bench.common.make_flights_input):
- **ours:** ``python -m pipeline.preprocess --dataset flights`` as a child, run through
  bench.beam_metrics (Beam's own measurements of the run: element counts and sampled byte sizes of
  the PCollections feeding each GroupByKey, per-transform execution times). CPU = user + sys of the
  child and all its descendants (bench.common.run_child: getrusage(RUSAGE_CHILDREN) in a subreaper
  wrapper), peak RSS, wall (reported only), ``largest_window_group`` from manifest.json if present.
- **textbook:** bench.textbook on the same rows: its CSV per split is written from ours' raw
  output first, outside the timing; then its pipeline runs as a child, measured the same way. Its
  row counts per split (transformed and raw) must equal ours' manifest.
Per-row figures divide by N, the rows read by ours (the textbook reads only the rows ours kept).
The marginal CPU per 1M rows between the smallest and largest N removes the fixed costs (imports,
graph building) that a larger job amortizes.

``--compression``: bench.shard_compression on ours' output at the largest N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import defaultdict

from bench.common import machine, make_flights_input, median, run_child, write_report


def _metrics(path: str) -> dict:
    try:
        with open(path) as f:
            runs = json.load(f)["runs"]
    except (OSError, ValueError, KeyError):
        return {}
    if not runs:
        return {}
    shuffles = [s for r in runs for s in r.get("shuffles", [])]
    stage_ms: dict[str, float] = defaultdict(float)
    for r in runs:
        for name, d in r.get("transform_msecs", {}).items():
            stage_ms[name.split("/")[0]] += sum(v for k, v in d.items() if k != "total_msecs")
    return {
        "pipeline_runs": len(runs),
        "shuffle_bytes": sum(r.get("shuffle_bytes", 0) for r in runs),
        "shuffle_elements": sum(r.get("shuffle_elements", 0) for r in runs),
        "largest_shuffles": [{k: s[k] for k in ("transform", "elements", "bytes")} for s in
                             sorted(shuffles, key=lambda s: -(s["bytes"] or 0))[:5]],
        "stage_msecs": dict(sorted(stage_ms.items(), key=lambda kv: -kv[1])),
        "extraction_cpu_s": sum(r.get("extraction_cpu_s", 0) for r in runs),
    }


def run_ours(pattern: str, out: str, work: str, tag: str, timeout: float) -> dict:
    mjson = os.path.join(work, f"metrics_{tag}.json")
    cmd = [sys.executable, "-m", "bench.beam_metrics", "--json", mjson, "-m", "pipeline.preprocess",
           "--dataset", "flights", "--input", pattern, "--output_dir", out, "--overwrite"]
    r = run_child(cmd, timeout, env={"TF_CPP_MIN_LOG_LEVEL": "2"}, log_path=os.path.join(work, f"{tag}.log"))
    try:
        with open(os.path.join(out, "manifest.json")) as f:
            m = json.load(f)
        r.update(rows_read=m["rows_read"], rows_written=m["rows_written"], splits=m["splits"],
                 pipeline_wall_s=m.get("wall_seconds"), largest_window_group=m.get("largest_window_group", "n/a"))
    except (OSError, KeyError, ValueError):
        r["error"] = "no manifest"
    r["beam"] = _metrics(mjson)
    return r


def run_textbook(csv_dir: str, out: str, work: str, tag: str, timeout: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    mjson = os.path.join(work, f"metrics_{tag}.json")
    cmd = [sys.executable, "-m", "bench.beam_metrics", "--json", mjson, "-m", "bench.textbook", "run",
           "--csv_dir", csv_dir, "--output_dir", out]
    r = run_child(cmd, timeout, env={"TF_CPP_MIN_LOG_LEVEL": "2"}, log_path=os.path.join(work, f"{tag}.log"))
    r["beam"] = _metrics(mjson)
    return r


def _helper(args: list[str], work: str, tag: str, timeout: float) -> dict:
    """A bench.textbook subcommand (prepare, count) as a child; its last stdout line is JSON."""
    import subprocess

    with open(os.path.join(work, f"{tag}.log"), "wb") as log:
        p = subprocess.run([sys.executable, "-m", "bench.textbook", *args], stdout=subprocess.PIPE, stderr=log,
                           timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=True)
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def per_million(x: float, n: int) -> float:
    return round(x / n * 1e6, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,1000000")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "bench_flights"))
    ap.add_argument("--work_dir", default=None, help="outputs and logs (default: a new temporary directory)")
    ap.add_argument("--compression", action="store_true", help="also bench.shard_compression at the largest N")
    ap.add_argument("--compression_rounds", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_cost_")
    os.makedirs(work, exist_ok=True)
    sizes = [int(s) for s in args.rows.split(",") if s]
    report = {"machine": machine(), "work_dir": work, "sizes": {}}
    print(json.dumps({"machine": report["machine"], "work_dir": work}), flush=True)
    for n in sizes:
        paths = make_flights_input(n, os.path.join(args.data_dir, f"n{n}"))
        pattern = os.path.join(os.path.dirname(paths[0]), "*.csv.gz")
        out, tb_out, csv_dir = (os.path.join(work, f"{k}_{n}") for k in ("ours", "textbook", "csv"))
        ours, textbook, verified = [], [], None
        for i in range(args.rounds):
            order = ("ours", "textbook") if i % 2 == 0 else ("textbook", "ours")
            for who in order:
                if who == "ours":
                    r = run_ours(pattern, out, work, f"ours_{n}_{i}", args.timeout)
                    ours.append(r)
                    if i == 0:  # the textbook's input, from ours' raw output (not timed)
                        _helper(["prepare", "--from_output", out, "--csv_dir", csv_dir], work, f"prepare_{n}",
                                args.timeout)
                else:
                    r = run_textbook(csv_dir, tb_out, work, f"textbook_{n}_{i}", args.timeout)
                    textbook.append(r)
                    if verified is None and r.get("rc") == 0:
                        counts = _helper(["count", "--output_dir", tb_out], work, f"count_{n}", args.timeout)
                        splits = ours[0].get("splits", {})
                        verified = {"textbook": counts, "ours_manifest": splits,
                                    "same_rows": all(counts[f"{k}_{s}"] == splits.get(s)
                                                     for k in ("transformed", "raw") for s in splits)}
                print(json.dumps({"size": n, "round": i, "who": who,
                                  **{k: v for k, v in r.items() if k != "beam"},
                                  "shuffle_bytes": r.get("beam", {}).get("shuffle_bytes")}), flush=True)
        ok_o = [r for r in ours if r.get("rc") == 0 and "error" not in r]
        ok_t = [r for r in textbook if r.get("rc") == 0]
        entry = {"rows": n, "verified": verified, "ours_runs": ours, "textbook_runs": textbook}
        if ok_o and ok_t:
            cpu_o, cpu_t = median([r["cpu_s"] for r in ok_o]), median([r["cpu_s"] for r in ok_t])
            entry["summary"] = {
                "ours_cpu_s": cpu_o, "ours_cpu_s_per_1m_rows": per_million(cpu_o, n),
                "ours_wall_s": median([r["wall_s"] for r in ok_o]),
                "ours_max_rss_mib": median([r["max_rss_mib"] for r in ok_o]),
                "ours_tree_rss_mib": median([r["tree_rss_mib"] for r in ok_o]),
                "ours_shuffle_bytes_per_row": round(ok_o[0]["beam"].get("shuffle_bytes", 0) / n, 1),
                "ours_largest_window_group": ok_o[0].get("largest_window_group", "n/a"),
                "textbook_cpu_s": cpu_t, "textbook_cpu_s_per_1m_rows": per_million(cpu_t, n),
                "textbook_wall_s": median([r["wall_s"] for r in ok_t]),
                "textbook_max_rss_mib": median([r["max_rss_mib"] for r in ok_t]),
                "textbook_shuffle_bytes_per_row": round(ok_t[0]["beam"].get("shuffle_bytes", 0) / n, 1),
                "ratio_cpu_ours_over_textbook": round(cpu_o / cpu_t, 3),
                "load_before": [r["load_before"][0] for r in ok_o + ok_t],
            }
            print(json.dumps({"size": n, "summary": entry["summary"], "verified": verified}), flush=True)
        report["sizes"][str(n)] = entry
    done = [report["sizes"][str(n)].get("summary") for n in sizes]
    if len(sizes) >= 2 and done[0] and done[-1]:
        dn = sizes[-1] - sizes[0]
        mo = (done[-1]["ours_cpu_s"] - done[0]["ours_cpu_s"]) / dn * 1e6
        mt = (done[-1]["textbook_cpu_s"] - done[0]["textbook_cpu_s"]) / dn * 1e6
        report["marginal_cpu_s_per_1m_rows"] = {"ours": round(mo, 1), "textbook": round(mt, 1),
                                                "ratio": round(mo / mt, 3)}
        print(json.dumps({"marginal_cpu_s_per_1m_rows": report["marginal_cpu_s_per_1m_rows"]}), flush=True)
    if args.compression:
        from bench.shard_compression import measure

        n = sizes[-1]
        report["compression"] = {"rows": n, **measure(os.path.join(work, f"ours_{n}"),
                                                      os.path.join(work, "compression"), args.compression_rounds)}
        print(json.dumps({"compression": report["compression"]}), flush=True)
    report["machine_after"] = machine()
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
