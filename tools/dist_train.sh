#!/usr/bin/env bash
# Distributed training through torchrun:  tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
# Single node: torchrun binds a free rendezvous port itself and holds it (--standalone), so
# concurrent jobs never collide; set PORT to use a fixed one.
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# Without CUDA the processes use the gloo backend on CPU.
set -euo pipefail
CONFIG=$1
NPROCS=$2
shift 2
PYTHON=${PYTHON:-python}
if [[ "${NNODES:-1}" == 1 && -z "${PORT:-}" ]]; then
    # A port picked in advance (a fixed default, or one found free and released) can be taken by
    # another process before torchrun binds it.
    RDZV=(--standalone)
else
    RDZV=(--nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}"
          --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}")
fi
exec "$PYTHON" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node="$NPROCS" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
