#!/usr/bin/env bash
# The seed's own experiment: DDPM on AFHQ-cat at 32×32, 150,000 steps, FID of 2,000 DDIM samples
# (docs/seed_experiment.md). Everything is in scripts/seed_experiment.py; this wrapper puts the checkout's
# src/ first on the path, so `ddim` is this checkout's whatever else is installed. $PYTHON picks the
# interpreter (default: python3).
#   bash scripts/seed_experiment.sh DATA_DIR [OUT] [--slice-only] [--inception-weights FILE] [--bf16]
#   bash scripts/seed_experiment.sh --dry-run [OUT]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$ROOT/scripts/seed_experiment.py" "$@"
