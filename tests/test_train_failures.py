"""`raysl train --max-failures N` and elastic `scale.num_workers: [min, max]`.

End to end with real processes and real faults: a Train worker SIGKILLed mid-epoch (the OOM
killer, a lost node) and a node of a multi-node Ray cluster removed (a spot node taken back), each
waited for by a condition on disk, never a fixed sleep. Then what is left is checked: the run
finishes, every epoch is in metrics.jsonl exactly once, each restart and resize is one line on
stderr, and an elastic run keeps its global batch when it continues with fewer workers.

How metrics.jsonl stays exact across a restart: a restarted worker group resumes from the latest
checkpoint, so it reports again every epoch after it; raysl.run_folder.MetricsFile writes a report of
epoch E by dropping the rows of epoch E and later first (de-duplicated on write, atomically). The
first test checkpoints every second epoch so that a restart really re-trains a logged epoch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import HANG, RAYSL, REPO, signal_all, start_cluster
from test_faults import assert_nothing_torn, descendants, epochs_in, finish, started, wait_until

QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")
# tiny and quick: digits at 8 px, a width-4 convnet; a small batch makes an epoch ~90 steps (seconds,
# not milliseconds), so "the worker is mid-epoch" holds for a whole epoch after the condition is seen
TINY = ["--set", "model.width=4", "--set", "optim.batch_size=16", "--set", "eval.every_epochs=100"]
RESTART = re.compile(r"^\[raysl\] a training worker died; restarting the worker group from the epoch (\d+) "
                     r"checkpoint \(failure 1 of 1\)$")


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def registered_epoch(out: Path) -> int:
    """The epoch of the newest checkpoint Ray Train registered (0 before the first)."""
    snapshot = out / "train" / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):  # not there yet, or being replaced
        return 0
    return int((latest.get("metrics") or {}).get("epoch") or 0)


def lines(err: str, pattern: re.Pattern | str) -> list[str]:
    return [line for line in err.splitlines() if re.search(pattern, line)]


# --------------------------------------------------------------------------
# --max-failures: a worker SIGKILLed mid-epoch, the group restarts from the checkpoint


@pytest.mark.slow
def test_killed_worker_restarts_from_the_checkpoint_and_logs_every_epoch_once(tmp_path, head):
    """Joined to the suite's head (what it checks does not depend on whose cluster it is; a cluster of its own
    cost ~8 CPU-s and ~6 s more): its Train workers are the head's RayTrainWorker processes started after this
    run's driver (the head group runs one test at a time; an earlier test's worker still exiting is older).
    6 epochs with a checkpoint every 2: the kill comes after epoch 3 or 5, each a whole epoch before the
    next checkpoint."""
    epochs = 6
    out = tmp_path / "run"
    proc = subprocess.Popen(
        # a quarter of the train split: ~22 steps an epoch instead of ~90 (the SIGSTOP below, not the epoch's
        # length, decides where the kill falls)
        [RAYSL, "train", QUICKSTART, *TINY, "--set", f"optim.epochs={epochs}", "--set", "scale.num_workers=2",
         "--set", "data.fraction=0.25", "--set", "checkpoint.every_epochs=2", "--max-failures", "1", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=head.env)
    driver_start = started(proc.pid)
    frozen: list[int] = []

    def this_runs_workers() -> list[int]:
        return [pid for pid in head.worker_pids("RayTrainWorker") if (started(pid) or 0) >= driver_start]

    def frozen_after_an_unsaved_epoch() -> bool:
        """Stop both Train workers (SIGSTOP), then look: is the last logged epoch an odd one (3 or later), logged after
        the checkpoint of the epoch before it? Then they stay stopped until the kill, so no load on the
        machine can carry them past the next checkpoint first; if not, they run on (SIGCONT)."""
        pids = this_runs_workers()
        if len(pids) != 2:
            return False
        signal_all(pids, signal.SIGSTOP)
        logged = epochs_in(out)
        if logged and logged[-1] % 2 == 1 and 3 <= logged[-1] < epochs and registered_epoch(out) == logged[-1] - 1:
            frozen[:] = pids
            return True
        signal_all(pids, signal.SIGCONT)
        return False

    wait_until(proc, frozen_after_an_unsaved_epoch, "an odd epoch logged after the checkpoint of the one before")
    logged_before = epochs_in(out)
    os.kill(frozen[-1], signal.SIGKILL)
    signal_all(frozen[:-1], signal.SIGCONT)
    stdout, err = finish(proc)

    assert proc.returncode == 0, err[-4000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["epoch"] == epochs, summary
    restarts = lines(err, r"restarting the worker group")
    assert len(restarts) == 1 and RESTART.match(restarts[0]), err[-4000:]
    resumed_from = int(RESTART.match(restarts[0]).group(1))
    # the restart re-trained an epoch that was already logged (the workers were stopped a whole epoch
    # before the next checkpoint; only a report already sent when they were stopped could move the
    # checkpoint on, and then the restart starts after what was logged) ...
    if resumed_from < max(logged_before):
        assert len(lines(err, rf"^\[raysl\] epoch={resumed_from + 1}\b")) == 2, err[-4000:]
    else:
        assert resumed_from == max(logged_before) + 1, (resumed_from, logged_before)
    # ... and metrics.jsonl still has each epoch once, in order
    assert epochs_in(out) == list(range(1, epochs + 1))
    assert_nothing_torn(out)
    assert "Traceback" not in err and "raysl: error" not in err, err[-4000:]


# --------------------------------------------------------------------------
# elastic: a node of a two-node cluster removed, the run goes on with one worker


def _node_train_workers(node) -> list[int]:
    """RayTrainWorker processes of one node of a ray.cluster_utils.Cluster (its raylet's descendants)."""
    raylet = node.all_processes["raylet"][0].process.pid
    found = []
    for pid in descendants(raylet):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.local_ray
def test_elastic_run_loses_a_node_and_continues_with_one_worker_at_the_same_global_batch(tmp_path, digits_dir):

    epochs, batch = 5, 16
    out = tmp_path / "run"
    # each worker node fits exactly one Train worker (2 of its 3 CPUs; the head has 1), so removing a
    # node leaves room for one worker only
    cluster = start_cluster(num_cpus=1, include_dashboard=False)
    try:
        nodes = [cluster.add_node(num_cpus=3) for _ in range(2)]
        cluster.wait_for_nodes()
        proc = subprocess.Popen(
            [RAYSL, "train", QUICKSTART, *TINY, "--set", f"optim.epochs={epochs}",
             "--set", "scale.num_workers=[1, 2]", "--set", "scale.cpus_per_worker=2", "--set", "scale.torch_threads=1",
             "--max-failures", "1", "--out", str(out)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "RAY_ADDRESS": cluster.address})
        wait_until(proc, lambda: len(epochs_in(out)) >= 2 and all(_node_train_workers(n) for n in nodes),
                   "2 epochs with a Train worker on each node")
        cluster.remove_node(nodes[1])  # as a spot node taken back: its raylet and workers are gone
        stdout, err = finish(proc)
    finally:
        cluster.shutdown()

    assert proc.returncode == 0, err[-4000:]
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "finished"
    banner = lines(err, r"^\[raysl\] simclr: ")
    assert len(banner) == 1 and f"2 worker(s) (elastic, 1-2), global batch {batch} (8 per worker), " in banner[0], err
    steps_per_epoch = int(re.search(r"(\d+) steps/epoch", banner[0]).group(1))
    assert len(lines(err, RESTART)) == 1, err[-4000:]
    assert lines(err, r"^\[raysl\] workers: ") == [
        f"[raysl] workers: 2 -> 1, per-worker batch 8 -> 16 (global batch {batch})"], err[-4000:]
    # the global batch is kept: the one remaining worker takes all 16 images a step, so an epoch is as
    # many steps as with two (half a batch per worker would double them)
    assert [(r["epoch"], r["step"]) for r in rows(out)] == [(e, e * steps_per_epoch) for e in range(1, epochs + 1)]
    assert_nothing_torn(out)


# --------------------------------------------------------------------------
# the pieces, without a cluster: config validation, the CLI flag, the lines, the failure policy


def _config(**scale):
    from raysl.run_config import build_config

    return build_config({"scale": scale, "optim": {"batch_size": 256}}, "run.yaml")


@pytest.mark.parametrize("value, expected", [(2, 2), ([1, 2], (1, 2)), ((1, 2), (1, 2)), ([2, 2], 2), (3.0, 3)])
def test_num_workers_is_a_count_or_a_min_max_range(value, expected):
    scale = _config(num_workers=value).scale
    assert scale.num_workers == expected
    low, high = expected if isinstance(expected, tuple) else (expected, expected)
    assert (scale.elastic, scale.min_workers, scale.max_workers) == (isinstance(expected, tuple), low, high)


@pytest.mark.parametrize("value, message", [
    ([0, 2], "scale.num_workers: [min, max] needs 1 <= min <= max, e.g. [1, 4] (got [0, 2])"),
    ([3, 2], "scale.num_workers: [min, max] needs 1 <= min <= max, e.g. [1, 4] (got [3, 2])"),
    ([1, 2, 3], "scale.num_workers: expected a number of workers (e.g. 2), or [min, max] for elastic training"),
    ("two", "scale.num_workers: expected a number of workers (e.g. 2), or [min, max] for elastic training"),
    (True, "scale.num_workers: expected a number of workers"),
    (1.5, "scale.num_workers: expected a number of workers"),
    (0, "scale.num_workers: needs at least 1 worker"),
])
def test_bad_num_workers_is_one_line_naming_the_key(value, message):
    from raysl.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _config(num_workers=value)
    assert str(err.value).startswith(f"run.yaml: {message}"), str(err.value)


def test_elastic_batch_must_split_evenly_over_every_worker_count():
    from raysl.errors import ConfigError
    from raysl.run_config import build_config

    with pytest.raises(ConfigError) as err:
        _config(num_workers=[1, 4])
    assert ("optim.batch_size (256) is the global batch and must split evenly over every worker count in "
            "scale.num_workers [1, 4], but not over 3 workers; use a multiple of 12 (e.g. 252 or 264)"
            ) in str(err.value)
    assert build_config({"scale": {"num_workers": [1, 4]}, "optim": {"batch_size": 264}}).scale.max_workers == 4
    with pytest.raises(ConfigError, match=r"must be at least 2 per worker \(4 workers\)"):  # the max counts
        build_config({"scale": {"num_workers": [2, 4]}, "optim": {"batch_size": 4}})


def test_elastic_range_round_trips_through_the_saved_config():
    from raysl.config_load import to_yaml
    from raysl.run_config import RunConfig

    cfg = _config(num_workers=[1, 2], max_failures=3)
    saved = yaml.safe_load(to_yaml(cfg))  # the run's config.yaml
    assert saved["scale"]["num_workers"] == [1, 2]
    again = RunConfig.model_validate(saved)
    assert again.scale.num_workers == (1, 2) and again.scale.max_failures == 3
    assert RunConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # what the workers receive


def test_max_failures_defaults_to_0_and_rejects_negatives():
    from raysl.errors import ConfigError

    assert _config().scale.max_failures == 0
    with pytest.raises(ConfigError, match=r"^run.yaml: scale.max_failures: Input should be greater than or equal to 0"):
        _config(max_failures=-1)


def test_max_failures_flag_overrides_the_config_and_is_in_the_resume_command(tmp_path):
    from raysl.cli import _parser, train_resume_command

    args = _parser().parse_args(["train", "run.yaml", "--set", "optim.epochs=3", "--max-failures", "2"])
    assert args.max_failures == 2
    assert train_resume_command(args, "/abs/out") == (
        "raysl train run.yaml --set optim.epochs=3 --out /abs/out --max-failures 2")
    assert _parser().parse_args(["train", "run.yaml"]).max_failures is None  # then scale.max_failures counts
    done = subprocess.run([RAYSL, "train", QUICKSTART, "--max-failures", "-1"], capture_output=True, text=True,
                          timeout=HANG)
    assert done.returncode == 2
    assert "argument --max-failures: expected a whole number >= 0, got '-1'" in done.stderr


def test_a_search_space_with_an_elastic_base_is_rejected():
    from raysl.errors import ConfigError
    from raysl.space_file import space_from_dict

    space = yaml.safe_load(Path(QUICKSTART).read_text())
    space["base"]["scale"]["num_workers"] = [1, 2]
    with pytest.raises(ConfigError) as err:
        space_from_dict(space, "space.yaml")
    assert str(err.value).startswith("space.yaml: base: scale.num_workers: [min, max] (elastic) is for raysl "
                                     "train; a trial runs a fixed number of workers: give one number")


def test_restart_and_resize_lines():
    from ray.exceptions import ActorDiedError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raysl.run_faults import resize_line, restart_line

    died = WorkerGroupError("rank 1 died", {1: ActorDiedError()})
    assert restart_line(died, 3, 2, 1) == (
        "[raysl] a training worker died; restarting the worker group from the epoch 3 checkpoint (failure 1 of 2)")
    crashed = WorkerGroupError("rank 0 failed", {0: RuntimeError("CUDA error:\n  an illegal memory access")})
    assert restart_line(crashed, 0, 1, 1) == (
        "[raysl] a training worker failed (RuntimeError: CUDA error: an illegal memory access); restarting the "
        "worker group from the start (no epoch is checkpointed yet) (failure 1 of 1)")
    assert restart_line(died, 2, 0, 0, preempted=True) == (
        "[raysl] a worker's node was preempted; restarting the worker group from the epoch 2 checkpoint "
        "(preemptions do not count against --max-failures)")
    assert resize_line(2, 1, 128) == "[raysl] workers: 2 -> 1, per-worker batch 64 -> 128 (global batch 128)"
    assert resize_line(1, 4, 128) == "[raysl] workers: 1 -> 4, per-worker batch 128 -> 32 (global batch 128)"


def test_failure_policy_restarts_within_the_budget_and_never_for_a_user_error(tmp_path):
    """Ray's own failure policy (no cluster needed) as raysl train configures it."""
    import ray.train
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raysl import storage
    from raysl.errors import CollapsedError
    from raysl.run_faults import make_failure_policy

    said: list[str] = []
    policy = make_failure_policy(ray.train.FailureConfig(max_failures=1), said.append, storage.make_dirs(str(tmp_path)))
    # a collapse (any RayslError) would only happen again from the same checkpoint: not restarted
    collapsed = WorkerGroupError("rank 0 failed", {0: CollapsedError("collapsed at epoch 3")})
    assert policy.make_decision(collapsed) == FailureDecision.RAISE and said == []
    died = WorkerGroupError("rank 1 died", {1: ActorDiedError()})
    assert policy.make_decision(died) == FailureDecision.RETRY
    assert said == ["[raysl] a training worker died; restarting the worker group from the start "
                    "(no epoch is checkpointed yet) (failure 1 of 1)"]
    assert policy.make_decision(died) == FailureDecision.RAISE and len(said) == 1  # the budget is spent
