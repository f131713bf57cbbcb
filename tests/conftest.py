"""Shared fixtures: a per-session data cache, one Ray head that the end-to-end tests join, and
the hang guard.

Start-up is most of what an end-to-end test costs on a 2-core machine, so the suite starts one
local Ray head (``ray start --head``: token auth, its own temp dir and ports) the first time a test
asks for it, and every `raysl` subprocess or in-process run that does not test local-cluster
behaviour itself (Ctrl-C chains that signal a driver's own cluster, multi-node ``Cluster`` tests)
joins it through ``head.env`` / ``ray_local``.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAYSL = str(BIN / "raysl")
RAY = str(BIN / "ray")

# a hang guard far above any run time here, never a timing assumption
HANG = 900

# Token auth for every Ray this session starts or joins, set before anything imports Ray (Ray reads
# RAY_AUTH_MODE once per process): the suite's head, the local clusters `raysl` starts, and this process
# when it joins the head (ray_local). One private token file per session.
if "RAY_AUTH_TOKEN_PATH" not in os.environ:
    _token_dir = tempfile.mkdtemp(prefix="rsl-auth", dir="/tmp")
    Path(_token_dir, "auth_token").write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(Path(_token_dir, "auth_token"))
    # removed when the process that made it ends (pytest-xdist's workers inherit the variable and reuse it)
    atexit.register(shutil.rmtree, _token_dir, True)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.pop("RAY_AUTH_TOKEN", None)

# Skips that are facts of the machine, not packages the CI script installs: allowed under CI=true (and
# listed by -ra). The Chinchilla runs come from the workspace's shared/data folder, not from a package.
ALLOWED_SKIPS = ("needs CUDA", "grayscale of a 1-channel image is the image", "the Chinchilla runs ship in shared/data")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`-n 2 --dist loadgroup`): every test that joins the suite's Ray head runs in one
    worker (one head, its session fixtures made once), every test that starts a local Ray cluster of its
    own in one other group (one such cluster at a time), the rest wherever a worker is free. (pytest-xdist
    3.8 groups by rewriting node ids, which pytest 9 no longer reads: the test extras pin pytest < 9.)"""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if "head" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("head"))
        elif item.get_closest_marker("local_ray") or item.get_closest_marker("slow"):
            # a slow test that does not join the head runs raysl (and a local Ray of its own): one at a time
            item.add_marker(pytest.mark.xdist_group("local_ray"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test skipped for want of something the CI script installs fails instead."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(allowed in reason for allowed in ALLOWED_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (scripts/test.sh installs what it needs): {reason}"


@pytest.fixture(scope="session", autouse=True)
def raysl_cache(tmp_path_factory) -> Path:
    """Bundled data sets are prepared once per test session into a private cache."""
    cache = tmp_path_factory.mktemp("raysl-cache")
    old = os.environ.get("RAYSL_CACHE")
    os.environ["RAYSL_CACHE"] = str(cache)
    os.environ.setdefault("WANDB_MODE", "offline")
    yield cache
    if old is None:
        os.environ.pop("RAYSL_CACHE", None)
    else:
        os.environ["RAYSL_CACHE"] = old


@pytest.fixture(scope="session")
def digits_dir(raysl_cache) -> str:
    from raysl.data.locate import resolve_data_dir
    from raysl.run_config import RunConfig

    return resolve_data_dir(RunConfig())


# --------------------------------------------------------------------------
# a private Ray head


def free_port() -> int:
    """A port nothing listens on now (bound and released: another process may take it before use;
    callers that start a server on it retry with a fresh one, see RayHead.start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(**head_node_args):
    """A multi-node ``ray.cluster_utils.Cluster`` whose head's dashboard listens on a port found free.

    Left to itself the Cluster's head asks for Ray's default 8265 and fails if anything holds it: in a
    fresh-clone run beside another Ray job (a bench's local cluster) the multi-node test failed with
    "Failed to bind to 127.0.0.1:8265", leaving the GCS it had started behind. A free port can still be
    taken between the check and Ray's bind: then a fresh one is tried.
    """
    from ray.cluster_utils import Cluster

    for attempt in range(3):
        try:
            return Cluster(initialize_head=True, head_node_args={**head_node_args, "dashboard_port": free_port()})
        except ValueError as exc:
            if "Failed to bind" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


class RayHead:
    """A `ray start --head` cluster of our own: token auth with a private token file.

    Every process it starts inherits ``RAY_ADDRESS`` (so Ray's state API inside
    the cluster finds this cluster even when other Ray instances run on the
    machine) and is found again at the end by that variable or the temp dir, so
    ``stop`` ends exactly this cluster (``ray stop`` would end every local one).
    """

    def __init__(self, num_cpus: int = 4, extra_env: dict | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="rsl", dir="/tmp")  # short: socket paths are limited
        # the TMPDIR of every process of the cluster and of the runs joining it: a test can see what a run
        # leaves in the machine's temp folder (tests/test_search.py: no checkpoint copies)
        self.tmp = tempfile.mkdtemp(prefix="rsl-tmp", dir="/tmp")
        token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])  # the session's (above)
        self.num_cpus = num_cpus
        self._base_env = {
            **os.environ,
            **(extra_env or {}),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # a job's entrypoint finds `raysl`
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": self.tmp,
        }
        # what raysl sets for a run on a local cluster it starts (no preemption watcher, short polls): the
        # runs that join this head get the same, as on one machine they should
        from raysl.local_cluster import LOCAL_TRAIN_ENV

        self._base_env.update({k: v for k, v in LOCAL_TRAIN_ENV.items() if k not in os.environ})
        self._base_env.pop("RAY_AUTH_TOKEN", None)
        self._ports()

    def _ports(self) -> None:
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {**self._base_env, "RAY_ADDRESS": self.address}

    def start(self) -> "RayHead":
        # a port found free can be taken by another process before Ray binds it: try fresh ports
        for attempt in range(3):
            cmd = [RAY, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                   f"--num-cpus={self.num_cpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.temp_dir}",
                   "--disable-usage-stats"]
            done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                return self
            self._kill()
            if attempt < 2:
                self._ports()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        raise RuntimeError(f"ray start failed:\n{done.stdout}\n{done.stderr}")

    def data_logs(self) -> dict[Path, int]:
        """Ray Data's executor logs of the runs on this head (in its session folder), with their sizes now."""
        return {p: p.stat().st_size for p in Path(self.temp_dir).glob("session_*/logs/ray-data/ray-data-train*.log")}

    def data_log_since(self, before: dict[Path, int]) -> str:
        """What Ray Data's executor logged since ``before`` (``data_logs()``): one run's operators."""
        return "".join(p.read_text()[before.get(p, 0):] for p in self.data_logs())

    def _pids(self) -> list[int]:
        marker = f"RAY_ADDRESS={self.address}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if self.temp_dir.encode() in cmdline or marker in environ.split(b"\0"):
                pids.append(int(entry))
        return pids

    def worker_pids(self, actor_class: str) -> list[int]:
        """Processes of this cluster whose title names an actor class (e.g. RayTrainWorker)."""
        found = []
        for pid in self._pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            except OSError:
                continue
            if cmdline.startswith(f"ray::{actor_class}"):
                found.append(pid)
        return found

    def _kill(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 5
            while pids and time.time() < deadline:
                pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
                time.sleep(0.2)

    def stop(self) -> None:
        self._kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="session")
def head(raysl_cache):
    """The suite's one Ray head (6 logical CPUs: the multi-worker PBT test's 2 trials x 2 workers and
    their drivers, plus room for a restarting trial's placement group), started on first use."""
    ray_head = RayHead(num_cpus=6, extra_env={"RAYSL_CACHE": str(raysl_cache)}).start()
    try:
        yield ray_head
    finally:
        ray_head.stop()


@pytest.fixture
def ray_local(head):
    """This process joined to the suite's Ray head for one test (disconnected after it)."""
    import ray

    from raysl.launch import init_ray

    keys = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: head.env[k] for k in keys})
    try:
        init_ray()
        yield ray
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def signal_all(pids: list[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids`` that still exists (e.g. SIGSTOP/SIGCONT a run's worker processes)."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def interrupt_when(proc, ready, what: str = "the run") -> tuple[str, str]:
    """Wait until ``ready()`` (or the hang guard), send SIGINT as Ctrl-C does, return (stdout, stderr).

    Fails if ``proc`` ended before it could be interrupted; kills it if it outlives the guard.
    """
    try:
        deadline = time.time() + HANG
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.5)
        assert proc.poll() is None, f"{what} ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()


# What the finished-run fixture trains: two epochs of the quickstart at width 8, a checkpoint after
# each, both kept (tests/test_export.py lists them), every epoch evaluated; its shards through a Ray Dataset
# (data.reader=ray_data: the other end-to-end runs on small images have their worker read them itself, so
# this run is what keeps that path checked, end to end, without a run of its own).
FINISHED_RUN = ["--set", "model.width=8", "--set", "optim.epochs=2", "--set", "checkpoint.every_epochs=1",
                "--set", "checkpoint.keep=2", "--set", "eval.every_epochs=1", "--set", "data.reader=ray_data"]


@pytest.fixture(scope="session")
def finished_run(head, tmp_path_factory) -> Path:
    """One real `raysl train` run folder (joined to the suite's head) that the export and storage tests
    read; a test that changes it works on a copy."""
    import json

    run = tmp_path_factory.mktemp("finished") / "run"
    done = subprocess.run([RAYSL, "train", str(REPO / "search_spaces" / "quickstart.yaml"), *FINISHED_RUN,
                           "--out", str(run)], env=head.env, capture_output=True, text=True, timeout=HANG, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "finished"
    return run
