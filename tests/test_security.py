"""Safe defaults: files that would run code are refused, and a cluster with
token authentication refuses anyone without the token.

- A checkpoint holding a pickled object whose ``__reduce__`` runs a shell
  command is refused by ``raysl.checkpoint.load_state`` with a
  ``CheckpointError``, and the command does not run. (The same payload *does*
  run under a plain ``torch.load(weights_only=False)``, which shows the test's
  payload is live and not refused for some other reason.)
- YAML with a ``!!python/object/apply`` tag is refused by
  ``raysl.config_load.read_yaml`` with a ``ConfigError``; nothing runs.
- A local Ray head started with ``RAY_AUTH_MODE=token`` (own temp dir, free
  ports, 127.0.0.1 only) runs a tiny raysl job submitted with the token and
  refuses submissions without it (401) or with a wrong one (403). Only that
  head's process group is stopped afterwards; ``ray stop`` would stop every
  Ray on the machine.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from raysl.checkpoint import load_state, save_state
from raysl.config_load import parse_override, read_yaml
from raysl.errors import CheckpointError, ConfigError
from raysl.run_config import load_config

from conftest import HANG

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class RunsACommand:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _marker(tmp_path: Path) -> Path:
    return tmp_path / f"pwned_{secrets.token_hex(8)}"


# --------------------------------------------------------------------------- checkpoints


def _torch_save(path: Path, payload) -> None:
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3, "extra": payload}, path)


def _plain_pickle(path: Path, payload) -> None:
    path.write_bytes(pickle.dumps({"epoch": 3, "extra": payload}, protocol=2))


@pytest.mark.parametrize("write", [_torch_save, _plain_pickle], ids=["torch.save", "legacy-pickle"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path, write) -> None:
    marker = _marker(tmp_path)
    path = tmp_path / "evil.pt"
    write(path, RunsACommand(f"touch {marker}"))

    with pytest.raises(CheckpointError) as refused:
        load_state(str(path))

    message = str(refused.value)
    assert str(path) in message and "refused" in message, message
    assert "only load checkpoints written by raysl" in message
    assert not marker.exists(), "the payload ran while loading"

    # The payload is live: an unsafe load runs it (into tmp_path, harmless).
    live = _marker(tmp_path)
    write(path, RunsACommand(f"touch {live}"))
    try:
        torch.load(path, weights_only=False)  # noqa: S614 - proving the payload is real
    except Exception:  # a bare pickle is no torch file, but it is unpickled (and runs) first
        pass
    assert live.exists()


def test_normal_checkpoint_round_trips(tmp_path: Path) -> None:
    state = {
        "model": {"w": torch.randn(3, 4), "b": torch.zeros(4, dtype=torch.float64)},
        "optimizer": {"state": {0: {"momentum_buffer": torch.randn(3, 4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "epoch": 7,
        "method": "simclr",
        "history": [1.5, 1.25, None, True],
    }
    path = tmp_path / "ok.pt"
    save_state(str(path), state)
    loaded = load_state(str(path))

    assert loaded.keys() == state.keys()
    for key in ("w", "b"):
        assert torch.equal(loaded["model"][key], state["model"][key])
        assert loaded["model"][key].dtype == state["model"][key].dtype
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], state["optimizer"]["state"][0]["momentum_buffer"])
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert (loaded["epoch"], loaded["method"], loaded["history"]) == (7, "simclr", [1.5, 1.25, None, True])
    assert not (tmp_path / "ok.pt.tmp").exists()


def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "torn.pt"
    save_state(str(path), {"w": torch.randn(64, 64)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable|refused"):
        load_state(str(path))


# --------------------------------------------------------------------------- YAML


def _evil_yaml(marker: Path) -> dict[str, str]:
    command = f"touch {marker}"
    return {
        "top-level": f"!!python/object/apply:os.system [{json.dumps(command)}]\n",
        "nested": "base:\n  method:\n    name: simclr\n"
                  f"  optim: !!python/object/apply:os.system [{json.dumps(command)}]\n",
        "object-new": f"method: !!python/object/new:subprocess.Popen [[touch, {json.dumps(str(marker))}]]\n",
    }


@pytest.mark.parametrize("variant", ["top-level", "nested", "object-new"])
def test_yaml_with_python_tags_is_refused(tmp_path: Path, variant: str) -> None:
    marker = _marker(tmp_path)
    path = tmp_path / "evil.yaml"
    path.write_text(_evil_yaml(marker)[variant])

    with pytest.raises(ConfigError) as refused:
        read_yaml(path)
    assert str(path) in str(refused.value) and "not valid YAML" in str(refused.value)
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists(), "the YAML payload ran"


def test_yaml_payload_is_live_under_an_unsafe_loader(tmp_path: Path) -> None:
    marker = _marker(tmp_path)
    yaml.load(_evil_yaml(marker)["top-level"], Loader=yaml.UnsafeLoader)  # noqa: S506 - proving the payload is real
    assert marker.exists()


def test_set_override_with_a_python_tag_stays_a_string(tmp_path: Path) -> None:
    marker = _marker(tmp_path)
    raw = f"!!python/object/apply:os.system [{json.dumps(f'touch {marker}')}]"
    key, value = parse_override(f"optim.lr={raw}")
    assert (key, value) == ("optim.lr", raw)
    assert not marker.exists()
    with pytest.raises(ConfigError):
        load_config(None, [f"optim.lr={raw}"])  # a string is not a learning rate
    assert not marker.exists()


# --------------------------------------------------------------------------- a token-protected cluster


def _client_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Ray address or auth settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def token_cluster(head):
    """The suite's Ray head (conftest): started with RAY_AUTH_MODE=token and a private token."""
    return {"address": head.dashboard_url, "token": Path(head.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip(),
            "temp_dir": head.temp_dir, "gcs": head.address}


def _ray(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_job_submission_without_the_token_is_refused(token_cluster) -> None:
    address = token_cluster["address"]
    no_token = _ray("job", "submit", "--address", address, "--", "echo", "ran",
                    env=_client_env(RAY_AUTH_MODE="disabled"))
    assert no_token.returncode != 0
    assert "401" in no_token.stderr or "Unauthorized" in no_token.stderr, no_token.stderr[-2000:]
    assert "ran" not in no_token.stdout

    wrong = _ray("job", "submit", "--address", address, "--", "echo", "ran",
                 env=_client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token"))
    assert wrong.returncode != 0
    assert "403" in wrong.stderr or "Forbidden" in wrong.stderr, wrong.stderr[-2000:]

    listing = _ray("job", "list", "--address", address, env=_client_env(RAY_AUTH_MODE="disabled"))
    assert listing.returncode != 0, "even reading the job list needs the token"

    # The Python SDK goes through the same check.
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(AuthenticationError):
        JobSubmissionClient(address, headers={"Authorization": "Bearer not-the-token"}).list_jobs()


@pytest.mark.slow
def test_joining_the_cluster_without_the_token_is_refused(token_cluster) -> None:
    script = f"import ray; ray.init(address={token_cluster['gcs']!r}); print('JOINED', ray.cluster_resources())"
    joined = subprocess.run([sys.executable, "-c", script], env=_client_env(RAY_AUTH_MODE="disabled"),
                            capture_output=True, text=True, timeout=HANG, cwd=token_cluster["temp_dir"])
    assert joined.returncode != 0 and "JOINED" not in joined.stdout, joined.stdout[-2000:] + joined.stderr[-2000:]
    assert "AuthenticationError" in joined.stderr or "InvalidAuthToken" in joined.stderr, joined.stderr[-2000:]


# A raysl job submitted with the token runs: tests/test_job_submit.py (submitted with RAY_AUTH_TOKEN).


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", b"PK\x03\x04 truncated zip"],
                         ids=["empty", "text", "torn-zip"])
def test_unreadable_checkpoint_is_a_one_line_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as failed:
        load_state(str(path))
    message = str(failed.value)
    assert message.startswith(f"checkpoint {path} ") and "\n" not in message, message
    assert "it may be truncated" in message or "only load checkpoints written by raysl" in message, message
