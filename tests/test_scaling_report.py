"""The scaling report: worker scaling by hand, stored fits that predict again, the plots and tables of a
synthetic scaling.json (fit_all on runs drawn from a known law), and (slow) `raysl analyze` of a real tiny
`raysl scale` experiment opened in headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from raysl import scaling_laws as laws
from raysl.scaling import RESULT_FILE, SCALING_FILE, load_scaling
from raysl.scaling_fits import fit_all
from raysl.scaling_plots import PLOTS
from raysl.scaling_report import write_report
from raysl.scaling_stored import read_scaling
from raysl.scaling_text import format_report

from conftest import HANG, RAYSL, REPO, signal_all
from test_report_browser import CHROMIUM, run_check

QUICKSTART = REPO / "search_spaces" / "scaling_quickstart.yaml"
# A table cell shows 4 significant digits: it differs from the stored value by at most half a unit in
# the 4th digit, i.e. 5e-4 of the value.
SHOWN = 5e-4


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from raysl.cli import main

    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --------------------------------------------------------------------------
# worker scaling


def test_worker_scaling_hand_computed():
    """Medians over the epochs after the first, pooled over a worker count's runs:
    1 worker: runs [50 | 100, 110, 90] and [40 | 120] -> median of {100, 110, 90, 120} = 105;
    2 workers: [10 | 190, 200, 210] -> 200: speed-up 200/105, efficiency (200/105)/2;
    4 workers: one one-epoch run [300] keeps its only epoch: speed-up 300/105, efficiency /4."""
    out = laws.worker_scaling([1, 1, 2, 4], [[50, 100, 110, 90], [40, 120], [10, 190, 200, 210], [300]])
    assert out["reference_workers"] == 1
    one, two, four = out["rows"]
    assert (one["num_workers"], one["images_per_s"], one["epochs"], one["runs"]) == (1, 105.0, 4, 2)
    assert one["speedup"] == 1.0 and one["efficiency"] == 1.0 and not one["first_epoch_only"]
    assert two["images_per_s"] == 200.0 and two["epochs"] == 3
    assert two["speedup"] == pytest.approx(200 / 105, rel=1e-12)
    assert two["efficiency"] == pytest.approx(200 / 105 / 2, rel=1e-12)
    assert four["images_per_s"] == 300.0 and four["first_epoch_only"]
    assert four["efficiency"] == pytest.approx(300 / 105 / 4, rel=1e-12)


def test_worker_scaling_without_a_one_worker_run_and_bad_values():
    """Against the fewest workers (2): 4 workers at 1.5x the throughput is 75% efficient. Missing,
    NaN and zero rates are dropped; no usable rate at all is an error."""
    out = laws.worker_scaling([2, 4, 4], [[1, 200, 200], [1, 300, float("nan"), 300], [None, 0.0]])
    assert out["reference_workers"] == 2
    two, four = out["rows"]
    assert (two["images_per_s"], four["images_per_s"], four["runs"]) == (200.0, 300.0, 1)
    assert four["speedup"] == 1.5 and four["efficiency"] == 0.75
    with pytest.raises(ValueError, match="images_per_s"):
        laws.worker_scaling([1, 2], [[], [float("nan")]])


def write_spec(tmp_path: Path, grid: dict, fit: dict) -> Path:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["grid"], data["fit"] = grid, fit
    path = tmp_path / "scaling.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_grid_over_workers_is_a_scaling_axis_and_fit_all_tables_it_per_group(tmp_path):
    """scale.num_workers is a grid axis (`--predict workers=2` too); fit_all makes one throughput
    table per width, since a wider model is slower at any worker count."""
    spec = load_scaling(str(write_spec(tmp_path, {"model.width": [4, 8], "scale.num_workers": [1, 2]},
                                       {"bootstrap": 20})), [], ["workers=2"])
    assert {"scale.num_workers": 2} in spec.fit.predict
    spec.fit.predict = []
    rates = {(4, 1): [5, 1000, 1000], (4, 2): [5, 1500, 1700], (8, 1): [5, 400, 400], (8, 2): [5, 800, 800]}
    runs = [{"trial_id": f"{w}-{k}", "config": {"model.width": w, "scale.num_workers": k}, "error": 0.1,
             "n_params": 100 * w, "train_images": 1000, "flops": 1e9 * w, "curve": [], "images_per_s": r}
            for (w, k), r in rates.items()]
    result = fit_all(runs, spec, point_values=None)
    tables = {t["group"]["model.width"]: t for t in result["worker_scaling"]}
    assert [r["efficiency"] for r in tables[4]["rows"]] == [1.0, 0.8]  # median(1500, 1700) = 1600: 1.6x / 2
    assert [r["speedup"] for r in tables[8]["rows"]] == [1.0, 2.0]
    assert "2 workers:     1600.0 images/s, speed-up 1.60x, efficiency 80%" in format_report(result, 0.9)


# --------------------------------------------------------------------------
# stored fits


def test_a_fit_written_to_json_predicts_the_same():
    """LawFit -> to_dict(samples=True) -> JSON -> from_dict gives the same predictions and intervals
    (JSON keeps a float's repr exactly); without the samples, the point estimate and no interval."""
    rng = np.random.default_rng(0)
    c = np.logspace(9, 13, 8)
    err = (0.05 + 2e3 * c ** -0.3) * np.exp(rng.normal(0, 0.02, len(c)))
    fit = laws.fit_compute_law(c, err, n_bootstrap=50)
    again = laws.LawFit.from_dict(json.loads(json.dumps(fit.to_dict(samples=True))))
    assert again.params == fit.params and again.intervals == fit.intervals
    assert laws.predict(again, C=1e15) == laws.predict(fit, C=1e15)
    bare = laws.LawFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    med, lo, hi = laws.predict(bare, C=1e15)
    assert med == pytest.approx(float(laws.law_value(fit, fit.params, C=1e15)), rel=1e-12)
    assert math.isnan(lo) and math.isnan(hi)


# --------------------------------------------------------------------------
# a synthetic scaling.json: fit_all on runs drawn from a known law


TRUTH = {"E_inf": 0.05, "A": 5.0, "alpha": 0.35, "B": 2.0, "beta": 0.4}
S_MIN, B_CRIT = 100.0, 128.0  # steps to the target error: S = S_MIN (1 + B_CRIT / B)
TARGET = 0.7


def synthetic_runs() -> list[dict]:
    """width x fraction x batch size x workers; N = 100 width^2, D = 1000 fraction, C = 6 N D;
    error from TRUTH with 1% log-normal noise; a learning curve that reaches TARGET after S(B) steps;
    throughput 16000 / width images/s on one worker, 1.8x on two (after a slow first epoch)."""
    rng = np.random.default_rng(0)
    runs = []
    for width in (4, 8, 16):
        for fraction in (0.25, 1.0):
            for batch in (64, 256):
                for workers in (1, 2):
                    n, d = 100.0 * width ** 2, 1000.0 * fraction
                    t = TRUTH
                    err = (t["E_inf"] + t["A"] * n ** -t["alpha"] + t["B"] * d ** -t["beta"])
                    err *= math.exp(rng.normal(0, 0.01))
                    steps = S_MIN * (1 + B_CRIT / batch)
                    rate = 16000 / width * (1.8 if workers == 2 else 1.0)
                    runs.append({"trial_id": f"w{width}f{fraction}b{batch}k{workers}",
                                 "config": {"model.width": width, "data.fraction": fraction,
                                            "optim.batch_size": batch, "scale.num_workers": workers},
                                 "error": err, "knn_acc": 1 - err, "n_params": int(n), "train_images": int(d),
                                 "flops": 6 * n * d, "curve": [[0.0, 1.0], [steps, TARGET], [2 * steps, err]],
                                 "images_per_s": [rate / 10, rate, rate]})
    return runs


GRID = {"model.width": [4, 8, 16], "data.fraction": [0.25, 1.0], "optim.batch_size": [64, 256],
        "scale.num_workers": [1, 2]}
# every plot but the trajectory's, which needs fit.trajectory (tests/test_scale.py draws it)
DRAWN = {key: name for key, name in PLOTS.items() if key != "trajectory"}


def write_scaling_experiment(folder: Path, runs: list[dict], grid: dict, predict: list[dict]) -> dict:
    """scaling.json + the scaling file as `raysl scale` writes them (fit_all on ``runs``)."""
    from raysl.scaling_fits import write_result

    folder.mkdir(parents=True, exist_ok=True)
    spec = load_scaling(str(write_spec(folder, grid, {"bootstrap": 60, "target_error": TARGET,
                                                      "predict": predict})))

    def point_values(point):  # the synthetic runs' N(width), D(fraction)
        n = 100.0 * point.get("model.width", 8) ** 2
        d = 1000.0 * point.get("data.fraction", 1.0)
        return n, d, 6 * n * d

    result = {"experiment": str(folder), "metric": "knn_acc", "error": "1 - knn_acc", "level": spec.fit.level,
              "grid": grid, "written": "now", "runs": runs, "not_used": [], **fit_all(runs, spec, point_values)}
    write_result(str(folder), result)
    (folder / SCALING_FILE).write_text(yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False))
    return json.loads((folder / RESULT_FILE).read_text())


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, dict, dict]:
    """(report folder, scaling.json, the report's summary) of the synthetic experiment."""
    folder = tmp_path_factory.mktemp("synthetic") / "exp"
    result = write_scaling_experiment(folder, synthetic_runs(), GRID, [{"compute": 1e9}, {"model.width": 32}])
    out = folder / "report"
    out.mkdir()
    found = read_scaling(str(folder))
    assert found is not None and found[0] == result
    summary = write_report(*found, str(out), name="exp", predict=[{"compute": 1e10}, {"compute": 1e9}])
    return out, result, summary


