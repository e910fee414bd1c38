#!/usr/bin/env bash
# Distributed training through torchrun:  tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
# Ports, multi-node settings and the CPU fallback: tools/_dist_common.sh.
set -euo pipefail
CONFIG=$1
NPROCS=$2
shift 2
source "$(dirname "$0")/_dist_common.sh"
dist_exec "$NPROCS" "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
