"""How scripts/install.sh installs raysl."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


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


def _install(env_extra: dict, venv: str):
    import os

    env = {**os.environ, "VIRTUAL_ENV": venv, "RAYSL_TORCH": "cpu", **env_extra}
    return subprocess.run(["bash", "scripts/install.sh"], env=env, capture_output=True, text=True, timeout=600,
                          cwd=__import__("pathlib").Path(__file__).resolve().parents[1])  # timeout: hang guard


def test_cpu_torch_from_an_index_that_cannot_be_reached_is_one_line_and_installs_nothing(tmp_path):
    """RAYSL_TORCH=cpu takes torch from PyTorch's CPU index (unreachable from CI, so a closed local port
    stands in for it): one `raysl: error:` line naming the index and both ways on, exit 2, and the fresh
    environment gets neither torch nor raysl. Catches: pip's own traceback/retry noise reaching the user,
    the script going on to install PyPI's CUDA build after the CPU one failed."""
    import os
    import socket

    with socket.socket() as s:  # a port nothing listens on while the test runs: bound, never listened on
        s.bind(("127.0.0.1", 0))
        index = f"http://127.0.0.1:{s.getsockname()[1]}/simple"
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=600)
        # pip itself, from this environment (a venv --without-pip has none; ensurepip needs no network)
        subprocess.run([str(venv / "bin/python"), "-m", "ensurepip", "--default-pip"], check=True,
                       capture_output=True, timeout=600)
        # no pip configuration of this machine's (a find-links folder of local wheels would answer instead)
        done = _install({"RAYSL_TORCH_INDEX": index, "PIP_CONFIG_FILE": os.devnull}, str(venv))
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("raysl: error: ")]
    assert errors == [line for line in done.stderr.splitlines() if line and not line.startswith("installing ")]
    assert len(errors) == 1 and index in errors[0] and "RAYSL_TORCH_INDEX" in errors[0], done.stderr
    assert done.stdout == ""  # no python printed for a caller to go on with
    left = subprocess.run([str(venv / "bin/python"), "-c", "import torch"], capture_output=True, timeout=600)
    assert left.returncode != 0  # nothing installed


def test_cpu_torch_asked_of_an_environment_with_a_cuda_build_is_refused_before_pip_runs():
    """The suite's own environment: with PyPI's CUDA torch, RAYSL_TORCH=cpu refuses in one line (pip would
    keep the CUDA build, which already satisfies `torch`, and say nothing); with a CPU build (installed as
    docs/install.md says) it goes on and prints the Python to use."""
    import torch

    done = _install({"RAYSL_TORCH_INDEX": "http://127.0.0.1:9/simple"}, sys.prefix)
    if torch.version.cuda is not None:
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        # an active environment (VIRTUAL_ENV): a fresh one is made and activated; removing .venv would not help
        assert done.stderr.startswith("raysl: error: ") and done.stderr.endswith(
            "; create a fresh virtual environment and install into it: python3 -m venv NEW && . NEW/bin/activate "
            "&& RAYSL_TORCH=cpu bash scripts/install.sh\n"), done.stderr
        assert "rm -rf" not in done.stderr
    else:
        assert done.returncode == 0 and done.stdout.strip() == f"{sys.prefix}/bin/python", done.stderr


def test_cpu_torch_refused_in_the_scripts_own_venv_says_to_remove_it(tmp_path):
    """No active environment: install.sh works in ./.venv (here a copy of the script whose .venv/bin/python
    runs the suite's Python, with PyPI's CUDA torch), and its hint is to remove that .venv and run it again."""
    import os
    import shutil

    import torch

    if torch.version.cuda is None:
        pytest.skip("the suite's torch is a CPU build: install.sh goes on instead of refusing (the test above)")
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "install.sh", tmp_path / "scripts" / "install.sh")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    done = subprocess.run(["bash", "scripts/install.sh"], env={**env, "RAYSL_TORCH": "cpu"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # hang guard
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("raysl: error: ") and done.stderr.endswith(
        "; install into a fresh environment: rm -rf .venv && RAYSL_TORCH=cpu bash scripts/install.sh\n"), done.stderr


def test_cpu_torch_without_torchvision_takes_torchvision_from_the_cpu_index(tmp_path):
    """A CPU torch already there (a stand-in module here: torch.version.cuda None) and no torchvision:
    torchvision comes from the CPU index too (left to raysl's install, PyPI's torchvision would pull PyPI's
    CUDA torch). The index cannot be reached here: one line naming torchvision and the index, exit 2."""
    import os
    import socket

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=600)
    subprocess.run([str(venv / "bin/python"), "-m", "ensurepip", "--default-pip"], check=True,
                   capture_output=True, timeout=600)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text("class version:\n    cuda = None\n")
    with socket.socket() as s:  # a port nothing listens on while the test runs
        s.bind(("127.0.0.1", 0))
        index = f"http://127.0.0.1:{s.getsockname()[1]}/simple"
        done = _install({"RAYSL_TORCH_INDEX": index, "PIP_CONFIG_FILE": os.devnull}, str(venv))
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        f"installing PyTorch's CPU-only torchvision from {index}...",
        f"raysl: error: could not install torchvision from {index} (is it reachable from this machine?); set "
        "RAYSL_TORCH_INDEX to a mirror of PyTorch's CPU wheels, or leave RAYSL_TORCH unset to take PyPI's (CUDA) "
        "build: bash scripts/install.sh"], done.stderr[-3000:]
    assert done.stdout == ""

