#!/usr/bin/env bash
# Train on the GPUs of one node (one process drives all local GPUs; the batch is split over them).
#
#   launch/gpu.sh CONFIG WORKDIR [extra main.py flags...]
#   NUM_GPUS=4 launch/gpu.sh configs/cifar10_ddpmpp_vp_continuous.py runs/cifar_vp
#
# Multi-process on one node (one process per GPU, jax.distributed over localhost):
#   PROCS_PER_NODE=8 launch/gpu.sh CONFIG WORKDIR
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [main.py flags...]" >&2
  exit 2
fi
config="$1"
workdir="$2"
shift 2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

num_gpus="${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
if [[ "$num_gpus" -lt 1 ]]; then
  echo "no GPU found (nvidia-smi -L); set NUM_GPUS" >&2
  exit 1
fi
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
procs="${PROCS_PER_NODE:-1}"

if [[ "$procs" -le 1 ]]; then
  CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((num_gpus - 1)))}" \
    exec python "$repo/launch/main.py" --config="$config" --workdir="$workdir" \
    --config.parallel.distributed=no "$@"
fi

port="${PORT:-12355}"
pids=()
for ((i = 0; i < procs; i++)); do
  CUDA_VISIBLE_DEVICES="$i" python "$repo/launch/main.py" --config="$config" \
    --workdir="$workdir" --config.parallel.distributed=yes \
    --config.parallel.coordinator_address="127.0.0.1:$port" \
    --config.parallel.num_processes="$procs" --config.parallel.process_id="$i" "$@" &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
