#!/usr/bin/env bash
# Install raysl (editable) with its test extras into the active virtual environment,
# or into ./.venv, created if no environment is active. Prints the python to use.
set -euo pipefail
cd "$(dirname "$0")/.."
# the command a fix hint repeats (with RAYSL_TORCH=cpu when it was set)
again="bash scripts/install.sh"
if [[ "${RAYSL_TORCH:-}" == cpu ]]; then
  again="RAYSL_TORCH=cpu $again"
fi
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
  # the script installs into the active environment: a fresh one is made and activated, not .venv removed
  fresh="create a fresh virtual environment and install into it: python3 -m venv NEW && . NEW/bin/activate && $again"
else
  [[ -x .venv/bin/python ]] || python3 -m venv .venv >&2
  PY="$PWD/.venv/bin/python"
  fresh="install into a fresh environment: rm -rf .venv && $again"
fi
# RAYSL_TORCH=cpu: PyTorch's CPU-only torch and torchvision (no CUDA libraries: about 1 GB instead of 6.5)
# from PyTorch's CPU wheel index (RAYSL_TORCH_INDEX), installed before raysl so that pip keeps them
if [[ "${RAYSL_TORCH:-}" == cpu ]]; then
  INDEX="${RAYSL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
  if "$PY" -c "import torch" >/dev/null 2>&1 \
     && ! "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is not None)" >/dev/null 2>&1; then
    echo "raysl: error: $("$PY" -c 'import sys; print(sys.prefix)') already has a CUDA build of torch, which" \
         "RAYSL_TORCH=cpu cannot replace in place (its CUDA libraries stay behind); $fresh" >&2
    exit 2
  fi
  # each of the two that does not import comes from $INDEX: one left to raysl's own install would be PyPI's,
  # and PyPI's torchvision pulls PyPI's (CUDA) torch
  missing=()
  for module in torch torchvision; do
    "$PY" -c "import $module" >/dev/null 2>&1 || missing+=("$module")
  done
  if (( ${#missing[@]} )); then
    names="${missing[*]}"
    names="${names/ / and }"  # "torch and torchvision", or the one
    echo "installing PyTorch's CPU-only $names from $INDEX..." >&2
    if ! "$PY" -m pip install --quiet --disable-pip-version-check --retries 1 --timeout 30 "${missing[@]}" \
         --index-url "$INDEX" >/dev/null 2>&1; then
      echo "raysl: error: could not install $names from $INDEX (is it reachable from this machine?); set" \
           "RAYSL_TORCH_INDEX to a mirror of PyTorch's CPU wheels, or leave RAYSL_TORCH unset to take PyPI's" \
           "(CUDA) build: bash scripts/install.sh" >&2
      exit 2
    fi
  fi
fi
# pip's configuration (pip.conf and PIP_* variables: indexes, find-links, constraints, e.g. a machine's local
# mirror and version caps) as uv options, one per line; uv reads none of it itself. pip takes the best version
# over all its indexes alike: uv's unsafe-best-match does the same.
install_uv_options() {
  "$PY" - <<'PYEOF'
import shlex, subprocess, sys
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
values = {}
for line in listed.splitlines():  # e.g. global.extra-index-url='file:///a file:///b', :env:.find-links='/w'
    key, sep, value = line.partition("=")
    if sep:
        name = key.rsplit(".", 1)[-1]
        values.setdefault(name, []).extend(shlex.split(value)[0].split() if value.strip() else [])
options = ["--index-strategy", "unsafe-best-match"]
if values.get("index-url"):
    options += ["--index-url", values["index-url"][0]]
for name in ("extra-index-url", "find-links", "constraint"):
    for value in dict.fromkeys(values.get(name, [])):
        options += [f"--{name}", value]
if any(v.lower() in ("1", "true", "yes", "on") for v in values.get("no-index", [])):
    options.append("--no-index")
print("\n".join(options))
PYEOF
}
install_with_uv() {
  local uv
  uv="$(dirname "$PY")/uv"
  if [[ ! -x "$uv" ]]; then
    "$PY" -m pip install --quiet --disable-pip-version-check uv >/dev/null 2>&1 || return 1
  fi
  local options=()
  mapfile -t options < <(install_uv_options) || return 1
  # uv's own report stays out of the terminal unless it fails; then one line says why and pip takes over
  local said
  if ! said="$("$uv" pip install --python "$PY" --quiet --compile-bytecode "${options[@]}" -e ".[test]" \
                --config-setting editable_mode=compat 2>&1)"; then
    echo "raysl: uv could not install ($(grep -v '^\s*$' <<<"$said" | tail -n 1 | cut -c1-200)); installing" \
         "with pip instead" >&2
    return 1
  fi
}
if ! "$PY" -c "import raysl, torch, torchvision, ray, optuna, pytest" >/dev/null 2>&1 \
   || [[ pyproject.toml -nt "$("$PY" -c 'import sys; print(sys.prefix)')/.raysl-installed" ]]; then
  echo "installing raysl and its dependencies (first time: a few minutes)..." >&2
  # compat: the clone's folder goes on sys.path as a plain path entry, so Python run from the folder above a
  # clone named raysl/ (which holds a data/ folder) still imports the package, not that folder as a namespace.
  # uv when it can be had (installed into this environment from the package index): it resolves the same
  # versions as pip from pip's own configuration (install_uv_options) and unpacks and compiles the ~6 GB of
  # wheels on every core, about half of pip's time (50 s instead of 107 on 2 cores: bench/README.md).
  # RAYSL_INSTALLER=pip uses pip; so does a machine where uv cannot be installed or fails.
  if [[ "${RAYSL_INSTALLER:-uv}" != uv ]] || ! install_with_uv; then
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]" --config-settings editable_mode=compat \
      2>&1 | grep -v "^WARNING: Location" >&2 || true
  fi
  if ! failed="$("$PY" -c "import raysl, torch, torchvision, ray, optuna" 2>&1)"; then
    echo "raysl: error: the installed packages do not import ($(tail -n 1 <<<"$failed")); $fresh" >&2
    exit 2
  fi
  touch "$("$PY" -c 'import sys; print(sys.prefix)')/.raysl-installed"
fi
# raysl's own modules as bytecode, once (quick when they are up to date): with PYTHONDONTWRITEBYTECODE set (as on
# some machines) Python never writes it itself, and every process that imports raysl (a search's trial and Train
# processes, each CLI command) compiled its ~22,000 lines again: ~0.3 s of a CPU each (measured on 2 cores)
"$PY" -m compileall -q raysl >/dev/null 2>&1 || true
echo "$PY"
