"""Faults end cleanly and lose nothing: signals, a killed Train worker, damaged checkpoints, and the
search records that must say what really happened.

Real processes and real signals: `raysl train` / `raysl tune` run as subprocesses (each starts its
own local Ray cluster), a test waits for a condition on disk (a hang guard, never a fixed sleep),
then signals exactly the process it started, or its process group (as `timeout` or Slurm do), or a
RayTrainWorker among its descendants. After the fault it checks the one line on stderr, that nothing
torn is left, then runs the printed resume command and checks that every epoch (every trial) is there
exactly once.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import RAYSL, REPO

QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")
# an epoch of this tiny run takes about a second: the fault chain below reaches its last fault (the killed
# worker) at about epoch 6 (2, then 2 more after the fallback, then 1 after the resume, each run stopped within
# an epoch of its signal), so 10 leave 4 epochs of room before the run could end by itself; the last resume
# trains the rest, so every epoch above that is suite time spent on nothing the test checks (20, then 12 before;
# each wait below signals within 0.1 s of the epoch it waits for, so 4 epochs of room is ample)
EPOCHS = 10
TRAIN = ["--set", f"optim.epochs={EPOCHS}", "--set", "model.width=8", "--set", "eval.every_epochs=1"]
HANG = 900  # hang guard only: far above the run times on a loaded 2-core machine


# --------------------------------------------------------------------------
# helpers


def epochs_in(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def start_train(out: Path, *extra: str) -> subprocess.Popen:
    # its own session: a Ctrl-C to "the terminal" is a SIGINT to this process group only
    return subprocess.Popen([RAYSL, "train", QUICKSTART, *TRAIN, *extra, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_until(proc: subprocess.Popen, condition, what: str) -> None:
    deadline = time.time() + HANG
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-4000:]}")
        assert time.time() < deadline, f"hang guard: never saw {what}"
        time.sleep(0.1)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_line(err: str, start: str) -> str:
    """The fault is told in one line, the last one, naming how to resume; no traceback, no Ray dump."""
    assert "Traceback" not in err and "*** SIG" not in err and "Aborted" not in err, err[-4000:]
    line = last_line(err)
    assert line.startswith(start), err[-3000:]
    assert "; resume with: raysl " in line, line
    assert sum("raysl: " in ln and not ln.startswith("[raysl]") for ln in err.splitlines()) == 1, err[-3000:]
    return line.split("; resume with: ", 1)[1]


def last_epoch_shown(err: str) -> int:
    """The last epoch whose `[raysl] epoch=N ...` line reached the terminal (stderr)."""
    shown = [int(ln.split("epoch=", 1)[1].split()[0]) for ln in err.splitlines() if ln.startswith("[raysl] epoch=")]
    assert shown, err[-3000:]
    return shown[-1]


def checkpoints(out: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first (Ray names them by time)."""
    return sorted(p for p in (out / "train").glob("checkpoint_*") if p.is_dir())


def registered_checkpoints(out: Path) -> set[str]:
    """The checkpoint folders Ray Train registered for the run (what a resume can start from)."""
    snapshot = json.loads((out / "train" / "checkpoint_manager_snapshot.json").read_text())
    return {r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]}


