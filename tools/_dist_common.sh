# Sourced by dist_train.sh and dist_test.sh: the torchrun launch they share.
# Single node: torchrun binds a free rendezvous port itself and holds it (--standalone), so
# concurrent jobs never collide; set PORT to use a fixed one.
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# Without CUDA the processes use the gloo backend on CPU.

# dist_exec NPROCS SCRIPT [ARGS...]: replace the shell with torchrun running NPROCS processes of
# SCRIPT ARGS... on this node (PYTHON: the interpreter, default python).
dist_exec() {
    local nprocs=$1
    shift
    local rdzv
    if [[ "${NNODES:-1}" == 1 && -z "${PORT:-}" ]]; then
        # A port picked in advance (a fixed default, or one found free and released) can be taken
        # by another process before torchrun binds it.
        rdzv=(--standalone)
    else
        rdzv=(--nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}"
              --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}")
    fi
    exec "${PYTHON:-python}" -m torch.distributed.run "${rdzv[@]}" --nproc_per_node="$nprocs" "$@"
}
