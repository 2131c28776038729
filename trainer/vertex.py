"""Vertex AI custom training job for ``trainer.task``: a pure spec builder, and a CLI that prints or submits it.

    python -m trainer.vertex --project P --region us-central1 --bucket gs://B --data_dir gs://B/flights \\
        --package_uri gs://B/packages/gcp-ml-pipeline-0.1.0.tar.gz [--workers 3] [--machine_type n1-standard-8] \\
        [--dry_run] [-- trainer flags, e.g. --model dnn --epochs 5]

(run_vertex.sh builds the sdist, copies it to gs://B/packages/ and calls this.) ``build_custom_job`` returns
the REST/JSON shape of ``google.cloud.aiplatform_v1.types.CustomJob``: ``displayName`` and a ``jobSpec``
with ``workerPoolSpecs`` and ``baseOutputDirectory``. Vertex AI sets on every replica:
    AIP_MODEL_DIR            <baseOutputDirectory>/model/
    AIP_CHECKPOINT_DIR       <baseOutputDirectory>/checkpoints/
    AIP_TENSORBOARD_LOG_DIR  <baseOutputDirectory>/logs/
and, with more than one replica, TF_CONFIG (the cluster: a "chief" pool of one replica plus a "worker" pool of
N-1 replicas, and this replica's task). trainer.task reads all of them; it gets only ``--data_dir`` and the
trainer flags, its job dir being the parent of AIP_MODEL_DIR, i.e. the base output directory.

How the code reaches the machines (two launch forms, each worker pool gets the same one):
- containerSpec (the default): an image with Python 3.11 and pip (python:3.11-slim, or your own) that first
  pip-installs the staged sdist, read through the Cloud Storage FUSE mount Vertex AI gives every custom
  job (gs://B/x is /gcs/B/x), then runs ``python -m trainer.task``. The sdist pins the exact versions of
  pyproject.toml (TensorFlow 2.21, tf_keras, tensorflow-transform), which need Python 3.11.
- pythonPackageSpec (``--executor_image``): a prebuilt Vertex AI training image installs ``packageUris`` and
  runs ``pythonModule``. Vertex's prebuilt TensorFlow images are Python 3.10 with TensorFlow <= 2.17, where pip
  refuses this package (requires-python 3.11); use it only with an image whose Python is 3.11.

Nothing here imports TensorFlow or pipeline/; google-cloud-aiplatform is imported only to submit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata

logger = logging.getLogger(__name__)

PYTHON_MODULE = "trainer.task"
DEFAULT_MACHINE_TYPE = "n1-standard-4"
DEFAULT_CONTAINER_IMAGE = "python:3.11-slim"
# Prebuilt TensorFlow CPU training image (Python 3.10, TensorFlow 2.17): see the module docstring before using it.
PREBUILT_TF_CPU_IMAGE = "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest"
PACKAGE_NAME = "gcp-ml-pipeline"

# containerSpec entry point: $0 is the package path, "$@" the trainer's arguments (the pool's args).
_INSTALL_AND_RUN = (
    'set -e; python -m pip install --quiet --no-cache-dir --disable-pip-version-check "$0"; '
    f'exec python -m {PYTHON_MODULE} "$@"'
)


class UsageError(ValueError):
    """A flag or value that cannot make a job; reported without a traceback."""


def _require_gs(name: str, uri: str) -> str:
    if not uri or not uri.startswith("gs://") or len(uri) <= len("gs://") or uri[5] == "/":
        raise UsageError(f"{name} must be a gs:// path (Vertex AI machines cannot read this one's files), not {uri!r}")
    return uri.rstrip("/")


def gcs_fuse_path(uri: str) -> str:
    """gs://bucket/path as Vertex AI's Cloud Storage FUSE mount shows it to a custom job: /gcs/bucket/path."""
    return "/gcs/" + _require_gs("path", uri)[len("gs://"):]


def worker_pool_specs(
    workers: int,
    machine_type: str,
    package_uri: str,
    args: Sequence[str],
    executor_image: str | None = None,
    container_image: str = DEFAULT_CONTAINER_IMAGE,
) -> list[dict]:
    """One pool of one replica (the chief), plus a pool of ``workers - 1`` replicas when ``workers > 1``."""
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, not {workers}")
    if executor_image:
        launch = {
            "pythonPackageSpec": {
                "executorImageUri": executor_image,
                "packageUris": [package_uri],
                "pythonModule": PYTHON_MODULE,
                "args": list(args),
            }
        }
    else:
        launch = {
            "containerSpec": {
                "imageUri": container_image,
                "command": ["sh", "-c", _INSTALL_AND_RUN, gcs_fuse_path(package_uri)],
                "args": list(args),
            }
        }
    pools = [{"machineSpec": {"machineType": machine_type}, "replicaCount": 1, **launch}]
    if workers > 1:
        pools.append({"machineSpec": {"machineType": machine_type}, "replicaCount": workers - 1, **launch})
    return json.loads(json.dumps(pools))  # independent copies: editing one pool never changes the other


