"""`--resume` unpickles nothing from an experiment folder that raysl did not sign (raysl.signing).

Real Ray, real files: one tiny `raysl tune` search (2 trials, 1 epoch, width 8) is run once (a real
process); then each check replaces one of Ray's state files with a pickle whose payload would create a
marker file, runs `--resume` and asserts exit 2, one `raysl: error:` line naming the file, and no marker:
the refusal comes before anything unpickles it. A refusal comes before Ray starts, so those `--resume`s
run `raysl`'s CLI in this process (a fresh interpreter would spend ~10 s importing torch and Ray for
each). A state file cut short is refused as damaged, the folder left byte for byte as it was; with
the originals put back, `--trust-experiment` re-signs a folder whose signatures are gone and resumes.
Every `raysl` here gets its own secret (XDG_CONFIG_HOME in the test's folder). The `raysl scale` case
is in tests/test_scaling_report.py; a full disk, a damaged state, a restore that Ray fails on and the
resume of a signed folder in tests/test_storage_faults.py (and tests/test_study.py).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAYSL = str(Path(sys.executable).parent / "raysl")
QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")
TINY = ["--set", "optim.epochs=1", "--set", "model.width=8"]
HANG = 900  # a hang guard far above any run time here, not a timing assumption


class Payload:
    """Unpickling this runs ``touch MARKER``: what a tampered state file could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _env(root: Path, head) -> dict:
    """The suite's Ray head (conftest), and a secret of the test's own (XDG_CONFIG_HOME)."""
    env = {**head.env, "XDG_CONFIG_HOME": str(root / "config")}
    env.pop("RAYSL_SECRET", None)
    return env


