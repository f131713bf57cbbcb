"""Filesystem failures, produced for real: read-only mounts, a tmpfs that fills up, shards that
vanish or change after prepare. Each ends with exit code 2 and one `raysl: error:` line (no
traceback), leaves nothing torn behind, and where a run can continue the resume finishes with
every epoch exactly once in metrics.jsonl.

Needs root (it mounts tmpfs file systems); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, RAYSL

QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")
TINY = ["--set", "optim.batch_size=128", "--set", "eval.every_epochs=100", "--set", "model.width=8"]
HANG_GUARD_S = 900  # far above a run's time: only a hang trips it


def _mount_tmpfs(path: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs: {proc.stderr.strip()}")


def _remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, options) -> a fresh tmpfs under tmp_path; all unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, options: str = "size=2m") -> Path:
        where = tmp_path / name
        _mount_tmpfs(where, options)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def read_only(tmpfs, name: str = "ro") -> Path:
    """A tmpfs holding an empty folder `existing`, remounted read-only."""
    where = tmpfs(name, "size=32m")
    (where / "existing").mkdir()
    _remount(where, "ro")
    return where


def raysl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`raysl ARGS`; ``env``: the suite's head (conftest ``head.env``) for a command that starts Ray."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([RAYSL, *args], capture_output=True, text=True, timeout=HANG_GUARD_S, env=full_env,
                          cwd=str(REPO))


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one `raysl: error:` line, no traceback; returns that line."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("raysl: error:")]
    assert len(errors) == 1, proc.stderr[-4000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def leftovers(root: Path) -> list[str]:
    """Temporaries and torn checkpoints under ``root``."""
    found = []
    for path in root.rglob("*"):
        if path.name.endswith(".tmp"):
            found.append(str(path))
        if path.is_dir() and path.name.startswith("checkpoint_") and not (path / "state.pt").is_file():
            found.append(str(path))
    return found


def loadable_checkpoints(run: Path) -> list[int]:
    from raysl.checkpoint import load_state

    return sorted(int(load_state(str(p), mmap=True)["epoch"]) for p in run.glob("train/checkpoint_*/state.pt"))


def epochs_in(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- outputs that cannot be written


def test_prepare_out_on_a_read_only_mount(tmpfs):
    ro = read_only(tmpfs)
    proc = raysl("data", "prepare", "digits", "--out", str(ro / "existing" / "digits"))
    one_error_line(proc, str(ro / "existing" / "digits"), "read-only", "choose a writable --out")
    assert list(ro.rglob("*")) == [ro / "existing"]


@pytest.mark.slow
def test_train_out_on_a_read_only_mount_then_resume(tmpfs, digits_dir, head):
    ro = read_only(tmpfs)
    out = ro / "existing" / "run"
    args = ["train", QUICKSTART, *TINY, "--set", "optim.epochs=2", "--out", str(out)]
    line = one_error_line(raysl(*args), str(out), "read-only", "choose a writable --out")
    assert line.endswith(f"resume with: raysl train {QUICKSTART} " + " ".join(TINY[i] for i in range(len(TINY)))
                         + f" --set optim.epochs=2 --out {out}"), line
    assert list(ro.rglob("*")) == [ro / "existing"]
    _remount(ro, "rw")
    proc = raysl(*args, env=head.env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert epochs_in(out) == [1, 2]


def test_tune_storage_on_a_read_only_mount(tmpfs, digits_dir):
    ro = read_only(tmpfs)
    proc = raysl("tune", QUICKSTART, "--num-samples", "2", "--set", "optim.epochs=1", "--storage",
                 str(ro / "existing"), "--name", "ro")
    one_error_line(proc, str(ro / "existing" / "ro"), "read-only", "choose a writable --storage")
    assert list(ro.rglob("*")) == [ro / "existing"]


@pytest.mark.slow
def test_export_out_on_a_full_tmpfs(tmpfs, finished_run):
    full = tmpfs("full", "size=16k")
    (full / "filler").write_bytes(b"x" * 8192)
    out = full / "encoder.pt"
    line = one_error_line(raysl("export", str(finished_run), "--out", str(out)), str(out), "no space left on",
                          f"free space on {full}")
    assert "choose another --out" in line
    assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no torn encoder.pt, no temporary


@pytest.mark.slow
def test_analyze_out_on_a_read_only_mount(tmpfs, tmp_path_factory, head):
    from test_analyze import scripted_experiment_dir

    experiment = scripted_experiment_dir(tmp_path_factory, head.env)
    ro = read_only(tmpfs)
    proc = raysl("analyze", str(experiment), "--out", str(ro / "existing" / "report"))
    one_error_line(proc, str(ro / "existing" / "report"), "read-only")
    assert list(ro.rglob("*")) == [ro / "existing"]


# --------------------------------------------------------------------------- a disk that fills up mid-run


@pytest.mark.slow
def test_checkpoint_fills_the_disk_then_resume_keeps_every_epoch_once(tmpfs, finished_run, head):
    from raysl.checkpoint import load_state

    state = max(finished_run.glob("train/checkpoint_*/state.pt"))  # every checkpoint of a run is this size
    size = state.stat().st_size
    assert load_state(str(state), mmap=True)["epoch"] == 2
    # room for the config, metrics.jsonl and one checkpoint and a half: the second checkpoint
    # (Ray keeps two, checkpoint.keep=2) cannot be written
    room = 64 * 1024 + size * 3 // 2
    disk = tmpfs("disk", f"size={room}")
    out = disk / "run"
    args = ["train", QUICKSTART, *TINY, "--set", "optim.epochs=3", "--out", str(out)]
    line = one_error_line(raysl(*args, env=head.env), str(out), "no space left on", f"free space on {disk}")
    assert line.endswith(f"--out {out}") and "resume with: raysl train" in line, line
    assert leftovers(disk) == []
    assert loadable_checkpoints(out) == [1]  # the first fit; the second was never half written
    assert epochs_in(out) == [1]

    _remount(disk, f"size={room * 4}")  # space freed
    proc = raysl(*args, env=head.env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert epochs_in(out) == [1, 2, 3]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "finished"
    assert leftovers(disk) == []


# --------------------------------------------------------------------------- shards changed after prepare


@pytest.fixture
def prepared(tmp_path) -> Path:
    data = tmp_path / "digits"
    proc = raysl("data", "prepare", "digits", "--out", str(data), "--shard-rows", "500")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return data


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_a_shard_damaged_after_prepare_fails_train_in_one_line(prepared, tmp_path, damage):
    shard = prepared / "train-00001.parquet"
    if damage == "deleted":
        shard.unlink()
        needles = ("train-00001.parquet", "missing")
    else:
        payload = bytearray(shard.read_bytes())
        middle = len(payload) // 2
        payload[middle : middle + 64] = bytes(b ^ 0xFF for b in payload[middle : middle + 64])
        shard.write_bytes(bytes(payload))  # same size, other bytes
        needles = ("train-00001.parquet", "sha256 mismatch")
    out = tmp_path / "run"
    proc = raysl("train", QUICKSTART, *TINY, "--set", "optim.epochs=1", "--set", f"data.path={prepared}",
                 "--out", str(out))
    line = one_error_line(proc, *needles)
    assert "re-run raysl data prepare" in line
    assert not (out / "train").exists()  # refused before Ray started


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
