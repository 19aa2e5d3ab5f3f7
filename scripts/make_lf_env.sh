#!/usr/bin/env bash
# Create (idempotently) the CPU LLaMA-Factory virtualenv used for SFT verification
# and training.
#
#   scripts/make_lf_env.sh VENV_DIR
#
# Steps (see docs/llamafactory-reference.md):
#   1. install torch==2.13.0 (CPU build, from pip's find-links) first;
#   2. install requirements-llamafactory.txt with -c constraints-llamafactory.txt
#      (DS_BUILD_OPS=0 so deepspeed builds no native ops);
#   3. uninstall torchvision (CUDA build, crashes on import without a GPU);
#   4. disable torchaudio's native .so files (llamafactory imports torchaudio
#      unconditionally; without its extensions it imports as pure Python);
#   5. smoke-import llamafactory offline, then write a marker file.
# A re-run with the marker present and the same inputs exits immediately.
# Environment: PYTHON (interpreter for the venv, default python3.11).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi

start=$SECONDS
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
requirements="$repo_root/requirements-llamafactory.txt"
constraints="$repo_root/constraints-llamafactory.txt"
venv_dir=$1
marker="$venv_dir/.simia-lf-env-complete"
python_bin=${PYTHON:-python3.11}

# The marker records a hash of everything that defines the env: change a pin or
# this script and the next run re-applies the steps.
stamp=$(cat "$requirements" "$constraints" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [[ -f "$marker" && "$(cat "$marker")" == "$stamp" ]]; then
    echo "LLaMA-Factory env already complete: $venv_dir"
    exit 0
fi
rm -f "$marker"

log() { echo "[make_lf_env $((SECONDS - start))s] $*" >&2; }

if [[ ! -x "$venv_dir/bin/python" ]]; then
    log "creating venv with $python_bin"
    "$python_bin" -m venv "$venv_dir"
fi
py="$venv_dir/bin/python"
pip=("$py" -m pip --disable-pip-version-check --quiet)

log "installing torch (pinned) first"
"${pip[@]}" install -c "$constraints" torch

log "installing llamafactory stack"
DS_BUILD_OPS=0 "${pip[@]}" install -c "$constraints" -r "$requirements"

log "removing torchvision"
if "${pip[@]}" show torchvision >/dev/null 2>&1; then
    "${pip[@]}" uninstall -y torchvision
fi

log "disabling torchaudio native libraries"
ta_lib=$("$py" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("torchaudio"); print(pathlib.Path(s.origin).parent / "lib")')
shopt -s nullglob
for so in "$ta_lib"/*.so; do
    mv -f "$so" "$so.disabled"
done
shopt -u nullglob

log "smoke import"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    DISABLE_VERSION_CHECK=1 GRADIO_ANALYTICS_ENABLED=False \
    "$py" -c 'import torchaudio, llamafactory; from llamafactory.data import get_dataset; print("llamafactory", llamafactory.__version__)'

echo "$stamp" >"$marker"
log "done: $venv_dir"