def test_an_empty_trajectory_plot_says_why(tmp_path, monkeypatch):
    """The trajectory plot with nothing to draw: a failed fit shows its note, no fit "fit.trajectory is off"
    (the note lookup's default text made that case unreachable), and a fit without its runs' curves says so
    (it said "not fitted")."""
    from raysl import scaling_plots

    said = []
    monkeypatch.setattr(scaling_plots, "_message", lambda ax, text: said.append(text))
    note = "trajectory L(N, S_min) not fitted: the trajectory law needs >= 3 curves"
    for result in ({"notes": ["E(C) not fitted: x", note]}, {"notes": []},
                   {"trajectory": {"runs": ["t1"], "constants": {}}, "runs": [], "notes": []}):
        scaling_plots.plot_trajectory(result, [], str(tmp_path / "t.png"))
    assert said == [note, "no trajectory fit: fit.trajectory is off",
                    "no curve to draw: scaling.json holds no evaluations of the runs the trajectory law was fitted on"]


def test_synthetic_fits_every_section(synthetic):
    """E(N, D) fits the runs to about their 1% noise (3 N x 2 D values do not pin the exponents down;
    recovering them is tests/test_scale.py's and tests/test_scaling_laws.py's job), the critical batch
    size comes out exactly (noiseless steps), the throughput table 1.8x / 90%, and every plot is drawn."""
    out, result, summary = synthetic
    assert result["model_data"]["rmse_log"] < 0.02 and result["model_data"]["n_runs"] == 24
    assert len(result["compute"]["samples"]) == 60 and len(result["model_data"]["samples"]) == 60
    cbs = result["critical_batch"]
    assert len(cbs) == 12 and all(cb["B_crit"] == pytest.approx(B_CRIT, rel=1e-9) for cb in cbs)
    for ws in result["worker_scaling"]:
        assert [r["speedup"] for r in ws["rows"]] == pytest.approx([1.0, 1.8], rel=1e-12)
        assert ws["rows"][1]["efficiency"] == pytest.approx(0.9, rel=1e-12)
    assert summary["plots"] == DRAWN and sorted(os.listdir(out)) == sorted([*DRAWN.values(), "report.html"])
    drawn = summary["drawn"]
    assert drawn["error_vs_compute"] == {"runs": 24, "curve": True, "band": True, "predictions": 3}
    # one fitted line per value of the other axes: 2 x 2 x 2 along width, 3 x 2 x 2 along each of the others
    assert drawn["slices"]["panels"] == list(GRID) and drawn["slices"]["fit_lines"] == 8 + 3 * 12
    assert drawn["frontier"]["points"] == 3 and drawn["critical_batch"]["fitted"] == 12
    assert drawn["worker_scaling"]["groups"] == 12


