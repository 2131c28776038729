"""Benchmark: the online window store (ingestion, predictions with windowed features filled, memory).

    python -m bench.online [--rows 1000000] [--model_dir MODEL] [--json bench/results/online.json]

* Store replay, in this process: the events of ``--rows`` kaggle-layout flights (the real sample,
  time-shifted copies; bench.common.make_flights_input) added to a MemoryWindowStore in event-time
  order, in runs of one kind of at most 1,000: events/s of the store alone, and this process's resident
  memory and the events kept at each tenth of the replay (flat when retention holds: the window plus its lateness).
* Over HTTP, against ``python -m trainer.serve`` on a free loopback port, memory store then Redis (a
  redis-server started here on a free port): the kaggle sample posted as raw records (1,000 lines a
  request): rows/s and events/s; then one instance per request (a real record without its windowed
  features, which the server fills): latency p50/p99.
Only 127.0.0.1 is ever contacted. Without --model_dir a small linear model is trained first.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.common import KAGGLE_SAMPLE, REPO, machine, make_flights_input, write_report
from bench.serve import HOST, _percentile, free_port, train_small_model

CHUNK = 1000


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _kaggle_lines(path: str) -> tuple[str, list[str]]:
    with gzip.open(path, "rt") as f:
        header = f.readline().rstrip("\n")
        return header, [line.rstrip("\n") for line in f]


def store_replay(n_rows: int) -> dict:
    """Events of n_rows flights into a MemoryWindowStore in time order: events/s and memory."""
    from pipeline.online.windows import OnlineWindows
    from pipeline.records import model
    from pipeline.replay import by_kind

    online = OnlineWindows("flights", 3600)
    layout = online.layouts["kaggle"]
    parts, started = [], time.process_time()
    for path in make_flights_input(n_rows, f"/tmp/bench_flights/n{n_rows}"):
        header, lines = _kaggle_lines(path)
        for i in range(0, len(lines), 10_000):
            parts.append(online.events.of_lines(layout, header, lines[i:i + 10_000]))
    extract_cpu = time.process_time() - started
    kinds = by_kind(online, model.concat([p for p in parts if p is not None]))
    del parts
    times = np.concatenate([te for te, _ in kinds])
    kind_of = np.concatenate([np.full(len(te), k) for k, (te, _) in enumerate(kinds)])
    at = np.concatenate([np.arange(len(te)) for te, _ in kinds])
    order = np.lexsort((kind_of, times))
    kind_of, at = kind_of[order], at[order]
    n_events = len(order)
    checkpoints = {round(n_events * k / 10) for k in range(1, 11)}
    memory, kept = [], []
    # Runs of one kind, at most CHUNK events each, in the time order: as events arrive.
    cuts = np.flatnonzero(np.diff(kind_of)) + 1
    bounds = sorted(set(np.concatenate([[0], cuts, np.arange(0, n_events, CHUNK), [n_events]]).tolist()))
    started = time.process_time()
    for done, end in zip(bounds[:-1], bounds[1:], strict=True):
        online.store.add(model.take(kinds[kind_of[done]][1], at[done:end]))
        if any(done < c <= end for c in checkpoints):
            memory.append(round(_rss_mib(), 1))
            kept.append(online.store.status()["kept"])
    cpu = time.process_time() - started
    return {"rows": n_rows, "events": n_events, "extract_cpu_s": round(extract_cpu, 1),
            "extract_rows_per_cpu_s": round(n_rows / extract_cpu), "store_cpu_s": round(cpu, 1),
            "store_events_per_cpu_s": round(n_events / cpu), "rss_mib_by_tenth": memory,
            "kept_by_tenth": kept, "status": online.store.status()}


class _Server:
    def __init__(self, model_dir: str, store: str, log_path: str):
        self.port = free_port()
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.serve", "--model_dir", model_dir, "--host", HOST, "--port", str(self.port),
             "--window_store", store], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while True:
            try:
                self.request("GET", "/v1/models/flights")
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server did not start; see {log_path}") from None
                time.sleep(0.5)

    def request(self, method: str, path: str, body: bytes | None = None, conn=None):
        own = conn is None
        conn = conn or http.client.HTTPConnection(HOST, self.port, timeout=60)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if own:
            conn.close()
        if resp.status != 200:
            raise SystemExit(f"{method} {path}: {resp.status} {data[:300]!r}")
        return json.loads(data)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def http_scenarios(model_dir: str, store: str, work: str, n_predict: int) -> dict:
    header, lines = _kaggle_lines(KAGGLE_SAMPLE)
    server = _Server(model_dir, store, os.path.join(work, f"serve_{store.split(':')[0]}.log"))
    try:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
        bodies = [json.dumps({"layout": "kaggle", "header": header, "records": lines[i:i + CHUNK]}).encode()
                  for i in range(0, len(lines), CHUNK)]
        started = time.perf_counter()
        results = [server.request("POST", "/v1/models/flights/events", b, conn) for b in bodies]
        ingest_s = time.perf_counter() - started
        stored = sum(r["stored"] for r in results)
        events = sum(r["stored"] + r["duplicates"] + r["late"] for r in results)
        names = ("carrier", "origin", "dest", "dep_delay", "taxi_out", "distance", "dep_lat", "dep_lon",
                 "arr_lat", "arr_lon", "dep_time_local")
        instances = _instances(lines, header, names)[:n_predict]
        latencies = []
        for instance in instances:
            body = json.dumps({"instances": [instance]}).encode()
            t = time.perf_counter()
            out = server.request("POST", "/v1/models/flights:predict", body, conn)
            latencies.append((time.perf_counter() - t) * 1000)
            assert out["windows"][0]["filled"], out
        conn.close()
    finally:
        server.stop()
    return {"store": store.split("@")[0], "ingest_rows": len(lines), "ingest_s": round(ingest_s, 2),
            "ingest_rows_per_s": round(len(lines) / ingest_s), "ingest_events_per_s": round(events / ingest_s),
            "events_stored": stored, "predict_requests": len(latencies),
            "predict_latency_ms": {"p50": round(_percentile(latencies, 50), 2), "p90": round(_percentile(latencies, 90), 2),
                                   "p99": round(_percentile(latencies, 99), 2)}}


def _instances(lines: list[str], header: str, names) -> list[dict]:
    """Real kaggle records as instances without windowed features (flight_number for the natural key)."""
    from pipeline.datasets import flights
    from pipeline.datasets.airports import load_airports

    parse = flights.layouts(load_airports())["kaggle"].make_parser(header)
    out = []
    for line in lines[::50]:
        try:
            record = parse(line)
        except Exception:  # noqa: BLE001 - cancelled, diverted, rejected: not an instance
            continue
        out.append({**{n: record[n] for n in names if record.get(n) is not None}, "flight_number": record["flight_number"]})
    return out


def _redis(work: str):
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                             "--dir", work], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(1)
    return proc, f"redis://{HOST}:{port}/0"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="flights whose events the store replays")
    ap.add_argument("--model_dir", help="a trained flights model (default: train a small linear one now)")
    ap.add_argument("--predict_requests", type=int, default=500)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench_online_")
    report = {"machine": machine(), "store_replay": store_replay(args.rows)}
    print(json.dumps(report["store_replay"]), flush=True)
    model_dir = args.model_dir or train_small_model(work, 1800)[0]
    report["http"] = [http_scenarios(model_dir, "memory", work, args.predict_requests)]
    print(json.dumps(report["http"][-1]), flush=True)
    redis_proc, url = _redis(work)
    if redis_proc is not None:
        try:
            report["http"].append(http_scenarios(model_dir, url, work, args.predict_requests))
            print(json.dumps(report["http"][-1]), flush=True)
        finally:
            redis_proc.terminate()
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
