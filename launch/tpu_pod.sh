#!/usr/bin/env bash
# Create (optionally) a Cloud TPU VM pod slice, install jaxdiff on every worker and run
# launch/main.py on all hosts at once. jax.distributed.initialize() discovers the pod by itself.
#
#   TPU_NAME=jaxdiff-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#     launch/tpu_pod.sh create
#   TPU_NAME=jaxdiff-v4-32 ZONE=us-central2-b \
#     launch/tpu_pod.sh run configs/cifar10_ncsnpp_ve_continuous.py gs://BUCKET/runs/ve [flags...]
#   TPU_NAME=... ZONE=... launch/tpu_pod.sh delete
#
# The workdir should be a gs:// path (Orbax and TensorBoard write there from every host); the
# datasets must already be prepared in a bucket (--config.data.data_dir=gs://BUCKET/tfds).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
REPO_URL="${REPO_URL:-https://github.com/jaxdiff/jaxdiff.git}"
BRANCH="${BRANCH:-main}"

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
    ssh_all "set -e; pip install -U 'jax[tpu]'; \
      if [ -d jaxdiff ]; then git -C jaxdiff pull; else git clone -b $BRANCH $REPO_URL jaxdiff; fi; \
      pip install -e jaxdiff"
    ;;
  run)
    if [[ $# -lt 2 ]]; then
      echo "usage: $0 run CONFIG WORKDIR [main.py flags...]" >&2
      exit 2
    fi
    config="$1"
    workdir="$2"
    shift 2
    extra=""
    for a in "$@"; do
      extra+=" $(printf '%q' "$a")"
    done
    ssh_all "cd jaxdiff && python launch/main.py --config=$(printf '%q' "$config") \
      --workdir=$(printf '%q' "$workdir")$extra"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    echo "usage: $0 create|run CONFIG WORKDIR [flags]|delete" >&2
    exit 2
    ;;
esac
