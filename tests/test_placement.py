"""A run the cluster cannot hold is refused at once (raysl.placement.check_placement), not left waiting.

Without the check, `raysl train --set scale.use_gpu=true` on a machine without a GPU (or more workers
than the cluster has CPUs) prints the banner and then nothing until Ctrl-C: Ray waits forever for a
placement group the fixed local cluster can never give. The end-to-end tests run `raysl` against the
local cluster it starts itself (max(4, 2 x cores) logical CPUs, no GPU here) with a hang guard; the
pieces (packing bundles on nodes, waiting for a cluster that can grow) are checked without Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysl.errors import PlacementError
from raysl.placement import Needs, check_placement, cluster_can_grow, missing_resource, run_needs, trial_needs

REPO = Path(__file__).resolve().parents[1]
RAYSL = str(Path(sys.executable).parent / "raysl")
QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")
HANG = 300  # subprocess guard: the unchecked run never ends by itself
# A refusal costs a Ray start-up (10-30 s on a busy 2-core machine). Ray's own wait for a placement group
# has no end on a fixed cluster (the unchecked run above was still waiting when killed after 5 minutes), so
# finishing inside the guard, with the error line, shows the check answered instead of Ray waiting.


def _raysl(args: list[str], tmp_path: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``env`` None: the local cluster raysl starts itself (it cannot grow); else a cluster to join."""
    env = env or {**os.environ, "RAY_ADDRESS": ""}
    start = time.monotonic()
    proc = subprocess.run([RAYSL, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=HANG)
    return proc, time.monotonic() - start


def _error_line(proc: subprocess.CompletedProcess, elapsed: float) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode} after {elapsed:.0f} s\n{proc.stderr[-4000:]}"
    # no wall-clock bound (a loaded machine can take minutes to start Ray): an unchecked run never ends by
    # itself, so ending at all within the hang guard, with exit 2 and the line, is the check answering
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raysl: error: "), proc.stderr[-4000:]
    return lines[0]


@pytest.mark.parametrize(("setting", "expected"), [
    ("scale.use_gpu=true",
     "raysl: error: the run needs 1 worker x {CPU: 1, GPU: 1} but the cluster "
     "has {CPU: %(cpus)d, GPU: 0}: not enough GPU, and it cannot grow (no autoscaler); set "
     "scale.use_gpu=false (this cluster has no GPU)"),
    ("scale.num_workers=9",
     "raysl: error: the run needs 9 workers x {CPU: 1, GPU: 0} but the cluster "
     "has {CPU: %(cpus)d, GPU: 0}: not enough CPU, and it cannot grow (no autoscaler); lower "
     "scale.num_workers (about %(fit)d fit)"),
])
def test_train_that_a_fixed_cluster_cannot_hold_is_refused_at_once(tmp_path, setting, expected, head):
    """Joined to the suite's head (`ray start`, no autoscaler: fixed); the local cluster raysl starts
    itself is the tune test's below."""
    cpus = head.num_cpus
    if setting == "scale.use_gpu=true":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU: the run would fit")
    out = tmp_path / "run"
    proc, elapsed = _raysl(["train", QUICKSTART, "--set", setting, "--set", "optim.epochs=1", "--out", str(out)],
                           tmp_path, head.env)
    line = _error_line(proc, elapsed)
    # (the quickstart's digits shards: the workers read them, no CPU is kept for Ray Data's tasks)
    assert line.startswith(expected % {"cpus": cpus, "fit": cpus}), line
    assert proc.stdout == ""
    # nothing beyond what raysl writes before Ray starts: the run folder and its config
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


