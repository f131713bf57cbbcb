"""`raysl analyze` on a real Ray Tune experiment: every output exists and parses, the
leaderboard equals what the trials wrote, the best config re-trains, and folders that
are not experiments fail with one line."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import RAYSL, REPO

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
TUNE_OVERRIDES = ["--set", "optim.epochs=3", "--set", "model.width=8"]
NUM_SAMPLES = 6
PLOTS = ["learning_curves.png", "objective_vs_params.png", "param_importance.png", "rankme_vs_knn.png", "budget.png"]
OUTPUTS = ["leaderboard.csv", "leaderboard.md", "best_config.yaml", "summary.json", "report.html", *PLOTS]

# A Ray Tune experiment written with ray.tune.Tuner: a small function trainable that reports
# raysl's metric names, ASHA over 3 epochs, and the space file next to the trials as raysl tune does.
TUNER_SCRIPT = textwrap.dedent("""
    import json, math, os, shutil, sys
    import yaml
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    storage, name, space_file = sys.argv[1], sys.argv[2], sys.argv[3]
    space = yaml.safe_load(open(space_file))

    def trainable(config):
        t, lr = config["method"]["temperature"], config["optim"]["lr"]
        quality = 1.0 - abs(math.log(t / 0.2)) / 4 - abs(math.log(lr / 0.002)) / 6
        for epoch in range(1, 4):
            knn = 0.3 + 0.15 * epoch * quality
            tune.report({"epoch": epoch, "loss": 5.0 - epoch * quality, "knn_acc": knn,
                         "knn_acc_k200": knn - 0.02, "rankme": 10 + 30 * knn + epoch, "alignment": 0.5,
                         "uniformity": -2.0, "images_per_s": 900.0 + 10 * epoch,
                         "status": "finished" if epoch == 3 else "running"})

    param_space = {"method": {"temperature": tune.loguniform(0.05, 1.0)}, "optim": {"lr": tune.loguniform(3e-4, 1e-2)}}
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=int(sys.argv[4]), metric="knn_acc", mode="max", max_concurrent_trials=2,
                                    scheduler=ASHAScheduler(time_attr="epoch", max_t=3, grace_period=1,
                                                            reduction_factor=2),
                                    search_alg=tune.search.BasicVariantGenerator(random_state=0)),
        run_config=tune.RunConfig(storage_path=storage, name=name, verbose=0))
    tuner.fit()
    shutil.copy(space_file, os.path.join(storage, name, "raysl_space.yaml"))
""")


def _space_with_overrides(path: Path) -> Path:
    space = yaml.safe_load(QUICKSTART.read_text())
    space["base"]["optim"]["epochs"] = 3
    space["base"]["model"]["width"] = 8
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _tuner_experiment(root: Path) -> Path:
    space = _space_with_overrides(root / "space.yaml")
    proc = subprocess.run([sys.executable, "-c", TUNER_SCRIPT, str(root / "results"), "t1", str(space),
                           str(NUM_SAMPLES)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "results" / "t1"


def experiment_dir(tmp_path_factory) -> Path:
    """The session's experiment (made once, also for test_report_browser.py)."""
    root = tmp_path_factory.getbasetemp() / "analyze-experiment"
    done = root / "DONE"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        exp = _tuner_experiment(root)
        done.write_text(str(exp))
    return Path(done.read_text())


def report_dir(tmp_path_factory) -> Path:
    """`raysl analyze` of the session's experiment with the default --out (made once)."""
    exp = experiment_dir(tmp_path_factory)
    out = exp / "report"
    if not (out / "report.html").exists():
        from raysl.cli import main

        assert main(["analyze", str(exp)]) == 0
    return out


@pytest.fixture(scope="session")
def experiment(tmp_path_factory) -> Path:
    return experiment_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def report(tmp_path_factory) -> Path:
    return report_dir(tmp_path_factory)


def read_trials(exp: Path) -> dict[str, dict]:
    """Each trial's own files, read without raysl: trial id -> params and result rows."""
    trials = {}
    for trial in sorted(p for p in exp.iterdir() if (p / "result.json").exists()):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        params = json.loads((trial / "params.json").read_text())
        trials[rows[0]["trial_id"]] = {"rows": rows, "params": params, "dir": trial.name}
    return trials