def test_stored_and_new_predictions(synthetic):
    """The stored predictions come first; --predict adds only new points (compute=1e9 is stored), each
    from the stored fit: E(C) at 1e10 is laws.predict of the fit rebuilt from scaling.json."""
    _, result, summary = synthetic
    preds = summary["predictions"]
    assert [p["point"] for p in preds] == [{"compute": 1e9}, {"model.width": 32}, {"compute": 1e10}]
    assert [p["source"] for p in preds] == ["raysl scale", "raysl scale", "raysl analyze --predict"]
    fit = laws.LawFit.from_dict(result["compute"])
    assert preds[2]["error_compute"] == list(laws.predict(fit, C=1e10))
    assert preds[1]["error_model_data"] == result["predictions"][1]["error_model_data"]


def test_report_with_too_few_runs_says_what_is_missing(tmp_path):
    """Three runs: no E(C), no E(N, D), no frontier; the page says so in words and still draws."""
    runs = [r for r in synthetic_runs() if r["config"]["data.fraction"] == 1.0 and r["config"]["optim.batch_size"]
            == 64 and r["config"]["scale.num_workers"] == 1]
    result = write_scaling_experiment(tmp_path / "exp", runs, {"model.width": [4, 8, 16]}, [{"compute": 1e9}])
    assert "compute" not in result and "model_data" not in result
    summary = write_report(*read_scaling(str(tmp_path / "exp")), str(tmp_path), name="exp")
    page = (tmp_path / "report.html").read_text()
    assert 'id="constants-missing"' in page and "E(C) not fitted: fitting E(C) needs &gt;= 4 runs" in page
    assert "E(N, D) not fitted" in page and "Not available: it needs the E(N, D) fit" in page
    assert summary["drawn"]["error_vs_compute"] == {"runs": 3, "curve": False, "band": False, "predictions": 0}
    assert summary["drawn"]["frontier"] == {"points": 0}
    assert "no fit" in page  # the stored prediction's row


