#!/usr/bin/env bash
# Set up a fresh machine and run the test suite (pass pytest options, e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages the tests use: real Fashion-MNIST, a headless browser and a PostgreSQL server (Debian).
if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
  if [[ ! -d /usr/share/datasets/fashion-mnist || ! -x /usr/bin/chromium ]] || ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist chromium postgresql >/dev/null 2>&1 \
      || echo "warning: apt-get could not install dataset-fashion-mnist/chromium/postgresql; tests needing them skip" >&2
  fi
fi
PY="$(bash scripts/install.sh)"
export RAY_DEDUP_LOGS=1 WANDB_MODE=offline
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
