"""`raysl tune` end to end: real Ray (a private local head), real Optuna, digits.

The searches run as `raysl tune` subprocesses joined to the suite's Ray head
(conftest ``head``: ``ray start``, its own token, temp dir and ports), so a crash,
a SIGINT or a SIGKILL hits exactly what the test started. Space validation
runs in-process and must fail before Ray starts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, HANG, RAY, RAYSL, REPO, RayHead, free_port, interrupt_when  # noqa: E402,F401

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
# tiny runs: digits, 8-wide convnet, a few epochs evaluated every epoch
TINY = ["--set", "optim.epochs=3", "--set", "eval.every_epochs=1", "--set", "model.width=8"]


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
    from raysl.run_config import build_config
    from raysl.space import SpaceSampler, apply_sample
    from raysl.space_file import load_space

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
def test_quickstart_search_completes_and_best_config_retrains(head, tmp_path, tmp_path_factory):
    """The session's quickstart search (tests/test_analyze.py ``experiment_dir``: 6 trials, ASHA, 4 epochs
    evaluated at 2 and 4), as `raysl tune` printed and wrote it."""
    from test_analyze import NUM_SAMPLES, experiment_dir

    experiment = experiment_dir(tmp_path_factory, head.env)
    stdout = (experiment.parent.parent / "tune.stdout").read_text()
    summary = final_json(stdout)
    found = trials(experiment)
    assert summary["num_trials"] == len(found) == NUM_SAMPLES
    assert sum(summary["statuses"].values()) == NUM_SAMPLES
    for name, trial in found.items():
        # evaluated at epochs 2 and 4 (ASHA may stop a trial at 2); epochs between carry filler values
        evaluated = [row for row in trial["rows"] if row.get("eval_epoch") == row["epoch"]]
        assert [row["epoch"] for row in evaluated] in ([2], [2, 4]), (name, trial["rows"])
        for row in evaluated:
            assert 0.0 <= row["knn_acc"] <= 1.0 and row["rankme"] >= 0.0, (name, row)
    # the base config is trial 0 (points_to_evaluate)
    configs = [t["config"] for t in found.values()]
    assert {"method.temperature": 0.2, "optim.lr": 0.002} in configs
    best = max(found.values(), key=lambda t: t["rows"][-1]["knn_acc"] if t["rows"][-1]["status"] not in
               ("diverged", "collapsed") else -1)
    assert summary["best_metric"] == pytest.approx(best["rows"][-1]["knn_acc"])
    assert (experiment / "raysl_space.yaml").exists()
    assert any(line.startswith("trial ") for line in stdout.splitlines())  # the leaderboard
    # tune.reuse_actors (the default): a trial's process ran a later trial too. Catches the option not
    # reaching Tune (a new process per trial: as many pids as trials). A reset can fall back to a new process
    # (a trial thread slow to end), so the check is "fewer", not "as many as the concurrent slots".
    pids = {row["pid"] for trial in found.values() for row in trial["rows"]}
    assert len(pids) < NUM_SAMPLES, pids

    # Ray Tune's own layout: Tuner.restore reads it (no Ray cluster needed for that)
    import ray
    from ray.tune import Tuner

    from raysl.trial import make_trainable

    grid = Tuner.restore(str(experiment), make_trainable({}, [("knn_acc", "max")], str(experiment), 0)).get_results()
    assert len(grid) == NUM_SAMPLES and not ray.is_initialized()
    assert max(r.metrics["knn_acc"] for r in grid) >= summary["best_metric"]

    best_config = Path(summary["best_config_path"])
    text = best_config.read_text()
    assert "temperature" in text and str(experiment) in text
    retrain = run_raysl(head, ["train", str(best_config), "--set", "optim.epochs=1",
                              "--out", str(tmp_path / "retrain")])
    assert retrain.returncode == 0, explain(retrain)
    assert final_json(retrain.stdout)["status"] == "finished"


@pytest.mark.slow
def test_one_search_beats_a_poor_base_explores_two_methods_and_marks_a_diverged_trial(head, tmp_path):
    """One search checked for three things: it beats a poor base (SimCLR at temperature 5 and lr 1e-5,
    trial 0), its conditional space samples SimCLR's and BYOL's own knobs only in their branches, and a
    trial whose weight decay of 1e30 makes the loss NaN on its first step (the weights are multiplied by
    about -2e27) is marked diverged while the search goes on."""
    space = write_space(tmp_path / "mixed.yaml", {
        "optim.lr": {"choice": [1e-5, 2e-3, 5e-3]},  # the base's lr, and two good ones (so the search can win)
        "optim.weight_decay": {"choice": [0.0001, 1.0e+30]},
        "method.name": {"choice": ["simclr", "byol"], "when": {
            "simclr": {"method.temperature": {"loguniform": [0.05, 5.0]}},
            "byol": {"method.ema_base": {"uniform": [0.9, 0.999]}},
        }},
    # one trial at a time: the 7 run in one reused trial process (a second one cost ~4 CPU-s)
    }, {"num_samples": 7, "scheduler": "fifo", "sampler": "random", "seed": 3, "max_concurrent": 1},
        # a poor run is data here, not an alarm: only divergence may end a trial early
        base_edits={"method.temperature": 5.0, "optim.lr": 1e-5, "eval.stop_on_collapse": False})
    done = run_raysl(head, ["tune", str(space), *TINY, "--storage", str(tmp_path / "results")])
    assert done.returncode == 0, explain(done)
    summary = final_json(done.stdout)
    found = trials(tmp_path / "results" / "mixed")
    assert len(found) == summary["num_trials"] == 7

    # the poor base is trial 0, once; the search beats it
    base_point = {"optim.lr": 1e-5, "optim.weight_decay": 0.0001, "method.name": "simclr", "method.temperature": 5.0}
    base = [t for t in found.values() if t["config"] == base_point]
    assert len(base) == 1, [t["config"] for t in found.values()]
    assert base[0]["rows"][-1]["status"] == "finished"
    assert summary["best_metric"] >= base[0]["rows"][-1]["knn_acc"] + 0.02, (base[0]["rows"][-1], summary)
    best = yaml.safe_load(Path(summary["best_config_path"]).read_text())
    allowed = {"simclr": {"name", "temperature"}, "byol": {"name", "ema_base", "ema_final"}}
    assert set(best["method"]) == allowed[best["method"]["name"]]
    assert best["method"].get("temperature", 0.0) < 5.0 and best["optim"]["weight_decay"] == 0.0001

    # the conditional space: both methods, each with its own knob only
    assert {t["config"]["method.name"] for t in found.values()} == {"simclr", "byol"}
    for trial in found.values():
        knob = "method.temperature" if trial["config"]["method.name"] == "simclr" else "method.ema_base"
        assert set(trial["config"]) == {"optim.lr", "optim.weight_decay", "method.name", knob}, trial["config"]

    # weight decay 1e30 diverges on the first step; every other trial finishes
    statuses = {"diverged" if t["config"]["optim.weight_decay"] == 1.0e30 else "finished" for t in found.values()}
    assert statuses == {"diverged", "finished"}, [t["config"] for t in found.values()]
    for trial in found.values():
        last = trial["rows"][-1]
        if trial["config"]["optim.weight_decay"] == 1.0e30:
            assert last["status"] == "diverged" and last["knn_acc"] == 0.0, last
            assert "loss is nan" in last["error"].lower(), last
        else:
            assert last["status"] == "finished" and len(trial["rows"]) == 3, last
    diverged = sum(t["config"]["optim.weight_decay"] == 1.0e30 for t in found.values())
    assert summary["statuses"] == {"finished": 7 - diverged, "diverged": diverged}


# an interrupted search resumed: tests/test_study.py (one search checked for Tune's rows, statuses and the
# Optuna study's continuity)


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
            # a checkpoint registered: its epoch's report reached Tune's result.json (reported after the save)
            try:
                reported = any(t["rows"] for t in trials(storage / "killed").values())
            except ValueError:  # a line being written
                reported = False
            if reported and list(storage.glob("killed/raysl_trial_*/train/checkpoint_*")):
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
    # every epoch logged once, in order: the restart began after the checkpoint that existed at the kill (a
    # restart from scratch would train epoch 1 again), and an epoch Tune had logged before the kill and the
    # restart trained again replaced its first row (raysl.trial_log), none is skipped
    epochs = [r["epoch"] for r in trial["rows"]]
    assert epochs == list(range(1, 9)), epochs
    # the user is told: by the trial's line (Ray Train restarted its workers) or by a restart line (Tune retried it)
    assert re.search(r"recovered from 1 worker failure|trial \w+ failed .*; restarting from its last checkpoint",
                     err), err[-3000:]


@pytest.mark.slow
def test_pbt_trials_continue_from_cloned_checkpoints(head, tmp_path):
    space = write_space(
        tmp_path / "pbt.yaml",
        {"method.temperature": {"loguniform": [0.05, 1.0]}, "optim.lr": {"loguniform": [3e-4, 1e-2]}},
        # synchronous PBT: every trial reports an epoch before any exploit, so the clones do not depend on
        # which trial reports first (asynchronous PBT could clone only finished checkpoints on a slow machine)
        {"scheduler": "pbt", "perturbation_interval": 1, "num_samples": 4, "max_concurrent": 4, "synch": True},
        base_edits={"eval.stop_on_collapse": False},
    )
    space_text = yaml.safe_load(space.read_text())
    space_text["tune"].pop("sampler")  # PBT runs without a search algorithm
    space.write_text(yaml.safe_dump(space_text))
    # 3 epochs: two perturbations with epochs left after them (the second can clone a trial that was itself
    # restarted from a clone, where the retention bug below showed)
    done = run_raysl(head, ["tune", str(space), "--set", "optim.epochs=3", "--set", "eval.every_epochs=1",
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
    # a clone read the handed checkpoint in place. Catches: Checkpoint.to_directory() copied it to the machine's
    # temp folder (checkpoint_tmp_*) and nothing removed the copy: one model state left in /tmp per clone
    assert not list(Path(head.tmp).glob("checkpoint_tmp_*")), sorted(os.listdir(head.tmp))
    assert all(t["rows"][-1]["epoch"] == 3 for t in found.values()), {
        n: [(r["epoch"], r.get("status"), r.get("training_iteration")) for r in t["rows"]] for n, t in found.items()}
