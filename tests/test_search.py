"""`raysl tune` end to end: real Ray (a private local head), real Optuna, digits.

The searches run as `raysl tune` subprocesses joined to one head started for
this module (``ray start``, its own token, temp dir and ports), so a crash,
a SIGINT or a SIGKILL hits exactly what the test started. Space validation
runs in-process and must fail before Ray starts.
"""

from __future__ import annotations

import json
import os
import re
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
import yaml

from conftest import HANG, REPO, interrupt_when  # noqa: E402

BIN = Path(sys.executable).parent
RAYSL = str(BIN / "raysl")
RAY = str(BIN / "ray")
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
# tiny runs: digits, 8-wide convnet, a few epochs evaluated every epoch
TINY = ["--set", "optim.epochs=3", "--set", "eval.every_epochs=1", "--set", "model.width=8"]


# --------------------------------------------------------------------------
# a private Ray head (shared with tests/test_job_submit.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A `ray start --head` cluster of our own: token auth with a private token file.

    Every process it starts inherits ``RAY_ADDRESS`` (so Ray's state API inside
    the cluster finds this cluster even when other Ray instances run on the
    machine) and is found again at the end by that variable or the temp dir, so
    ``stop`` ends exactly this cluster (``ray stop`` would end every local one).
    """

    def __init__(self, num_cpus: int = 4, extra_env: dict | None = None):
        self.port, self.dashboard_port = free_port(), free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="rsl", dir="/tmp")  # short: socket paths are limited
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        token = Path(self.temp_dir) / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {
            **os.environ,
            **(extra_env or {}),
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.num_cpus = num_cpus

    def start(self) -> "RayHead":
        cmd = [RAY, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
               f"--num-cpus={self.num_cpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{done.stdout}\n{done.stderr}")
        return self

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

    def stop(self) -> None:
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
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("raysl_cache")


@pytest.fixture(scope="module")
def head(cache_dir):
    ray_head = RayHead(extra_env={"RAYSL_CACHE": str(cache_dir)}).start()
    try:
        yield ray_head
    finally:
        ray_head.stop()


# Subprocess timeouts here (conftest.HANG) only guard against a hang (pytest-timeout is the suite's
# guard too); they are far above the run times so that a loaded 2-core machine never trips them.


def run_raysl(head: RayHead, args: list[str], timeout: float = HANG, cwd: Path | None = None):
    return subprocess.run([RAYSL, *args], env=head.env, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or REPO)


def final_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in:\n{stdout[-3000:]}"
    return json.loads(lines[-1])


def trials(experiment: Path) -> dict[str, dict]:
    """trial dir name -> {"config": sampled params, "rows": reported results}."""
    out = {}
    for d in sorted(experiment.glob("raysl_trial_*")):
        rows = []
        if (d / "result.json").exists():
            rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines() if line.strip()]
        config = json.loads((d / "params.json").read_text()) if (d / "params.json").exists() else {}
        out[d.name] = {"config": config, "rows": rows}
    return out


def write_space(path: Path, search: dict, tune: dict | None = None, base_edits: dict | None = None) -> Path:
    space = yaml.safe_load(QUICKSTART.read_text())
    space["search"] = search
    space["tune"] = {**space.get("tune", {}), **(tune or {})}
    for key, value in (base_edits or {}).items():
        section, name = key.split(".", 1)
        space["base"].setdefault(section, {})[name] = value
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def explain(done) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-6000:]}"


# --------------------------------------------------------------------------
# validation: one line, exit 2, before Ray starts


LR = {"optim.lr": {"loguniform": [1e-4, 1e-2]}}
TEMPERATURE = {"loguniform": [0.05, 1.0]}


@pytest.mark.parametrize(
    "search, tune, expected",
    [
        ({"optim.lr": {"normal": [0.1, 1.0]}}, {},
         "search.optim.lr: unknown distribution 'normal'; allowed: loguniform"),
        ({"optim.lrr": {"loguniform": [1e-4, 1e-2]}}, {},
         "search.optim.lrr: low 0.0001 of loguniform [0.0001, 0.01] is not valid: unknown key 'optim.lrr'"),
        ({"optim.lr": {"uniform": [0.01, 0.001]}}, {},
         "search.optim.lr: uniform needs low < high, got [0.01, 0.001]"),
        ({"optim.lr": {"loguniform": [0.0, 0.01]}}, {}, "search.optim.lr: loguniform needs low > 0"),
        ({"method.temperature": {"uniform": [-0.5, 1.0]}}, {},
         "search.method.temperature: low -0.5 of uniform [-0.5, 1.0] is not valid: "
         "method.temperature: Input should be greater than 0"),
        (LR, {"scheduler": "pbt", "sampler": "tpe"},
         "tune.sampler: tpe cannot be used with scheduler: pbt; "
         "Ray Tune cannot combine PopulationBasedTraining with a search algorithm"),
        (LR, {"scheduler": "asha", "synch": True}, "tune.synch is for scheduler: pbt (got asha)"),
        (LR, {"schedular": "asha"}, "tune: unknown key 'schedular'; allowed: num_samples"),
        (LR, {"sampler": "bayes"},
         "tune.sampler: 'bayes' is not allowed; expected 'tpe', 'cmaes', 'random', 'grid', 'gp' or 'nsga2'"),
        ({"method.name": {"choice": ["simclr", "byol"]}, "method.temperature": TEMPERATURE}, {},
         "search.method.temperature: low 0.05 of loguniform [0.05, 1.0] is not valid with method.name=byol: "
         "unknown key 'method.temperature'"),
    ],
    ids=["distribution", "unknown-key", "low>=high", "log-zero", "negative-temperature", "pbt+sampler",
         "synch-without-pbt", "tune-key", "sampler", "method-knob-outside-its-branch"],
)
def test_invalid_space_fails_before_ray(tmp_path, capsys, search, tune, expected):
    import ray

    from raysl.cli import main

    space = write_space(tmp_path / "bad.yaml", search, tune)
    code = main(["tune", str(space), "--storage", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0, err
    assert err.startswith(f"raysl: error: {space}: "), err
    assert expected in err, err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists()


def test_existing_experiment_needs_resume_or_new_name(tmp_path, capsys):
    from raysl.cli import main

    (tmp_path / "results" / "quickstart").mkdir(parents=True)
    (tmp_path / "results" / "quickstart" / "raysl_trial_x").mkdir()
    code = main(["tune", str(QUICKSTART), "--storage", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2
    assert "pass --resume to continue it, or --name NEW" in err
    assert (tmp_path / "results" / "quickstart" / "raysl_trial_x").exists()


def test_conditional_space_parsing_and_method_switch(tmp_path):
    from raysl.config import build_config
    from raysl.space import SpaceSampler, apply_sample, load_space

    space_file = write_space(tmp_path / "cond.yaml", {
        "optim.lr": {"loguniform": [1e-4, 1e-2]},
        "method.name": {"choice": ["simclr", "byol"], "when": {
            "simclr": {"method.temperature": {"loguniform": [0.05, 1.0]}},
            "byol": {"method.ema_base": {"uniform": [0.9, 0.999]}},
        }},
    })
    space = load_space(space_file)
    assert space.conditional
    # the base (simclr, temperature 0.2, lr 0.002) is the first point, its branch included
    assert space.base_point() == {"optim.lr": 0.002, "method.name": "simclr", "method.temperature": 0.2}
    # switching method drops the base's simclr knobs: byol starts from its defaults
    tree = apply_sample(space.base, {"method.name": "byol", "method.ema_base": 0.95, "optim.lr": 0.001})
    assert tree["method"] == {"name": "byol", "ema_base": 0.95}
    assert build_config(tree).method.ema_final == 1.0

    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(12):
        trial = study.ask()
        SpaceSampler(space.params)(trial)
        seen.setdefault(trial.params["method.name"], set()).add(frozenset(trial.params))
        study.tell(trial, 0.5)
    assert seen["simclr"] == {frozenset({"optim.lr", "method.name", "method.temperature"})}
    assert seen["byol"] == {frozenset({"optim.lr", "method.name", "method.ema_base"})}


# --------------------------------------------------------------------------
# searches on a real cluster


@pytest.mark.slow
def test_quickstart_search_completes_and_best_config_retrains(head, tmp_path):
    storage = tmp_path / "results"
    done = run_raysl(head, ["tune", str(QUICKSTART), *TINY, "--num-samples", "8", "--set", "tune.max_concurrent=3",
                            "--storage", str(storage)])
    assert done.returncode == 0, explain(done)
    summary = final_json(done.stdout)
    experiment = storage / "quickstart"
    found = trials(experiment)
    assert summary["num_trials"] == len(found) == 8
    assert sum(summary["statuses"].values()) == 8
    for name, trial in found.items():
        assert trial["rows"], name
        for row in trial["rows"]:
            assert 0.0 <= row["knn_acc"] <= 1.0 and row["rankme"] >= 0.0, (name, row)
    # the base config is trial 0 (points_to_evaluate)
    configs = [t["config"] for t in found.values()]
    assert {"method.temperature": 0.2, "optim.lr": 0.002} in configs
    best = max(found.values(), key=lambda t: t["rows"][-1]["knn_acc"] if t["rows"][-1]["status"] not in
               ("diverged", "collapsed") else -1)
    assert summary["best_metric"] == pytest.approx(best["rows"][-1]["knn_acc"])
    assert (experiment / "raysl_space.yaml").exists()
    assert any(line.startswith("trial ") for line in done.stdout.splitlines())  # the leaderboard

    # Ray Tune's own layout: Tuner.restore reads it (no Ray cluster needed for that)
    import ray
    from ray.tune import Tuner

    from raysl.search import make_trainable

    grid = Tuner.restore(str(experiment), make_trainable({}, [("knn_acc", "max")], str(experiment), 0)).get_results()
    assert len(grid) == 8 and not ray.is_initialized()
    assert max(r.metrics["knn_acc"] for r in grid) >= summary["best_metric"]

    best_config = Path(summary["best_config_path"])
    text = best_config.read_text()
    assert "temperature" in text and str(experiment) in text
    retrain = run_raysl(head, ["train", str(best_config), "--set", "optim.epochs=1",
                              "--out", str(tmp_path / "retrain")])
    assert retrain.returncode == 0, explain(retrain)
    assert final_json(retrain.stdout)["status"] == "finished"


@pytest.mark.slow
def test_search_beats_a_poor_base(head, tmp_path):
    space = write_space(
        tmp_path / "poor.yaml",
        {"method.temperature": {"loguniform": [0.05, 5.0]}, "optim.lr": {"loguniform": [1e-5, 1e-2]}},
        {"scheduler": "fifo", "num_samples": 6, "seed": 1},
        base_edits={"method.temperature": 5.0, "optim.lr": 1e-5},
    )
    done = run_raysl(head, ["tune", str(space), *TINY, "--storage", str(tmp_path / "results")])
    assert done.returncode == 0, explain(done)
    found = trials(tmp_path / "results" / "poor")
    base = [t for t in found.values() if t["config"] == {"method.temperature": 5.0, "optim.lr": 1e-5}]
    assert len(base) == 1, [t["config"] for t in found.values()]
    base_knn = base[0]["rows"][-1]["knn_acc"]
    best_knn = final_json(done.stdout)["best_metric"]
    assert best_knn >= base_knn + 0.02, (base_knn, best_knn)
    best = yaml.safe_load(Path(final_json(done.stdout)["best_config_path"]).read_text())
    assert best["method"]["temperature"] < 5.0


@pytest.mark.slow
def test_conditional_search_explores_two_methods(head, tmp_path):
    space = write_space(tmp_path / "cond.yaml", {
        "optim.lr": {"loguniform": [5e-4, 5e-3]},
        "method.name": {"choice": ["simclr", "byol"], "when": {
            "simclr": {"method.temperature": {"loguniform": [0.05, 1.0]}},
            "byol": {"method.ema_base": {"uniform": [0.9, 0.999]}},
        }},
    }, {"num_samples": 4, "scheduler": "fifo", "sampler": "random"})
    done = run_raysl(head, ["tune", str(space), *TINY, "--storage", str(tmp_path / "results")])
    assert done.returncode == 0, explain(done)
    found = trials(tmp_path / "results" / "cond")
    methods = {t["config"]["method.name"] for t in found.values()}
    assert methods == {"simclr", "byol"}
    for trial in found.values():
        keys = set(trial["config"])
        if trial["config"]["method.name"] == "simclr":
            assert keys == {"optim.lr", "method.name", "method.temperature"}
        else:
            assert keys == {"optim.lr", "method.name", "method.ema_base"}
        assert trial["rows"][-1]["status"] == "finished"
    best = yaml.safe_load(Path(final_json(done.stdout)["best_config_path"]).read_text())
    allowed = {"simclr": {"name", "temperature"}, "byol": {"name", "ema_base", "ema_final"}}
    assert set(best["method"]) == allowed[best["method"]["name"]]


@pytest.mark.slow
def test_diverged_trial_is_marked_and_the_search_goes_on(head, tmp_path):
    # weight decay 1e30 multiplies the weights by about -2e27 on the first step: the loss goes NaN
    space = write_space(tmp_path / "nan.yaml", {"optim.weight_decay": {"choice": [0.0001, 1.0e+30]}},
                        {"sampler": "grid", "scheduler": "fifo"})
    done = run_raysl(head, ["tune", str(space), *TINY, "--storage", str(tmp_path / "results")])
    assert done.returncode == 0, explain(done)
    summary = final_json(done.stdout)
    assert summary["statuses"] == {"finished": 1, "diverged": 1}
    by_wd = {t["config"]["optim.weight_decay"]: t["rows"][-1] for t in trials(tmp_path / "results" / "nan").values()}
    assert by_wd[1.0e30]["status"] == "diverged" and by_wd[1.0e30]["knn_acc"] == 0.0
    assert "loss is nan" in by_wd[1.0e30]["error"].lower()
    assert by_wd[0.0001]["status"] == "finished" and by_wd[0.0001]["knn_acc"] > 0.5


def _finished(trial: dict) -> bool:
    return bool(trial["rows"]) and trial["rows"][-1].get("status") == "finished"


@pytest.mark.slow
def test_interrupted_search_resumes_every_trial_once(head, tmp_path):
    storage = tmp_path / "results"
    args = ["tune", str(QUICKSTART), *TINY, "--num-samples", "5", "--set", "tune.max_concurrent=1",
            "--set", "tune.scheduler=fifo", "--storage", str(storage), "--name", "resumed"]
    experiment = storage / "resumed"
    proc = subprocess.Popen([RAYSL, *args], env=head.env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # once 2 trials have finished and a third has reported: 5 trials run one at a time, so Tune had
    # seen the first two end (the next starts after that) and the search is still running, whatever
    # the machine's speed. (On a trial's last report alone, the interrupt can come before Tune sees
    # the trial end: it is then resumed from its last recorded checkpoint and reports again.)
    def third_running() -> bool:
        now = trials(experiment).values()
        return sum(_finished(t) for t in now) >= 2 and sum(bool(t["rows"]) for t in now) >= 3

    out, err = interrupt_when(proc, third_running, "the search")
    assert proc.returncode == 130, f"{proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    assert final_json(out).get("interrupted")
    before = trials(experiment)
    assert sum(_finished(t) for t in before.values()) < 5

    again = run_raysl(head, args)  # same command without --resume: refused, nothing deleted
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run_raysl(head, [*args, "--resume"])
    assert resumed.returncode == 0, explain(resumed)
    summary = final_json(resumed.stdout)
    after = trials(experiment)
    assert len(after) == summary["num_trials"] == 5
    assert sum(summary["statuses"].values()) == 5 and "pending" not in summary["statuses"], summary
    assert summary["statuses"].get("finished", 0) >= 3, summary
    in_flight = [name for name, t in before.items() if not _finished(t)]
    for name, trial in after.items():
        epochs = [r["epoch"] for r in trial["rows"]]
        if name in in_flight:
            # the trial running at the interrupt restarts from the last checkpoint Tune had
            # recorded; Tune may already have logged the epoch after it, which is then
            # reported again (at-least-once), but no epoch is skipped
            assert sorted(set(epochs)) == list(range(1, max(epochs) + 1)), (name, epochs)
            assert len(epochs) - len(set(epochs)) <= 1, (name, epochs)
            epochs = sorted(set(epochs))
        # every other trial: every epoch reported once, none re-run (a collapsed trial ends early, by design)
        assert epochs == list(range(1, len(epochs) + 1)), (name, epochs)
        assert len(epochs) == 3 or trial["rows"][-1]["status"] in ("collapsed", "diverged"), (name, trial["rows"])
        if name in before and _finished(before[name]):
            assert trial["rows"] == before[name]["rows"]  # finished trials were not touched


@pytest.mark.slow
def test_killed_train_worker_does_not_lose_the_trial(head, tmp_path):
    storage = tmp_path / "results"
    args = ["tune", str(QUICKSTART), "--set", "optim.epochs=8", "--set", "eval.every_epochs=4",
            "--set", "model.width=8", "--set", "scale.num_workers=2", "--num-samples", "1",
            "--set", "tune.scheduler=fifo", "--storage", str(storage), "--name", "killed"]
    proc = subprocess.Popen([RAYSL, *args], env=head.env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        deadline = time.time() + HANG
        while time.time() < deadline and proc.poll() is None and killed is None:
            if list(storage.glob("killed/raysl_trial_*/train/checkpoint_*")):
                workers = head.worker_pids("RayTrainWorker")
                if workers:
                    killed = workers[0]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        out, err = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, f"never saw a checkpoint and a Train worker\n{err[-3000:]}"
    assert proc.returncode == 0, f"{proc.returncode}\n{out[-2000:]}\n{err[-5000:]}"
    summary = final_json(out)
    assert summary["statuses"] == {"finished": 1}
    (trial,) = trials(storage / "killed").values()
    assert trial["rows"][-1]["epoch"] == 8 and trial["rows"][-1]["status"] == "finished"
    # the user is told: by the trial's line (Ray Train restarted its workers) or by a restart line (Tune retried it)
    assert re.search(r"recovered from 1 worker failure|trial \w+ failed .*; restarting from its last checkpoint",
                     err), err[-3000:]


@pytest.mark.slow
def test_pbt_trials_continue_from_cloned_checkpoints(head, tmp_path):
    space = write_space(
        tmp_path / "pbt.yaml",
        {"method.temperature": {"loguniform": [0.05, 1.0]}, "optim.lr": {"loguniform": [3e-4, 1e-2]}},
        {"scheduler": "pbt", "perturbation_interval": 1, "num_samples": 4, "max_concurrent": 4},
        base_edits={"eval.stop_on_collapse": False},
    )
    space_text = yaml.safe_load(space.read_text())
    space_text["tune"].pop("sampler")  # PBT runs without a search algorithm
    space.write_text(yaml.safe_dump(space_text))
    done = run_raysl(head, ["tune", str(space), "--set", "optim.epochs=5", "--set", "eval.every_epochs=1",
                            "--set", "model.width=8", "--storage", str(tmp_path / "results")])
    assert done.returncode == 0, explain(done)
    assert final_json(done.stdout)["statuses"] == {"finished": 4}
    found = trials(tmp_path / "results" / "pbt")
    # an exploited trial continues from another trial's checkpoint with mutated hyperparameters:
    # its epochs jump (it did not train the skipped ones itself) or its config changes mid-run
    cloned = [name for name, t in found.items()
              if [r["epoch"] for r in t["rows"]] != list(range(1, len(t["rows"]) + 1))
              or len({json.dumps(r["config"], sort_keys=True) for r in t["rows"]}) > 1]
    assert cloned, {n: [(r["epoch"], r["config"]) for r in t["rows"]] for n, t in found.items()}
    # Tune deleted none of the checkpoints PBT handed out (raysl.pbt, "Retention": with Tune's num_to_keep a
    # trial restarted from another's checkpoint could delete its own newest one under a reused folder name
    # while a clone was about to restore it; both clones of a CI run then errored)
    from raysl import pbt

    lineage_files = (tmp_path / "results" / "pbt" / name / pbt.LINEAGE_FILE for name in found)
    handed = [entry["checkpoint"] for path in lineage_files if path.exists()
              for entry in pbt.parse_lineage(path.read_text())]
    assert handed and all((Path(path) / pbt.STATE_FILE).exists() for path in handed), handed
    assert all(t["rows"][-1]["epoch"] == 5 for t in found.values()), {
        n: [(r["epoch"], r.get("status"), r.get("training_iteration")) for r in t["rows"]] for n, t in found.items()}
