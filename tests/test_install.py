"""How scripts/install.sh installs raysl."""

from __future__ import annotations

import subprocess
import sys


def test_python_run_above_a_clone_named_raysl_imports_the_package_not_the_folder(tmp_path):
    """A clone is named raysl/ and a user keeps prepared data in raysl/data/: Python started in the folder
    above it has that folder on sys.path first. With setuptools' default (strict) editable install the
    package is found by a finder that runs after the path scan, so `raysl` became a namespace package of
    that folder and `raysl.data` the user's data folder; install.sh installs in compat mode, where the
    package is a plain path entry and a regular package wins over a namespace folder."""
    (tmp_path / "raysl" / "data").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", "import raysl.data, raysl.config; print(raysl.data.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)  # hang guard
    assert done.returncode == 0, done.stderr[-2000:]
    found = done.stdout.strip()
    assert found.endswith("raysl/data/__init__.py") and not found.startswith(str(tmp_path)), found
