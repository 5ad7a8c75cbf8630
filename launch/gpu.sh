#!/usr/bin/env bash
# Runs one stage on GPUs: one node with all its GPUs, or several nodes.
#
# One node (one process drives every local GPU):
#   launch/gpu.sh CONFIG WORKDIR [main flags...]
#
# Several nodes, one process per node (run the same line on every node, or let SLURM do it):
#   NNODES=4 NODE_RANK=0..3 COORDINATOR=node0:12355 launch/gpu.sh CONFIG WORKDIR [main flags...]
#   srun --nodes=4 --ntasks-per-node=1 launch/gpu.sh CONFIG WORKDIR [main flags...]   # SLURM
#
# WORKDIR must be a filesystem every node sees (NFS, Lustre, a mounted bucket). Installs the
# [cuda] extra into .venv on first use (set SKIP_INSTALL=1 to use the active environment).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,14p' "$0"; exit 2
fi
CONFIG=$1 WORKDIR=$2
shift 2
cd "$(dirname "$0")/.."

if [[ -z "${SKIP_INSTALL:-}" ]]; then
  [[ -d .venv ]] || python3 -m venv .venv
  . .venv/bin/activate
  pip install -q -e '.[cuda]'
fi

# Let XLA take the GPUs' memory as it needs it rather than 75% up front, and overlap
# collectives with compute.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"

DIST=()
if [[ -n "${COORDINATOR:-}" ]]; then
  DIST=(--coordinator_address="$COORDINATOR" --num_processes="${NNODES:?set NNODES}"
        --process_id="${NODE_RANK:?set NODE_RANK}")
elif [[ -n "${SLURM_NTASKS:-}" && "${SLURM_NTASKS}" -gt 1 ]]; then
  DIST=(--distributed)  # jax.distributed.initialize() reads the SLURM environment
fi

exec python -m cardionets_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${DIST[@]}" "$@"
