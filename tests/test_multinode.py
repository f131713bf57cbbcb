"""`raysl tune` on a multi-node Ray cluster (Ray's own ``ray.cluster_utils.Cluster`` on this
machine: a head with no CPUs and two one-CPU worker nodes), with a worker node removed while
one of its trials is running. Every trial must be accounted for (finished, the removed one
restored from its checkpoint on the other node) and the experiment folder complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import RAYSL, REPO, start_cluster

pytestmark = pytest.mark.slow

EPOCHS = 10
TRIALS = 4
HANG_GUARD_S = 600  # only a hang trips it


def _space(tmp_path: Path) -> Path:
    space = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    space["base"]["optim"].update(epochs=EPOCHS, batch_size=128)
    space["base"]["model"]["width"] = 8
    space["base"]["eval"]["every_epochs"] = 100  # the last epoch evaluates
    space["base"]["checkpoint"] = {"every_epochs": 1, "keep": 2}
    space["tune"].update(num_samples=TRIALS, max_concurrent=2, scheduler="fifo", sampler="random", seed=0,
                         max_failures=2)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _results(experiment: Path) -> dict[str, list[dict]]:
    """Rows of every trial's result.json (a trial folder's name -> rows)."""
    found = {}
    for result in experiment.glob("*/result.json"):
        rows = []
        for line in result.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # being written
        found[result.parent.name] = rows
    return found


def _alive_actor_nodes() -> dict[int, str]:
    from ray.util.state import list_actors

    return {a.pid: a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000)
            if a.pid}


def _all_actor_nodes() -> dict[int, str]:
    from ray.util.state import list_actors

    return {a.pid: a.node_id for a in list_actors(detail=True, limit=10_000) if a.pid}


@pytest.mark.local_ray
def test_tune_on_two_nodes_survives_losing_one(tmp_path, digits_dir):
    import ray

    cluster = start_cluster(num_cpus=0, include_dashboard=True)
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        worker_ids = {n.node_id for n in nodes}
        storage = tmp_path / "results"  # one machine: every node reaches this folder
        experiment = storage / "multi"
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        proc = subprocess.Popen(
            [RAYSL, "tune", str(_space(tmp_path)), "--storage", str(storage), "--name", "multi"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))

        # wait until a trial has reported and is well before its end, on a worker node: remove that node
        deadline = time.monotonic() + HANG_GUARD_S
        victim = removed_pid = None
        seen_nodes: dict[int, str] = {}
        while victim is None:
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "no trial ran mid-way on a worker node"
            alive = _alive_actor_nodes()
            seen_nodes.update(alive)
            for name, rows in _results(experiment).items():
                if rows and 1 <= rows[-1].get("epoch", 0) <= EPOCHS // 2 and alive.get(rows[-1]["pid"]) in worker_ids:
                    victim, removed_pid = name, rows[-1]["pid"]
                    break
            else:
                time.sleep(0.2)
        removed = next(n for n in nodes if n.node_id == alive[removed_pid])
        cluster.remove_node(removed)

        stdout, stderr = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert summary["num_trials"] == TRIALS
        assert summary["statuses"] == {"finished": TRIALS}, summary

        # every trial finished all its epochs; the one on the removed node resumed on the other
        results = _results(experiment)
        assert len(results) == TRIALS
        for name, rows in results.items():
            assert rows[-1]["epoch"] == EPOCHS and rows[-1]["status"] == "finished", (name, rows[-1])
        pids_after = {r["pid"] for r in results[victim] if r["pid"] != removed_pid}
        assert pids_after, "the trial on the removed node never continued elsewhere"
        resumed_at = min(r["epoch"] for r in results[victim] if r["pid"] != removed_pid)
        assert resumed_at > 1, "it restarted from scratch instead of its checkpoint"

        # trials ran on both worker nodes
        seen_nodes.update(_all_actor_nodes())
        trial_nodes = {seen_nodes.get(r["pid"]) for rows in results.values() for r in rows}
        assert worker_ids <= trial_nodes, (worker_ids, trial_nodes)

        # the experiment folder is complete: Tune's state, the space, the best config, every trial's files
        names = {p.name for p in experiment.iterdir()}
        assert {"raysl_space.yaml", "best_config.yaml", "tuner.pkl"} <= names, names
        assert any(n.startswith("experiment_state") for n in names), names
        for name in results:
            assert {"params.json", "result.json"} <= {p.name for p in (experiment / name).iterdir()}
        assert not list(experiment.rglob("*.tmp"))
    finally:
        ray.shutdown()
        cluster.shutdown()
