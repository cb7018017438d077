#!/usr/bin/env bash
# CI stage: the masks-from-text and LGVI tests on the LOWEST supported transformers and diffusers (the floors in
# requirements.txt), in a fresh temporary venv; torch from constraints-cpu.txt, everything else as the README installs.
set -euo pipefail
cd "$(dirname "$0")/.."
floor() { sed -n "s/^$1>=\([0-9.]*\).*/\1/p" requirements.txt; }
TRANSFORMERS=$(floor transformers)
DIFFUSERS=$(floor diffusers)
test -n "$TRANSFORMERS" && test -n "$DIFFUSERS" || { echo "no transformers/diffusers floor in requirements.txt"; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q -c constraints-cpu.txt torch "transformers==$TRANSFORMERS" \
    "diffusers==$DIFFUSERS" -r requirements.txt -r requirements-test.txt
"$WORK/venv/bin/python" -c "import torch, transformers, diffusers; print('lowest versions: torch', torch.__version__, \
'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
"$WORK/venv/bin/python" -m pytest tests/test_masks_*.py tests/test_lgvi_*.py
