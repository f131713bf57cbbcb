#!/usr/bin/env bash
# The GPU check for a session lent a GPU (bench/README.md, "GPU check"): one table, ~5 min on an H200.
#
# The GPU machine has python3 (3.12) with torch, torchvision, pyarrow, pillow, numpy, scikit-learn,
# scikit-image, pyyaml and filelock, but no ray, pydantic or optuna, and no internet. Ray's wheel is
# larger than what a session may carry, so the check runs in one process without Ray; pydantic (raysl's
# config) comes as wheels carried in .whl/ (ignored by git through .git/info/exclude), fetched with:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection annotated-types typing-extensions==4.16.0
#
# (pydantic 2.14.4 requires annotated-types, pydantic-core==2.50.5, typing-extensions>=4.16 and
# typing-inspection; typing-extensions is carried too in case the machine's is older.)
#
# Run through the device tool with the wheels carried:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=480)
# Extra arguments go to bench/gpu_check.py (e.g. --skip train, --images 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if ! python3 -c "import pydantic" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu_check: pydantic is not installed and no wheels in .whl/ (see the pip download command above)" >&2
        exit 2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# raysl itself from the working tree (no install: its Ray/Optuna dependencies are not there)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

python3 - <<'EOF'
import importlib, sys
# the modules the check uses in-process must import without Ray
for name in ("raysl.config", "raysl.train", "raysl.data.read.dataset", "raysl.data.read.gpu_decode", "raysl.data.read.decode",
             "raysl.data.read.shards", "raysl.data.prepare", "raysl.data.prepare.imagefolder"):
    importlib.import_module(name)
assert "ray" not in sys.modules, "a raysl module imported ray at import time"
import torch, torchvision
print(f"gpu_check: raysl imports without ray; torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"cuda {torch.cuda.is_available()}", flush=True)
EOF

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec python3 bench/gpu_check.py --work "${GPU_CHECK_WORK:-/tmp/raysl-gpu-check}" "$@"
