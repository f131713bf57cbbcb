#!/usr/bin/env bash
# Set up a fresh machine and run the test suite (pass pytest options, e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages the tests use: real Fashion-MNIST, a headless browser and a PostgreSQL server (Debian).
have_packages() {
  [[ -d /usr/share/datasets/fashion-mnist && -x /usr/bin/chromium ]] && compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if ! have_packages && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist chromium postgresql >/dev/null 2>&1 || true
fi
if ! have_packages; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "error: the Debian packages dataset-fashion-mnist, chromium and postgresql are needed (CI=true: their" \
         "tests may not skip); install them as root: apt-get install dataset-fashion-mnist chromium postgresql" >&2
    exit 2
  fi
  echo "warning: dataset-fashion-mnist/chromium/postgresql are missing; the tests that need them skip" >&2
fi
PY="$(bash scripts/install.sh)"
export RAY_DEDUP_LOGS=1 WANDB_MODE=offline
# Two pytest-xdist workers (RAYSL_TEST_WORKERS=0 runs serially): tests/conftest.py puts every test that
# joins the suite's Ray head in one group (one head, its session runs made once) and every test that starts
# a local Ray cluster of its own in another (one such cluster at a time); the rest go where a worker is free.
WORKERS="${RAYSL_TEST_WORKERS:-2}"
PARALLEL=()
if [[ "$WORKERS" != 0 ]]; then PARALLEL=(-n "$WORKERS" --dist loadgroup); fi
# a hung test fails after 10 minutes (the longest test takes a fraction of that on 2 cores)
exec "$PY" -m pytest -q -p no:cacheprovider --timeout=600 "${PARALLEL[@]}" "$@"
