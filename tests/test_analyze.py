"""`raysl analyze` on a real Ray Tune experiment: every output exists and parses, the
leaderboard equals what the trials wrote, the best config re-trains, and folders that
are not experiments fail with one line."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import RAYSL, REPO

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
# ASHA's grace period is eval.every_epochs: evaluating at epochs 2 and 4 lets it stop trials at 2,
# and epochs 1 and 3 carry raysl tune's filler values (worst before the first evaluation, then repeats).
EPOCHS = 4
# One trial at a time, all in one reused trial process: each concurrent slot is a process that imports torch
# (~4 CPU-s); concurrent trials are checked by the searches of tests/test_output.py, test_multinode.py and
# test_storage_faults.py.
TUNE = ["--num-samples", "6", "--set", f"optim.epochs={EPOCHS}", "--set", "eval.every_epochs=2",
        "--set", "model.width=8", "--set", "tune.max_concurrent=1"]
NUM_SAMPLES = 6
TRAIN_KEYS = {"epoch", "step", "loss", "images_per_s", "lr", "status", "eval_epoch", "error"}
PLOTS = ["learning_curves.png", "objective_vs_params.png", "param_importance.png", "rankme_vs_knn.png", "budget.png"]
OUTPUTS = ["leaderboard.csv", "leaderboard.md", "best_config.yaml", "summary.json", "report.html", *PLOTS]


def _tune_experiment(root: Path, env: dict) -> Path:
    """A real `raysl tune` run on digits, joined to the suite's Ray head (``env``: conftest ``head.env``)."""
    proc = subprocess.run([RAYSL, "tune", str(QUICKSTART), *TUNE, "--storage", str(root / "results"),
                           "--name", "t1"], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (root / "tune.stdout").write_text(proc.stdout)  # the summary line and leaderboard (tests/test_search.py)
    return root / "results" / "t1"


def experiment_dir(tmp_path_factory, env: dict) -> Path:
    """The session's experiment (made once, also for test_report_browser.py)."""
    root = tmp_path_factory.getbasetemp() / "analyze-experiment"
    done = root / "DONE"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        exp = _tune_experiment(root, env)
        done.write_text(str(exp))
    return Path(done.read_text())


def report_dir(tmp_path_factory, env: dict) -> Path:
    """`raysl analyze` of the session's experiment with the default --out (made once)."""
    exp = experiment_dir(tmp_path_factory, env)
    out = exp / "report"
    if not (out / "report.html").exists():
        from raysl.cli import main

        assert main(["analyze", str(exp)]) == 0
    return out


# A real Ray Tune run with a real ASHA scheduler whose trials report scripted curves, so that ASHA
# stops the trial with the best final objective: run one at a time (grid order), trial 2 reaches
# ASHA's rung (epoch 2) with 0.80, below the rung's median of trials 0 and 1 (0.90, 0.95), and is
# stopped there; trials 0 and 1 go on to epoch 4 and end lower (0.50, 0.55). The script itself
# reports 4 epochs for every trial: only ASHA ends one early. Trial 3 is a plainly bad one.
SCRIPTED_EPOCHS = 4
SCRIPTED = {  # optim.lr -> (method.temperature, knn_acc at epochs 1..4)
    0.002: (0.2, [0.30, 0.90, 0.60, 0.50]),  # the base's values
    0.004: (0.5, [0.35, 0.95, 0.65, 0.55]),
    0.006: (0.7, [0.40, 0.80, 0.50, 0.45]),  # stopped by ASHA at epoch 2: the best final value, 0.80
    0.008: (0.1, [0.20, 0.40, 0.30, 0.20]),  # stopped by ASHA at epoch 2
}
SCRIPTED_BEST_LR = 0.006
SCRIPTED_WEIGHT_DECAY = 0.05  # every trial's, not searched: differs from the base's 0.0001
SCRIPTED_TUNE = """
import json, sys
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

storage, name, curves, epochs, weight_decay = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), \
    float(sys.argv[5])
curves = {float(k): v for k, v in curves.items()}

def trainable(config):
    for epoch, acc in enumerate(curves[config["optim.lr"]][1], start=1):
        tune.report({"epoch": epoch, "eval_epoch": epoch, "knn_acc": acc, "knn_acc_k200": acc - 0.01,
                     "rankme": 10.0 + 20.0 * acc, "loss": 5.0 - acc, "images_per_s": 1000.0,
                     "status": "finished" if epoch == epochs else "running"})

ray.init(configure_logging=True, logging_level="WARNING")  # joins RAY_ADDRESS: the suite's head
tuner = tune.Tuner(
    trainable,
    param_space={"optim.lr": tune.grid_search(sorted(curves)),
                 "method.temperature": tune.sample_from(lambda config: curves[config["optim.lr"]][0]),
                 "optim.weight_decay": weight_decay},
    tune_config=tune.TuneConfig(
        metric="knn_acc", mode="max", max_concurrent_trials=1,
        scheduler=ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=2, reduction_factor=2,
                                stop_last_trials=False),
        trial_dirname_creator=lambda t: f"raysl_trial_{t.trial_id}", trial_name_creator=lambda t: t.trial_id),
    run_config=tune.RunConfig(storage_path=storage, name=name, verbose=0),
)
tuner.fit()
"""


def scripted_experiment_dir(tmp_path_factory, env: dict) -> Path:
    """The scripted ASHA experiment (made once per session), with the quickstart space as its
    raysl_space.yaml, as `raysl tune` writes it."""
    import sys

    import yaml

    root = tmp_path_factory.getbasetemp() / "analyze-scripted"
    exp = root / "results" / "asha"
    if not (root / "DONE").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        curves = json.dumps({str(lr): v for lr, v in SCRIPTED.items()})
        proc = subprocess.run([sys.executable, "-c", SCRIPTED_TUNE, str(root / "results"), "asha", curves,
                               str(SCRIPTED_EPOCHS), str(SCRIPTED_WEIGHT_DECAY)],
                              capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        space = yaml.safe_load(QUICKSTART.read_text())
        space["base"]["optim"]["epochs"] = SCRIPTED_EPOCHS
        space["base"]["eval"]["every_epochs"] = 2
        (exp / "raysl_space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
        (root / "DONE").write_text("ok")
    return exp


def scripted_report_dir(tmp_path_factory, env: dict) -> Path:
    """`raysl analyze` of the scripted ASHA experiment (made once)."""
    exp = scripted_experiment_dir(tmp_path_factory, env)
    out = exp / "report"
    if not (out / "report.html").exists():
        from raysl.cli import main

        assert main(["analyze", str(exp)]) == 0
    return out


@pytest.fixture(scope="session")
def scripted(tmp_path_factory, head) -> Path:
    return scripted_experiment_dir(tmp_path_factory, head.env)


@pytest.fixture(scope="session")
def scripted_report(tmp_path_factory, head) -> Path:
    return scripted_report_dir(tmp_path_factory, head.env)


@pytest.fixture(scope="session")
def experiment(tmp_path_factory, head) -> Path:
    return experiment_dir(tmp_path_factory, head.env)


@pytest.fixture(scope="session")
def report(tmp_path_factory, head) -> Path:
    return report_dir(tmp_path_factory, head.env)


def read_trials(exp: Path) -> dict[str, dict]:
    """Each trial's own files, read without raysl: trial id -> params and result rows."""
    trials = {}
    for trial in sorted(p for p in exp.iterdir() if (p / "result.json").exists()):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        params = json.loads((trial / "params.json").read_text())
        trials[rows[0]["trial_id"]] = {"rows": rows, "params": params, "dir": trial.name}
    return trials


def measured(rows: list[dict], key: str) -> list[float]:
    """The values of ``key`` a trial measured: raysl tune repeats the last evaluation between
    evaluations (eval_epoch < epoch) and reports the objective's worst value before the first
    one and when a trial fails; those are not measurements."""
    out = []
    for r in rows:
        value = r.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        fresh = key in TRAIN_KEYS or r.get("eval_epoch", r.get("epoch")) == r.get("epoch")
        if fresh and not (key == "knn_acc" and r.get("status") in ("diverged", "collapsed", "errored")):
            out.append(value)
    return out


def last(rows: list[dict], key: str):
    values = measured(rows, key)
    return values[-1] if values else None


def close(a, b) -> bool:
    if b is None:
        return a is None or (isinstance(a, float) and math.isnan(a))
    return math.isclose(float(a), float(b), rel_tol=1e-9)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from raysl.cli import main

    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --------------------------------------------------------------------------


def test_every_output_exists_and_parses(report):
    import base64

    import matplotlib.image

    for name in OUTPUTS:
        assert (report / name).is_file(), name
    table = pd.read_csv(report / "leaderboard.csv")
    assert len(table) == NUM_SAMPLES
    for col in ["rank", "trial_id", "status", "method.temperature", "optim.lr", "objective_final",
                "objective_best", "epochs", "knn_acc", "rankme", "images_per_s", "wall_time_s"]:
        assert col in table.columns, col
    md = (report / "leaderboard.md").read_text().splitlines()
    assert md[0].startswith("| rank | trial_id | status |") and len(md) == 2 + NUM_SAMPLES
    for name in PLOTS:
        image = matplotlib.image.imread(report / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
    summary = json.loads((report / "summary.json").read_text())
    assert sorted(summary["outputs"]) == sorted(OUTPUTS)
    exp = summary["experiments"][0]
    assert exp["trials"] == NUM_SAMPLES and exp["metric"] == "knn_acc" and exp["mode"] == "max"
    assert exp["searched_params"] == ["method.temperature", "optim.lr"]
    assert set(exp["importance"]["importances"]) <= {"method.temperature", "optim.lr"}
    assert summary["best"]["trial_id"] == str(table.loc[0, "trial_id"])
    page = (report / "report.html").read_text()
    for name in PLOTS:  # each PNG is embedded, byte for byte
        assert base64.b64encode((report / name).read_bytes()).decode() in page, name
    assert page.count("<img ") == len(PLOTS)
    assert html.escape(summary["summary"]) in page
    assert "Spearman" in page and "best_config.yaml" in page


def test_leaderboard_equals_the_trials_result_json(experiment, report):
    trials = read_trials(experiment)
    table = pd.read_csv(report / "leaderboard.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert set(table.index) == set(trials)
    for trial_id, t in trials.items():
        row, rows = table.loc[trial_id], t["rows"]
        assert row["epochs"] == rows[-1]["epoch"]
        expected = "finished" if rows[-1]["status"] == "finished" else "stopped"  # ASHA stopped it
        assert row["status"] == expected, (trial_id, rows[-1])
        assert (row["status"] == "stopped") == (rows[-1]["epoch"] < EPOCHS)
        for col in ("knn_acc", "knn_acc_k200", "rankme", "alignment", "uniformity", "images_per_s", "loss"):
            assert close(row[col], last(rows, col)), (trial_id, col, row[col], last(rows, col))
        assert close(row["objective_final"], last(rows, "knn_acc"))
        assert close(row["objective_best"], max(measured(rows, "knn_acc")))
        assert close(row["wall_time_s"], rows[-1]["time_total_s"])
        assert close(row["method.temperature"], t["params"]["method.temperature"])
        assert close(row["optim.lr"], t["params"]["optim.lr"])
    # ranked best first by the final objective
    assert list(table["objective_final"]) == sorted(table["objective_final"], reverse=True)
    assert list(table["rank"]) == list(range(1, NUM_SAMPLES + 1))
    summary = json.loads((report / "summary.json").read_text())["experiments"][0]
    epochs_run = sum(t["rows"][-1]["epoch"] for t in trials.values())
    assert summary["budget"]["trial_epochs_run"] == epochs_run
    assert summary["budget"]["trial_epochs_saved"] == EPOCHS * NUM_SAMPLES - epochs_run
    counts = {s: int((table["status"] == s).sum()) for s in table["status"].unique()}
    assert summary["status_counts"] == counts


@pytest.mark.slow
def test_best_config_is_the_best_trial_and_the_one_raysl_tune_wrote(experiment, report):
    """analyze's best_config.yaml: the best trial's parameters on the experiment's base, the same run config
    as the best config `raysl tune` wrote at the end of the search (which tests/test_search.py retrains with
    `raysl train`: one retrain of the session's best config, not two). Catches analyze and tune picking
    different best trials, or analyze dropping the base's --set overrides."""
    from raysl.run_config import load_config

    trials = read_trials(experiment)
    best_value = max(last(t["rows"], "knn_acc") for t in trials.values())
    best = [t["params"] for t in trials.values() if last(t["rows"], "knn_acc") == best_value]
    cfg = load_config(report / "best_config.yaml")
    assert any(math.isclose(cfg.method.temperature, p["method.temperature"], rel_tol=1e-9)
               and math.isclose(cfg.optim.lr, p["optim.lr"], rel_tol=1e-9) for p in best)
    # the experiment's base (with its --set overrides), not raysl's defaults
    assert cfg.model.width == 8 and cfg.optim.epochs == EPOCHS and cfg.eval.every_epochs == 2
    stdout = (experiment.parent.parent / "tune.stdout").read_text()
    written_by_tune = json.loads(stdout.strip().splitlines()[-1])["best_config_path"]
    assert load_config(written_by_tune).model_dump() == cfg.model_dump()


def test_running_experiment_partial_lines_pending_stopped_and_failed_trials(experiment, tmp_path, capsys):
    exp = tmp_path / "running"
    shutil.copytree(experiment, exp, ignore=shutil.ignore_patterns("report", "checkpoint_*"))
    for state in exp.glob("experiment_state*.json"):
        state.unlink()  # as if Tune had not written its state yet
    trials = sorted(read_trials(exp).values(), key=lambda t: (-len(t["rows"]), t["dir"]))
    writing, crashed, cut, diverged = trials[:4]
    assert min(len(t["rows"]) for t in trials[:4]) >= 2

    def rewrite(t: dict, rows: list[dict], tail: str = "") -> None:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (exp / t["dir"] / "result.json").write_text(text + tail)

    # a trial still writing: its last line is cut off mid-JSON and the rest is not marked done
    rows = [dict(r, done=False) for r in writing["rows"]]
    rewrite(writing, rows[:-1], json.dumps(rows[-1])[:40])
    # a trial whose worker crashed (Tune wrote error.txt)
    (exp / crashed["dir"] / "error.txt").write_text("Traceback ...\nRuntimeError: worker died\n")
    # a trial the scheduler stopped after its first epoch
    rewrite(cut, [dict(cut["rows"][0], done=True)])
    # a trial that diverged: raysl tune's closing report carries the objective's worst value
    closing = {**diverged["rows"][-1], "status": "diverged", "knn_acc": 0.0, "error": "diverged at step 7"}
    rewrite(diverged, [*diverged["rows"], closing])
    # a trial that has not reported yet
    pending = exp / "raysl_trial_abcdef99"
    pending.mkdir()
    (pending / "params.json").write_text(json.dumps(writing["params"]))
    (pending / "result.json").write_text("")
    # and no raysl_space.yaml: the searched parameters are the keys that vary across trials
    (exp / "raysl_space.yaml").unlink()

    rc, out, err = run_cli(capsys, "analyze", str(exp), "--out", str(tmp_path / "report"))
    assert rc == 0, err
    table = pd.read_csv(tmp_path / "report" / "leaderboard.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert len(table) == NUM_SAMPLES + 1

    def row(t: dict):
        return table.loc[t["rows"][0]["trial_id"]]

    assert row(writing)["status"] == "unfinished"  # not ended yet (running, or caught by an interrupt)
    assert row(writing)["epochs"] == writing["rows"][-2]["epoch"]
    assert row(crashed)["status"] == "errored"
    assert row(cut)["status"] == "stopped" and row(cut)["epochs"] == 1
    assert row(diverged)["status"] == "diverged"
    assert close(row(diverged)["objective_final"], last(diverged["rows"], "knn_acc"))  # not the 0.0 filler
    assert table.loc["abcdef99", "status"] == "unfinished" and table.loc["abcdef99", "epochs"] == 0
    failed = table.loc[[row(crashed).name, row(diverged).name], "rank"]
    usable = table[table["status"].isin(["finished", "stopped", "unfinished"])]
    assert failed.min() > usable["rank"].max()  # failed trials rank last
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["experiments"][0]["searched_params"] == ["method.temperature", "optim.lr"]
    assert any("raysl_space.yaml" in note for note in summary["experiments"][0]["notes"])
    assert summary["best"]["trial_id"] not in {row(crashed).name, row(diverged).name}


def test_compares_experiments_and_reads_uris(experiment, tmp_path, capsys):
    other = tmp_path / "storage" / "t2"
    shutil.copytree(experiment, other, ignore=shutil.ignore_patterns("report", "checkpoint_*"))
    out = tmp_path / "compare"
    rc, stdout, err = run_cli(capsys, "analyze", str(experiment), f"file://{other}", "--out", str(out))
    assert rc == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["report"] == f"{out}/report.html"
    table = pd.read_csv(out / "leaderboard.csv")
    assert sorted(table["experiment"].unique()) == ["t1", "t2"]
    assert len(table) == 2 * NUM_SAMPLES
    summary = json.loads((out / "summary.json").read_text())
    assert [e["name"] for e in summary["experiments"]] == ["t1", "t2"]
    one, two = summary["experiments"]
    assert one["best"] == two["best"] and one["budget"]["trial_epochs_run"] == two["budget"]["trial_epochs_run"]
    page = (out / "report.html").read_text()
    assert "t1" in page and "t2" in page and page.count("<img ") == len(PLOTS)


@pytest.mark.parametrize("kind", ["missing", "empty", "not_an_experiment", "file", "foreign_metrics", "no_results",
                                  "trial_folder"])
def test_folders_that_are_not_experiments_fail_with_one_line(kind, tmp_path, capsys):
    path = tmp_path / "x"
    expected = "has no Ray Tune trials"
    if kind == "missing":
        expected = "does not exist"
    elif kind == "empty":
        path.mkdir()
    elif kind == "not_an_experiment":
        (path / "data" / "nested").mkdir(parents=True)
        (path / "notes.txt").write_text("hello")
        (path / "data" / "values.csv").write_text("a,b\n1,2\n")
    elif kind == "file":
        path.write_text("not a folder")
        expected = "is a file, not a folder"
    elif kind == "foreign_metrics":
        trial = path / "train_fn_00000"
        trial.mkdir(parents=True)
        (trial / "params.json").write_text('{"x": 1}')
        (trial / "result.json").write_text('{"accuracy": 0.5, "training_iteration": 1, "trial_id": "aaaaa_00000"}\n')
        expected = "none of raysl's metrics"
    elif kind == "no_results":
        trial = path / "train_fn_00000"
        trial.mkdir(parents=True)
        (trial / "params.json").write_text('{"x": 1}')
        expected = "has reported a result yet"
    elif kind == "trial_folder":
        path.mkdir()
        (path / "params.json").write_text('{"x": 1}')
        (path / "result.json").write_text('{"loss": 1.0, "epoch": 1}\n')
        expected = "is one trial's folder"
    rc, out, err = run_cli(capsys, "analyze", str(path))
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("raysl: error: "), err
    assert expected in err, err
    if kind in ("missing", "empty", "not_an_experiment"):
        assert "raysl tune" in err


def test_spearman_equals_scipy_and_handles_ties():
    stats = pytest.importorskip("scipy.stats")
    from raysl.selectors import spearman

    x = [0.3, 0.1, 0.4, 0.4, 0.9, 0.2, 0.6]
    y = [12.0, 9.0, 15.0, 11.0, 30.0, 9.0, 20.0]
    assert math.isclose(spearman(x, y), stats.spearmanr(x, y).statistic, rel_tol=1e-12)
    assert spearman([1, 2], [2, 1]) is None  # too few trials
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # constant
    assert spearman([1, 2, float("nan"), 4], [1, 2, 3, 4]) == pytest.approx(1.0)


def test_importance_with_too_few_trials_or_one_param():
    from raysl.importance import param_importance
    from raysl.results import Experiment, SearchedParam

    def exp(rows, params):
        trials = pd.DataFrame(rows)
        return Experiment(location="x", name="x", trials=trials, history=pd.DataFrame(), params=params)

    two = [SearchedParam("a", "uniform", 0.0, 1.0), SearchedParam("b", "choice", choices=["x", "y"])]
    one_trial = exp([{"trial_id": "1", "status": "finished", "objective_final": 0.5, "a": 0.1, "b": "x"}], two)
    result = param_importance(one_trial)
    assert result["importances"] == {} and "at least 2" in result["note"]
    single = exp([{"trial_id": str(i), "status": "finished", "objective_final": i / 10, "a": i / 10} for i in range(3)],
                 [SearchedParam("a", "loguniform", 0.01, 1.0, log=True)])
    assert param_importance(single)["importances"] == {"a": 1.0}
    many = exp([{"trial_id": str(i), "status": "finished", "objective_final": (i % 3) / 3 + i / 100,
                 "a": (i % 3) / 3 + 0.01, "b": "xy"[i % 2]} for i in range(8)], two)
    scores = param_importance(many)["importances"]
    assert set(scores) == {"a", "b"} and scores["a"] > scores["b"]
    assert math.isclose(sum(scores.values()), 1.0, rel_tol=1e-6)


# --------------------------------------------------------------------------
# the best trial is marked whatever stopped it (here: ASHA)


def _scripted_ids(scripted: Path) -> dict[float, str]:
    """optim.lr -> trial id of the scripted experiment."""
    return {t["params"]["optim.lr"]: trial_id for trial_id, t in read_trials(scripted).items()}


def test_asha_stopped_the_best_trial_and_the_report_marks_it(scripted, scripted_report, tmp_path):
    from raysl.analyze import experiment_summary
    from raysl.report_plots import plot_learning_curves
    from raysl.results import load_experiments

    trials = read_trials(scripted)
    ids = _scripted_ids(scripted)
    assert sorted(ids) == sorted(SCRIPTED)
    best = ids[SCRIPTED_BEST_LR]
    # ASHA (not the script, which reports every epoch) ended the best trial at its first rung
    epochs = {lr: trials[i]["rows"][-1]["epoch"] for lr, i in ids.items()}
    assert epochs == {0.002: SCRIPTED_EPOCHS, 0.004: SCRIPTED_EPOCHS, 0.006: 2, 0.008: 2}
    finished = [last(trials[ids[lr]]["rows"], "knn_acc") for lr in (0.002, 0.004)]
    assert last(trials[best]["rows"], "knn_acc") == 0.80 > max(finished)

    summary = json.loads((scripted_report / "summary.json").read_text())
    assert summary["best"]["trial_id"] == best and summary["best"]["status"] == "stopped"
    assert summary["best"]["epochs"] == 2
    assert summary["best"]["searched"] == {"method.temperature": 0.7, "optim.lr": 0.006}
    assert f"trial {best}, stopped" in summary["summary"]

    # leaderboard.md: the best row, and only it, is tagged; leaderboard.csv keeps plain ids
    md = (scripted_report / "leaderboard.md").read_text().splitlines()
    tagged = [line for line in md if "★ best" in line]
    assert len(tagged) == 1 and f"**{best}** ★ best" in tagged[0] and "| stopped |" in tagged[0]
    csv = pd.read_csv(scripted_report / "leaderboard.csv", dtype={"trial_id": str})
    assert sorted(csv["trial_id"]) == sorted(ids.values())

    # report.html: the best row carries the class `best` next to its status
    page = (scripted_report / "report.html").read_text()
    rows = re.findall(r'<tr class="([^"]*)" data-trial="([^"]+)">', page)
    assert [trial for cls, trial in rows if "best" in cls.split()] == [best]
    assert dict((trial, cls) for cls, trial in rows)[best] == "stopped best"
    assert dict((trial, cls) for cls, trial in rows)[ids[0.008]] == "stopped"

    # the learning curves: the best trial's line is solid, thick, on top and is the legend's first entry
    experiments = load_experiments(str(scripted))
    drawn = plot_learning_curves(experiments, [experiment_summary(e) for e in experiments], str(tmp_path / "lc.png"))
    assert (tmp_path / "lc.png").stat().st_size > 1000
    info = drawn["asha"]
    assert info["best"] == best
    assert info["legend"][0] == f"best trial ({best}, stopped)"
    for metric in ("knn_acc", "loss"):
        lines = info["lines"][metric]
        assert set(lines) == set(ids.values())
        mine, others = lines[best], [v for k, v in lines.items() if k != best]
        assert mine["linestyle"] == "-" and mine["label"] == info["legend"][0]
        assert mine["linewidth"] > max(o["linewidth"] for o in others)
        assert mine["zorder"] > max(o["zorder"] for o in others)
        assert mine["color"] not in {o["color"] for o in others}
        # the other trial ASHA stopped stays dashed grey
        assert lines[ids[0.008]]["linestyle"] == "--" and lines[ids[0.008]]["color"] == "#8c8c8c"
        assert {lines[ids[lr]]["linestyle"] for lr in (0.002, 0.004)} == {"-"}


def test_best_config_vs_base(scripted, scripted_report):
    import yaml

    from raysl.best_config import best_run_config, config_vs_base
    from raysl.leaderboard import rank_trials
    from raysl.results import load_experiments
    from raysl.run_config import load_config

    exp = load_experiments(str(scripted))[0]
    top = rank_trials(exp).iloc[0]
    assert top["trial_id"] == _scripted_ids(scripted)[SCRIPTED_BEST_LR]
    text, source = best_run_config(exp, top)
    assert source == "raysl_space.yaml base + the trial's params"
    rows = config_vs_base(exp, top, text)
    # the searched keys first (space order), then what else differs from the base
    assert rows == [
        {"key": "method.temperature", "best": 0.7, "base": 0.2, "searched": True, "differs": True},
        {"key": "optim.lr", "best": 0.006, "base": 0.002, "searched": True, "differs": True},
        {"key": "optim.weight_decay", "best": SCRIPTED_WEIGHT_DECAY, "base": 0.0001, "searched": False,
         "differs": True},
    ]
    # a searched key left at the base's value is still listed, marked as not differing
    same = top.copy()
    same["config"] = {**top["config"], "method.temperature": 0.2}
    rows_same = config_vs_base(exp, same, best_run_config(exp, same)[0])
    assert rows_same[0] == {"key": "method.temperature", "best": 0.2, "base": 0.2, "searched": True,
                            "differs": False}
    # no raysl_space.yaml: no base to compare with
    exp.space = None
    assert [(r["key"], r["base"]) for r in config_vs_base(exp, top, text)] == [("method.temperature", None),
                                                                               ("optim.lr", None)]

    summary = json.loads((scripted_report / "summary.json").read_text())
    assert summary["best"]["vs_base"] == rows
    page = (scripted_report / "report.html").read_text()
    table = re.search(r'<table id="best-vs-base">(.*?)</table>', page, re.S).group(1)
    cells = re.findall(r'<tr class="([^"]*)" data-key="([^"]+)"><td class="t">[^<]*(?:<small>[^<]*</small>)?</td>'
                       r'<td class="t best-value">([^<]*)</td><td class="t base-value">([^<]*)</td></tr>', table)
    assert cells == [("searched differs", "method.temperature", "0.7", "0.2"),
                     ("searched differs", "optim.lr", "0.006", "0.002"),
                     ("other differs", "optim.weight_decay", "0.05", "0.0001")]
    # the full config: best_config.yaml itself, collapsed in a <details> a click away
    saved = (scripted_report / "best_config.yaml").read_text()
    assert saved.startswith("# best trial ")
    body = "".join(line + "\n" for line in saved.splitlines() if not line.startswith("#"))
    details = re.search(r'<details id="full-config"><summary>full config \(best_config.yaml\)</summary>'
                        r'<pre>(.*?)</pre></details>', page, re.S)
    assert details and html.unescape(details.group(1)) == body
    assert page.count("<pre>") == 1  # no other copy of the YAML on the page
    assert yaml.safe_load(body)["optim"]["lr"] == 0.006
    cfg = load_config(scripted_report / "best_config.yaml")
    assert (cfg.method.temperature, cfg.optim.lr, cfg.optim.weight_decay) == (0.7, 0.006, SCRIPTED_WEIGHT_DECAY)
    assert cfg.optim.epochs == SCRIPTED_EPOCHS and cfg.model.width == 16
