"""A local Ray cluster that outlives one command: ``raysl up`` starts it, every later ``raysl train``, ``tune``
and ``scale`` on this machine joins it, ``raysl down`` stops it (issue 25: start-up once, not per run).

Without it each command starts a local cluster of its own and stops it at the end: on a 2-core machine that is
about a third of a short run's cost (GCS, raylet, dashboard and their agents, then Ray's worker processes, each
importing Ray). The cluster ``raysl up`` starts is the one a command would start for itself: the same logical
CPUs (``max(4, 2 x cores)``: on a small machine exact accounting deadlocks, see ``raysl.launch.init_ray``), the
dashboard on (without it stopped trials leak placement groups), token authentication, and raysl's settings
for Ray Train on one machine and glibc's allocator (``LOCAL_TRAIN_ENV``, ``ALLOCATOR_ENV``) in its processes'
environment. Unlike a command's own cluster it is not tied to one command: Ctrl-C or a SIGTERM to a command
stops that command's run, never the cluster.

raysl joins only a cluster it started: a record (address, temp dir, logical CPUs) in raysl's cache
(``RAYSL_CACHE``/local_cluster.json). It never joins an unrelated ``ray start`` cluster on its own (its CPU
accounting may not fit raysl's runs); ``RAY_ADDRESS`` still names any cluster explicitly and wins over the
record. A record whose cluster is gone (a reboot, a ``ray stop``) is removed when it is next read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from raysl import jsonio, storage
from raysl.errors import RayslError

RECORD = "local_cluster.json"
# glibc allocator thresholds for Ray's processes: keep large activation buffers instead of returning
# (and re-faulting) them every step; 32 MiB is glibc's maximum mmap threshold on 64-bit
ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}
# What a run on a local cluster that raysl starts sets for Ray Train (public env vars its controller reads):
# - the preemption watcher (an actor per run) follows a cloud autoscaler's node drains; nothing drains
#   the one machine such a cluster is;
# - the controller polls its workers for reports and health every interval (2 s by default): a short
#   run's last epoch, and its end, waited up to that long each; on one machine a poll costs little.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
START_TIMEOUT_S = 300  # `ray start` on a loaded 2-core machine takes 10-30 s; a guard against a hang


@dataclass(frozen=True)
class LocalCluster:
    """What ``raysl up`` recorded about the cluster it started."""

    address: str  # the GCS, host:port
    dashboard_url: str
    temp_dir: str  # Ray's --temp-dir: every process of this cluster names it on its command line
    num_cpus: int
    started: float  # time.time() at start
    # Ray's token authentication of the cluster: "token" or "disabled" (RAY_AUTH_MODE), and the token file when
    # not Ray's default (RAY_AUTH_TOKEN_PATH): a command that joins by address gets neither from Ray itself
    auth_mode: str = "token"
    token_path: str | None = None

    def join_env(self) -> dict[str, str]:
        """What a process sets before it imports Ray to join this cluster (see :func:`prepare_to_join`)."""
        env = {"RAY_AUTH_MODE": self.auth_mode}
        if self.token_path:
            env["RAY_AUTH_TOKEN_PATH"] = self.token_path
        return env


def default_num_cpus() -> int:
    """Logical CPUs of raysl's local clusters: twice the cores, at least 4 (see ``raysl.launch.init_ray``)."""
    return max(4, 2 * (os.cpu_count() or 2))


def record_path() -> Path:
    return storage.cache_root() / RECORD


def _read_record() -> LocalCluster | None:
    path = record_path()
    try:
        data = json.loads(path.read_text())
        return LocalCluster(**{k: data[k] for k in LocalCluster.__dataclass_fields__ if k in data})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # unreadable or from another version: not a cluster
        return None


def _gcs_answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def cluster_pids(temp_dir: str) -> list[int]:
    """Processes of the cluster with this temp dir (each names it on its command line), Linux /proc."""
    marker = temp_dir.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry))
    return found


