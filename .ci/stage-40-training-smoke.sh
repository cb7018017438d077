#!/usr/bin/env bash
# The README's training commands (the block after <!-- training-smoke -->), exactly as written there, with the
# CI venv first on PATH: tiny assets, data preparation, one-process training, resume, a two-process CPU run.
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=1
rm -rf runs/smoke
commands=$(python - <<'PY'
import re
text = open("README.md", encoding="utf-8").read()
section = text[text.index("<!-- training-smoke -->"):]
print(re.search(r"```bash\n(.*?)```", section, re.S).group(1))
PY
)
echo "$commands"
bash -euo pipefail -c "$commands"
test -f runs/smoke/train/weights/step-00000006/cococo_motion.safetensors
test -f runs/smoke/train-2proc/weights/step-00000004/official/model_3.pth
python - <<'PY'
import json
summary = json.load(open("runs/smoke/shards/summary.json"))
assert summary["written"] == 4 and summary["skipped_total"] == 3, summary
PY
echo "training smoke: ok"