def assert_nothing_torn(out: Path) -> None:
    """No temporary left, and every checkpoint folder loads (weights_only) with its epoch."""
    leftovers = [str(p) for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    for ckpt in checkpoints(out):
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        assert int(state["epoch"]) >= 1, ckpt


def run_resume(command: str, out: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "raysl", command
    done = subprocess.run([RAYSL, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 0, f"{done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["epoch"] == EPOCHS, summary
    assert epochs_in(out) == list(range(1, EPOCHS + 1))  # every epoch exactly once
    assert_nothing_torn(out)
    return done


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


def started(pid: int) -> int | None:
    """A process's start time (clock ticks since boot; with the pid, it names one process), None once it
    ended (a zombie has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def cluster_of(driver: int) -> dict[int, int | None]:
    """The processes of the local Ray cluster a driver started (GCS, raylet, workers: its descendants)."""
    return {pid: started(pid) for pid in descendants(driver)}


def assert_all_ended(processes: dict[int, int | None], what: str) -> None:
    """Each of ``processes`` ended (called once later work has given them time to: no wait of its own)."""
    left = [pid for pid, start in processes.items() if start is not None and started(pid) == start]
    assert not left, f"{what} still running: {left}"


def train_worker_pids(driver: int) -> list[int]:
    """RayTrainWorker processes of the cluster this `raysl train` started (its descendants only)."""
    pids = []
    for pid in descendants(driver):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                pids.append(pid)
        except OSError:
            continue
    return pids


# --------------------------------------------------------------------------
# raysl train: Ctrl-C, SIGTERM, a killed worker, a damaged checkpoint


def resume_in_background(command: str) -> subprocess.Popen:
    argv = shlex.split(command)
    assert argv[0] == "raysl", command
    return subprocess.Popen([RAYSL, *argv[1:]], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.slow
@pytest.mark.local_ray
def test_fault_chain_on_one_run_folder_loses_no_epoch(tmp_path):
    """One `raysl train` run folder through every fault a user meets, each resumed with the command
    raysl printed: a scheduler's SIGTERM to the driver alone -> the newest checkpoint truncated (a torn
    write) -> resume -> SIGTERM to the whole process group (`timeout`, Slurm, `kill -TERM -- -PGID`) ->
    resume -> a Train worker SIGKILLed (the OOM killer) -> resume to the end. Each run starts its own
    local Ray cluster, whose processes the driver started: a group's signal is the case where they could
    be hit with the driver. (Ctrl-C, SIGINT to the group: tests/test_train_e2e.py.) After each fault:
    exit code, the one line, nothing torn; at the end every epoch is in metrics.jsonl exactly once.
    """
    out = tmp_path / "run"

    # 1. SIGTERM to the raysl process alone (not its group), as a scheduler sends it
    proc = start_train(out)
    wait_until(proc, lambda: len(epochs_in(out)) >= 2, "2 epochs in metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 130, err[-4000:]
    command = assert_one_line(err, "raysl: interrupted (SIGTERM) after epoch ")
    line = last_line(err)
    done = int(line.split("a resume continues from the epoch ", 1)[1].split(" ", 1)[0])
    finished = int(line.split("after epoch ", 1)[1].split(" ", 1)[0])
    assert finished >= done and line.startswith(
        f"raysl: interrupted (SIGTERM) after epoch {finished} of {EPOCHS}; a resume continues from the epoch {done} "
        f"checkpoint in {out}"), line
    assert finished == last_epoch_shown(err)  # the epoch the line names is the last one the user saw
    assert command == shlex.join(["raysl", "train", QUICKSTART, *TRAIN, "--out", str(out)])
    assert_nothing_torn(out)
    # every checkpoint left is one Ray registered, the newest being the epoch the line names
    assert {p.name for p in checkpoints(out)} == registered_checkpoints(out)
    snapshot = json.loads((out / "train" / "checkpoint_manager_snapshot.json").read_text())
    assert snapshot["latest_checkpoint_result"]["metrics"]["epoch"] == done

    # 2. the newest checkpoint torn (as a full disk leaves it): the resume falls back to the one before. Ray
    # Train's record of the checkpoints cut short too (Ray rewrites it in place; a full disk left it torn and Ray
    # then refused the resume with a traceback): the resume puts back raysl's copy of the last whole one
    older, newest = checkpoints(out)[-2:]
    epoch_before = int(torch.load(older / "state.pt", weights_only=True)["epoch"])
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[: len(data) // 3])
    record = out / "train" / "checkpoint_manager_snapshot.json"
    assert (out / "train" / "raysl_checkpoint_record.json").read_text() == record.read_text()  # kept current
    record.write_text(record.read_text()[: len(record.read_text()) // 2])
    proc = resume_in_background(command)
    wait_until(proc, lambda: len(epochs_in(out)) >= epoch_before + 2, "2 epochs after the fallback")
    # 3. a scheduler's SIGTERM to the whole process group. Catches: the local Ray's GCS and raylet were in
    # the driver's group and died with it; the driver then waited for them and Ray ended it with exit 1
    # after 60 s, no line, the checkpoints written after the last registered one left behind
    cluster = cluster_of(proc.pid)  # checked at the end: none outlives the driver
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = finish(proc)
    expected = f"[raysl] skipped checkpoint {newest}: state.pt is unreadable"
    skipped = [ln for ln in err.splitlines() if ln.startswith("[raysl] skipped checkpoint")]
    assert len(skipped) == 1 and skipped[0].startswith(expected), err[-3000:]
    assert skipped[0].endswith(f"; resuming from epoch {epoch_before}"), skipped[0]
    assert "resuming the run" in err
    assert f"[raysl] Ray Train's record of the checkpoints in {out / 'train'} was cut short (a full disk?); put " \
           f"back its last whole copy, which ends at epoch {done}" in err.splitlines(), err[-3000:]
    assert proc.returncode == 130, err[-4000:]
    command = assert_one_line(err, "raysl: interrupted (SIGTERM) after epoch ")
    assert f" of {EPOCHS}; a resume continues from the epoch " in last_line(err), last_line(err)
    assert f" checkpoint in {out}" in last_line(err), last_line(err)
    assert int(last_line(err).split("after epoch ", 1)[1].split(" ", 1)[0]) == last_epoch_shown(err)
    assert command.endswith(f"--out {out}") and f"--set optim.epochs={EPOCHS}" in command
    kept = epochs_in(out)
    assert epoch_before + 2 <= len(kept) < EPOCHS and kept == list(range(1, len(kept) + 1))
    assert_nothing_torn(out)
    # catches the same bug's leftovers: every checkpoint folder left is one Ray registered
    assert {p.name for p in checkpoints(out)} == registered_checkpoints(out)

    # 4. a Train worker SIGKILLed (the OOM killer) in the resumed run
    proc = resume_in_background(command)
    wait_until(proc, lambda: len(epochs_in(out)) >= len(kept) + 1 and train_worker_pids(proc.pid),
               "an epoch after the resume and a worker")
    (worker,) = train_worker_pids(proc.pid)
    os.kill(worker, signal.SIGKILL)
    stdout, err = finish(proc)
    assert proc.returncode == 2, err[-4000:]
    command = assert_one_line(err, "raysl: error: a training worker died (killed by a signal: out of memory or "
                                   "preemption?); epochs 1-")
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "errored"
    assert_nothing_torn(out)

    # 5. resumed to the end: every epoch exactly once, nothing torn
    resumed = run_resume(command, out)
    assert "resuming the run" in resumed.stderr
    # catches the risk of the fix of step 3 (the local Ray's processes in a session of their own, out of
    # the driver's group): a cluster left running after its driver ended
    assert_all_ended(cluster, "processes of the Ray cluster of the run stopped in step 3")


# --------------------------------------------------------------------------
# checkpoint fallback and metrics.jsonl, on real files (no Ray)


def _save(directory: Path, epoch: int) -> None:
    directory.mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(2) * epoch}, "optimizer": {}, "optimizer_name": "adamw",
                "epoch": epoch, "global_step": 5 * epoch, "metrics": {"epoch": epoch}}, directory / "state.pt")


class _Checkpoints:
    """The LoopIO part restore_state reads: Ray's latest checkpoint is ``latest``."""

    def __init__(self, latest: Path):
        self.latest = latest

    def checkpoint_candidates(self):
        from raysl.loop_io import resume_candidates

        return resume_candidates(str(self.latest))


class _Lines:
    def __init__(self):
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)


def test_resume_falls_back_past_damaged_checkpoints_and_ignores_unregistered_ones(tmp_path):
    from raysl.loop_io import restore_state

    run = tmp_path / "train"
    _save(run / "checkpoint_2026-01-01_00-00-01.000000", 1)
    _save(run / "checkpoint_2026-01-01_00-00-02.000000", 2)
    missing = run / "checkpoint_2026-01-01_00-00-03.000000"
    _save(missing, 3)
    (missing / "state.pt").unlink()
    torn = run / "checkpoint_2026-01-01_00-00-04.000000"
    _save(torn, 4)
    (torn / "state.pt").write_bytes((torn / "state.pt").read_bytes()[:100])
    _save(run / "checkpoint_2026-01-01_00-00-05.000000", 5)  # written after Ray's latest: never resumed from
    said = _Lines()
    state = restore_state(_Checkpoints(torn), said)
    assert state["epoch"] == 2
    assert said.lines == [
        f"[raysl] skipped checkpoint {torn}: state.pt is unreadable" + said.lines[0].split("is unreadable", 1)[1],
        f"[raysl] skipped checkpoint {missing}: state.pt is missing; resuming from epoch 2",
    ]
    assert said.lines[0].endswith("; resuming from epoch 2") and "truncated" in said.lines[0]


def test_resume_with_no_loadable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    from raysl.errors import CheckpointError
    from raysl.loop_io import restore_state

    torn = tmp_path / "train" / "checkpoint_2026-01-01_00-00-01.000000"
    _save(torn, 1)
    (torn / "state.pt").write_bytes(b"\x80\x02")
    with pytest.raises(CheckpointError, match="no checkpoint of this run loads"):
        restore_state(_Checkpoints(torn))


def test_metrics_rows_after_a_fallback_epoch_are_replaced_once(tmp_path):
    from raysl.run_folder import MetricsFile

    metrics = MetricsFile(tmp_path / "metrics.jsonl", show=False)
    for epoch in (1, 2, 3, 4):
        metrics.write({"epoch": epoch, "loss": 1.0})
    for epoch in (3, 4, 5):  # resumed from epoch 2's checkpoint: 3 and 4 are trained again
        metrics.write({"epoch": epoch, "loss": 0.5})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["loss"]) for r in rows] == [(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5), (5, 0.5)]


