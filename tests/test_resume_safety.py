"""`--resume` unpickles nothing from an experiment folder that raysl did not sign (raysl.signing).

Real processes, real Ray, real files: one tiny `raysl tune` search (2 trials, 1 epoch, width 8) and one
tiny `raysl scale` grid (2 runs) are run once each; then each check replaces one of Ray's state files
with a pickle whose payload would create a marker file, runs `--resume` and asserts exit 2, one
`raysl: error:` line naming the file, and no marker: the refusal comes before anything unpickles it.
The originals put back (still signed), `--resume` works; `--trust-experiment` re-signs a folder whose
signatures are gone. Every `raysl` here gets its own secret (XDG_CONFIG_HOME in the test's folder).
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
    args = ["tune", QUICKSTART, "--num-samples", "2", *TINY, "--storage", str(root / "results"), "--name", "exp"]
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
def test_a_replaced_state_file_is_refused_and_never_unpickled(search, pattern):
    experiment, marker = search["experiment"], search["marker"]
    target = min(experiment.glob(pattern))
    original = target.read_bytes()
    target.write_bytes(pickle.dumps(Payload(marker)))
    try:
        line = _refused(_raysl([*search["args"], "--resume"], search["env"]))
    finally:
        target.write_bytes(original)
    assert line.startswith(f"raysl: error: {target}: not written by raysl on this machine/secret or changed since "
                           "(HMAC mismatch); "), line
    assert "--trust-experiment" in line and "RAYSL_SECRET" in line
    assert not marker.exists()


def test_an_added_pickle_is_refused_as_unsigned(search):
    # Ray restores the searcher from the newest searcher-state-*.pkl by name: an added one would win
    experiment, marker = search["experiment"], search["marker"]
    added = experiment / "searcher-state-2999-01-01_00-00-00.pkl"
    added.write_bytes(pickle.dumps(Payload(marker)))
    try:
        line = _refused(_raysl([*search["args"], "--resume"], search["env"]))
    finally:
        added.unlink()
    assert line.startswith(f"raysl: error: {added}: not written by raysl on this machine/secret or changed since "
                           "(no signature)"), line
    assert not marker.exists()


def test_another_secret_is_refused_and_says_which_variable_to_set(search):
    env = {**search["env"], "RAYSL_SECRET": "a-teammates-secret-" + "0" * 32}
    line = _refused(_raysl([*search["args"], "--resume"], env))
    assert f"{search['experiment'] / 'tuner.pkl'}: not written by raysl on this machine/secret" in line
    assert "signed with another secret: set RAYSL_SECRET" in line, line


@pytest.mark.slow
def test_untouched_state_resumes_and_trust_experiment_re_signs_a_folder_without_signatures(search):
    experiment, marker = search["experiment"], search["marker"]
    resumed = _raysl([*search["args"], "--resume"], search["env"])
    assert resumed.returncode == 0, _explain(resumed)
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["num_trials"] == 2

    signatures = experiment / "raysl_signatures.json"
    signatures.unlink()  # as in an experiment written before raysl signed its state
    line = _refused(_raysl([*search["args"], "--resume"], search["env"]))
    assert line.startswith(f"raysl: error: {signatures}: missing, so raysl cannot tell whether the pickled Ray "
                           f"state in {experiment} (tuner.pkl and "), line
    assert "resume once with --trust-experiment" in line
    trusted = _raysl([*search["args"], "--resume", "--trust-experiment"], search["env"])
    assert trusted.returncode == 0, _explain(trusted)
    assert "[raysl] --trust-experiment: signed the " in trusted.stderr
    assert "tuner.pkl" in json.loads(signatures.read_text())["files"]
    assert not marker.exists()


def test_trust_experiment_needs_resume(search, tmp_path):
    line = _refused(_raysl(["tune", QUICKSTART, *TINY, "--storage", str(tmp_path), "--trust-experiment"],
                           search["env"]))
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
    (tmp_path / "tuner.pkl").write_bytes(b"a")
    (tmp_path / "searcher-state-1.pkl").write_bytes(b"b")
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
