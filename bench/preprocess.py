"""Benchmark: the flights preprocessing end to end (parse, clean, windowed averages, split,
tensorflow-transform analyze + transform, write), against a single-process pandas reference.

Inputs: the real kaggle sample (55,105 rows, 2015-01-01..04) and time-shifted copies of it (YEAR,
MONTH, DAY moved on by k * 4 days per copy, one gzip file per copy) up to each size, generated
once under --data_dir (a temporary directory, never committed).

For every size and runner mode, ``python -m pipeline.preprocess`` runs as a child process
(--repeats times, each bounded by --timeout): wall time, rows/s (rows read / wall, the whole
command including start-up), the pipeline's own wall time from the manifest, and peak memory (the
largest single process, from getrusage(RUSAGE_CHILDREN), and the summed RSS of the process tree,
sampled). The pandas reference (bench.pandas_ref) and the Beam ``CleanAndWindow`` stage alone
(bench.clean_window) then run on the same input, so the ratio compares the same work.

    python -m bench.preprocess                                   # 100k, 300k, 1M; in-memory and 2 processes
    python -m bench.preprocess --sizes 100000 --repeats 1        # a quick run
    python -m bench.preprocess --sizes 1000000 --repeats 0         # the pandas and CleanAndWindow references only
    python -m bench.preprocess --sizes 100000 --modes in_memory,multi_threading_2,multi_processing_1,multi_processing_2
    python -m bench.preprocess --sizes 1000000 --modes in_memory --repeats 1 --json bench/results/pre_1m.json

Load on a shared machine skews every figure: each run records the load average before and after.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile

from bench.common import REPO, machine, make_flights_input, median, run_child, write_report

MODES = {
    "in_memory": [],  # DirectRunner's default for batch: FnApiRunner, one process
    "multi_threading_2": ["--direct_running_mode", "multi_threading", "--direct_num_workers", "2"],
    "multi_processing_1": ["--direct_running_mode", "multi_processing", "--direct_num_workers", "1"],
    "multi_processing_2": ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
}


def run_preprocess(pattern: str, mode: str, timeout: float, repo: str, log_dir: str) -> dict:
    out = tempfile.mkdtemp(prefix="bench_pre_out_")
    cmd = [sys.executable, "-m", "pipeline.preprocess", "--dataset", "flights", "--input", pattern,
           "--output_dir", out, "--overwrite", *MODES[mode]]
    log = os.path.join(log_dir, f"preprocess_{mode}_{os.getpid()}_{len(os.listdir(log_dir))}.log")
    res = run_child(cmd, timeout, env={"PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=repo, log_path=log)
    res["log"] = log
    try:
        with open(os.path.join(out, "manifest.json")) as f:
            m = json.load(f)
        res.update(rows_read=m["rows_read"], rows_written=m["rows_written"], rows_rejected=m["rows_rejected"],
                   rows_excluded=m["rows_excluded"], reconciled=m["reconciled"], pipeline_wall_s=m["wall_seconds"])
        res["rows_per_s"] = round(m["rows_read"] / res["wall_s"], 1)
    except (OSError, KeyError, ValueError):
        res["error"] = "no manifest"
    shutil.rmtree(out, ignore_errors=True)
    return res


def run_module(module: str, args: list[str], timeout: float, repo: str, log_dir: str) -> dict:
    """A bench module as a child; its last stdout line is JSON."""
    log = os.path.join(log_dir, f"{module.split('.')[-1]}_{len(os.listdir(log_dir))}.log")
    jpath = log + ".json"
    cmd = [sys.executable, "-m", module, *args, "--json", jpath]
    res = run_child(cmd, timeout, env={"PYTHONPATH": f"{repo}:{REPO}", "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=repo,
                    log_path=log)
    try:
        with open(jpath) as f:
            res["result"] = json.load(f)
    except (OSError, ValueError):
        res["error"] = f"no result, see {log}"
    return res


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("rc") == 0 and "error" not in r]
    if not ok:
        return {"runs": len(runs), "ok": 0}
    return {
        "runs": len(runs),
        "ok": len(ok),
        "wall_s_median": round(median([r["wall_s"] for r in ok]), 1),
        "wall_s_all": [r["wall_s"] for r in ok],
        "rows_per_s_median": round(median([r.get("rows_per_s", 0) for r in ok]), 0),
        "pipeline_wall_s_median": round(median([r.get("pipeline_wall_s", 0) for r in ok]), 1),
        "max_rss_mib_median": round(median([r["max_rss_mib"] for r in ok]), 0),
        "tree_rss_mib_median": round(median([r["tree_rss_mib"] for r in ok]), 0),
        "load_before": [r["load_before"][0] for r in ok],
        "load_after": [r["load_after"][0] for r in ok],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated row counts")
    ap.add_argument("--modes", default="in_memory,multi_processing_2", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run before it is killed")
    ap.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "bench_flights"))
    ap.add_argument("--repo", default=REPO, help="tree whose pipeline/ runs (e.g. an export of HEAD, for before/after)")
    ap.add_argument("--no_reference", action="store_true", help="skip pandas and the CleanAndWindow-only runs")
    ap.add_argument("--reference_repeats", type=int, default=3)
    ap.add_argument("--json", help="write all runs and the summary here")
    args = ap.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown modes {unknown}")
    log_dir = tempfile.mkdtemp(prefix="bench_pre_logs_")
    report = {"machine": machine(), "repo": args.repo, "sizes": {}, "logs": log_dir}
    print(json.dumps({"machine": report["machine"]}), flush=True)
    for n in sizes:
        paths = make_flights_input(n, os.path.join(args.data_dir, f"n{n}"))
        pattern = os.path.join(os.path.dirname(paths[0]), "*.csv.gz")
        assert len(glob.glob(pattern)) == len(paths), f"stray files in {os.path.dirname(paths[0])}"
        entry = {"files": len(paths), "modes": {}}
        for mode in modes:
            runs = []
            for _ in range(args.repeats):
                r = run_preprocess(pattern, mode, args.timeout, args.repo, log_dir)
                runs.append(r)
                print(json.dumps({"size": n, "mode": mode, **r}), flush=True)
                if r.get("rc") == "timeout":
                    break
            entry["modes"][mode] = {"summary": summarize(runs), "runs": runs}
        if not args.no_reference:
            pd_runs, cw_runs = [], []
            for _ in range(args.reference_repeats):
                pd_runs.append(run_module("bench.pandas_ref", ["--input", pattern], args.timeout, args.repo, log_dir))
                print(json.dumps({"size": n, "pandas": pd_runs[-1]}), flush=True)
                cw_runs.append(run_module("bench.clean_window", ["--input", pattern], args.timeout, args.repo, log_dir))
                print(json.dumps({"size": n, "beam_clean_window": cw_runs[-1]}), flush=True)
            entry["pandas"] = pd_runs
            entry["beam_clean_window"] = cw_runs
            entry["comparison"] = compare(pd_runs, cw_runs)
        report["sizes"][str(n)] = entry
        print(json.dumps({"size": n, "summary": {m: v["summary"] for m, v in entry["modes"].items()},
                          "comparison": entry.get("comparison")}), flush=True)
    report["machine_after"] = machine()
    write_report(report, args.json)
    print(json.dumps(table(report), indent=1))
    return 0


def compare(pd_runs: list[dict], cw_runs: list[dict]) -> dict:
    """Medians: pandas clean+window vs Beam CleanAndWindow (wall of the pipeline alone), and the
    windowed-average part alone (pandas window_s vs the runner's processing time of AddWindowFeatures)."""
    pd_ok = [r["result"] for r in pd_runs if "result" in r]
    cw_ok = [r["result"] for r in cw_runs if "result" in r]
    if not pd_ok or not cw_ok:
        return {}
    pandas_total = median([r["total_s"] for r in pd_ok])
    pandas_window = median([r["window_s"] for r in pd_ok])
    beam_total = median([r["wall_s"] for r in cw_ok])
    # Since records move in chunks, de-duplication happens inside the window stage ("dedupe + window").
    beam_window = median([r["stage_cpu_s"].get("window", r["stage_cpu_s"].get("dedupe + window", float("nan")))
                          for r in cw_ok])
    return {
        "pandas_clean_and_window_s": round(pandas_total, 2),
        "pandas_window_s": round(pandas_window, 3),
        "pandas_max_rss_mib": round(median([r["max_rss_mib"] for r in pd_runs if "result" in r]), 0),
        "beam_clean_and_window_s": round(beam_total, 2),
        "beam_window_stage_s": round(beam_window, 2),
        "beam_clean_window_max_rss_mib": round(median([r["max_rss_mib"] for r in cw_runs if "result" in r]), 0),
        "ratio_clean_and_window": round(beam_total / pandas_total, 1),
        "ratio_window": round(beam_window / pandas_window, 1),
        "counts_agree": all(
            p["rows_clean"] == c["counts"]["records"] and p["rows_rejected"] == c["counts"]["rejected"]
            and p["rows_excluded"] == c["counts"]["excluded"] for p, c in zip(pd_ok, cw_ok, strict=False)
        ),
    }


def table(report: dict) -> list[str]:
    lines = ["size | mode | wall s (median) | rows/s | pipeline s | max RSS MiB | tree RSS MiB | load before"]
    for n, entry in report["sizes"].items():
        for mode, v in entry["modes"].items():
            s = v["summary"]
            if not s.get("runs"):
                continue  # --repeats 0: the references only
            if not s.get("ok"):
                lines.append(f"{n} | {mode} | failed or timed out ({s})")
                continue
            lines.append(f"{n} | {mode} | {s['wall_s_median']} | {s['rows_per_s_median']:.0f} | "
                         f"{s['pipeline_wall_s_median']} | {s['max_rss_mib_median']:.0f} | "
                         f"{s['tree_rss_mib_median']:.0f} | {s['load_before']}")
        if entry.get("comparison"):
            lines.append(f"{n} | pandas vs Beam CleanAndWindow | {entry['comparison']}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