# --------------------------------------------------------------------------
# what a user gets wrong: one line, exit 2, before Ray starts


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_config_or_space_is_refused(tmp_path, capsys, text):
    from raysl.cli import main

    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    for command in (["train", str(empty)], ["tune", str(empty)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"raysl: error: {empty} is empty; ") and err.count("\n") == 1, err


def test_resume_of_an_experiment_never_run_is_refused(tmp_path, capsys):
    from raysl.cli import main

    code = main(["tune", QUICKSTART, "--storage", str(tmp_path), "--name", "never_ran", "--resume"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == f"raysl: error: no experiment never_ran in {tmp_path} to resume; drop --resume to start it\n"
    assert not (tmp_path / "never_ran").exists()


# --------------------------------------------------------------------------
# search records: what finally happened


def _write_trial(experiment: Path, name: str, rows: list[dict], error: str | None = None) -> None:
    trial = experiment / name
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"optim.lr": 0.002}))
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if error:
        (trial / "error.txt").write_text(error)


def test_a_trial_tune_recovered_is_not_labelled_errored(tmp_path):
    """Tune leaves error.txt after a crash it restarted the trial from; the trial finished after it."""
    from raysl.results import load_experiments

    exp = tmp_path / "recovered"
    now = int(time.time())
    rows = [{"epoch": e, "eval_epoch": e, "knn_acc": 0.9 + e / 100, "status": "finished" if e == 3 else "running",
             "trial_id": "aaaaaaa1", "training_iteration": e, "timestamp": now - 60 + 20 * e} for e in (1, 2, 3)]
    _write_trial(exp, "raysl_trial_aaaaaaa1", rows, error="ray.exceptions.ActorDiedError: worker died")
    error = exp / "raysl_trial_aaaaaaa1" / "error.txt"
    os.utime(error, (now - 30, now - 30))  # the crash after epoch 1; epochs 2 and 3 came after the restart
    state = {"trial_data": [[json.dumps({"relative_logdir": "raysl_trial_aaaaaaa1", "status": "TERMINATED"}), "{}"]]}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    (found,) = load_experiments(str(exp))
    assert found.trials.set_index("trial_id").loc["aaaaaaa1", "status"] == "finished"
    (exp / "experiment_state-2026-01-01_00-00-00.json").unlink()  # no state: the reports after the error win
    (found,) = load_experiments(str(exp))
    assert found.trials.set_index("trial_id").loc["aaaaaaa1", "status"] == "finished"
    os.utime(error, (now + 5, now + 5))  # an error after the last report, no state to say otherwise: errored
    (found,) = load_experiments(str(exp))
    assert found.trials.set_index("trial_id").loc["aaaaaaa1", "status"] == "errored"


