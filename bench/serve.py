"""Benchmark: online predictions against ``python -m trainer.serve`` on a free loopback port.

    python -m bench.serve --model_dir MODEL_DIR [--data_dir OUT]   # a trained model and its data
    python -m bench.serve                                          # trains a small linear model first

Request rows are real: the raw test split of the model's preprocessing output (OUT/raw/test),
sent in the TensorFlow Serving row format. Bodies are encoded before the clock starts, and each
client thread keeps one HTTP/1.1 connection open, so the figures are the server's (on a 2-core
machine the client still takes CPU from it). Scenarios, each bounded by --requests and
--max_seconds:
  * one row per request, one client at a time: latency p50/p90/p99 and requests/s;
  * 100 rows per request, one client: latency, predictions/s;
  * 100 rows per request, --concurrency clients: predictions/s (the server batches concurrent
    requests into one model call).
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bench.common import KAGGLE_SAMPLE, REPO, load_average, machine, median, run_child, write_report

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def train_small_model(work: str, timeout: float) -> tuple[str, str]:
    out, job = os.path.join(work, "out"), os.path.join(work, "model")
    env = {"PYTHONPATH": REPO}
    r = run_child([sys.executable, "-m", "pipeline.preprocess", "--dataset", "flights", "--input", KAGGLE_SAMPLE,
                   "--output_dir", out, "--overwrite"], timeout, env=env)
    if r["rc"] != 0:
        raise SystemExit(f"preprocessing failed: {r}")
    r = run_child([sys.executable, "-m", "trainer.task", "--data_dir", out, "--job_dir", job, "--model", "linear",
                   "--epochs", "1"], timeout, env=env)
    if r["rc"] != 0:
        raise SystemExit(f"training failed: {r}")
    return job, out


def request_rows(data_dir: str, n: int) -> list[dict]:
    """Up to ``n`` raw test rows as serving instances (the label left out, missing optional values omitted)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import glob

    import tensorflow as tf

    with open(os.path.join(data_dir, "manifest.json")) as f:
        label = {"flights": "ontime", "taxi": "fare_amount"}.get(json.load(f)["dataset"])
    files = sorted(glob.glob(os.path.join(data_dir, "raw", "test", "part-*")))
    rows = []
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").take(n):
        ex = tf.train.Example.FromString(raw.numpy())
        row = {}
        for name, feat in ex.features.feature.items():
            kind = feat.WhichOneof("kind")
            values = list(getattr(feat, kind).value) if kind else []
            if name == label or not values:
                continue
            v = values[0]
            row[name] = v.decode("utf-8") if isinstance(v, bytes) else v
        rows.append(row)
    return rows


class Server:
    def __init__(self, model_dir: str, port: int, log_path: str):
        self.port = port
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.serve", "--model_dir", model_dir, "--host", HOST, "--port", str(port)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/v1/models/flights")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200:
                    return "flights"
                if resp.status == 404:  # another model name: it is in the message
                    return json.loads(body)["error"].rsplit("serves ", 1)[1].strip("'")
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"server not ready after {timeout} s; see {self.log.name}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_scenario(port: int, path: str, bodies: list[bytes], rows_per_request: int, concurrency: int,
                 max_requests: int, max_seconds: float) -> dict:
    """``concurrency`` threads, each with one keep-alive connection, sending bodies round-robin."""
    latencies: list[float] = []
    errors = []
    lock = threading.Lock()
    sent = [0]
    stop_at = time.perf_counter() + max_seconds

    def client(idx: int):
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        mine = []
        i = idx
        while time.perf_counter() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    break
                sent[0] += 1
            body = bodies[i % len(bodies)]
            i += concurrency
            t = time.perf_counter()
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            mine.append(time.perf_counter() - t)
            if resp.status != 200:
                errors.append((resp.status, data[:200]))
        conn.close()
        with lock:
            latencies.extend(mine)

    load_before = load_average()
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    n = len(latencies)
    ms = [x * 1000 for x in latencies]
    return {
        "rows_per_request": rows_per_request,
        "concurrency": concurrency,
        "requests": n,
        "errors": len(errors),
        "first_error": repr(errors[0]) if errors else None,
        "wall_s": round(wall, 2),
        "requests_per_s": round(n / wall, 1) if wall else None,
        "predictions_per_s": round(n * rows_per_request / wall) if wall else None,
        "latency_ms": {"p50": round(_percentile(ms, 50), 2), "p90": round(_percentile(ms, 90), 2),
                       "p99": round(_percentile(ms, 99), 2), "max": round(max(ms), 2) if ms else None},
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_average()],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", help="the trainer's --job_dir (default: train a small linear model now)")
    ap.add_argument("--data_dir", help="the preprocessing output the model was trained on (for real request rows)")
    ap.add_argument("--requests", type=int, default=2000, help="at most this many requests per scenario")
    ap.add_argument("--max_seconds", type=float, default=20, help="at most this long per scenario")
    ap.add_argument("--batch_rows", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900, help="for training and for the server to start")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench_serve_")
    report = {"machine": machine()}
    server = None
    try:
        model_dir, data_dir = args.model_dir, args.data_dir
        if not model_dir:
            model_dir, data_dir = train_small_model(work, args.timeout)
        if not data_dir:
            raise SystemExit("--data_dir is needed with --model_dir (the OUT the model was trained on)")
        rows = request_rows(data_dir, max(args.batch_rows * 20, 2000))
        port = free_port()
        server = Server(model_dir, port, os.path.join(work, "server.log"))
        t0 = time.time()
        name = server.wait_ready(args.timeout)
        report["server_start_s"] = round(time.time() - t0, 1)
        path = f"/v1/models/{name}:predict"
        single = [json.dumps({"instances": [r]}).encode() for r in rows]
        batches = [json.dumps({"instances": rows[i:i + args.batch_rows]}).encode()
                   for i in range(0, len(rows) - args.batch_rows + 1, args.batch_rows)]
        # Warm-up: the first calls trace the signature for each batch size.
        run_scenario(port, path, single, 1, 1, 50, 30)
        run_scenario(port, path, batches, args.batch_rows, 1, 20, 30)
        scenarios = {
            "single_row": (single, 1, 1),
            f"batch_{args.batch_rows}": (batches, args.batch_rows, 1),
            f"batch_{args.batch_rows}_x{args.concurrency}": (batches, args.batch_rows, args.concurrency),
        }
        report["scenarios"] = {}
        for label, (bodies, per, conc) in scenarios.items():
            runs = [run_scenario(port, path, bodies, per, conc, args.requests, args.max_seconds)
                    for _ in range(args.repeats)]
            for r in runs:
                print(json.dumps({"scenario": label, **r}), flush=True)
            report["scenarios"][label] = {
                "runs": runs,
                "p50_ms_median": median([r["latency_ms"]["p50"] for r in runs]),
                "p99_ms_median": median([r["latency_ms"]["p99"] for r in runs]),
                "predictions_per_s_median": median([r["predictions_per_s"] for r in runs]),
                "requests_per_s_median": median([r["requests_per_s"] for r in runs]),
            }
        report["model_dir"] = model_dir
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report["machine_after"] = machine()
    write_report(report, args.json)
    for label, s in report["scenarios"].items():
        print(f"{label}: p50 {s['p50_ms_median']} ms, p99 {s['p99_ms_median']} ms, "
              f"{s['predictions_per_s_median']} predictions/s, {s['requests_per_s_median']} requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
