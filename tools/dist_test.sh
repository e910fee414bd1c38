#!/usr/bin/env bash
# Distributed testing through torchrun:  tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py args...]
# Ports, multi-node settings and the CPU fallback: tools/_dist_common.sh.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
NPROCS=$3
shift 3
source "$(dirname "$0")/_dist_common.sh"
dist_exec "$NPROCS" "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
