#!/usr/bin/env bash
# Runs one stage on a Cloud TPU VM slice (a single host or a pod slice): creates the slice if it
# does not exist, copies this checkout to every worker, installs it with the [tpu] extra, mounts
# the bucket, and starts the same main command on all workers (JAX's multi-controller runtime
# finds the other workers by itself: --distributed).
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE BUCKET RUN CONFIG [main flags...]
#
#   launch/tpu_pod.sh cardionets-v5p us-east5-a v5p-128 my-bucket mae-base \
#       configs/mae.py:variant=base --config.data.source=/gcs/my-bucket/ukb-dataset
#
# The workdir is /gcs/BUCKET/runs/RUN on every worker (the bucket mounted with gcsfuse), so
# checkpoints, metrics and results land in gs://BUCKET/runs/RUN and a rerun resumes from them.
# Environment: TPU_RUNTIME (the TPU VM software version, default v2-alpha-tpuv5), SPOT=1 for
# spot capacity, PROJECT to override gcloud's default project.
set -euo pipefail

if [[ $# -lt 6 ]]; then
  sed -n '2,18p' "$0"; exit 2
fi
NAME=$1 ZONE=$2 TYPE=$3 BUCKET=$4 RUN=$5 CONFIG=$6
shift 6
RUNTIME=${TPU_RUNTIME:-v2-alpha-tpuv5}
GCLOUD=(gcloud compute tpus tpu-vm)
[[ -n "${PROJECT:-}" ]] && GCLOUD+=(--project "$PROJECT")
WORKDIR=/gcs/$BUCKET/runs/$RUN

if ! "${GCLOUD[@]}" describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
  echo "Creating $TYPE slice $NAME in $ZONE"
  "${GCLOUD[@]}" create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" --version "$RUNTIME" \
      ${SPOT:+--spot}
else
  echo "Reusing slice $NAME"
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARCHIVE=$(mktemp -d)/cardionets-jax.tar.gz
tar -czf "$ARCHIVE" -C "$ROOT" --exclude=.git --exclude=.venv --exclude=runs --exclude='*.egg-info' .
"${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:~/cardionets-jax.tar.gz" --zone "$ZONE" --worker=all

printf -v FLAGS ' %q' "$@"
"${GCLOUD[@]}" ssh "$NAME" --zone "$ZONE" --worker=all --command "
set -euo pipefail
mkdir -p ~/cardionets-jax && tar -xzf ~/cardionets-jax.tar.gz -C ~/cardionets-jax && cd ~/cardionets-jax
if ! mountpoint -q /gcs/$BUCKET; then
  sudo mkdir -p /gcs/$BUCKET && sudo chown \$USER /gcs/$BUCKET
  gcsfuse --implicit-dirs $BUCKET /gcs/$BUCKET
fi
[[ -d .venv ]] || python3 -m venv .venv
. .venv/bin/activate && pip install -q -e '.[tpu]'
python -m cardionets_jax.main --config=$CONFIG --workdir=$WORKDIR --distributed$FLAGS
"
