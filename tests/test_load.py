"""The online server under load, on loopback: concurrent clients, mixed valid and invalid requests.

Each client thread keeps one HTTP/1.1 connection and draws requests from a fixed mix: 65% single
rows, 10% batches of 50, 5% serialized tf.Examples, 20% invalid ones of several kinds (malformed
JSON, missing, mistyped and unknown features, an unparseable tf.Example, an unknown model, a body
over 4 MiB, a client that hangs up before the answer). Every answer is checked: each invalid request
gets its 4xx, each valid one a 200 with its predictions, equal to those of the same rows asked alone
(the micro-batcher must not mix requests up), and nothing gets a 5xx. The server's resident memory
is read after a warm-up phase and at the end.

The CI run is short (LOAD_TEST_SECONDS, default 12 s, after 3 s of warm-up); the figures are
printed (pytest -s) and written to a JSON file (LOAD_TEST_REPORT, default under pytest's tmp dir).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import random
import re
import socket
import subprocess
import threading
import time
from collections import Counter, defaultdict

import pytest

from tests.test_serving import _raw_test_rows, _train, server

LOAD_SECONDS = float(os.environ.get("LOAD_TEST_SECONDS", "12"))
WARMUP_SECONDS = float(os.environ.get("LOAD_TEST_WARMUP_SECONDS", "3"))
CLIENTS = int(os.environ.get("LOAD_TEST_CLIENTS", "16"))
RSS_GROWTH_LIMIT_MB = 100.0  # and at most +25% of the warm RSS
TOLERANCE = 1e-5
PREDICT = "/v1/models/flights:predict"

# kind -> share of requests; the invalid kinds share 20%.
MIX = {
    "single": 0.65, "batch50": 0.10, "tf_example": 0.05,
    "malformed_json": 0.03, "missing_feature": 0.03, "wrong_type": 0.03, "unknown_feature": 0.03,
    "bad_tf_example": 0.03, "unknown_model": 0.02, "oversized": 0.02, "hang_up": 0.01,
}
EXPECTED_STATUS = {"single": 200, "batch50": 200, "tf_example": 200, "malformed_json": 400, "missing_feature": 400,
                   "wrong_type": 400, "unknown_feature": 400, "bad_tf_example": 400, "unknown_model": 404,
                   "oversized": 413, "hang_up": None}


def rss_mb(pid: int) -> float:
    """VmRSS of a process, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------ requests
class Requests:
    """Builds a request of each kind, and checks its answer."""

    def __init__(self, instances, serialized, expected_rows, expected_examples):
        self.instances = instances
        self.b64 = [base64.b64encode(s).decode() for s in serialized]
        self.expected_rows = expected_rows  # probability of each instance asked alone
        self.expected_examples = expected_examples

    def make(self, kind: str, rng: random.Random):
        """-> (path, body bytes, headers, indices of the rows asked, or None)."""
        n = len(self.instances)
        i = rng.randrange(n)
        good = self.instances[i]
        if kind == "single":
            return PREDICT, {"instances": [good]}, [i]
        if kind == "batch50":
            idx = [rng.randrange(n) for _ in range(50)]
            return PREDICT, {"instances": [self.instances[j] for j in idx]}, idx
        if kind == "tf_example":
            idx = [rng.randrange(len(self.b64)) for _ in range(rng.randint(1, 3))]
            return PREDICT, {"signature_name": "serving_tf_example", "instances": [{"b64": self.b64[j]} for j in idx]}, idx
        if kind == "malformed_json":
            return PREDICT, b'{"instances": [' + json.dumps(good).encode(), None
        if kind == "missing_feature":
            return PREDICT, {"instances": [{k: v for k, v in good.items() if k != "dep_delay"}]}, None
        if kind == "wrong_type":
            return PREDICT, {"instances": [{**good, "distance": "far"}]}, None
        if kind == "unknown_feature":
            return PREDICT, {"instances": [{**good, "tail_number": "N123"}]}, None
        if kind == "bad_tf_example":
            return PREDICT, {"signature_name": "serving_tf_example", "instances": [{"b64": "AAAA"}]}, None
        if kind == "unknown_model":
            return "/v1/models/taxi:predict", {"instances": [good]}, None
        raise ValueError(kind)

    def check(self, kind: str, status: int, body: bytes, idx) -> str | None:
        """None if the answer is right, else what is wrong."""
        if status != EXPECTED_STATUS[kind]:
            return f"{kind}: status {status}, expected {EXPECTED_STATUS[kind]}: {body[:200]!r}"
        try:
            payload = json.loads(body)
        except ValueError:
            return f"{kind}: not JSON: {body[:200]!r}"
        if status != 200:
            return None if isinstance(payload.get("error"), str) and payload["error"] else f"{kind}: no error message"
        predictions = payload.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != len(idx):
            return f"{kind}: {len(predictions or [])} predictions for {len(idx)} rows"
        expected = self.expected_examples if kind == "tf_example" else self.expected_rows
        for j, p in zip(idx, predictions, strict=True):
            got = p["probability"]
            if not (math.isfinite(got) and 0.0 <= got <= 1.0) or abs(got - expected[j]) > TOLERANCE:
                return f"{kind}: row {j} got {got}, alone it gets {expected[j]}"
        return None