@pytest.mark.local_ray
def test_tune_whose_trials_cannot_be_placed_is_refused_with_nothing_written(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the trials would fit")
    results = tmp_path / "results"
    proc, elapsed = _raysl(["tune", QUICKSTART, "--set", "scale.use_gpu=true", "--storage", str(results)], tmp_path)
    line = _error_line(proc, elapsed)
    assert line.startswith("raysl: error: a trial needs 1 worker x {CPU: 1, GPU: 1} but the cluster has {CPU: "), line
    assert "not enough GPU" in line and "set scale.use_gpu=false" in line
    assert "it cannot grow (the local cluster raysl started)" in line
    # no space file, no study: the same command works once fixed, without --resume
    assert not (results / "quickstart").exists()


# --------------------------------------------------------------------------
# the pieces, without Ray


def _cfg(**scale):
    from raysl.run_config import build_config

    return build_config({"scale": scale}, "test")


def test_bundles_are_packed_per_node_and_data_tasks_need_a_cpu_beyond_the_workers():
    two_nodes = [{"CPU": 3.0}, {"CPU": 3.0}]
    assert missing_resource(run_needs(_cfg(num_workers=2, cpus_per_worker=2), True), two_nodes) is None
    # 6 CPUs in all, but a 2-CPU worker cannot straddle two nodes: the third has nowhere to go
    assert missing_resource(run_needs(_cfg(num_workers=3, cpus_per_worker=2), False), two_nodes) == "CPU"
    # 4 workers on 4 CPUs: on JPEG shards Ray Data's read/decode tasks would wait for a CPU forever (the run
    # hangs after its banner); on small-image shards the workers read them and 4 fit
    assert missing_resource(run_needs(_cfg(num_workers=4), True), [{"CPU": 4.0}]) == "CPU"
    assert missing_resource(run_needs(_cfg(num_workers=4), False), [{"CPU": 4.0}]) is None
    assert missing_resource(run_needs(_cfg(num_workers=3), True), [{"CPU": 4.0}]) is None
    # elastic: the minimum must fit, Ray Train adds workers as the cluster allows
    assert missing_resource(run_needs(_cfg(num_workers=[1, 2]), True), [{"CPU": 2.0}]) is None
    assert missing_resource(run_needs(_cfg(use_gpu=True, gpus_per_worker=0.5), True),
                            [{"CPU": 4.0, "GPU": 1.0}]) is None
    assert missing_resource(run_needs(_cfg(use_gpu=True), False), [{"CPU": 4.0}]) == "GPU"
    # a one-worker trial is its worker; a multi-worker trial's driver takes a hundredth of a CPU
    assert missing_resource(trial_needs(_cfg(num_workers=1, cpus_per_worker=4), False), [{"CPU": 4.0}]) is None
    assert missing_resource(trial_needs(_cfg(num_workers=4), False), [{"CPU": 4.0}]) == "CPU"


def test_a_grid_over_workers_is_checked_at_each_size(tmp_path):
    import yaml

    from raysl.space_file import load_space
    from raysl.trial import trial_variants_needs

    space = yaml.safe_load(Path(QUICKSTART).read_text())
    space["search"] = {"scale.num_workers": {"choice": [1, 2, 4]}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    needs = trial_variants_needs(load_space(str(path)), False)
    assert sorted(n.workers for n in needs) == [1, 1, 2, 4]


def test_a_cluster_that_can_grow_is_waited_for_then_refused_after_the_timeout():
    now = [0.0]
    said: list[str] = []
    needs = Needs("the run", 2, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 1.0}, "Ray Data's read tasks")
    with pytest.raises(PlacementError) as err:
        check_placement([needs], 30, say=said.append, nodes_of=lambda: [{"CPU": 8.0}], can_grow=lambda: True,
                        sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert said == ["[raysl] waiting for the cluster to grow: the run needs 2 workers x {CPU: 4, GPU: 1} plus 1 CPU "
                    "for Ray Data's read tasks, the cluster has {CPU: 8, GPU: 0} (short of GPU); giving up after 30 s "
                    "(scale.placement_timeout_s)"]
    assert str(err.value).startswith("the run needs 2 workers x {CPU: 4, GPU: 1} plus 1 CPU for Ray Data's read tasks "
                                     "but the cluster has {CPU: 8, GPU: 0} after waiting 30 s for it to grow: not "
                                     "enough GPU; ")
    assert now[0] == pytest.approx(30)


def test_a_cluster_that_grows_in_time_starts_the_run():
    now = [0.0]
    said: list[str] = []
    grown = [{"CPU": 8.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    needs = Needs("the run", 2, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 1.0}, "Ray Data's read tasks")
    check_placement([needs], 600, say=said.append, can_grow=lambda: True,
                    nodes_of=lambda: grown[: 1 + int(now[0] // 20)],
                    sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert said[-1] == "[raysl] the cluster has grown to {CPU: 24, GPU: 2}; starting" and now[0] < 600


def test_a_local_cluster_raysl_starts_cannot_grow(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_can_grow() is False
