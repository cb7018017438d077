#!/usr/bin/env bash
# CI stage: `pip install .` and `pip install -e .` install the library (cococo_core, nothing else) with its `cococo`
# command, which then works from a folder outside the checkout.
# Fast: the fresh venv sees the packages of the CI's .venv (torch, diffusers, ...) through a .pth file (a venv made
# with --system-site-packages would see the base interpreter's packages, not .venv's), so pip finds every
# dependency installed and fetches only the build backend.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
base=${COCOCO_BASE_VENV:-$repo/.venv}
test -x "$base/bin/python" || { echo "stage-20-package: no venv at $base (run .ci/run, or set COCOCO_BASE_VENV)"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

# the files a clone holds (tracked and untracked-but-not-ignored), so builds leave nothing in the checkout
mkdir "$work/src" "$work/elsewhere"
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
    | tar --null -T - -cf - | tar -xf - -C "$work/src"

check() {  # $1: where `import cococo_core` must resolve
    local venv=$work/venv
    (
        cd "$work/elsewhere"
        unset PYTHONPATH
        "$venv/bin/cococo" --help | grep -q "usage: cococo "
        "$venv/bin/cococo" inpaint --help | grep -q -- "--overwrite"
        "$venv/bin/python" -m cococo_core --help | grep -q "usage: python -m cococo_core "
        "$venv/bin/python" -c "import cococo_core, sys; sys.exit(not cococo_core.__file__.startswith('$1'))"
        for other in nodes bench workflows training tests; do
            if "$venv/bin/python" -c "import $other" 2>/dev/null; then echo "'$other' must not be installed"; exit 1; fi
        done
        # a tiny real command: official-style motion weights -> safetensors, then the refusal to overwrite an input
        "$venv/bin/python" -c "import torch; torch.save({'module.down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight': torch.ones(4, 4)}, 'model_0.pth')"
        rm -f motion.safetensors
        "$venv/bin/cococo" convert-motion -i model_0.pth -o motion.safetensors --no-check
        "$venv/bin/python" -c "from safetensors import safe_open; assert len(list(safe_open('motion.safetensors', 'pt').keys())) == 1"
        if "$venv/bin/cococo" convert-motion -i motion.safetensors -o motion.safetensors --no-check --overwrite 2>err.txt; then
            echo "an output equal to its input was written"; exit 1
        fi
        grep -q "destroy" err.txt
    )
}

"$base/bin/python" -m venv "$work/venv"
purelib "$base/bin/python" > "$(purelib "$work/venv/bin/python")/_cococo_ci_base.pth"

echo "-- pip install ."
"$work/venv/bin/python" -m pip install -q "$work/src"
check "$(purelib "$work/venv/bin/python")/cococo_core"

echo "-- pip install -e ."
"$work/venv/bin/python" -m pip uninstall -q -y cococo-video-inpainting
"$work/venv/bin/python" -m pip install -q -e "$work/src"
check "$work/src/cococo_core"
echo "stage-20-package: ok"