def _post(conn: http.client.HTTPConnection, path: str, body) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def _oversized(host: str, port: int) -> tuple[int, bytes]:
    """Declares a 5 MiB body and sends none of it: refused from the Content-Length."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest("POST", PREDICT)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(5 << 20))
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _hang_up(host: str, port: int, body: dict) -> None:
    """Sends a valid request and closes the connection before the answer."""
    data = json.dumps(body).encode()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[str] = []
        self.transport_errors: Counter = Counter()
        self.rows = 0
        self.reconnects = 0

    def record(self, kind, status, seconds, problem, rows):
        with self.lock:
            self.latencies[kind].append(seconds)
            self.statuses[kind][status] += 1
            if problem:
                self.failures.append(problem)
            if status == 200:
                self.rows += rows


def _client(base: str, reqs: Requests, seed: int, stop: threading.Event, phase: list, stats: dict) -> None:
    host, port = base.removeprefix("http://").split(":")
    port = int(port)
    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        while not stop.is_set():
            st = stats[phase[0]]
            kind = rng.choices(kinds, weights)[0]
            started = time.perf_counter()
            if kind == "oversized":
                status, body = _oversized(host, port)
                st.record(kind, status, time.perf_counter() - started, reqs.check(kind, status, body, None), 0)
                continue
            if kind == "hang_up":
                _hang_up(host, port, {"instances": [reqs.instances[rng.randrange(len(reqs.instances))]]})
                st.record(kind, "hung up", time.perf_counter() - started, None, 0)
                continue
            path, body, idx = reqs.make(kind, rng)
            for attempt in (1, 2):
                try:
                    status, raw = _post(conn, path, body)
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                    conn.close()  # a kept-alive connection the server closed: one retry on a fresh one
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    with st.lock:
                        st.reconnects += 1
                    if attempt == 2:
                        status, raw = type(e).__name__, b""
                except OSError as e:  # a timeout or a refused connection: an error of the server
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    status, raw = type(e).__name__, b""
                    break
            elapsed = time.perf_counter() - started
            if isinstance(status, str):
                with st.lock:
                    st.transport_errors[status] += 1
                st.record(kind, status, elapsed, f"{kind}: {status}", 0)
                continue
            st.record(kind, status, elapsed, reqs.check(kind, status, raw, idx), len(idx or ()))
    finally:
        conn.close()


def _percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def run_load(base: str, proc: subprocess.Popen, reqs: Requests, seconds: float, warmup: float, clients: int) -> dict:
    """Warm-up, RSS, measured phase, RSS; returns the figures of the measured phase."""
    stats = {"warmup": Stats(), "measured": Stats()}
    phase = ["warmup"]
    stop = threading.Event()
    threads = [threading.Thread(target=_client, args=(base, reqs, 1000 + k, stop, phase, stats), daemon=True)
               for k in range(clients)]
    rss_start = rss_mb(proc.pid)
    for t in threads:
        t.start()
    time.sleep(warmup)
    rss_warm = rss_mb(proc.pid)
    phase[0] = "measured"
    started = time.perf_counter()
    rss_peak = rss_warm
    while time.perf_counter() - started < seconds:
        time.sleep(0.5)
        rss_peak = max(rss_peak, rss_mb(proc.pid))
    stop.set()
    for t in threads:
        t.join(timeout=90)
    elapsed = time.perf_counter() - started
    assert not any(t.is_alive() for t in threads), "a client is stuck: the server stopped answering"
    time.sleep(0.5)
    rss_end = rss_mb(proc.pid)

    m = stats["measured"]
    all_latencies = [x for v in m.latencies.values() for x in v]
    n = len(all_latencies)
    by_status = Counter()
    for counter in m.statuses.values():
        by_status.update({str(k): v for k, v in counter.items()})
    return {
        "clients": clients,
        "warmup_seconds": warmup,
        "seconds": round(elapsed, 2),
        "requests": n,
        "requests_per_second": round(n / elapsed, 1),
        "rows_predicted": m.rows,
        "rows_per_second": round(m.rows / elapsed, 1),
        "latency_ms": {"p50": round(_percentile(all_latencies, 50) * 1000, 2),
                       "p99": round(_percentile(all_latencies, 99) * 1000, 2),
                       "max": round(max(all_latencies, default=float("nan")) * 1000, 2)},
        "latency_ms_by_kind": {k: {"n": len(v), "p50": round(_percentile(v, 50) * 1000, 2),
                                   "p99": round(_percentile(v, 99) * 1000, 2)} for k, v in sorted(m.latencies.items())},
        "status_counts": dict(sorted(by_status.items())),
        "status_by_kind": {k: {str(s): c for s, c in v.items()} for k, v in sorted(m.statuses.items())},
        "wrong_answers": len(m.failures) + len(stats["warmup"].failures),
        "wrong_answer_examples": (stats["warmup"].failures + m.failures)[:10],
        "transport_errors": dict(m.transport_errors + stats["warmup"].transport_errors),
        "reconnects": m.reconnects,
        "warmup_requests": sum(len(v) for v in stats["warmup"].latencies.values()),
        "rss_mb": {"start": round(rss_start, 1), "after_warmup": round(rss_warm, 1), "peak": round(rss_peak, 1),
                   "end": round(rss_end, 1)},
    }


# ------------------------------------------------------------------ the test
@pytest.fixture(scope="module")
def load_model(flights_out, tmp_path_factory):
    return _train(flights_out, tmp_path_factory.mktemp("load_job"))


def test_server_under_mixed_load_answers_every_request_right_and_holds_its_memory(load_model, flights_out, tmp_path):
    serialized, instances = _raw_test_rows(flights_out, n=200)
    with server(load_model, tmp_path / "server.log") as (base, proc):
        host, port = base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        # What each row gets asked alone: the reference for every answer under load.
        expected_rows = []
        for row in instances:
            status, raw = _post(conn, PREDICT, {"instances": [row]})
            assert status == 200, raw
            expected_rows.append(json.loads(raw)["predictions"][0]["probability"])
        expected_examples = []
        for s in serialized:
            status, raw = _post(conn, PREDICT, {"signature_name": "serving_tf_example",
                                                "instances": [{"b64": base64.b64encode(s).decode()}]})
            assert status == 200, raw
            expected_examples.append(json.loads(raw)["predictions"][0]["probability"])
        conn.close()

        reqs = Requests(instances, serialized, expected_rows, expected_examples)
        report = run_load(base, proc, reqs, LOAD_SECONDS, WARMUP_SECONDS, CLIENTS)

        # Still answering, and a chunked body (no Content-Length) over 4 MiB is cut off at 4 MiB with a 413.
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        status, raw = _post(conn, PREDICT, {"instances": instances[:3]})
        assert status == 200 and len(json.loads(raw)["predictions"]) == 3
        chunk = b" " * (256 << 10)
        try:
            conn.request("POST", PREDICT, body=iter([b'{"instances": ['] + [chunk] * 20), encode_chunked=True,
                         headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
            response = conn.getresponse()
            chunked_status = response.status
            response.read()
        except (BrokenPipeError, ConnectionResetError):  # refused while we were still sending
            chunked_status = "reset"
        conn.close()
        report["chunked_over_4mib"] = chunked_status
        assert proc.poll() is None
    log = (tmp_path / "server.log").read_text()
    report["server_log_lines"] = log.count("\n")
    report["server_log_errors"] = len(re.findall(r" ERROR [\w.]+: |Traceback", log))

    out = os.environ.get("LOAD_TEST_REPORT") or str(tmp_path / "load_report.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nload test ({out}):\n{json.dumps(report, indent=2)}")

    assert report["requests"] > 0
    assert not report["transport_errors"], report["transport_errors"]
    assert not [s for s in report["status_counts"] if s.startswith("5")], report["status_counts"]
    assert report["wrong_answers"] == 0, report["wrong_answer_examples"]
    assert set(report["status_by_kind"]) == set(MIX), "every kind of request was sent"
    assert report["chunked_over_4mib"] in (413, "reset")
    assert report["server_log_errors"] == 0, log[-3000:]
    rss = report["rss_mb"]
    growth = rss["end"] - rss["after_warmup"]
    assert growth <= min(RSS_GROWTH_LIMIT_MB, 0.25 * rss["after_warmup"]), rss


def test_one_bad_request_in_a_joined_batch_fails_alone():
    """Before the fix, an unparseable tf.Example failed every request batched with it (28% of the valid
    tf.Example requests under load got a 400)."""
    import asyncio

    import numpy as np

    from trainer.serve import Batcher

    class Model:
        calls: list[int] = []

        def predict(self, signature, columns):
            values = columns["examples"]
            self.calls.append(len(values))
            if any(v == b"bad" for v in values):
                raise ValueError("Could not parse example input")
            return {"probability": np.array([len(v) / 10 for v in values])}

    async def main():
        batcher = Batcher(Model(), "serving_tf_example", max_wait_s=0.2)
        ask = [np.array(v, dtype=object) for v in ([b"a"], [b"bad"], [b"abc", b"ab"])]
        return await asyncio.gather(*(batcher.predict({"examples": a}, len(a)) for a in ask), return_exceptions=True)

    good, bad, pair = asyncio.run(main())
    assert list(good["probability"]) == [0.1] and list(pair["probability"]) == [0.3, 0.2]
    assert isinstance(bad, ValueError)
    assert Model.calls[0] == 4  # they were joined into one call first