def last(rows: list[dict], key: str):
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return values[-1] if values else None


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from raysl.cli import main

    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --------------------------------------------------------------------------


def test_every_output_exists_and_parses(report):
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
    assert summary["best"]["trial_id"] == table.loc[0, "trial_id"]
    page = (report / "report.html").read_text()
    import base64

    for name in PLOTS:  # each PNG is embedded, byte for byte
        assert base64.b64encode((report / name).read_bytes()).decode() in page, name
    assert summary["summary"] in page or summary["summary"].replace("'", "&#x27;") in page
    assert "Spearman" in page and "best_config.yaml" in page


def test_leaderboard_equals_the_trials_result_json(experiment, report):
    trials = read_trials(experiment)
    table = pd.read_csv(report / "leaderboard.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert set(table.index) == set(trials)
    full = max(last(t["rows"], "epoch") for t in trials.values())
    for trial_id, t in trials.items():
        row, rows = table.loc[trial_id], t["rows"]
        assert row["epochs"] == last(rows, "epoch")
        assert row["status"] == ("finished" if rows[-1]["status"] == "finished" else "stopped")
        if row["epochs"] < full:
            assert row["status"] == "stopped"
        for col in ("knn_acc", "rankme", "images_per_s", "loss"):
            assert math.isclose(row[col], last(rows, col), rel_tol=1e-9), (trial_id, col)
        assert math.isclose(row["objective_final"], last(rows, "knn_acc"), rel_tol=1e-9)
        assert math.isclose(row["objective_best"], max(r["knn_acc"] for r in rows), rel_tol=1e-9)
        assert math.isclose(row["wall_time_s"], rows[-1]["time_total_s"], rel_tol=1e-9)
        assert math.isclose(row["method.temperature"], t["params"]["method"]["temperature"], rel_tol=1e-9)
        assert math.isclose(row["optim.lr"], t["params"]["optim"]["lr"], rel_tol=1e-9)
    # ranked best first by the final objective
    assert list(table["objective_final"]) == sorted(table["objective_final"], reverse=True)
    summary = json.loads((report / "summary.json").read_text())["experiments"][0]
    epochs_run = sum(last(t["rows"], "epoch") for t in trials.values())
    assert summary["budget"]["trial_epochs_run"] == epochs_run
    assert summary["budget"]["trial_epochs_saved"] == full * len(trials) - epochs_run


@pytest.mark.slow
def test_best_config_is_the_best_trial_and_retrains(experiment, report, tmp_path):
    from raysl.config import load_config

    trials = read_trials(experiment)
    best_id = max(trials, key=lambda k: last(trials[k]["rows"], "knn_acc"))
    best = trials[best_id]["params"]
    cfg = load_config(report / "best_config.yaml")
    assert math.isclose(cfg.method.temperature, best["method"]["temperature"], rel_tol=1e-9)
    assert math.isclose(cfg.optim.lr, best["optim"]["lr"], rel_tol=1e-9)
    assert cfg.model.width == 8 and cfg.optim.epochs == 3  # the experiment's base, not the defaults
    proc = subprocess.run([RAYSL, "train", str(report / "best_config.yaml"), "--set", "optim.epochs=1",
                           "--out", str(tmp_path / "retrain")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "finished"


def test_running_experiment_partial_lines_pending_and_errored_trials(experiment, tmp_path, capsys):
    exp = tmp_path / "running"
    shutil.copytree(experiment, exp, ignore=shutil.ignore_patterns("report"))
    for state in exp.glob("experiment_state*.json"):
        state.unlink()  # as if Tune had not written its state yet
    trials = read_trials(exp)
    finished = [t for t in trials.values() if t["rows"][-1]["status"] == "finished"]
    # a trial still writing: its last line is cut off mid-JSON and not marked done
    writing = exp / finished[0]["dir"] / "result.json"
    lines = writing.read_text().splitlines()
    lines[-2] = lines[-2].replace('"done": true', '"done": false')
    writing.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    # a trial that crashed, and one that has not reported yet
    (exp / finished[1]["dir"] / "error.txt").write_text("Traceback ...\nRuntimeError: worker died\n")
    pending = exp / "trainable_abcde_00099_99_temperature=0.1_2026-01-01_00-00-00"
    pending.mkdir()
    (pending / "params.json").write_text(json.dumps(finished[0]["params"]))
    (pending / "result.json").write_text("")
    # and no raysl_space.yaml: the searched parameters are the keys that vary across trials
    (exp / "raysl_space.yaml").unlink()

    rc, out, err = run_cli(capsys, "analyze", str(exp), "--out", str(tmp_path / "report"))
    assert rc == 0, err
    table = pd.read_csv(tmp_path / "report" / "leaderboard.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert len(table) == NUM_SAMPLES + 1
    writing_id = finished[0]["rows"][0]["trial_id"]
    assert table.loc[writing_id, "status"] == "running"
    assert table.loc[writing_id, "epochs"] == finished[0]["rows"][-2]["epoch"]
    assert table.loc[finished[1]["rows"][0]["trial_id"], "status"] == "errored"
    assert table.loc["abcde_00099", "status"] == "pending" and table.loc["abcde_00099", "epochs"] == 0
    assert {"method.temperature", "optim.lr"} <= set(table.columns)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["experiments"][0]["searched_params"] == ["method.temperature", "optim.lr"]
    assert any("raysl_space.yaml" in note for note in summary["experiments"][0]["notes"])


def test_compares_experiments_and_reads_uris(experiment, tmp_path, capsys):
    other = tmp_path / "storage" / "t2"
    shutil.copytree(experiment, other, ignore=shutil.ignore_patterns("report"))
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
    assert one["best"]["objective"] == two["best"]["objective"]
    assert one["budget"]["trial_epochs_run"] == two["budget"]["trial_epochs_run"]
    page = (out / "report.html").read_text()
    assert "t1" in page and "t2" in page and page.count("<img ") == len(PLOTS)


@pytest.mark.parametrize("kind", ["missing", "empty", "not_an_experiment", "file", "foreign_metrics", "no_results"])
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
    rc, out, err = run_cli(capsys, "analyze", str(path))
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("raysl: error: "), err
    assert expected in err, err
    if kind in ("missing", "empty", "not_an_experiment"):
        assert "raysl tune" in err


def test_spearman_equals_scipy_and_handles_ties():
    stats = pytest.importorskip("scipy.stats")
    from raysl.analyze import spearman

    x = [0.3, 0.1, 0.4, 0.4, 0.9, 0.2, 0.6]
    y = [12.0, 9.0, 15.0, 11.0, 30.0, 9.0, 20.0]
    assert math.isclose(spearman(x, y), stats.spearmanr(x, y).statistic, rel_tol=1e-12)
    assert spearman([1, 2], [2, 1]) is None  # too few trials
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # constant
    assert spearman([1, 2, float("nan"), 4], [1, 2, 3, 4]) == pytest.approx(1.0)


def test_importance_with_too_few_trials_or_one_param():
    from raysl.analyze import param_importance
    from raysl.results import Experiment, Param

    def exp(rows, params):
        trials = pd.DataFrame(rows)
        return Experiment(location="x", name="x", trials=trials, history=pd.DataFrame(), params=params)

    two = [Param("a", "uniform", 0.0, 1.0), Param("b", "choice", choices=["x", "y"])]
    one_trial = exp([{"trial_id": "1", "status": "finished", "objective_final": 0.5, "a": 0.1, "b": "x"}], two)
    result = param_importance(one_trial)
    assert result["importances"] == {} and "at least 2" in result["note"]
    single = exp([{"trial_id": str(i), "status": "finished", "objective_final": i / 10, "a": i / 10} for i in range(3)],
                 [Param("a", "loguniform", 0.01, 1.0, log=True)])
    assert param_importance(single)["importances"] == {"a": 1.0}
    many = exp([{"trial_id": str(i), "status": "finished", "objective_final": (i % 3) / 3 + i / 100,
                 "a": (i % 3) / 3 + 0.01, "b": "xy"[i % 2]} for i in range(8)], two)
    scores = param_importance(many)["importances"]
    assert set(scores) == {"a", "b"} and scores["a"] > scores["b"]
    assert math.isclose(sum(scores.values()), 1.0, rel_tol=1e-6)
