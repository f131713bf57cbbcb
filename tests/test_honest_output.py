"""Every number and word raysl prints is true (issue 22): no headline from too little data, one
parameter importance per search (the dashboard's), epochs that agree, a finished run that says so,
rates in one format, errors that blame the right input, and data prepare that leaves no half dataset.

All in-process and without Ray: analyze on result folders written here, `raysl train` on a run
folder written here (Ray must not start), the CLI through ``raysl.cli.main``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from raysl import cli, progress
from raysl.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")


def _write_trial(root: Path, trial: str, rows: list[dict], params: dict) -> None:
    """One Ray Tune trial folder as `raysl tune` leaves it (what raysl.results reads)."""
    folder = root / f"raysl_trial_{trial}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "result.json").write_text("".join(json.dumps({**row, "trial_id": trial}) + "\n" for row in rows))


# --------------------------------------------------------------------------
# 1. no best label-free selector from too few finished trials


def _six_trial_search(root: Path) -> Path:
    """A 6-trial search where only 2 trials finished (ASHA stopped the rest after epoch 1)."""
    exp = root / "six"
    for i in range(6):
        first = {"epoch": 1, "eval_epoch": 1, "knn_acc": 0.3 + i / 100, "rankme": 5.0 + i, "alignment": 0.5,
                 "uniformity": -2.0, "loss": 5.0, "status": "running", "timestamp": 1000 + i}
        rows = [first]
        if i < 2:  # finished: a second epoch with status finished
            rows.append({**first, "epoch": 2, "eval_epoch": 2, "knn_acc": 0.6 + i / 10, "rankme": 9.0 + i,
                         "status": "finished", "timestamp": 1100 + i, "done": True})
        else:
            rows[-1]["done"] = True
        _write_trial(exp, f"s{i}", rows, {"optim.lr": 1e-3 * (i + 1)})
    return exp


def test_analyze_names_no_best_selector_from_two_finished_trials(tmp_path, capsys):
    """Issue 22: a 6-trial search printed "best label-free selector rankme (kNN regret 0.0000)" from
    the 2 trials that finished. Below MIN_SELECTOR_TRIALS it says there is too little to judge, in the
    terminal line, summary.json and report.html alike."""
    exp = _six_trial_search(tmp_path)
    out = tmp_path / "report"
    assert cli.main(["analyze", str(exp), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    expected = "label-free selectors: 2 finished trials with kNN accuracy, fewer than 5 needed to compare them"
    assert "best label-free selector" not in err and expected in err, err
    saved = json.loads((out / "summary.json").read_text())
    selectors = saved["experiments"][0]["label_free_selectors"]
    assert selectors["rows"] == [] and selectors["trials"] == 2 and selectors["min_trials"] == 5
    assert selectors["note"] == expected.removeprefix("label-free selectors: ")
    assert "best label-free selector" not in saved["summary"]
    page = (out / "report.html").read_text()
    section = page.split('id="label-free-selectors"')[1].split("<h2")[0]
    assert "fewer than 5 needed to compare them" in section and "regret (kNN)" not in section
    assert "best label-free selector" not in page
    from raysl.selectors import MIN_SELECTOR_TRIALS

    assert MIN_SELECTOR_TRIALS == 5


# --------------------------------------------------------------------------
# 2. one parameter importance per search: the one raysl dashboard shows

# lr and temperature of each trial, and its final knn_acc (maximized)
SEARCH = [(1e-4, 0.9, 0.52), (3e-4, 0.2, 0.61), (1e-3, 0.5, 0.70), (3e-3, 0.1, 0.64), (1e-2, 0.7, 0.58),
          (3e-2, 0.3, 0.45), (5e-4, 0.05, 0.66)]


def _search_with_study(root: Path) -> tuple[Path, str]:
    """A search folder as `raysl tune` writes it: Tune trials plus the Optuna study in optuna.db
    (each trial COMPLETE with its last value, as Ray's OptunaSearch tells it; the last trial was
    stopped by ASHA after epoch 1)."""
    import optuna
    from optuna.distributions import FloatDistribution

    from raysl import study as studies

    exp = root / "search"
    exp.mkdir()
    url = f"sqlite:///{exp}/{studies.DB_FILE}"
    studies.StudyPlace(url, "search", str(exp), True).record()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name="search", direction="maximize")
    dists = {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True), "method.temperature": FloatDistribution(0.05, 1.0)}
    for i, (lr, temp, knn) in enumerate(SEARCH):
        tid = f"{i:08x}"
        stopped = i == len(SEARCH) - 1
        rows = [{"epoch": 1, "eval_epoch": 1, "knn_acc": knn, "loss": 4.0, "status": "running", "timestamp": 1000 + i}]
        if not stopped:
            rows.append({**rows[0], "epoch": 2, "eval_epoch": 2, "status": "finished", "timestamp": 1100 + i})
        rows[-1]["done"] = True
        _write_trial(exp, tid, rows, {"optim.lr": lr, "method.temperature": temp})
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr, "method.temperature": temp},
                                                  distributions=dists, value=knn,
                                                  user_attrs={studies.TRIAL_ATTR: tid}))
    return exp, url


def _dashboard_importances(url: str) -> dict[str, float]:
    """What optuna-dashboard's page shows: its WSGI app's param_importances API, called in-process."""
    from wsgiref.util import setup_testing_defaults

    import optuna
    import optuna_dashboard

    db = optuna.storages.RDBStorage(url)
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = f"/api/studies/{db.get_study_id_from_name('search')}/param_importances"
    status: list[str] = []
    body = b"".join(optuna_dashboard.wsgi(db)(environ, lambda s, headers, *exc: status.append(s)))
    assert status[0].startswith("200"), body[:300]
    (first,) = json.loads(body)["param_importances"]
    return {row["name"]: row["importance"] for row in first}


def test_analyze_importance_is_what_raysl_dashboard_shows(tmp_path):
    """Issue 22: the report said temperature 0.66 / lr 0.34 (fANOVA over the Tune trials) while
    `raysl dashboard` showed lr 0.50 / temperature 0.48 (optuna-dashboard's PED-ANOVA over the
    study's COMPLETE trials) for one search. The report now shows the dashboard's numbers and says so."""
    from raysl.analyze import analyze

    exp, url = _search_with_study(tmp_path)
    dashboard = _dashboard_importances(url)
    assert set(dashboard) == {"optim.lr", "method.temperature"}
    summary = analyze([str(exp)], str(tmp_path / "report"))
    importance = summary["experiments"][0]["importance"]
    assert importance["importances"] == pytest.approx(dashboard, abs=1e-9)
    assert importance["evaluator"].startswith("PED-ANOVA") and "optuna-dashboard" in importance["evaluator"]
    assert importance["trials"] == len(SEARCH) and "COMPLETE trials of Optuna study search" in importance["used"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"PED-ANOVA (Optuna&#x27;s PedAnovaImportanceEvaluator, as optuna-dashboard shows it) over the " \
           f"{len(SEARCH)} COMPLETE trials" in page


def test_importance_without_a_study_is_labelled_fanova(tmp_path):
    """A search with no Optuna study (PBT) has no dashboard to match: fANOVA, and the report says
    which estimator, with which seed, over which trials."""
    from raysl.importance import param_importance
    from raysl.results import load_experiments

    exp, _ = _search_with_study(tmp_path)
    (exp / "raysl_study.json").unlink()
    found = param_importance(load_experiments(str(exp))[0])
    assert found["evaluator"] == "fANOVA (Optuna's FanovaImportanceEvaluator, seed 0)"
    assert "no Optuna study" in found["note"] and set(found["importances"]) == {"optim.lr", "method.temperature"}
    assert found["used"] == "the 6 finished trials' final knn_acc"
    assert not (exp / "optuna.db-journal").exists()


# --------------------------------------------------------------------------
# 3. the interruption line agrees with the epoch lines


def test_interrupted_line_names_the_last_finished_epoch_and_where_a_resume_continues():
    """Issue 22: the terminal showed `epoch=8`, then `interrupted (SIGINT) at epoch 7 of 30; epochs 1-6 are
    checkpointed`. The line now names the last epoch that finished (the one printed), the checkpoint a
    resume continues from, the epochs it repeats, and why they are not kept."""
    from raysl.run_faults import interrupted_detail

    out = "/runs/simclr"
    # the run: epochs 7 and 8 finished and were printed; the stop came before Ray registered
    # their checkpoints (every epoch is checkpointed), so a resume continues from epoch 6
    assert interrupted_detail(8, 6, 30, 1, out) == (
        "after epoch 8 of 30; a resume continues from the epoch 6 checkpoint in /runs/simclr and repeats "
        "epochs 7-8 (the epoch 8 checkpoint was not saved before the stop)")
    # every second epoch is checkpointed: epoch 7 is repeated by design
    assert interrupted_detail(7, 6, 30, 2, out) == (
        "after epoch 7 of 30; a resume continues from the epoch 6 checkpoint in /runs/simclr and repeats "
        "epoch 7 (checkpoint.every_epochs=2)")
    assert interrupted_detail(8, 6, 30, 2, out).endswith("(the epoch 8 checkpoint was not saved before the stop)")
    assert interrupted_detail(6, 6, 30, 2, out) == (
        "after epoch 6 of 30; a resume continues from the epoch 6 checkpoint in /runs/simclr")
    assert interrupted_detail(1, 0, 30, 2, out) == (
        "after epoch 1 of 30; no epoch is checkpointed yet in /runs/simclr (checkpoint.every_epochs=2), "
        "a resume starts from epoch 1")
    assert interrupted_detail(0, 0, 30, 1, out) == (
        "during epoch 1 of 30; no epoch is checkpointed yet in /runs/simclr, a resume starts from epoch 1")
    # a checkpoint registered after the last epoch line was drawn: that epoch did finish
    assert interrupted_detail(5, 6, 30, 1, out).startswith("after epoch 6 of 30; a resume continues from the epoch 6")


def test_interrupted_train_prints_one_line_with_the_resume_command(tmp_path, monkeypatch, capsys):
    """The CLI's line around that detail: the prefix tests and scripts match, the resume command last."""
    from raysl import launch
    from raysl.errors import Interrupted
    from raysl.run_faults import interrupted_detail

    out = tmp_path / "run"

    def interrupted(cfg, out_dir, **kwargs):
        raise Interrupted("SIGINT", interrupted_detail(8, 6, 30, 2, out_dir))

    monkeypatch.setattr(launch, "train_run", interrupted)
    assert cli.main(["train", QUICKSTART, "--out", str(out)]) == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"raysl: interrupted (SIGINT) after epoch 8 of 30; a resume continues from the epoch 6 checkpoint "
                    f"in {out} and repeats epochs 7-8 (the epoch 8 checkpoint was not saved before the stop); "
                    f"resume with: raysl train {QUICKSTART} --out {out}")