# --------------------------------------------------------------------------
# `raysl analyze --predict`: user errors


def test_predict_on_a_search_experiment_is_one_config_line(tmp_path, capsys):
    exp = tmp_path / "search"
    trial = exp / "train_fn_00000"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text('{"optim.lr": 0.1}')
    (trial / "result.json").write_text('{"knn_acc": 0.5, "epoch": 1, "trial_id": "aaaaa_00000"}\n')
    rc, out, err = run_cli(capsys, "analyze", str(exp), "--predict", "width=64", "--out", str(tmp_path / "r"))
    assert (rc, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("raysl: error: --predict needs one scaling experiment") and str(exp) in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("flag", "message"), [("lr=0.1", "'lr': predict at compute=... or at grid axes"),
                                               ("width", "expected axis=value"),
                                               ("compute=lots", "expected training FLOPs > 0")])
def test_bad_predict_points_fail_before_reading(tmp_path, capsys, flag, message):
    rc, out, err = run_cli(capsys, "analyze", str(tmp_path / "missing"), "--predict", flag)
    assert (rc, out) == (2, "") and err.count("\n") == 1 and message in err, err


def test_predict_points_in_a_scaling_file_read_compute_as_a_number(tmp_path):
    """YAML reads ``1e15`` (no dot) as text; a compute point is a number all the same."""
    spec = load_scaling(str(write_spec(tmp_path, {"model.width": [4, 8]}, {"predict": [{"flops": "1e15"},
                                                                                       {"compute": 10}]})))
    assert spec.fit.predict == [{"compute": 1e15}, {"compute": 10.0}]


