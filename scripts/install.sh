#!/usr/bin/env bash
# Install raysl (editable) with its test extras into the active virtual environment,
# or into ./.venv, created if no environment is active. Prints the python to use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  [[ -x .venv/bin/python ]] || python3 -m venv .venv >&2
  PY="$PWD/.venv/bin/python"
fi
if ! "$PY" -c "import raysl, torch, torchvision, ray, optuna, pytest" >/dev/null 2>&1 \
   || [[ pyproject.toml -nt "$("$PY" -c 'import sys; print(sys.prefix)')/.raysl-installed" ]]; then
  echo "installing raysl and its dependencies (first time: a few minutes)..." >&2
  # compat: the clone's folder goes on sys.path as a plain path entry, so Python run from the folder above a
  # clone named raysl/ (which holds a data/ folder) still imports the package, not that folder as a namespace
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]" --config-settings editable_mode=compat 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  "$PY" -c "import raysl, torch, torchvision, ray, optuna" >&2
  touch "$("$PY" -c 'import sys; print(sys.prefix)')/.raysl-installed"
fi
echo "$PY"