def running() -> LocalCluster | None:
    """The cluster ``raysl up`` started, if it still runs; a record of one that is gone is removed."""
    found = _read_record()
    if found is None:
        return None
    if Path(found.temp_dir).is_dir() and cluster_pids(found.temp_dir) and _gcs_answers(found.address):
        return found
    record_path().unlink(missing_ok=True)
    return None


def prepare_to_join() -> LocalCluster | None:
    """The cluster a command will join (``raysl.launch.init_ray``), with its authentication settings put in this
    process's environment (a user's own values win). Call it before anything imports Ray: Ray reads
    RAY_AUTH_MODE once per process, and turns token authentication on by itself only for a cluster it starts
    or finds as "auto", never for a given address. None when RAY_ADDRESS names a cluster or none is up."""
    if os.environ.get("RAY_ADDRESS"):
        return None
    found = running()
    if found is not None:
        for key, value in found.join_env().items():
            os.environ.setdefault(key, value)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    ray = Path(sys.executable).parent / "ray"
    return str(ray) if ray.exists() else (shutil.which("ray") or "ray")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in {**ALLOCATOR_ENV, **LOCAL_TRAIN_ENV}.items():  # as for a command's own cluster; a user's win
        env.setdefault(key, value)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _ensure_token(env: dict[str, str]) -> None:
    """Token authentication, as ``ray.init()`` gives a cluster it starts: made explicit for ``ray start``
    (which turns it on only when a token exists), with a token made first if there is none (``ray
    get-auth-token --generate``, Ray's own default path). A user's RAY_AUTH_MODE=disabled is their choice."""
    if env.get("RAY_AUTH_MODE", "").lower() not in ("", "token"):
        return
    env["RAY_AUTH_MODE"] = "token"
    token = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if env.get("RAY_AUTH_TOKEN") or token.exists():
        return
    done = subprocess.run([_ray_cli(), "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)
    if done.returncode != 0:
        raise RayslError(f"could not create Ray's authentication token ({_last_line(done)}); "
                         "create one with `ray get-auth-token --generate` and run `raysl up` again")


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"


def up(num_cpus: int | None = None) -> tuple[LocalCluster, bool]:
    """Start raysl's local cluster, or find the one already up: (the cluster, whether this call started it)."""
    found = running()
    if found is not None:
        return found, False
    cpus = num_cpus or default_num_cpus()
    env = _env()
    _ensure_token(env)
    temp_dir = tempfile.mkdtemp(prefix="raysl-ray-", dir="/tmp")  # short: Ray's socket paths are limited
    done = None
    for _ in range(3):  # a port found free can be taken before Ray binds it: try fresh ones
        port, dashboard_port = _free_port(), _free_port()
        cmd = [_ray_cli(), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
               f"--temp-dir={temp_dir}", "--disable-usage-stats"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if done.returncode == 0:
            cluster = LocalCluster(address=f"127.0.0.1:{port}", dashboard_url=f"http://127.0.0.1:{dashboard_port}",
                                   temp_dir=temp_dir, num_cpus=cpus, started=time.time(),
                                   auth_mode=env.get("RAY_AUTH_MODE", "token").lower(),
                                   token_path=env.get("RAY_AUTH_TOKEN_PATH"))
            storage.make_dirs(str(record_path().parent), option="RAYSL_CACHE")
            storage.write_atomic(str(record_path()), jsonio.dumps(asdict(cluster)) + "\n", option="RAYSL_CACHE")
            return cluster, True
        _stop_processes(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)
    raise RayslError(f"`ray start` could not start a local cluster ({_last_line(done)}); see `ray start --help`, "
                     "or run without `raysl up` (each command then starts its own)")


def _stop_processes(temp_dir: str, grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace_s`` (the GCS and raylet can take longer to exit on a
    SIGTERM than a user should wait for a cluster whose state nothing keeps)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = cluster_pids(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def down() -> LocalCluster | None:
    """Stop the cluster ``raysl up`` started (only its processes: other Ray clusters on the machine go on)."""
    found = _read_record()
    if found is None:
        return None
    _stop_processes(found.temp_dir)
    shutil.rmtree(found.temp_dir, ignore_errors=True)
    record_path().unlink(missing_ok=True)
    return found