def _raysl(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([RAYSL, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=HANG)


@pytest.fixture
def here(search, head, monkeypatch, capsys):
    """``here(args, **env)``: `raysl ARGS` in this process with the search's secret (``env`` overrides,
    e.g. RAYSL_SECRET); returns a CompletedProcess. For refusals only: should one not refuse, the search
    it starts joins the suite's head (RAY_ADDRESS)."""
    from raysl.cli import main

    def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
        monkeypatch.setenv("XDG_CONFIG_HOME", search["env"]["XDG_CONFIG_HOME"])
        monkeypatch.setenv("RAY_ADDRESS", head.env["RAY_ADDRESS"])
        monkeypatch.delenv("RAYSL_SECRET", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = main(args)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def _listing(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256): what a refused resume must leave as it was."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"


def _refused(proc: subprocess.CompletedProcess, banner: str | None = None) -> str:
    """The one stderr line of a refused resume (after ``banner``, the line `raysl scale` starts with)."""
    assert proc.returncode == 2, _explain(proc)
    lines = proc.stderr.strip().splitlines()
    if banner is not None:
        assert lines and lines[0].startswith(banner), _explain(proc)
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith("raysl: error: "), _explain(proc)
    return lines[0]


@pytest.fixture(scope="module")
def search(tmp_path_factory, head):
    root = tmp_path_factory.mktemp("resume_safety")
    env = _env(root, head)
    # one trial at a time (one reused trial process; what is checked is the state files, not concurrency)
    args = ["tune", QUICKSTART, "--num-samples", "2", *TINY, "--set", "tune.max_concurrent=1", "--storage",
            str(root / "results"), "--name", "exp"]
    done = _raysl(args, env)
    assert done.returncode == 0, _explain(done)
    return {"root": root, "env": env, "args": args, "experiment": root / "results" / "exp",
            "marker": root / "MARKER"}


def _one(experiment: Path, pattern: str) -> Path:
    (path,) = experiment.glob(pattern)
    return path


def test_a_search_signs_every_state_file_ray_unpickles(search):
    experiment = search["experiment"]
    signed = json.loads((experiment / "raysl_signatures.json").read_text())
    assert signed["algorithm"] == "HMAC-SHA256"
    names = set(signed["files"])
    expected = {"tuner.pkl", "optuna.db", _one(experiment, "searcher-state-*.pkl").name,
                _one(experiment, "experiment_state-*.json").name, _one(experiment, "search_gen_state-*.json").name}
    expected |= {str(p.relative_to(experiment)) for p in experiment.glob("raysl_trial_*/params.pkl")}
    assert len(list(experiment.glob("raysl_trial_*/params.pkl"))) == 2
    assert names == expected
    # the secret is outside the experiment, private to the user
    secret = search["root"] / "config" / "raysl" / "secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) == 64
    assert secret.read_text().strip() not in "".join(p.read_text(errors="ignore") for p in experiment.glob("*.json"))


@pytest.mark.parametrize("pattern", ["tuner.pkl", "searcher-state-*.pkl", "search_gen_state-*.json",
                                     "raysl_trial_*/params.pkl"])
def test_a_replaced_state_file_is_refused_and_never_unpickled(search, here, pattern):
    experiment, marker = search["experiment"], search["marker"]
    target = min(experiment.glob(pattern))
    original = target.read_bytes()
    target.write_bytes(pickle.dumps(Payload(marker)))
    try:
        line = _refused(here([*search["args"], "--resume"]))
    finally:
        target.write_bytes(original)
    assert line.startswith(f"raysl: error: {target}: not written by raysl on this machine/secret or changed since "
                           "(HMAC mismatch); "), line
    assert "--trust-experiment" in line and "RAYSL_SECRET" in line
    # a changed file may be a replaced one or a damaged one: the line says both (this one is a whole pickle)
    assert "changed means replaced by someone, or damaged without showing it" in line, line
    assert not marker.exists()


def test_an_added_pickle_is_refused_as_unsigned(search, here):
    # Ray restores the searcher from the newest searcher-state-*.pkl by name: an added one would win
    experiment, marker = search["experiment"], search["marker"]
    added = experiment / "searcher-state-2999-01-01_00-00-00.pkl"
    added.write_bytes(pickle.dumps(Payload(marker)))
    try:
        line = _refused(here([*search["args"], "--resume"]))
    finally:
        added.unlink()
    assert line.startswith(f"raysl: error: {added}: not written by raysl on this machine/secret or changed since "
                           "(no signature)"), line
    assert not marker.exists()


def test_another_secret_is_refused_and_says_which_variable_to_set(search, here):
    line = _refused(here([*search["args"], "--resume"], RAYSL_SECRET="a-teammates-secret-" + "0" * 32))
    assert f"{search['experiment'] / 'tuner.pkl'}: not written by raysl on this machine/secret" in line
    assert "signed with another secret: set RAYSL_SECRET" in line, line


@pytest.mark.slow
def test_a_damaged_state_is_refused_and_trust_experiment_re_signs_a_folder_without_signatures(search, here):
    experiment, marker = search["experiment"], search["marker"]
    # A searcher state cut short (as a crash leaves it). Bugs caught: a Ray traceback, then "raysl: interrupted
    # (SIGINT)" with no signal sent, and a new experiment state with 0 trials saved over the good one (every later
    # --resume failed, the good file put back or not). Now: one line naming the file and the fix; nothing changed.
    searcher = min(experiment.glob("searcher-state-*.pkl"))
    good = searcher.read_bytes()
    searcher.write_bytes(good[: len(good) // 3])
    try:
        before = _listing(experiment)
        line = _refused(here([*search["args"], "--resume"]))
        assert line.startswith(f"raysl: error: {searcher}: not written by raysl on this machine/secret or changed "
                               "since (HMAC mismatch); and it is cut short"), line
        assert "put back an intact copy of that file" in line and "--trust-experiment would not help" in line, line
        assert _listing(experiment) == before
    finally:
        searcher.write_bytes(good)
    # put back, it resumes: below with --trust-experiment, checked signatures in tests/test_storage_faults.py
    # (with a resume Ray itself fails on) and tests/test_study.py

    signatures = experiment / "raysl_signatures.json"
    signatures.unlink()  # as in an experiment written before raysl signed its state
    line = _refused(here([*search["args"], "--resume"]))
    assert line.startswith(f"raysl: error: {signatures}: missing, so raysl cannot tell whether the pickled Ray "
                           f"state in {experiment} (tuner.pkl and "), line
    assert "resume once with --trust-experiment" in line
    trusted = _raysl([*search["args"], "--resume", "--trust-experiment"], search["env"])
    assert trusted.returncode == 0, _explain(trusted)
    assert json.loads(trusted.stdout.strip().splitlines()[-1])["num_trials"] == 2
    assert "[raysl] --trust-experiment: signed the " in trusted.stderr
    assert "tuner.pkl" in json.loads(signatures.read_text())["files"]
    assert not marker.exists()


def test_trust_experiment_needs_resume(search, here, tmp_path):
    line = _refused(here(["tune", QUICKSTART, *TINY, "--storage", str(tmp_path), "--trust-experiment"]))
    assert "--trust-experiment signs an experiment's saved state to resume it; use it with --resume" in line
    assert not any(tmp_path.iterdir())


# `raysl scale --resume` with a replaced tuner.pkl: tests/test_scaling_report.py (on its interrupted grid)


# --------------------------------------------------------------------------
# the pieces, in process


def test_the_secret_file_is_created_once_private_and_refused_when_others_can_read_it(tmp_path, monkeypatch):
    from raysl import signing
    from raysl.errors import ConfigError

    monkeypatch.delenv("RAYSL_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    first = signing.secret()
    path = tmp_path / "raysl" / "secret"
    assert path.stat().st_mode & 0o777 == 0o600 and signing.secret() == first
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=f"{path}: raysl's signing secret is accessible to other users .*chmod 600"):
        signing.secret()
    monkeypatch.setenv("RAYSL_SECRET", "short")
    with pytest.raises(ConfigError, match="RAYSL_SECRET is shorter than 16 characters"):
        signing.secret()


def test_a_signed_file_renamed_does_not_verify(tmp_path, monkeypatch):
    """The path is part of what is signed: one signed pickle cannot stand in for another."""
    from raysl import signing
    from raysl.errors import UntrustedStateError

    monkeypatch.setenv("RAYSL_SECRET", "x" * 32)
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps("a"))
    (tmp_path / "searcher-state-1.pkl").write_bytes(pickle.dumps("b"))
    (tmp_path / "trial").mkdir()
    (tmp_path / "trial" / "state.pt").write_bytes(b"weights: not a state file")
    assert signing.sign_experiment(str(tmp_path)) == 2
    assert signing.verify_experiment(str(tmp_path)) == 2
    shutil.copy(tmp_path / "tuner.pkl", tmp_path / "searcher-state-1.pkl")
    with pytest.raises(UntrustedStateError, match=r"searcher-state-1\.pkl: not written by raysl .*\(HMAC mismatch\)"):
        signing.verify_experiment(str(tmp_path))


@pytest.mark.parametrize(("relpath", "signed"), [
    ("tuner.pkl", True), ("searcher-state-2026-01-01_00-00-00.pkl", True), ("callback-states-x.pkl", True),
    ("raysl_trial_1/params.pkl", True), ("raysl_trial_1/error.pkl", True),
    ("experiment_state-2026-01-01_00-00-00.json", True), ("search_gen_state-x.json", True),
    ("basic-variant-state-x.json", True), ("raysl_trial_1/trial_metadata.json", True), ("optuna.db", True),
    # read as JSON, YAML or weights only: nothing in them runs
    ("raysl_study.json", False), ("scaling.json", False), ("raysl_space.yaml", False),
    ("raysl_trial_1/checkpoint_000001/state.pt", False), ("raysl_trial_1/train/checkpoint_manager_snapshot.json", False),
])
def test_the_files_ray_or_optuna_unpickle_are_the_ones_signed(relpath, signed):
    from raysl.signing import is_state_file

    assert is_state_file(relpath) is signed


def test_a_state_file_cut_short_is_told_from_a_whole_one_by_its_bytes_alone(tmp_path, monkeypatch):
    """raysl.signing.damage reads bytes only (a tampered file is never unpickled to find out): a pickle that
    ends before its STOP, JSON that does not parse, an SQLite file SQLite calls damaged. A file raysl signed as
    Ray wrote it cut short (a full disk before raysl checked) is refused as damaged, not as changed."""
    import sqlite3

    from raysl import signing, storage
    from raysl.errors import UntrustedStateError

    monkeypatch.setenv("RAYSL_SECRET", "x" * 32)
    whole = pickle.dumps({"trials": list(range(500))})
    (tmp_path / "searcher-state-1.pkl").write_bytes(whole)
    (tmp_path / "experiment_state-1.json").write_text(json.dumps({"trial_data": ["x" * 100]}))
    with sqlite3.connect(tmp_path / "optuna.db") as con:
        con.execute("create table t (x)")
        con.executemany("insert into t values (?)", [("y" * 500,)] * 50)
    root = storage.resolve(str(tmp_path))
    assert [signing.damage(root.join(rel), rel) for rel in signing.state_files(root)] == [None, None, None]
    assert signing.sign_experiment(str(tmp_path)) == 3

    (tmp_path / "searcher-state-1.pkl").write_bytes(whole[:-1])
    assert signing.damage(root.join("searcher-state-1.pkl"), "searcher-state-1.pkl").startswith("it is cut short")
    (tmp_path / "experiment_state-1.json").write_text('{"trial_data": ["xx')
    assert signing.damage(root.join("experiment_state-1.json"), "experiment_state-1.json").startswith(
        "it is not complete JSON")
    db = (tmp_path / "optuna.db").read_bytes()
    (tmp_path / "optuna.db").write_bytes(db[:100] + b"\0" * (len(db) - 100))
    assert signing.damage(root.join("optuna.db"), "optuna.db") is not None
    with pytest.raises(UntrustedStateError, match=r"experiment_state-1\.json: not written by raysl .*\(HMAC mismatch\);"
                                                  r" and it is not complete JSON .*put back an intact copy"):
        signing.verify_experiment(str(tmp_path))

    # signed as it was written, yet cut short: damaged, and --trust-experiment refuses to sign it
    for name in ("experiment_state-1.json", "optuna.db"):
        (tmp_path / name).unlink()
    (tmp_path / "searcher-state-1.pkl").write_bytes(whole[: len(whole) // 2])
    signing.sign_experiment(str(tmp_path))
    with pytest.raises(UntrustedStateError, match=r"searcher-state-1\.pkl: damaged: it is cut short .*although raysl "
                                                  "signed it as Ray wrote it"):
        signing.verify_experiment(str(tmp_path))
    with pytest.raises(UntrustedStateError, match="raysl signed nothing"):
        signing.check_intact(str(tmp_path), trusting=True)


def test_a_search_that_stopped_without_a_signal_is_never_called_interrupted(tmp_path, capsys):
    """raysl.search._finish: unfinished trials are an interruption only when a signal came; a search that its
    full storage stopped is one error line with the resume command, its torn checkpoint removed."""
    from types import SimpleNamespace

    from raysl.errors import StorageError
    from raysl.search import _finish
    from raysl.space_file import load_space

    space = load_space(QUICKSTART, [o for o in TINY if o != "--set"])
    objectives = space.objectives(labeled=True)
    trial = tmp_path / "raysl_trial_0000abcd"
    (trial / "checkpoint_000000").mkdir(parents=True)  # copied in part, never registered
    (trial / "checkpoint_000000" / "state.pt").write_bytes(b"torn")

    class Results(list):
        _experiment_analysis = SimpleNamespace(trials=[SimpleNamespace(path=str(trial), status="RUNNING")])

    results = Results([SimpleNamespace(metrics={"epoch": 1, "eval_epoch": 1, "knn_acc": 0.5, "status": "running"},
                                       path=str(trial), config={}, error=None, checkpoint=None)])
    resume = "raysl tune space.yaml --resume"
    assert _finish(results, space, objectives, str(tmp_path), 2, resume, interrupted=False) == 1
    err = capsys.readouterr().err
    assert "raysl: error: the search stopped with 0 of 2 trials ended and 2 unfinished although nothing " \
           "interrupted it" in err and "interrupted (" not in err, err
    assert _finish(results, space, objectives, str(tmp_path), 2, resume, interrupted=True) == 130
    assert "raysl: interrupted (" in capsys.readouterr().err

    full = StorageError(f"{trial}: no space left on /mnt while writing a checkpoint of the trial; free space on /mnt")
    with pytest.raises(StorageError, match=r"no space left on /mnt .*; the search stopped with 0 of 2 trials ended, 2 "
                                           r"unfinished .*; resume with: raysl tune space\.yaml --resume$"):
        _finish(results, space, objectives, str(tmp_path), 2, resume, interrupted=True, failure=full)
    assert not (trial / "checkpoint_000000").exists()
