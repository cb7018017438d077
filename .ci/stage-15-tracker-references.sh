#!/usr/bin/env bash
# CI stage: the trackers against their official packages (tests/test_tracking_*_parity.py), in a venv that has them.
# The main test run skips these tests (the official packages are not test requirements: sam2 needs torchvision,
# whose PyPI wheels are CUDA builds that break the CPU torch). Here a copy of the CI venv (.venv, built by .ci/run)
# gets the packages of .ci/tracker-references.txt with --no-deps; torchvision's compiled ops are made optional the
# way ../shared/comfyui-env.sh does it (its pure-Python parts work, C ops raise); sam2 is built from its sdist
# without its CUDA extension. To add a reference: a line in .ci/tracker-references.txt, a file in PARITY_TESTS.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PARITY_TESTS=(tests/test_tracking_sam2_parity.py tests/test_tracking_sam3_parity.py tests/test_tracking_edgetam.py)
venv=$PWD/.tracker-venv
if [ ! -f "$venv/.tracker-references-ok" ]; then
    rm -rf "$venv"
    cp -a .venv "$venv"
    sed -i "s#$PWD/.venv#$venv#g" "$venv/bin/activate" "$venv/pyvenv.cfg" 2>/dev/null || true
    py=$venv/bin/python
    "$py" -m pip install -q setuptools wheel
    SAM2_BUILD_CUDA=0 "$py" -m pip install -q --no-deps --no-build-isolation -r .ci/tracker-references.txt
    site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    sed -i 's/^@torch.library.register_fake("\(torchvision::[a-z_]*\)")/@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda f: f))/' \
        "$site/torchvision/_meta_registrations.py"
    bash .ci/patch-sam3-cpu.sh "$py"
    "$py" -c "import sam2, hydra, torchvision, transformers, timm, ftfy, einops, pycocotools" || { echo "tracker references: imports fail"; exit 1; }
    touch "$venv/.tracker-references-ok"
fi
echo "tracker reference venv ready in $((SECONDS - start)) s"
"$venv/bin/python" -m pytest -p no:cacheprovider -q "${PARITY_TESTS[@]}"
echo "tracker reference stage done in $((SECONDS - start)) s"
