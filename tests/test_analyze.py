"""`raysl analyze` on a real Ray Tune experiment: every output exists and parses, the
leaderboard equals what the trials wrote, the best config re-trains, and folders that
are not experiments fail with one line."""

from __future__ import annotations

import html
import json
import math
import os
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
TUNE = ["--num-samples", "6", "--set", f"optim.epochs={EPOCHS}", "--set", "eval.every_epochs=2",
        "--set", "model.width=8"]
NUM_SAMPLES = 6
TRAIN_KEYS = {"epoch", "step", "loss", "images_per_s", "lr", "status", "eval_epoch", "error"}
PLOTS = ["learning_curves.png", "objective_vs_params.png", "param_importance.png", "rankme_vs_knn.png", "budget.png"]
OUTPUTS = ["leaderboard.csv", "leaderboard.md", "best_config.yaml", "summary.json", "report.html", *PLOTS]


def _tune_experiment(root: Path) -> Path:
    """A real `raysl tune` run on digits (RAYSL_CACHE is the session's, see conftest.py)."""
    proc = subprocess.run([RAYSL, "tune", str(QUICKSTART), *TUNE, "--storage", str(root / "results"),
                           "--name", "t1"], capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root / "results" / "t1"


def experiment_dir(tmp_path_factory) -> Path:
    """The session's experiment (made once, also for test_report_browser.py)."""
    root = tmp_path_factory.getbasetemp() / "analyze-experiment"
    done = root / "DONE"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        exp = _tune_experiment(root)
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
def test_best_config_is_the_best_trial_and_retrains(experiment, report, tmp_path):
    from raysl.config import load_config

    trials = read_trials(experiment)
    best_value = max(last(t["rows"], "knn_acc") for t in trials.values())
    best = [t["params"] for t in trials.values() if last(t["rows"], "knn_acc") == best_value]
    cfg = load_config(report / "best_config.yaml")
    assert any(math.isclose(cfg.method.temperature, p["method.temperature"], rel_tol=1e-9)
               and math.isclose(cfg.optim.lr, p["optim.lr"], rel_tol=1e-9) for p in best)
    # the experiment's base (with its --set overrides), not raysl's defaults
    assert cfg.model.width == 8 and cfg.optim.epochs == EPOCHS and cfg.eval.every_epochs == 2
    proc = subprocess.run([RAYSL, "train", str(report / "best_config.yaml"), "--set", "optim.epochs=1",
                           "--out", str(tmp_path / "retrain")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "finished"


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

    assert row(writing)["status"] == "running"
    assert row(writing)["epochs"] == writing["rows"][-2]["epoch"]
    assert row(crashed)["status"] == "errored"
    assert row(cut)["status"] == "stopped" and row(cut)["epochs"] == 1
    assert row(diverged)["status"] == "diverged"
    assert close(row(diverged)["objective_final"], last(diverged["rows"], "knn_acc"))  # not the 0.0 filler
    assert table.loc["abcdef99", "status"] == "pending" and table.loc["abcdef99", "epochs"] == 0
    failed = table.loc[[row(crashed).name, row(diverged).name], "rank"]
    usable = table[table["status"].isin(["finished", "stopped", "running"])]
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
