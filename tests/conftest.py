"""Shared fixtures: a per-session data cache and a real local Ray cluster."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAYSL = str(Path(sys.executable).with_name("raysl"))


@pytest.fixture(scope="session", autouse=True)
def raysl_cache(tmp_path_factory) -> Path:
    """Bundled data sets are prepared once per test session into a private cache."""
    cache = tmp_path_factory.mktemp("raysl-cache")
    old = os.environ.get("RAYSL_CACHE")
    os.environ["RAYSL_CACHE"] = str(cache)
    os.environ.setdefault("WANDB_MODE", "offline")
    yield cache
    if old is None:
        os.environ.pop("RAYSL_CACHE", None)
    else:
        os.environ["RAYSL_CACHE"] = old


@pytest.fixture(scope="session")
def digits_dir(raysl_cache) -> str:
    from raysl.config import RunConfig
    from raysl.launch import resolve_data_dir

    return resolve_data_dir(RunConfig())


@pytest.fixture
def ray_local():
    """A real local Ray cluster on 127.0.0.1, shut down after the test."""
    import ray

    from raysl.launch import init_ray

    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


# a hang guard far above any run time here, never a timing assumption
HANG = 900


def interrupt_when(proc, ready, what: str = "the run") -> tuple[str, str]:
    """Wait until ``ready()`` (or the hang guard), send SIGINT as Ctrl-C does, return (stdout, stderr).

    Fails if ``proc`` ended before it could be interrupted; kills it if it outlives the guard.
    """
    import signal
    import time

    try:
        deadline = time.time() + HANG
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.5)
        assert proc.poll() is None, f"{what} ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
