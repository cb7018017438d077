#!/usr/bin/env bash
# Makes the official sam3 package (installed in the tracker reference venv by stage 15) run on a CPU-only torch,
# for tests/test_tracking_sam3_parity.py. It changes only the device choice and one CUDA-autocast assumption:
#  * "cuda" devices, .cuda() and pin_memory() (sam3 hard-codes them) -> the CPU;
#  * the bfloat16 cast of the tracker backbone features before the multi-GPU all-gather in sam3_image.py (under
#    CUDA autocast they are bfloat16 already; without autocast the cast breaks the float32 convolutions after it).
# Usage: bash .ci/patch-sam3-cpu.sh PYTHON   (idempotent)
set -euo pipefail
py=${1:?usage: patch-sam3-cpu.sh PYTHON}
pkg=$("$py" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("sam3").origin))')
files=$(grep -rlE 'device="cuda"|\.cuda\(|torch\.device\("cuda"\)|pin_memory\(\)' "$pkg/model" "$pkg/sam" "$pkg/model_builder.py" || true)
for f in $files; do
    sed -i -E 's/device="cuda"/device="cpu"/g; s/\.cuda\(non_blocking=True\)/.cpu()/g; s/\.cuda\(\)/.cpu()/g;
               s/torch\.device\("cuda"\)/torch.device("cpu")/g; s/\.pin_memory\(\)//g' "$f"
done
sed -i 's/backbone_fpn_bf16 = \[x.to(torch.bfloat16) for x in feats\["backbone_fpn"\]\]/backbone_fpn_bf16 = list(feats["backbone_fpn"])/' \
    "$pkg/model/sam3_image.py"
! grep -rqE 'device="cuda"|\.cuda\(' "$pkg/model" "$pkg/sam" || { echo "patch-sam3-cpu: CUDA calls left"; exit 1; }
