#!/usr/bin/env bash
# CI stage: the real-ComfyUI tests (tests/test_comfyui_*.py) in a real ComfyUI server.
# Builds ComfyUI's venv with ../shared/comfyui-env.sh (in .comfyui-venv/, ignored by git), installs the pack's
# requirements.txt into it the way ComfyUI-Manager does, and runs the tests with that Python. ../shared is
# read-only: the server gets a temporary --base-directory (tests/comfyui_server.py).
# The real-frontend check (tests/test_comfyui_frontend.py) drives Debian's Chromium (installed here when missing;
# CI runs as root) and leaves its screenshots in .ci/output/stage-10-comfyui/ (the stage's CI artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
shared=$(cd "${SHARED_DIR:-../shared}" && pwd)  # SHARED_DIR: where ../shared lives outside CI
python=$(bash "$shared/comfyui-env.sh" "$PWD/.comfyui-venv" | tail -n 1)
"$python" -m pip install -q -r requirements.txt
echo "comfyui venv ready in $((SECONDS - start)) s"
if ! command -v chromium >/dev/null && [ -z "${CHROMIUM:-}" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    echo "chromium installed in $((SECONDS - start)) s"
fi
export COCOCO_ARTIFACTS="$PWD/.ci/output/stage-10-comfyui"
mkdir -p "$COCOCO_ARTIFACTS"
export COMFYUI_DIR="$shared/comfyui" COMFYUI_PYTHON="$python" CI="${CI:-true}"
# the real-server tests, and the adapter tests against ComfyUI's real folder_paths / model_management / utils;
# one process per file: the in-process tests import the real comfy package, the adapter tests run without it
failed=()
for file in tests/test_comfyui_*.py tests/test_nodes_adapter.py tests/test_nodes_contract.py; do
    "$python" -m pytest -p no:cacheprovider "$file" || failed+=("$file")
done
if [ ${#failed[@]} -gt 0 ]; then echo "real-ComfyUI stage: failures in ${failed[*]}"; exit 1; fi
echo "real-ComfyUI stage done in $((SECONDS - start)) s"
