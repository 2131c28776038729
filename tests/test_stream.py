"""Streaming ingestion (pipeline.stream): usage errors, the Dataflow streaming job built offline, and end to
end from Google's Pub/Sub emulator into a real Redis, equal to the same events stored directly."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from pipeline import stream
from pipeline.online.windows import OnlineWindows
from pipeline.options import UsageError
from pipeline.records.windows import Query
from tests.conftest import REPO, free_port, shared_file, wait_for_port
from tests.test_cloud_jobs import BUCKET, PROJECT, REGION, fake_api  # noqa: F401 - the fake Dataflow service

KAGGLE = ("kaggle_2015-01-01_to_04.csv.gz",)


def _kaggle(n: int) -> tuple[str, list[str]]:
    with gzip.open(shared_file("flights", *KAGGLE), "rt") as f:
        header = f.readline().rstrip("\n")
        return header, [next(f).rstrip("\n") for _ in range(n)]


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "flights", "--input_format", "kaggle", "--window_store", "redis://h:1/0"], "exactly one of"),
    (["--dataset", "flights", "--topic", "projects/my-project/topics/t", "--input_format", "kaggle"], "--window_store"),
    (["--dataset", "flights", "--topic", "projects/my-project/topics/t", "--input_format", "nope",
      "--window_store", "redis://h:1/0"], "--input_format 'nope'"),
    (["--dataset", "flights", "--topic", "projects/my-project/topics/t", "--input_format", "kaggle",
      "--window_store", "redis://h:1/0"], "header line"),
    (["--dataset", "flights", "--topic", "t", "--input_format", "events", "--window_store", "redis://h:1/0"], "--topic"),
])
def test_stream_usage_errors_before_anything_runs(argv, message):
    with pytest.raises(UsageError, match=message):
        stream.run(argv)


def test_dataflow_streaming_job_is_built_and_submitted_offline(tmp_path, fake_api):  # noqa: F811 - the fixture
    import google.auth
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
    from apache_beam.runners.dataflow.internal import apiclient

    header = "YEAR,MONTH,DAY,AIRLINE,FLIGHT_NUMBER,ORIGIN_AIRPORT,SCHEDULED_DEPARTURE"
    staging = tmp_path / "staging"
    staging.mkdir()
    seen = {}

    class Submitted(Exception):
        pass

    real_run_pipeline = DataflowRunner.run_pipeline

    def run_pipeline(self, p, options, pipeline_proto=None):
        result = real_run_pipeline(self, p, options, pipeline_proto)  # --dry_run: translated, nothing sent
        cloud = options.view_as(GoogleCloudOptions)
        cloud.staging_location, cloud.no_auth, cloud.dataflow_endpoint = str(staging), True, fake_api.url
        seen["response"] = apiclient.DataflowApplicationClient(options, cloud.staging_location).create_job(result.job)
        raise Submitted

    def offline(*_args, **_kwargs):
        raise AssertionError("the offline Dataflow build tried to reach Google Cloud")

    before = len(fake_api.requests)
    argv = ["--runner", "DataflowRunner", "--project", PROJECT, "--region", REGION, "--temp_location", f"{BUCKET}/tmp",
            "--setup_file", str(REPO / "setup.py"), "--dataset", "flights", "--subscription",
            f"projects/{PROJECT}/subscriptions/raw-flights", "--input_format", "kaggle", "--header", header,
            "--window_store", "redis://10.0.0.3:6379/0", "--allowed_lateness_minutes", "1440", "--dry_run=True"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(google.auth, "default", offline)
        mp.setattr(DataflowRunner, "run_pipeline", run_pipeline)
        with pytest.raises(Submitted):
            stream.run(argv)
    (req,) = fake_api.requests[before:]
    body = json.loads(req["body"])
    assert body["type"] in ("JOB_TYPE_STREAMING", 2)
    options = body["environment"]["sdkPipelineOptions"]["options"]
    assert options["streaming"] is True and options["window_store"] == "redis://10.0.0.3:6379/0"
    assert options["subscription"] == f"projects/{PROJECT}/subscriptions/raw-flights"
    assert seen["response"].id == "2026-01-01_00_00_00-fake"


# ------------------------------------------------------------------ end to end through the Pub/Sub emulator
@pytest.fixture(scope="module")
def pubsub_emulator(tmp_path_factory):
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("needs Google's Pub/Sub emulator (gcloud beta emulators pubsub), absent on this machine: no gcloud")
    port = free_port()
    log = open(tmp_path_factory.mktemp("pubsub") / "emulator.log", "w")
    proc = subprocess.Popen([gcloud, "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"})  # never offer to install it
    if not wait_for_port(port, proc, 90):
        os.killpg(proc.pid, 15)
        pytest.skip(f"the Pub/Sub emulator did not start here (see {log.name}): gcloud lacks the component")
    yield f"127.0.0.1:{port}"
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    log.close()


def test_records_published_to_pubsub_reach_the_redis_store_once(pubsub_emulator, redis_url, tmp_path, monkeypatch):
    """1,500 real kaggle records published (200 of them twice, as Pub/Sub may deliver) go through
    pipeline.stream on Beam's streaming direct runner into Redis: the store then holds what storing
    the same records directly gives, re-sent copies counted once, and answers queries alike."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path("test-project", "raw-flights")
    subscription = subscriber.subscription_path("test-project", "raw-flights-stream")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    header, lines = _kaggle(1500)
    redis_db = redis_url.rsplit("/", 1)[0] + "/3"  # a database of its own
    log = open(tmp_path / "stream.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.stream", "--dataset", "flights", "--subscription", subscription,
         "--input_format", "kaggle", "--header", header, "--window_store", redis_db, "--allowed_lateness_minutes", "1440"],
        cwd=REPO, env=os.environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        reference = OnlineWindows("flights", 3600, lateness_s=86400)
        expected = reference.ingest({"records": lines, "layout": "kaggle", "header": header})
        streamed = OnlineWindows("flights", 3600, redis_db, lateness_s=86400)
        for f in [publisher.publish(topic, line.encode()) for line in lines + lines[:200]]:
            f.result(timeout=60)
        resent = OnlineWindows("flights", 3600)
        resent.ingest({"records": lines[:200], "layout": "kaggle", "header": header})
        rows_with_events = reference.status()["received"] + resent.status()["received"]
        deadline = time.time() + 240
        while streamed.status()["received"] < rows_with_events:
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise AssertionError(f"the stream stored {streamed.status()}; log: {open(log.name).read()[-3000:]}")
            time.sleep(1)
        status = streamed.status()
        assert status["stored"] == expected["stored"] and status["late"] == 0
        assert status["duplicates"] >= 400  # 200 records, each with a departure and a wheels-off at least
        for airport in ("ATL", "ORD", "DFW", "LAX", "DEN"):
            for t in range(1420088400, 1420117200, 1800):  # 2015-01-01 05:00 .. 13:00 UTC, every half hour
                query = Query(t, None, {"origin": airport, "dest": airport})
                assert streamed.store.features(query) == reference.store.features(query)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
