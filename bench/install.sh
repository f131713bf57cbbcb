#!/usr/bin/env bash
# scripts/install.sh from a fresh clone with cold caches, once with pip (RAYSL_INSTALLER=pip, the baseline)
# and once with uv (the default), in that order, in one command: wall seconds of each, the ratio, and whether
# the two environments hold the same package versions. What CI pays before its first test.
# Usage: bash bench/install.sh   (needs ~13 GB free under ${TMPDIR:-/tmp}; removes what it made)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/raysl-install-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
declare -A wall
for installer in pip uv; do
  git clone -q "$repo" "$work/$installer"
  mkdir -p "$work/cache-$installer"
  start=$(date +%s.%N)
  (cd "$work/$installer" && env -u VIRTUAL_ENV RAYSL_INSTALLER="$installer" PIP_CACHE_DIR="$work/cache-$installer/pip" \
     UV_CACHE_DIR="$work/cache-$installer/uv" bash scripts/install.sh >/dev/null 2>"$work/$installer.err") \
    || { echo "install with $installer failed:"; cat "$work/$installer.err"; exit 1; }
  wall[$installer]=$(echo "$(date +%s.%N) - $start" | bc -l)
  # uv itself is the one package the uv side adds (install.sh pip-installs it into the environment)
  "$work/$installer/.venv/bin/python" -m pip freeze --exclude-editable 2>/dev/null | grep -v '^uv==' | sort \
    >"$work/$installer.freeze"
  rm -rf "$work/cache-$installer"
done
same=$(cmp -s "$work/pip.freeze" "$work/uv.freeze" && echo true || echo false)
[[ "$same" == true ]] || diff "$work/pip.freeze" "$work/uv.freeze" >&2 || true
ratio=$(echo "${wall[pip]} / ${wall[uv]}" | bc -l)
printf 'install from a fresh clone, cold caches: pip %.1f s, uv %.1f s: %.2fx faster; same versions: %s\n' \
  "${wall[pip]}" "${wall[uv]}" "$ratio" "$same"
printf '{"pip_s": %.2f, "uv_s": %.2f, "ratio": %.3f, "same_versions": %s, "packages": %d}\n' \
  "${wall[pip]}" "${wall[uv]}" "$ratio" "$same" "$(wc -l <"$work/uv.freeze")"
