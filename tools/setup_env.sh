#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment at <repo>/.venv with the whole OpenMMLab stack.
#
#   bash tools/setup_env.sh            # or: make setup
#
# Environment variables:
#   LOCALATTN_PYTHON       interpreter used to create the venv (default: python3.11, else python3)
#   LOCALATTN_TORCH_SPEC   pip spec(s) for torch + torchvision. Default: "torch===2.13.0 torchvision==0.28.0"
#                          (the PyPI build; '===' keeps pip from picking a CPU-only local wheel that
#                          torchvision cannot load). Example for a CUDA 12.8 build:
#                          LOCALATTN_TORCH_SPEC="torch==2.9.1 torchvision==0.24.1 --index-url https://download.pytorch.org/whl/cu128"
#   LOCALATTN_VENV         venv location (default: <repo>/.venv)
#   LOCALATTN_FORCE=1      reinstall even if the stamp says the environment is current
#
# Idempotent: a stamp inside the venv records a hash of every input (this script, requirements/,
# setup.py, the torch spec); when it matches and the stack imports, the script exits in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LOCALATTN_VENV:-$ROOT/.venv}"
TORCH_SPEC="${LOCALATTN_TORCH_SPEC:-torch===2.13.0 torchvision==0.28.0}"
MMCV_VERSION="2.1.0"

if [ -z "${LOCALATTN_PYTHON:-}" ]; then
    if command -v python3.11 >/dev/null 2>&1; then LOCALATTN_PYTHON=python3.11; else LOCALATTN_PYTHON=python3; fi
fi

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

inputs_hash() {
    {
        cat "$ROOT/tools/setup_env.sh" "$ROOT/setup.py" "$ROOT"/requirements/*.txt
        echo "$TORCH_SPEC" "$MMCV_VERSION" "$LOCALATTN_PYTHON"
    } | sha256sum | cut -d' ' -f1
}

STAMP="$VENV/.localattn-setup-stamp"
HASH="$(inputs_hash)"
PY="$VENV/bin/python"

stack_imports() {
    LOCALATTN_ROOT="$ROOT" "$PY" - <<'EOF' >/dev/null 2>&1
import os
import torch, torchvision, mmcv, mmcv.ops, mmengine, mmdet, mmseg, mmpretrain, localattn  # noqa: F401
from mmcv.ops import roi_align, nms  # compiled ops present
# the editable install must point at this checkout (a venv copied from another clone does not)
root = os.path.realpath(os.environ['LOCALATTN_ROOT'])
assert os.path.realpath(localattn.__file__).startswith(os.path.join(root, 'projects') + os.sep)
EOF
}

if [ "${LOCALATTN_FORCE:-0}" != "1" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && stack_imports; then
    log "environment at $VENV is up to date"
    exit 0
fi

START=$(date +%s)
if [ ! -x "$PY" ]; then
    log "creating virtual environment with $LOCALATTN_PYTHON at $VENV"
    "$LOCALATTN_PYTHON" -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check)

log "upgrading pip and build tools"
"${PIP[@]}" -q --upgrade pip
"${PIP[@]}" -q -r "$ROOT/requirements/build.txt"

log "installing torch: $TORCH_SPEC"
# shellcheck disable=SC2086
"${PIP[@]}" -q $TORCH_SPEC

# Pin whatever torch/torchvision ended up installed so no later step swaps them.
CONSTRAINTS="$VENV/localattn-constraints.txt"
"$PY" - >"$CONSTRAINTS" <<'EOF'
from importlib.metadata import version
for name in ("torch", "torchvision"):
    print(f"{name}=={version(name)}")
EOF
"$PY" -c "import torchvision" || { echo "torchvision does not import with this torch; set LOCALATTN_TORCH_SPEC to a matching pair" >&2; exit 1; }

if "$PY" -c "import mmcv, mmcv.ops; from mmcv.ops import roi_align" >/dev/null 2>&1 \
   && [ "$("$PY" -c 'import mmcv; print(mmcv.__version__)')" = "$MMCV_VERSION" ]; then
    log "mmcv $MMCV_VERSION with compiled ops already installed"
else
    log "building mmcv $MMCV_VERSION with its compiled ops (8-20 minutes on 2 cores; cached by pip afterwards)"
    MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "${PIP[@]}" --no-build-isolation -c "$CONSTRAINTS" "mmcv==$MMCV_VERSION"
fi

log "installing the OpenMMLab stack, test tools and localattn (editable)"
"${PIP[@]}" -q -c "$CONSTRAINTS" -r "$ROOT/requirements/mminstall.txt" -r "$ROOT/requirements/tests.txt" \
    -r "$ROOT/requirements/runtime.txt"
"${PIP[@]}" -q -c "$CONSTRAINTS" --no-build-isolation --no-deps -e "$ROOT"

if ! stack_imports; then
    echo "setup finished but the stack does not import; run: $PY -c 'import mmcv.ops, mmdet, mmseg, mmpretrain, localattn'" >&2
    exit 1
fi
echo "$HASH" >"$STAMP"
log "done in $(( $(date +%s) - START )) s; activate with: source $VENV/bin/activate"