@pytest.mark.slow
@pytest.mark.local_ray
def test_sigterm_to_tune_process_group_keeps_true_statuses_and_resumes_every_trial_once(tmp_path):
    from raysl.results import load_experiments

    storage, name = tmp_path / "results", "interrupted"
    experiment = storage / name
    # the objective is measured at epoch 6 only: an interrupted trial has no real objective yet
    args = ["tune", QUICKSTART, "--set", "optim.epochs=6", "--set", "eval.every_epochs=6", "--set", "model.width=8",
            "--num-samples", "3", "--set", "tune.max_concurrent=1", "--set", "tune.scheduler=fifo",
            "--storage", str(storage), "--name", name]
    proc = subprocess.Popen([RAYSL, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)

    def trials() -> dict[str, list[dict]]:
        found = {}
        for d in sorted(experiment.glob("raysl_trial_*")):
            text = (d / "result.json").read_text() if (d / "result.json").exists() else ""
            found[d.name] = [json.loads(line) for line in text.splitlines() if line.endswith("}")]
        return found

    def one_finished_one_running() -> bool:
        last = [rows[-1].get("status") for rows in trials().values() if rows]
        return "finished" in last and "running" in last

    wait_until(proc, one_finished_one_running, "a finished trial and a running one")
    # SIGTERM to the whole process group (`timeout`, Slurm, `kill -TERM -- -PGID`; the driver's own
    # handling is the same as for a SIGTERM to it alone). Catches: the local Ray the driver started was
    # in its group, its GCS died with it, and Ray ended the driver with exit 1 after 60 s, no line
    cluster = cluster_of(proc.pid)  # checked after the resume: none outlives the driver
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, err = finish(proc)
    assert proc.returncode == 130, f"{stdout[-2000:]}\n{err[-4000:]}"
    command = assert_one_line(err, "raysl: interrupted (SIGTERM): ")
    assert command == shlex.join(["raysl", *args, "--resume"])
    summary = json.loads(stdout.strip().splitlines()[-1])
    before = trials()
    finished = {n for n, rows in before.items() if rows and rows[-1]["status"] == "finished"}
    assert summary["statuses"] == {"finished": len(finished), "unfinished": len(before) - len(finished)}, summary
    assert summary["statuses"]["unfinished"] >= 1
    # the best is a trial with a measured objective, never the placeholder of an unfinished one
    assert f"raysl_trial_{summary['best_trial']}" in finished
    assert yaml.safe_load((experiment / "best_config.yaml").read_text())["optim"]["epochs"] == 6
    (read,) = load_experiments(str(experiment))
    statuses = read.trials.set_index("trial_dir")["status"].to_dict()
    assert statuses == {n: "finished" if n in finished else "unfinished" for n in before}

    resumed = subprocess.run([RAYSL, *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True,
                             timeout=HANG)
    assert resumed.returncode == 0, f"{resumed.stdout[-2000:]}\n{resumed.stderr[-4000:]}"
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["statuses"] == {"finished": 3}
    after = trials()
    assert len(after) == 3
    for trial, rows in after.items():
        epochs = [r["epoch"] for r in rows]
        if trial in finished:
            assert rows == before[trial]  # not touched
        else:
            # restarted from Tune's last recorded checkpoint: an epoch logged after it is reported
            # again (at-least-once), none is skipped
            assert sorted(set(epochs)) == list(range(1, 7)), (trial, epochs)
            assert len(epochs) - len(set(epochs)) <= 1, (trial, epochs)
    (read,) = load_experiments(str(experiment))
    assert set(read.trials["status"]) == {"finished"}
    # catches a cluster left running after its driver ended (its processes are out of the driver's group)
    assert_all_ended(cluster, "processes of the interrupted search's Ray cluster")


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (sig - 1)))


def test_sigterm_while_raysl_starts_is_one_line_and_exit_130(tmp_path, head):
    """SIGTERM in the seconds `raysl train` spends importing torch and Ray, before its run installs its own
    handlers: the line and exit 130, not Python's silent exit 143 (what it was). Sent once the process
    catches SIGTERM (its /proc SigCgt mask), so the test does not race the interpreter's start; whichever
    of raysl's handlers takes it, the user gets one line, exit 130 and no traceback."""
    out = tmp_path / "run"
    proc = subprocess.Popen([RAYSL, "train", QUICKSTART, *TRAIN, "--out", str(out)], cwd=REPO, env=head.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG
        while proc.poll() is None and not _catches(proc.pid, signal.SIGTERM) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("raysl: ")]
    assert len(lines) == 1 and lines[0].startswith("raysl: interrupted (SIGTERM)"), err[-3000:]
    assert lines[0] == err.strip().splitlines()[-1]
    assert lines[0].endswith(f"resume with: {shlex.join(['raysl', 'train', QUICKSTART, *TRAIN, '--out', str(out)])}"), \
        lines[0]
