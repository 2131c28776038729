#!/usr/bin/env bash
# Trains on Vertex AI: builds this package's sdist, copies it to gs://BUCKET/packages/ and submits a custom job
# running trainer.task on a preprocessing output directory (see trainer/vertex.py for the job it builds).
#
#   PROJECT=my-project REGION=us-central1 BUCKET=gs://my-bucket \
#     ./run_vertex.sh gs://my-bucket/flights [trainer flags, e.g. --model dnn --epochs 5]
#   WORKERS=3 PROJECT=... REGION=... BUCKET=... ./run_vertex.sh gs://my-bucket/taxi
#
# Optional: WORKERS (1: one chief; N: a chief plus N-1 workers, Vertex AI sets TF_CONFIG), MACHINE_TYPE
# (n1-standard-4), JOB_NAME, CONTAINER_IMAGE (python:3.11-slim), EXECUTOR_IMAGE (a prebuilt training image with
# Python 3.11: pythonPackageSpec instead of containerSpec), SERVICE_ACCOUNT.
# DRY_RUN=1 builds the sdist locally and prints the job spec (JSON, on stdout) without uploading or submitting.
# Outputs go to gs://BUCKET/vertex/JOB_NAME/: model/ (AIP_MODEL_DIR), checkpoints/, logs/, export/, metrics.json.
set -euo pipefail

die() { echo "run_vertex.sh: $*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: run_vertex.sh DATA_DIR [trainer flags...]  (DATA_DIR: the gs:// output of run_dataflow.sh)"
data_dir=$1; shift
[ -n "${PROJECT:-}" ] || die "set PROJECT to your Google Cloud project id"
[ -n "${REGION:-}" ] || die "set REGION to a Vertex AI region, e.g. us-central1"
[ -n "${BUCKET:-}" ] || die "set BUCKET to a gs:// bucket for the package and the job's outputs, e.g. gs://my-bucket"
for value in "$BUCKET" "$data_dir"; do
  case "$value" in gs://?*) ;; *) die "'$value' is not a gs:// path: Vertex AI machines cannot read this machine's files";; esac
done
workers=${WORKERS:-1}
case "$workers" in ''|*[!0-9]*|0*) die "WORKERS must be a positive integer, not '$workers'";; esac

here=$(cd "$(dirname "$0")" && pwd)
bucket=${BUCKET%/}
job=${JOB_NAME:-"train-$(basename "${data_dir%/}")-$(date -u +%Y%m%d-%H%M%S)"}

# The same sdist Dataflow workers get (setup.py reads the pins of pyproject.toml); built locally in both modes.
dist=$(mktemp -d)
trap 'rm -rf "$dist"' EXIT
(cd "$here" && python setup.py -q sdist --dist-dir "$dist" >"$dist/build.log" 2>&1) ||
  { cat "$dist/build.log" >&2; die "python setup.py sdist failed in $here"; }
sdists=("$dist"/*.tar.gz)
[ ${#sdists[@]} -eq 1 ] && [ -f "${sdists[0]}" ] || die "expected one sdist in $dist, found: ${sdists[*]}"
package="$bucket/packages/$(basename "${sdists[0]}")"

cmd=(python -m trainer.vertex --project "$PROJECT" --region "$REGION" --bucket "$bucket"
  --data_dir "${data_dir%/}" --package_uri "$package" --workers "$workers"
  --machine_type "${MACHINE_TYPE:-n1-standard-4}" --job_name "$job")
if [ -n "${CONTAINER_IMAGE:-}" ]; then cmd+=(--container_image "$CONTAINER_IMAGE"); fi
if [ -n "${EXECUTOR_IMAGE:-}" ]; then cmd+=(--executor_image "$EXECUTOR_IMAGE"); fi
if [ -n "${SERVICE_ACCOUNT:-}" ]; then cmd+=(--service_account "$SERVICE_ACCOUNT"); fi

cd "$here"
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "run_vertex.sh: dry run: would copy $(basename "${sdists[0]}") to $package and submit:" >&2
  "${cmd[@]}" --dry_run -- "$@"
  exit
fi

echo "run_vertex.sh: copying ${sdists[0]} to $package" >&2
if command -v gsutil >/dev/null 2>&1; then
  gsutil -q cp "${sdists[0]}" "$package"
else
  python - "${sdists[0]}" "$package" <<'EOF'
import sys
from google.cloud import storage

source, target = sys.argv[1], sys.argv[2]
bucket, _, blob = target[len("gs://"):].partition("/")
storage.Client().bucket(bucket).blob(blob).upload_from_filename(source)
EOF
fi
"${cmd[@]}" -- "$@"