def build_custom_job(
    *,
    display_name: str,
    data_dir: str,
    base_output_dir: str,
    package_uri: str,
    workers: int = 1,
    machine_type: str = DEFAULT_MACHINE_TYPE,
    trainer_args: Sequence[str] = (),
    executor_image: str | None = None,
    container_image: str = DEFAULT_CONTAINER_IMAGE,
    service_account: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict:
    """The CustomJob (REST/JSON shape of aiplatform_v1.types.CustomJob) that trains on ``data_dir``. Pure."""
    if not display_name:
        raise UsageError("a job needs a display name")
    data_dir = _require_gs("--data_dir", data_dir)
    base_output_dir = _require_gs("the base output directory", base_output_dir)
    package_uri = _require_gs("--package_uri", package_uri)
    if not package_uri.endswith((".tar.gz", ".whl")):
        raise UsageError(f"--package_uri must name the built package (.tar.gz), not {package_uri!r}")
    if any(a in ("--data_dir", "--job_dir", "--job-dir") or a.startswith(("--data_dir=", "--job_dir=", "--job-dir="))
           for a in trainer_args):
        raise UsageError("trainer flags must not set --data_dir or --job_dir: the job sets them (job dir = base output dir)")
    args = ["--data_dir", data_dir, *trainer_args]
    spec: dict = {
        "workerPoolSpecs": worker_pool_specs(workers, machine_type, package_uri, args, executor_image, container_image),
        "baseOutputDirectory": {"outputUriPrefix": base_output_dir},
    }
    if service_account:
        spec["serviceAccount"] = service_account
    job: dict = {"displayName": display_name, "jobSpec": spec}
    if labels:
        job["labels"] = dict(labels)
    return job


def to_proto(job: Mapping):
    """The spec as ``aiplatform_v1.types.CustomJob``; raises on any field that the API does not have."""
    from google.cloud.aiplatform_v1.types import CustomJob

    return CustomJob.from_json(json.dumps(job))


def submit(job: Mapping, project: str, region: str, client=None):
    """Creates the custom job; returns the created ``CustomJob`` (its ``name`` is the resource name).

    ``client``: an ``aiplatform_v1.JobServiceClient`` (default: the region's endpoint, application default
    credentials).
    """
    if client is None:
        from google.cloud import aiplatform_v1

        client = aiplatform_v1.JobServiceClient(client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"})
    return client.create_custom_job(parent=f"projects/{project}/locations/{region}", custom_job=to_proto(job))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.vertex",
        description="Build (and, without --dry_run, submit) a Vertex AI custom job running trainer.task. "
        "Flags after -- go to trainer.task.",
    )
    p.add_argument("--project", required=True, help="Google Cloud project id")
    p.add_argument("--region", required=True, help="Vertex AI region, e.g. us-central1")
    p.add_argument("--bucket", required=True, help="gs://BUCKET: the default home of the package and the job's outputs")
    p.add_argument("--data_dir", required=True, help="gs:// preprocessing output (OUT of pipeline.preprocess)")
    p.add_argument("--package_uri", help="gs:// sdist of this project (default: gs://BUCKET/packages/<name>-<version>.tar.gz)")
    p.add_argument("--workers", type=int, default=1, help="replicas in all: 1 chief plus N-1 workers (default 1)")
    p.add_argument("--machine_type", default=DEFAULT_MACHINE_TYPE, help=f"default {DEFAULT_MACHINE_TYPE}")
    p.add_argument("--job_name", help="display name (default: gcp-ml-pipeline-train-<UTC time>)")
    p.add_argument("--base_output_dir", help="gs:// job dir (default: gs://BUCKET/vertex/<job name>)")
    p.add_argument("--executor_image", help="a prebuilt training image: pythonPackageSpec instead of containerSpec")
    p.add_argument("--container_image", default=DEFAULT_CONTAINER_IMAGE,
                   help=f"containerSpec image with Python 3.11 and pip (default {DEFAULT_CONTAINER_IMAGE})")
    p.add_argument("--service_account", help="service account the job runs as (default: Vertex AI's agent)")
    p.add_argument("--dry_run", action="store_true", help="print the job spec as JSON; submit nothing")
    return p


def _default_package_uri(bucket: str) -> str:
    try:
        version = metadata.version(PACKAGE_NAME)
    except metadata.PackageNotFoundError:
        raise UsageError(f"{PACKAGE_NAME} is not installed here: pass --package_uri (run_vertex.sh does)") from None
    return f"{bucket}/packages/{PACKAGE_NAME}-{version}.tar.gz"


def job_from_args(argv: Sequence[str] | None = None) -> tuple[dict, argparse.Namespace]:
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, trainer_args = argv[:cut], argv[cut + 1:]
    a = _parser().parse_args(argv)
    bucket = _require_gs("--bucket", a.bucket)
    name = a.job_name or time.strftime("gcp-ml-pipeline-train-%Y%m%d-%H%M%S", time.gmtime())
    job = build_custom_job(
        display_name=name,
        data_dir=a.data_dir,
        base_output_dir=a.base_output_dir or f"{bucket}/vertex/{name}",
        package_uri=a.package_uri or _default_package_uri(bucket),
        workers=a.workers,
        machine_type=a.machine_type,
        trainer_args=trainer_args,
        executor_image=a.executor_image,
        container_image=a.container_image,
        service_account=a.service_account,
    )
    return job, a


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        job, a = job_from_args(argv)
    except UsageError as e:
        print(f"trainer.vertex: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        print(json.dumps(job, indent=2))
        return 0
    created = submit(job, a.project, a.region)
    logger.info("submitted %s (%s), state %s", created.name, created.display_name, created.state.name)
    logger.info("follow it with: gcloud ai custom-jobs stream-logs %s", created.name)
    logger.info("outputs under %s", job["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
