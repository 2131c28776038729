#!/usr/bin/env bash
# Submits the preprocessing pipeline to Google Cloud Dataflow.
#
#   PROJECT=my-project REGION=us-central1 BUCKET=gs://my-bucket \
#     ./run_dataflow.sh flights 'gs://my-bucket/raw/On_Time_*.csv.gz' gs://my-bucket/flights [extra pipeline flags]
#   PROJECT=... REGION=... BUCKET=... ./run_dataflow.sh taxi 'gs://my-bucket/raw/yellow_tripdata_*.csv' gs://my-bucket/taxi
#
# Optional: MACHINE_TYPE (n1-standard-4), MAX_WORKERS (10), DRY_RUN=1 prints the command instead of running it.
# Workers install this package with `--setup_file ./setup.py`, which reads the pinned dependencies of
# pyproject.toml: the same versions as local runs and CI.
set -euo pipefail

die() { echo "run_dataflow.sh: $*" >&2; exit 2; }

[ $# -ge 3 ] || die "usage: run_dataflow.sh flights|taxi INPUT_PATTERN OUTPUT_DIR [pipeline flags...]"
dataset=$1; input=$2; output=$3; shift 3
case "$dataset" in flights|taxi) ;; *) die "dataset must be flights or taxi, not '$dataset'";; esac
[ -n "${PROJECT:-}" ] || die "set PROJECT to your Google Cloud project id"
[ -n "${REGION:-}" ] || die "set REGION to a Dataflow region, e.g. us-central1"
[ -n "${BUCKET:-}" ] || die "set BUCKET to a gs:// bucket for staging and temp files, e.g. gs://my-bucket"
for value in "$BUCKET" "$input" "$output"; do
  case "$value" in gs://*) ;; *) die "'$value' is not a gs:// path: Dataflow workers cannot read this machine's files";; esac
done
for pattern in ${input//,/ }; do
  case "$pattern" in gs://*) ;; *) die "input '$pattern' is not a gs:// path";; esac
done

here=$(cd "$(dirname "$0")" && pwd)
job="preprocess-${dataset}-$(date -u +%Y%m%d-%H%M%S)"
cmd=(python -m pipeline.preprocess
  --dataset "$dataset" --input "$input" --output_dir "$output"
  --runner DataflowRunner --project "$PROJECT" --region "$REGION" --job_name "$job"
  --temp_location "${BUCKET%/}/tmp" --staging_location "${BUCKET%/}/staging"
  --setup_file "$here/setup.py"
  --machine_type "${MACHINE_TYPE:-n1-standard-4}" --max_num_workers "${MAX_WORKERS:-10}"
  "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
cd "$here"
exec "${cmd[@]}"
