#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): on one H100/H200, in under ten minutes (the step limits add up to 540 s).
#
# The GPU machine has torch but not diffusers (nor importlib_metadata, which diffusers needs); they travel
# as wheels in .whl/ (git-ignored). Fetch them once, on any machine with pip, from the repository root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       diffusers==0.42.1 importlib_metadata==10.2.0
# (without them the two diffusers comparisons are skipped and the other steps still run)
# then run this script there with .whl carried, e.g. with the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
# It writes gpu_check.json and gpu_check.md (and each step's JSON) into $OUT (default runs/gpu_check).
# Any further arguments go to gpu_check.py (e.g. --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
exec python3 scripts/gpu_check.py "$@"
