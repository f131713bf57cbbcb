"""`raysl train` end to end on a real local Ray cluster, as a user runs it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from raysl import local_cluster
from raysl.checkpoint import load_state
from raysl.errors import DivergedError
from raysl.run_config import load_config
from raysl.loop_io import LocalIO
from raysl.run_eval import initial_metrics
from raysl.train import train_worker

from conftest import RAYSL, REPO

QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")
SMALL = ["--set", "model.width=8"]
EPOCHS_2W = 8


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.local_ray
def test_two_workers_interrupted_then_resumed_on_the_cluster_raysl_up_started_beats_random_init(tmp_path, digits_dir):
    """`raysl up`, then a two-worker run, Ctrl-C after two epochs, then the printed resume command, then `raysl
    down`: both runs join the one cluster `raysl up` started (start-up once, not per run: issue 25), the Ctrl-C
    stops the run and not the cluster, and `raysl down` leaves none of its processes. The runs get no Ray
    authentication settings, as a user's shell has none. Bugs it catches: a run that starts its own cluster
    beside the one that is up; a run that cannot join it (Ray turns token authentication on by itself only
    for a cluster it starts: a joining run without RAY_AUTH_MODE failed with "Authentication token is missing");
    a Ctrl-C that takes the shared cluster down with it; a resume that does not continue from the kept
    checkpoint. 8 epochs: the workers go on training while the
    Ctrl-C stops the run (a few seconds on a loaded machine), and with 4 epochs a CI run had finished all of
    them by then, leaving the resume nothing to prove."""
    out = tmp_path / "run"
    cmd = [RAYSL, "train", QUICKSTART, *SMALL, "--set", f"optim.epochs={EPOCHS_2W}", "--set", "eval.every_epochs=4",
           "--set", "scale.num_workers=2", "--out", str(out)]
    up_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the session's private token
    up = subprocess.run([RAYSL, "up"], env=up_env, capture_output=True, text=True, timeout=600)
    # the runs as a user starts them: no RAY_AUTH_MODE, no token path (what raysl up recorded supplies both)
    env = {k: v for k, v in up_env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    assert up.returncode == 0, up.stderr[-3000:]
    address = json.loads(up.stdout.strip().splitlines()[-1])["address"]
    cluster = local_cluster.running()  # this session's RAYSL_CACHE holds the record
    assert cluster is not None and cluster.address == address
    joining = f"raysl: joining the local Ray cluster `raysl up` started at {address} (`raysl down` stops it)"
    try:
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                 start_new_session=True)
        # interrupt as a user would (Ctrl-C) once two epochs are checkpointed (the deadline is a hang guard)
        deadline = time.time() + 900
        while time.time() < deadline:
            try:
                if (out / "metrics.jsonl").exists() and len(read_metrics(out)) >= 2:
                    break
            except json.JSONDecodeError:  # a line being written
                pass
            if first.poll() is not None:
                break
            time.sleep(0.1)
        assert first.poll() is None, "run finished before it could be interrupted:\n" + first.stdout.read()
        os.killpg(first.pid, signal.SIGINT)
        said, _ = first.communicate(timeout=600)
        assert first.returncode == 130, said[-3000:]
        assert joining in said.splitlines(), said[-3000:]
        assert local_cluster.running() == cluster  # the Ctrl-C stopped the run, not the cluster
        last = [line for line in said.splitlines() if line.startswith("raysl: ")][-1]
        assert last.startswith("raysl: interrupted (SIGINT) after epoch ") and "; resume with: raysl train " in last
        assert last.endswith(f"--out {out}"), last
        kept = read_metrics(out)
        assert 2 <= len(kept) < EPOCHS_2W, len(kept)
        # the line names the last epoch the user saw finish and the checkpoint a resume continues from (the
        # newest one in metrics.jsonl: the epoch after it may have finished without its checkpoint)
        finished = int(last.split("after epoch ", 1)[1].split(" ", 1)[0])
        assert last.startswith(f"raysl: interrupted (SIGINT) after epoch {finished} of {EPOCHS_2W}; a resume "
                               f"continues from the epoch {len(kept)} checkpoint in {out}"), last
        assert len(kept) <= finished < EPOCHS_2W, last
        assert all("checkpoint" in row for row in kept)

        resume = shlex.split(last.split("; resume with: ", 1)[1])  # the command raysl printed, as a user copies it
        assert resume[0] == "raysl", resume
        second = subprocess.run([RAYSL, *resume[1:]], capture_output=True, text=True, timeout=600, env=env,
                                cwd=REPO)
    finally:
        down = subprocess.run([RAYSL, "down"], env=env, capture_output=True, text=True, timeout=600)
    assert down.returncode == 0 and json.loads(down.stdout.strip()) == {"stopped": address}, down.stderr
    assert local_cluster.cluster_pids(cluster.temp_dir) == [] and local_cluster.running() is None
    assert second.returncode == 0, second.stderr[-3000:]
    assert joining in second.stderr.splitlines(), second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["epoch"] == EPOCHS_2W
    assert "resuming the run" in second.stderr
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS_2W + 1))  # each epoch exactly once
    assert rows[: len(kept) - 1] == kept[: len(kept) - 1]  # finished epochs were not re-run
    assert "train images" not in second.stdout + second.stderr  # no fresh start banner: it resumed

    trained = summary["knn_acc"]
    untrained = initial_metrics(load_config(QUICKSTART, ["model.width=8"]), digits_dir)["knn_acc"]
    assert trained > untrained + 0.01, (trained, untrained)


# a one-worker run's contract metrics: tests/test_output.py checks them on the run it prints from


def test_diverged_run_is_one_line_and_exit_2(tmp_path, head):
    out = tmp_path / "run"
    proc = subprocess.run(
        [RAYSL, "train", QUICKSTART, "--set", "method.temperature=1e-30", "--set", "optim.name=sgd",
         "--set", "optim.lr=10", "--set", "optim.epochs=2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=head.env,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("raysl: error: diverged at step")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "diverged"


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, digits_dir):
    out = tmp_path / "local"
    good = load_config(QUICKSTART, ["model.width=8", "optim.epochs=2"])
    train_worker({"config": good.model_dump(mode="json"), "data_dir": digits_dir}, LocalIO(str(out)))
    saved = out / "checkpoints" / "epoch_2" / "state.pt"
    before = saved.read_bytes()
    bad = load_config(QUICKSTART, ["model.width=8", "optim.epochs=4", "method.temperature=1e-30",
                                   "optim.name=sgd", "optim.lr=10"])
    io = LocalIO(str(out))
    with pytest.raises(DivergedError, match=r"diverged at step \d+ \(epoch 2\)"):
        train_worker({"config": bad.model_dump(mode="json"), "data_dir": digits_dir}, io)
    assert saved.read_bytes() == before
    assert load_state(str(saved))["epoch"] == 2
    assert not (out / "checkpoints" / "epoch_3").exists()


def test_a_run_restored_at_its_last_epoch_reports_its_final_result_again(tmp_path, digits_dir):
    """A re-run of a finished run, or a PBT trial that cloned a finished trial's checkpoint,
    has nothing left to train: its one report is the checkpoint's final result, not silence."""
    cfg = load_config(QUICKSTART, ["model.width=8", "optim.epochs=2", "eval.every_epochs=1"])
    loop = {"config": cfg.model_dump(mode="json"), "data_dir": digits_dir}
    first = LocalIO(str(tmp_path))
    train_worker(loop, first)
    assert [r["epoch"] for r in first.reports] == [1, 2]

    again = LocalIO(str(tmp_path))
    train_worker(loop, again)
    assert again.reports == [first.reports[-1]]
    assert again.reports[0]["status"] == "finished" and again.reports[0]["knn_acc"] > 0