# --------------------------------------------------------------------------
# in headless Chromium


# After the load event: every image, and the cells of the constants and predictions tables.
CHECK_TABLES = """<script>
window.addEventListener("load", function () {
  function rows(id, attr) {
    return Array.prototype.slice.call(document.querySelectorAll("#" + id + " tbody tr")).map(function (tr) {
      var cells = {};
      Array.prototype.slice.call(tr.cells).forEach(function (td) {
        cells[td.getAttribute("data-col")] = td.textContent;
      });
      return {key: attr.map(function (a) { return tr.getAttribute(a); }), cells: cells, height: tr.offsetHeight};
    });
  }
  var result = {
    images: Array.prototype.slice.call(document.images).map(function (img) {
      return {file: img.getAttribute("data-file"), complete: img.complete, width: img.naturalWidth,
              height: img.naturalHeight, shown: img.offsetWidth};
    }),
    constants: rows("constants", ["data-law", "data-name"]),
    predictions: rows("predictions", ["data-point"]),
    links: Array.prototype.slice.call(document.querySelectorAll("a")).map(function (a) {
      return a.getAttribute("href");
    })
  };
  var out = document.createElement("pre");
  out.id = "raysl-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""
chromium_only = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium")


def shown(text: str) -> float | None:
    return None if text in ("-", "", "no fit") else float(text)


def interval(text: str) -> list[float] | None:
    found = re.fullmatch(r"\[(\S+), (\S+)\]", text)
    return [float(found.group(1)), float(found.group(2))] if found else None


def check_page(report: Path, tmp_path: Path, result: dict, predictions: list[dict], plots: list[str]) -> dict:
    """Every image loaded and shown; every fitted constant and prediction in the tables, as stored."""
    found = run_check(report, tmp_path, CHECK_TABLES)
    assert sorted(i["file"] for i in found["images"]) == sorted(plots)
    for image in found["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0 and image["shown"] > 0, image
    level = f"{100 * result['level']:g}% interval"
    constants = {tuple(r["key"]): r for r in found["constants"]}
    expected = {(law, name) for law in ("compute", "model_data") if law in result for name in result[law]["params"]}
    assert set(constants) == expected and expected
    for (law, name), row in constants.items():
        assert row["height"] > 0
        assert shown(row["cells"]["value"]) == pytest.approx(result[law]["params"][name], rel=SHOWN)
        lo, hi = result[law]["intervals"][name]
        assert interval(row["cells"][level]) == pytest.approx([lo, hi], rel=SHOWN)
        assert row["cells"]["runs"] == str(result[law]["n_runs"])
    rows = [r for r in found["predictions"]]
    assert [json.loads(r["key"][0]) for r in rows] == [p["point"] for p in predictions]
    for row, p in zip(rows, predictions):
        for key, col in (("error_compute", "E(C)"), ("error_model_data", "E(N, D)")):
            if key in p:
                assert shown(row["cells"][col]) == pytest.approx(p[key][0], rel=SHOWN)
                assert interval(row["cells"][f"{col} {result['level'] * 100:g}%"]) == pytest.approx(p[key][1:],
                                                                                                   rel=SHOWN)
            else:
                assert row["cells"][col] == "-"
        if "compute" in p:
            assert shown(row["cells"]["C (FLOPs)"]) == pytest.approx(p["compute"], rel=SHOWN)
    return found


@chromium_only
def test_synthetic_report_in_chromium(synthetic, tmp_path):
    out, result, summary = synthetic
    check_page(out, tmp_path, result, summary["predictions"], list(DRAWN.values()))


# --------------------------------------------------------------------------
# end to end: a real tiny `raysl scale`, then `raysl analyze --predict`


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a tampered state file could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _trial_finished(trial: Path) -> bool:
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.endswith("}")] \
        if (trial / "result.json").exists() else []
    return bool(rows) and rows[-1].get("status") == "finished"


@pytest.mark.slow
@chromium_only
def test_scale_interrupted_resumed_analyzed_with_predict_and_opened_in_chromium(tmp_path, head):
    """One real `raysl scale` grid on digits (width [4, 8, 16] x fraction [0.5, 1.0], 1 epoch, crop 8:
    6 runs, one at a time), joined to the suite's head: Ctrl-C after 2 runs (no fit on a partial
    grid), `--resume` fits every run (E(C) and E(N, D)); `raysl analyze --predict` then predicts from
    the stored fit: at width=32, fraction=1.0 (the base's fraction) exactly what `raysl scale --predict
    width=32` predicted from the live fit; the page opens in Chromium with every image and number."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["grid"] = {"model.width": [4, 8, 16], "data.fraction": [0.5, 1.0]}
    data["base"]["optim"]["epochs"] = 1
    data["base"]["eval"]["every_epochs"] = 1
    data["base"]["checkpoint"]["every_epochs"] = 1
    data["fit"] = {"metric": "knn_acc", "bootstrap": 100, "predict": [{"compute": 1e10}]}
    # one at a time, each run in a process of its own (a reused process runs a run in under a second, and
    # in a CI run the grid then finished before the Ctrl-C took effect): the grid is still running after 2
    data["tune"] = {"max_concurrent": 1, "reuse_actors": False}
    scaling = tmp_path / "tiny.yaml"
    scaling.write_text(yaml.safe_dump(data, sort_keys=False))
    storage = tmp_path / "results"
    experiment = storage / "tiny"
    env = {**head.env, "PYTHONUNBUFFERED": "1"}
    args = [RAYSL, "scale", str(scaling), "--storage", str(storage), "--predict", "width=32"]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Ctrl-C once 2 runs finished, with runs left: a run of a reused trial process takes well under a
    # second here, and in a CI run the other 4 had finished before a poll saw 2 and the interruption took
    # effect. So the trial process is stopped (SIGSTOP) before each look and let go (SIGCONT) only while
    # fewer than 2 have finished: once 2 have, it stays stopped through the Ctrl-C and cannot finish
    # another run (the interrupted search kills it; it is let go at the end in any case).
    frozen: list[int] = []
    try:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline and proc.poll() is None:
            frozen[:] = head.worker_pids("ImplicitFunc")  # the trial actor (the head group runs one test at a time)
            signal_all(frozen, signal.SIGSTOP)
            if frozen and sum(_trial_finished(t) for t in experiment.glob("raysl_trial_*")) >= 2:
                break
            signal_all(frozen, signal.SIGCONT)
            time.sleep(0.05)
        assert proc.poll() is None, "the grid ended before it could be interrupted"
        finished_at_interrupt = sum(_trial_finished(t) for t in experiment.glob("raysl_trial_*"))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG)
    finally:
        signal_all(frozen, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, f"{proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    assert 2 <= finished_at_interrupt < 6, finished_at_interrupt
    assert not (experiment / RESULT_FILE).exists()  # no fit on a partial grid
    assert "--resume" in err
    resumed = subprocess.run([*args, "--resume"], env=env, cwd=REPO, capture_output=True, text=True, timeout=HANG)
    assert resumed.returncode == 0, f"{resumed.stdout[-2000:]}\n{resumed.stderr[-4000:]}"

    result = json.loads((experiment / RESULT_FILE).read_text())
    assert len(result["runs"]) == 6 and not result["not_used"]
    configs = {(r["config"]["model.width"], r["config"]["data.fraction"]) for r in result["runs"]}
    assert configs == {(w, f) for w in (4, 8, 16) for f in (0.5, 1.0)}
    for run in result["runs"]:
        assert run["flops"] > 0 and run["n_params"] > 0 and 0 < run["error"] < 1
        assert run["wall_time_s"] and run["wall_time_s"] > 0
        assert len(run["images_per_s"]) == 1 and run["images_per_s"][0] > 0
    # FLOPs grow with width and with the data fraction
    by = {(r["config"]["model.width"], r["config"]["data.fraction"]): r for r in result["runs"]}
    assert by[(4, 1.0)]["flops"] < by[(8, 1.0)]["flops"] < by[(16, 1.0)]["flops"]
    assert by[(8, 0.5)]["flops"] < by[(8, 1.0)]["flops"]
    assert result["compute"]["n_runs"] >= 4 and set(result["compute"]["params"]) == {"E_inf", "a", "b"}
    assert result["model_data"]["n_runs"] == 6
    points = [p["point"] for p in result["predictions"]]
    assert points == [{"compute": 1e10}, {"model.width": 32}]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["scaling_json"].endswith("tiny/scaling.json") and summary["runs"] == 6
    assert "E(C) = E_inf + a * C^-b" in resumed.stderr
    # every report of every trial carries the FLOPs
    trials = list(experiment.glob("raysl_trial_*"))
    assert len(trials) == 6
    for trial in trials:
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        assert rows and all(r.get("flops", 0) > 0 for r in rows)

    # `--resume` unpickles nothing raysl did not sign: a tuner.pkl replaced by one that would run code
    # is refused in one line, and its code never runs
    import pickle

    marker = tmp_path / "MARKER"
    target = experiment / "tuner.pkl"
    original = target.read_bytes()
    target.write_bytes(pickle.dumps(_Payload(marker)))
    try:
        refused = subprocess.run([*args, "--resume"], env=env, cwd=REPO, capture_output=True, text=True,
                                 timeout=HANG)
    finally:
        target.write_bytes(original)
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("raysl: error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        f"raysl: error: {target}: not written by raysl on this machine/secret or changed since (HMAC mismatch); "), \
        refused.stderr[-3000:]
    assert not marker.exists()

    report = tmp_path / "report"
    proc = subprocess.run([RAYSL, "analyze", str(experiment), "--out", str(report), "--predict",
                           "width=32,fraction=1.0", "--predict", "compute=1e12"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert final["report"] == f"{report}/report.html" and final["search_report"] == f"{report}/search_report.html"
    preds = final["predictions"]
    assert [p["point"] for p in preds] == [{"compute": 1e10}, {"model.width": 32},
                                           {"model.width": 32, "data.fraction": 1.0}, {"compute": 1e12}]
    assert preds[:2] == [{**p, "source": "raysl scale"} for p in result["predictions"]]
    live, stored = preds[1], preds[2]
    for key in ("n_params", "train_images", "compute", "error_compute", "error_model_data"):
        assert stored[key] == live[key], key  # same counts, same bootstrap samples (exact through JSON)
    assert "predict model.width=32, data.fraction=1 (C = " in proc.stderr and "E(C) " in proc.stderr

    summary = json.loads((report / "summary.json").read_text())
    assert summary["scaling"]["fitted"] == ["compute", "model_data", "frontier"]
    assert {"search_report.html", "report.html", "leaderboard.csv", *PLOTS.values()} - {
        PLOTS["critical_batch"], PLOTS["worker_scaling"], PLOTS["trajectory"]} <= set(os.listdir(report))
    assert PLOTS["trajectory"] not in os.listdir(report)  # no --trajectory, no fit.trajectory: no such plot
    found = check_page(report, tmp_path, result, preds, [PLOTS[k] for k in ("error_vs_compute", "slices",
                                                                            "frontier")])
    assert "search_report.html" in found["links"]
    # the search report of the same runs is still there, with its own images
    search = report / "search"
    search.mkdir()
    shutil.copy(report / "search_report.html", search / "report.html")
    from test_report_browser import CHECK

    images = run_check(search, tmp_path, CHECK)
    assert images and all(i["complete"] and i["width"] > 0 for i in images)

    # --predict on the same runs without scaling.json: a search experiment now
    plain = tmp_path / "plain"
    shutil.copytree(experiment, plain, ignore=shutil.ignore_patterns(RESULT_FILE, "checkpoint_*"))
    proc = subprocess.run([RAYSL, "analyze", str(plain), "--predict", "width=64"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--predict needs one scaling" in proc.stderr