# --------------------------------------------------------------------------
# 4. re-running a finished run says so, without starting Ray


def _finished_run_folder(out: Path, cfg) -> dict:
    """What a finished `raysl train --out OUT` leaves: config.yaml, metrics.jsonl (one row per epoch, the
    checkpoint's path in each), train/checkpoint_*/state.pt and Ray Train's checkpoint_manager_snapshot.json."""
    import torch

    from raysl.config_load import to_yaml

    out.mkdir(parents=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    train = out / "train"
    rows, results = [], []
    for epoch in range(1, cfg.optim.epochs + 1):
        name = f"checkpoint_2026-01-01_00-00-{epoch:02d}.000000"
        (train / name).mkdir(parents=True)
        torch.save({"epoch": epoch, "metrics": {"epoch": epoch}}, train / name / "state.pt")
        last = epoch == cfg.optim.epochs
        metrics = {"epoch": epoch, "step": 5 * epoch, "loss": 5.0 - epoch / 10, "images_per_s": 9010.5, "lr": 0.001,
                   "status": "finished" if last else "running", **({"knn_acc": 0.93, "rankme": 27.2} if last else {})}
        rows.append({**metrics, "checkpoint": str(train / name)})
        results.append({"version": 0, "checkpoint_dir_name": name, "metrics": metrics})
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    snapshot = {"ray_version": "2.60.0", "checkpoint_results": results[-2:], "checkpoint_report_indices": [0, 1],
                "latest_checkpoint_result": results[-1]}
    (train / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    return rows[-1]


def test_rerunning_a_finished_run_says_it_is_finished_without_starting_ray(tmp_path, monkeypatch, capsys):
    """Issue 22: re-running a finished run said "resuming the run ... from its last checkpoint" and spent
    35 s starting Ray to do nothing. Now: one line saying it is finished and where its results are, its
    summary as the last stdout line (status finished), exit 0, and Ray never starts."""
    import ray

    from raysl import launch
    from raysl.run_config import load_config

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started for a finished run")

    monkeypatch.setattr(launch, "init_ray", no_ray)
    overrides = ["--set", "optim.epochs=2", "--set", "model.width=8"]
    out = tmp_path / "run"
    last = _finished_run_folder(out, load_config(QUICKSTART, ["optim.epochs=2", "model.width=8"]))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert cli.main(["train", QUICKSTART, *overrides, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary == {**{k: v for k, v in last.items() if k != "checkpoint"}, "out": str(out),
                       "checkpoint": last["checkpoint"]}
    assert summary["status"] == "finished" and summary["epoch"] == 2
    assert f"the run in {out} is already finished (all 2 epochs, status finished); nothing to train" in captured.err
    assert f"{out}/metrics.jsonl" in captured.err and last["checkpoint"] in captured.err
    assert "resuming" not in captured.err
    assert not ray.is_initialized()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten


def test_a_run_is_finished_only_with_the_same_config_and_its_last_epoch(tmp_path):
    """More epochs, another config, or a run stopped before its last epoch: not finished (Ray decides
    what is left to train, as before)."""
    from raysl import storage
    from raysl.run_config import load_config
    from raysl.run_folder import finished_run

    cfg = load_config(QUICKSTART, ["optim.epochs=2"])
    out = tmp_path / "run"
    _finished_run_folder(out, cfg)
    where = storage.resolve(str(out))
    assert finished_run(cfg, where)["status"] == "finished"
    assert finished_run(load_config(QUICKSTART, ["optim.epochs=3"]), where) is None
    assert finished_run(load_config(QUICKSTART, ["optim.epochs=2", "optim.lr=0.5"]), where) is None
    rows = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(rows[0] + "\n")  # the last epoch's row is missing
    assert finished_run(cfg, where) is None
    assert finished_run(cfg, storage.resolve(str(tmp_path / "nothing"))) is None


def test_what_a_resume_may_change(tmp_path):
    """Issue 23: which settings a re-run on a run's --out may change (raysl.run_folder.RESUME_MAY_CHANGE). Catches
    a refusal of a legitimate resume (train longer, more workers, another cadence) and a resume let through
    that loads the checkpoint into another model or trains on as another run (method, data, recipe, seed)."""
    import yaml

    from raysl.config_load import to_yaml
    from raysl.run_config import load_config
    from raysl.run_folder import resume_conflicts

    saved = yaml.safe_load(to_yaml(load_config(QUICKSTART)))
    allowed = ["optim.epochs=50", "scale.num_workers=2", "scale.max_failures=3", "scale.placement_timeout_s=5",
               "eval.every_epochs=5", "checkpoint.keep=4", "checkpoint.every_epochs=2", "model.compile=true"]
    assert resume_conflicts(saved, load_config(QUICKSTART, allowed)) == []
    # one prepared folder, however its path is written
    in_folder = yaml.safe_load(to_yaml(load_config(QUICKSTART, ["data.path=data/../data/digits"])))
    assert resume_conflicts(in_folder, load_config(QUICKSTART, [f"data.path={Path('data/digits').resolve()}"])) == []
    assert [k for k, _, _ in resume_conflicts(in_folder, load_config(QUICKSTART, ["data.path=other"]))] == ["data.path"]
    refused = load_config(QUICKSTART, ["model.width=8", "seed=1", "optim.batch_size=128", "schedule.lr=constant",
                                       "data.fraction=0.5", "method.temperature=0.5"])
    assert [key for key, _, _ in resume_conflicts(saved, refused)] == [
        "method.temperature", "model.width", "data.fraction", "optim.batch_size", "schedule.lr", "seed"]
    # another method: named once, not with each knob that comes and goes with it
    byol = load_config(QUICKSTART, ["method={name: byol}"])
    assert resume_conflicts(saved, byol) == [("method.name", "simclr", "byol")]


# --------------------------------------------------------------------------
# 5. small ones


def test_images_per_s_is_a_whole_number_in_every_epoch_line():
    """Issue 22: `images_per_s=9010` and `images_per_s=1.004e+04` in the same column."""
    lines = [progress.epoch_line({"epoch": e, "loss": 4.0, "images_per_s": rate})
             for e, rate in ((1, 9010.4), (2, 10040.3), (3, 123456.7))]
    assert [line.rsplit("images_per_s=", 1)[1] for line in lines] == ["9010", "10040", "123457"]
    assert progress.trial_line("t1", "finished", [("images_per_s", "max")], {"epoch": 1, "images_per_s": 10040.3},
                               {}) == "[raysl] trial t1 finished epoch=1 images_per_s=10040"
    assert progress.epoch_line({"epoch": 1, "loss": 4.02211}) == "[raysl] epoch=1  loss=4.022"


def _images(folder: Path, sizes: list[tuple[int, int]], broken: int = 0) -> Path:
    """A flat folder of JPEGs of the given (height, width), plus ``broken`` truncated ones."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"img{i}.jpg", quality=90)
    for i in range(broken):
        whole = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(whole, format="JPEG")
        (folder / f"zz_broken{i}.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    return folder


def test_batch_size_error_blames_the_set_item_that_gave_it(tmp_path, capsys):
    """Issue 22: `--set optim.batch_size=8` too large for the data set was reported as the YAML file's
    value. The error names the --set item when it gave the value, the file otherwise."""
    from raysl.data.prepare import prepare
    from raysl.launch import check_against_data
    from raysl.run_config import load_config

    data = tmp_path / "data"
    prepare("imagefolder", str(_images(tmp_path / "src", [(32, 32)] * 4)), str(data), workers=1)  # 3 train images
    with pytest.raises(ConfigError, match=r"^--set optim\.batch_size=8: optim\.batch_size: 8 is larger than the 3 "):
        check_against_data(load_config(QUICKSTART, ["optim.batch_size=8"]), str(data), QUICKSTART)
    with pytest.raises(ConfigError, match=rf"^{QUICKSTART}: optim\.batch_size: 256 is larger than the 3 "):
        check_against_data(load_config(QUICKSTART), str(data), QUICKSTART)
    # and through the CLI, before Ray
    code = cli.main(["train", QUICKSTART, "--set", "optim.batch_size=8", "--set", "data.source=imagefolder",
                     "--set", f"data.path={data}", "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err.startswith("raysl: error: --set optim.batch_size=8: optim.batch_size: 8 is larger")


def test_strict_prepare_failure_leaves_out_as_it_found_it(tmp_path):
    """Issue 22: `raysl data prepare imagefolder ... --strict` stopped at an unreadable file and left
    shard files (and its journal) in --out without a manifest: a folder that is no data set."""
    from raysl.data.prepare import prepare

    src = _images(tmp_path / "src", [(32, 32)] * 6, broken=1)  # the broken file sorts last
    fresh = tmp_path / "fresh"
    with pytest.raises(DataError, match="cannot read image zz_broken0.jpg"):
        prepare("imagefolder", str(src), str(fresh), shard_rows=1, workers=1, strict=True)
    assert not fresh.exists()
    there = tmp_path / "there"
    there.mkdir()
    (there / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="cannot read image zz_broken0.jpg"):
        prepare("imagefolder", str(src), str(there), shard_rows=1, workers=2, strict=True)
    assert sorted(p.name for p in there.iterdir()) == ["notes.txt"]
    # without --strict the same folder prepares, skipping the file
    assert len(prepare("imagefolder", str(src), str(fresh), shard_rows=1, workers=1).skipped) == 1


def test_prepare_of_mixed_sizes_prints_their_range_not_one_shape(tmp_path, capsys):
    """Issue 22: `raysl data prepare imagefolder` of images of many sizes printed `"shape": [h, w, 3]`, the
    median size, as if every image had it. Now `"shape": null` and the range; one size keeps its shape."""
    from raysl.data.read.shards import load_manifest

    mixed = _images(tmp_path / "mixed", [(40, 60), (30, 30), (80, 50), (30, 30), (50, 50)])
    out = tmp_path / "out"
    assert cli.main(["data", "prepare", "imagefolder", str(mixed), "--out", str(out), "--workers", "1",
                     "--val-fraction", "0"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["shape"] is None
    assert printed["sizes"] == {"height": [30, 80], "width": [30, 60], "median": [40, 50], "channels": 3}
    manifest = load_manifest(str(out))
    assert manifest.size_range == {"height": (30, 80), "width": (30, 60)} and manifest.sizes_vary
    assert json.loads((out / "manifest.json").read_text())["size_range"] == {"height": [30, 80], "width": [30, 60]}

    same = _images(tmp_path / "same", [(32, 48)] * 3)
    assert cli.main(["data", "prepare", "imagefolder", str(same), "--out", str(tmp_path / "o2"), "--workers", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["shape"] == [32, 48, 3] and "sizes" not in printed
