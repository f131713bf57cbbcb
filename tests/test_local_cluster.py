"""`raysl up` / `raysl down`: the record of the local cluster later commands join (raysl.local_cluster).

The cluster itself, and runs that join it: tests/test_train_e2e.py (a two-worker run interrupted and resumed,
both joined to the cluster `raysl up` started). Here, what needs no Ray: a record whose cluster is gone.
"""

from __future__ import annotations

import json

from raysl import local_cluster
from raysl.cli import main


def write_record(cache, temp_dir, address="127.0.0.1:9") -> None:
    (cache / local_cluster.RECORD).write_text(json.dumps({
        "address": address, "dashboard_url": "http://127.0.0.1:9", "temp_dir": str(temp_dir), "num_cpus": 4,
        "started": 0.0}))


def test_a_record_of_a_cluster_that_is_gone_is_dropped_not_joined(tmp_path, monkeypatch):
    """Bug it catches: after a reboot (or a `ray stop`) the record still names a cluster, and every raysl command
    tried to join it (Ray waits for a GCS that never answers) instead of starting its own. A record whose temp dir
    is gone, or whose processes are gone although the folder is there, is removed when read; an unreadable one
    is no cluster either."""
    monkeypatch.setenv("RAYSL_CACHE", str(tmp_path))
    write_record(tmp_path, tmp_path / "gone")
    assert local_cluster.running() is None
    assert not (tmp_path / local_cluster.RECORD).exists()

    (tmp_path / "left").mkdir()  # the folder is left, no process names it (the GCS port is not one either)
    write_record(tmp_path, tmp_path / "left")
    assert local_cluster.running() is None
    assert not (tmp_path / local_cluster.RECORD).exists()

    (tmp_path / local_cluster.RECORD).write_text("{not json")
    assert local_cluster.running() is None


def test_down_without_a_cluster_says_so_and_up_refuses_a_bad_cpu_count(tmp_path, monkeypatch, capsys):
    """`raysl down` with nothing up: one line, exit 0, {"stopped": null} (a script may run it twice); `raysl up
    --num-cpus 0`: one `raysl: error:` line and exit 2 before anything starts."""
    monkeypatch.setenv("RAYSL_CACHE", str(tmp_path))
    assert main(["down"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip()) == {"stopped": None}
    assert captured.err.strip() == "raysl: no local Ray cluster from `raysl up` is running; nothing to stop"

    assert main(["up", "--num-cpus", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["raysl: error: --num-cpus must be >= 1 (got 0)"]
    assert not (tmp_path / local_cluster.RECORD).exists()
