"""`ray job submit --working-dir . -- raysl tune ...` against a real head with token auth.

The head is the suite's (conftest ``head``: `ray start --head`, its own ports, temp dir and
token file); the client side authenticates the way a user's laptop does, with
``RAY_AUTH_MODE=token`` and the cluster's token (``RAY_AUTH_TOKEN_PATH`` here,
``~/.ray/auth_token`` by default). Only this head's processes are stopped.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import HANG
from test_search import RAY, REPO, RayHead, explain, final_json, trials

pytestmark = pytest.mark.slow


def ray_job(head: RayHead, *args: str, timeout: float = 600, token_in_env: bool = False):
    env = {k: v for k, v in head.env.items() if k != "RAY_ADDRESS"}  # the Jobs API is the dashboard's
    if token_in_env:  # the token itself in RAY_AUTH_TOKEN, as a CI secret gives it, instead of a token file
        env["RAY_AUTH_TOKEN"] = Path(env.pop("RAY_AUTH_TOKEN_PATH")).read_text().strip()
    return subprocess.run([RAY, "job", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def submit_job(head: RayHead, *args: str):
    """`ray job submit`, retried while the head's job agent cannot take it ("No available agent": still
    starting, or too busy to answer on a loaded machine; a fixed 60 s of retries failed a CI-like run), up to
    the hang guard."""
    deadline = time.monotonic() + HANG
    while True:
        done = ray_job(head, "submit", *args, token_in_env=True)
        if done.returncode == 0 or "No available agent" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(3)


def test_job_submit_runs_a_search_on_the_cluster(head, tmp_path):
    storage = tmp_path / "results"
    job_id = f"raysl_tune_{int(time.time())}"
    submit = submit_job(
        head, "--address", head.dashboard_url, "--submission-id", job_id, "--working-dir", ".",
        # docs/clusters.md's excludes (plus this suite's own artifacts), anchored at the working dir: Ray reads
        # them as .gitignore lines, and a bare data/ dropped raysl/data/ from the shipped package (the job's
        # `raysl` imports the shipped folder, first on its path: No module named 'raysl.data')
        "--runtime-env-json", json.dumps({"excludes": ["/data/", "/runs/", "/raysl_results/", "/.venv/", "/.git/",
                                                       "/test-artifacts"]}),
        # one trial at a time: both run in one reused trial process (a second cost ~4 CPU-s; concurrency is not
        # what this test checks)
        "--", "raysl", "tune", "search_spaces/quickstart.yaml", "--num-samples", "2", "--set", "tune.max_concurrent=1",
        "--set", "optim.epochs=2", "--set", "eval.every_epochs=1", "--set", "model.width=8",
        "--storage", str(storage), "--name", "submitted",
    )
    assert submit.returncode == 0, explain(submit)
    status = ray_job(head, "status", "--address", head.dashboard_url, job_id, timeout=HANG)
    assert "succeeded" in (status.stdout + status.stderr).lower(), explain(status)

    logs = ray_job(head, "logs", "--address", head.dashboard_url, job_id, timeout=HANG).stdout
    summary = final_json(logs)
    experiment = storage / "submitted"
    assert summary["num_trials"] == 2 and summary["best_config_path"] == str(experiment / "best_config.yaml")
    found = trials(experiment)
    assert len(found) == 2 and all(t["rows"] and "knn_acc" in t["rows"][-1] for t in found.values())
    best = yaml.safe_load((experiment / "best_config.yaml").read_text())
    assert best["method"]["name"] == "simclr"
    assert (experiment / "raysl_space.yaml").exists()


def test_job_submit_without_the_token_is_refused(head):
    env = {k: v for k, v in head.env.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env["RAY_AUTH_MODE"] = "disabled"
    done = subprocess.run([RAY, "job", "list", "--address", head.dashboard_url], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=HANG)
    assert done.returncode != 0, explain(done)
    assert "Token authentication is enabled but no authentication token was found" in done.stderr
