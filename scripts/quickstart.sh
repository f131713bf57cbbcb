#!/usr/bin/env bash
# Set up a fresh machine and run the main job: SimCLR on scikit-learn's digits.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/install.sh)"
exec "$(dirname "$PY")/raysl" train search_spaces/quickstart.yaml --out runs/quickstart "$@"
