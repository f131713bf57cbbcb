"""Filesystem failures, produced for real: read-only mounts, a tmpfs that fills up, shards that
vanish or change after prepare. Each ends with exit code 2 and one `raysl: error:` line (no
traceback), leaves nothing torn behind, and where a run can continue the resume finishes with
every epoch exactly once in metrics.jsonl.

Needs root (it mounts tmpfs file systems); skipped with the reason otherwise. A refusal that comes
before Ray starts runs `raysl`'s CLI in this process (`_in_process`): the same code and output, without
a fresh interpreter's ~5-10 s of imports each time.
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


def _listing(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256): what a refused or failed resume must not change."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _in_process(args: list[str], capsys) -> subprocess.CompletedProcess:
    """`raysl ARGS` in this process (a refusal before Ray starts: no interpreter and imports to pay for)."""
    from raysl.cli import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


# --------------------------------------------------------------------------- outputs that cannot be written


def test_prepare_out_on_a_read_only_mount(tmpfs, capsys):
    ro = read_only(tmpfs)
    proc = _in_process(["data", "prepare", "digits", "--out", str(ro / "existing" / "digits")], capsys)
    one_error_line(proc, str(ro / "existing" / "digits"), "read-only", "choose a writable --out")
    assert list(ro.rglob("*")) == [ro / "existing"]


@pytest.mark.slow
def test_train_out_on_a_read_only_mount_then_resume(tmpfs, digits_dir, head, capsys):
    ro = read_only(tmpfs)
    out = ro / "existing" / "run"
    args = ["train", QUICKSTART, *TINY, "--set", "optim.epochs=2", "--out", str(out)]
    line = one_error_line(_in_process(args, capsys), str(out), "read-only", "choose a writable --out")
    assert line.endswith(f"resume with: raysl train {QUICKSTART} " + " ".join(TINY[i] for i in range(len(TINY)))
                         + f" --set optim.epochs=2 --out {out}"), line
    assert list(ro.rglob("*")) == [ro / "existing"]
    _remount(ro, "rw")
    proc = raysl(*args, env=head.env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert epochs_in(out) == [1, 2]


def test_tune_storage_on_a_read_only_mount(tmpfs, digits_dir, capsys):
    ro = read_only(tmpfs)
    proc = _in_process(["tune", QUICKSTART, "--num-samples", "2", "--set", "optim.epochs=1", "--storage",
                        str(ro / "existing"), "--name", "ro"], capsys)
    one_error_line(proc, str(ro / "existing" / "ro"), "read-only", "choose a writable --storage")
    assert list(ro.rglob("*")) == [ro / "existing"]


@pytest.mark.slow
def test_export_out_on_a_full_tmpfs(tmpfs, finished_run, capsys):
    full = tmpfs("full", "size=16k")
    (full / "filler").write_bytes(b"x" * 8192)
    out = full / "encoder.pt"
    line = one_error_line(_in_process(["export", str(finished_run), "--out", str(out)], capsys), str(out),
                          "no space left on", f"free space on {full}")
    assert "choose another --out" in line
    assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no torn encoder.pt, no temporary


@pytest.mark.slow
def test_analyze_out_on_a_read_only_mount(tmpfs, tmp_path_factory, head, capsys):
    from test_analyze import scripted_experiment_dir

    experiment = scripted_experiment_dir(tmp_path_factory, head.env)
    ro = read_only(tmpfs)
    proc = _in_process(["analyze", str(experiment), "--out", str(ro / "existing" / "report")], capsys)
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


@pytest.mark.slow
def test_tune_fills_the_disk_then_a_damaged_state_is_refused_and_the_freed_disk_resumes(
        tmpfs, finished_run, head, tmp_path, monkeypatch, capsys):
    """One small search (2 trials of 2 epochs, both at once) on a tmpfs with room for its state, the room
    raysl sets aside (1 MiB) and two and a half checkpoints: the third checkpoint cannot be written. The
    stopped search's folder is then damaged, refused, put back, and resumed once space is freed."""
    import pickle
    import shlex

    from raysl import signing, storage

    size = max(finished_run.glob("train/checkpoint_*/state.pt")).stat().st_size  # a width-8 checkpoint
    room = (1 << 20) + 320 * 1024 + size * 5 // 2
    disk = tmpfs("disk", f"size={room}")
    env = {**head.env, "XDG_CONFIG_HOME": str(tmp_path / "config")}  # a secret of the test's own
    env.pop("RAYSL_SECRET", None)
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    monkeypatch.delenv("RAYSL_SECRET", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", head.env["RAY_ADDRESS"])  # a refusal that failed to refuse joins the head
    # fifo: both trials train both epochs (ASHA may stop one at epoch 1, depending on which reports first)
    args = ["tune", QUICKSTART, "--num-samples", "2", *TINY, "--set", "optim.epochs=2", "--set", "eval.every_epochs=1",
            "--set", "tune.scheduler=fifo", "--storage", str(disk), "--name", "exp"]
    experiment = disk / "exp"

    # Full disk mid-search. Bugs caught: ~450 lines of Ray tracebacks, trials restarted as "a worker died" on the
    # same full disk, Optuna's StorageInternalError, exit 1; a state file Ray was rewriting left cut short.
    proc = raysl(*args, env=env)
    line = one_error_line(proc, str(experiment), "no space left on", f"free space on {disk}")
    # raysl's own lines only (the banner, status lines, the error): no traceback, no line from Ray
    assert all(text.startswith(("[raysl] ", "raysl: error: ")) for text in proc.stderr.strip().splitlines()), \
        proc.stderr[-4000:]
    assert "interrupted" not in proc.stderr and "died" not in proc.stderr, proc.stderr[-4000:]
    resume = line.split("resume with: ", 1)[1]
    assert resume.startswith("raysl tune ") and resume.endswith(f"--storage {disk} --name exp --resume"), line
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["statuses"].get("unfinished", 0) >= 1 and "no space left" in summary["error"], summary
    # nothing half-written: no temporary, no torn checkpoint, no reserve left; every state file whole and signed
    assert leftovers(disk) == [] and not (experiment / ".raysl_reserve").exists()
    root = storage.resolve(str(experiment))
    assert [rel for rel in signing.state_files(root) if signing.damage(root.join(rel), rel)] == []
    assert signing.verify_experiment(str(experiment)) > 0

    # A state file cut short (as a crash would leave it). Bugs caught: a Ray traceback, then "raysl: interrupted
    # (SIGINT)" with no signal sent, and a failed resume that saved a new state with 0 trials over the good one
    # (every later --resume failed). Now: one line naming the file and the fix, and not one byte changed.
    searcher = min(experiment.glob("searcher-state-*.pkl"))
    good = searcher.read_bytes()
    searcher.write_bytes(good[: len(good) // 2])
    before = _listing(experiment)
    refused = _in_process(shlex.split(resume)[1:], capsys)
    (error,) = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and error.startswith(
        f"raysl: error: {searcher}: not written by raysl on this machine/secret or changed since (HMAC mismatch); "
        "and it is cut short"), error
    assert "damaged (cut short by a crash or a full disk" in error and "or replaced by someone" in error
    assert "put back an intact copy of that file" in error and "interrupted" not in error
    assert _listing(experiment) == before
    # --trust-experiment would sign the damage: refused too, nothing signed
    refused = _in_process([*shlex.split(resume)[1:], "--trust-experiment"], capsys)
    (error,) = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and error.startswith(f"raysl: error: {searcher}: damaged: it is cut short"), error
    assert "raysl signed nothing" in error
    assert _listing(experiment) == before

    _remount(disk, f"size={room * 4}")  # space freed

    # A whole pickle that Ray's restore still fails on, trusted. Bug caught: Tune logged the failure and started
    # the experiment over (a new state with 0 trials, reported as an interruption). Now: one line, exit 2, the
    # folder as it was (the signatures --trust-experiment wrote put back too).
    searcher.write_bytes(pickle.dumps(42))
    before = _listing(experiment)
    failed = raysl(*shlex.split(resume)[1:], "--trust-experiment", env=env)
    error = one_error_line(failed, f"{experiment}: Ray Tune could not resume the search from its saved state",
                           "raysl left the experiment folder as it was")
    assert "interrupted" not in failed.stderr, failed.stderr[-4000:]
    assert _listing(experiment) == before

    # the good file put back: the printed resume command finishes every trial, each epoch trained once
    searcher.write_bytes(good)
    done = subprocess.run([RAYSL, *shlex.split(resume)[1:]], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, **env}, cwd=str(REPO))
    assert done.returncode == 0, done.stderr[-4000:]
    final = json.loads(done.stdout.strip().splitlines()[-1])
    assert final["statuses"] == {"finished": 2} and final["epochs_trained"] == 4, (final, done.stderr[-3000:])
    for trial in experiment.glob("raysl_trial_*"):
        trained = [row["epoch"] for row in map(json.loads, (trial / "result.json").read_text().splitlines())
                   if row.get("status") != "running" or "error" not in row]  # not the stopped search's closing row
        assert trained == [1, 2], (trial, trained)
    assert leftovers(disk) == [] and not (experiment / ".raysl_reserve").exists()


# --------------------------------------------------------------------------- shards changed after prepare


@pytest.fixture
def prepared(tmp_path, capsys) -> Path:
    data = tmp_path / "digits"
    proc = _in_process(["data", "prepare", "digits", "--out", str(data), "--shard-rows", "500"], capsys)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return data


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_a_shard_damaged_after_prepare_fails_train_in_one_line(prepared, tmp_path, damage, capsys):
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
    proc = _in_process(["train", QUICKSTART, *TINY, "--set", "optim.epochs=1", "--set", f"data.path={prepared}",
                        "--out", str(out)], capsys)
    line = one_error_line(proc, *needles)
    assert "re-run raysl data prepare" in line
    assert not (out / "train").exists()  # refused before Ray started


def test_a_full_disk_under_the_optuna_study_is_found_in_what_optuna_raises():
    """SQLite says "database or disk is full" without an errno, wrapped by SQLAlchemy (.orig) and Optuna
    (__cause__): raysl.storage.error_in still finds the full disk, for the search's one line."""
    import sqlite3

    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    from raysl import storage

    try:
        try:
            full = sqlite3.OperationalError("database or disk is full")
            raise sqlalchemy.exc.OperationalError("INSERT ...", {}, full)
        except sqlalchemy.exc.OperationalError as exc:
            raise StorageInternalError("An exception is raised during the commit.") from exc
    except StorageInternalError as exc:
        found = storage.error_in(exc, "/mnt/exp/optuna.db", "writing the Optuna study", "--storage")
    assert found is not None and storage.is_capacity_failure(found)
    assert str(found).startswith("/mnt/exp/optuna.db: no space left on ")
    assert storage.error_in(ValueError("database is locked"), "/mnt/exp") is None



def test_ray_trains_own_write_on_a_full_disk_is_found_in_its_controller_error():
    """Ray Train's controller rewrites its record of the checkpoints in the run folder; on a full disk that write
    fails in the controller, and Ray raises ControllerError with the OSError as .controller_failure (not as a
    cause). Caught in a fresh-clone run under load: `raysl train` on the full tmpfs ended with Ray's traceback and
    exit 1 instead of the one line and the resume command. The OSError here is the one pyarrow raised there."""
    import ray.train

    from raysl import storage

    failure = OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    found = storage.error_in(ray.train.ControllerError(failure), "/mnt/run")
    assert found is not None and storage.is_capacity_failure(found)
    assert str(found).startswith("/mnt/run: no space left on "), str(found)


def test_a_cut_short_checkpoint_record_is_put_back_from_rayls_copy_before_a_resume(tmp_path):
    """Ray rewrites checkpoint_manager_snapshot.json in place, so a full disk can leave it cut short, and Ray then
    refuses the resume. raysl keeps a copy of the last whole record after each registered checkpoint and puts it
    back before a resume, dropping the checkpoint folders the copy does not know (never registered); with no copy,
    one CheckpointError that says what to do. (The whole path, on a real run folder: tests/test_faults.py.)"""
    from raysl import storage
    from raysl.errors import CheckpointError
    from raysl.run_folder import SNAPSHOT_COPY, SNAPSHOT_FILE, keep_checkpoint_record, repair_checkpoint_record

    out = storage.resolve(str(tmp_path))
    run = tmp_path / "train"
    run.mkdir()
    names = ["checkpoint_2026-01-01_00-00-01.000000", "checkpoint_2026-01-01_00-00-02.000000"]
    for name in [*names, "checkpoint_2026-01-01_00-00-03.000000"]:
        (run / name).mkdir()
    record = json.dumps({"checkpoint_results": [{"checkpoint_dir_name": n} for n in names],
                         "latest_checkpoint_result": {"metrics": {"epoch": 2}}})
    (run / SNAPSHOT_FILE).write_text(record)
    assert repair_checkpoint_record(out) is None  # a whole record is left alone
    keep_checkpoint_record(out)
    assert (run / SNAPSHOT_COPY).read_text() == record
    (run / SNAPSHOT_FILE).write_text(record[:40])  # cut short
    keep_checkpoint_record(out)  # a torn record is never copied over the good copy
    assert (run / SNAPSHOT_COPY).read_text() == record
    line = repair_checkpoint_record(out)
    assert line == (f"[raysl] Ray Train's record of the checkpoints in {run} was cut short (a full disk?); put back "
                    "its last whole copy, which ends at epoch 2")
    assert (run / SNAPSHOT_FILE).read_text() == record
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == names  # epoch 3's was never registered
    (run / SNAPSHOT_FILE).write_text("")
    (run / SNAPSHOT_COPY).unlink()
    with pytest.raises(CheckpointError, match="is cut short and raysl has no copy of it; move the run folder away"):
        repair_checkpoint_record(out)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))

