"""`raysl scale`: scaling files, the fits over collected runs, and (slow) the whole command on Ray.

The end-to-end test runs `raysl scale` as a subprocess that starts its own local
Ray cluster (private temp dir), interrupts it with SIGINT once two runs have
finished (polling the experiment folder, no sleeps standing in for progress),
resumes it with --resume and reads scaling.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from raysl.errors import ConfigError
from raysl.scale import fit_all, format_report, load_scaling, predict_point

from conftest import HANG, RAYSL, REPO, interrupt_when

QUICKSTART = REPO / "search_spaces" / "scaling_quickstart.yaml"


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_quickstart_scaling_file_loads_as_a_grid_space():
    from raysl.space import space_from_dict

    spec = load_scaling(str(QUICKSTART), [], ["width=64", "compute=1e13"])
    space = space_from_dict(spec.space_dict(), spec.source)
    assert space.sampler_name() == "grid" and space.scheduler_name() == "fifo"
    assert space.grid() == {"model.width": [4, 8, 16], "data.fraction": [0.25, 0.5, 1.0]}
    assert {"model.width": 64} in spec.fit.predict and {"compute": 1e13} in spec.fit.predict


def test_predict_flags_use_short_axis_names():
    assert predict_point("width=64") == {"model.width": 64}
    assert predict_point("width=32,fraction=0.5") == {"model.width": 32, "data.fraction": 0.5}
    assert predict_point("compute=1e15") == {"compute": 1e15}


@pytest.mark.parametrize(("edit", "message"), [
    ({"grid": {"optim.lr": [0.1, 0.2]}}, "not a scaling axis"),
    ({"grid": {"model.width": []}}, "non-empty list"),
    ({"grid": {"model.width": [4, 4]}}, "repeated"),
    ({"fit": {"metric": "rankme"}}, "accuracy"),
    ({"fit": {"predict": [{"optim.lr": 1.0}]}}, "predict at compute"),
    ({"fit": {"levle": 0.5}}, "unknown key 'levle'"),
    ({"extra": {}}, "unknown section"),
])
def test_bad_scaling_files_fail_before_ray(tmp_path, edit, message):
    data = yaml.safe_load(QUICKSTART.read_text())
    for section, value in edit.items():
        if section in ("grid", "extra"):
            data[section] = value
        else:
            data[section] = {**data.get(section, {}), **value}
    with pytest.raises(ConfigError, match=message):
        load_scaling(str(write(tmp_path / "bad.yaml", data)))


def test_a_fraction_smaller_than_one_batch_is_a_config_error_before_ray(tmp_path, digits_dir):
    # digits has 1,437 train rows: fraction 0.02 keeps ~29 of them (seeded hash), fewer than a batch of 64
    data = yaml.safe_load(QUICKSTART.read_text())
    data["base"]["data"] = {**data["base"]["data"], "source": "digits", "path": digits_dir}
    data["grid"] = {"model.width": [4], "data.fraction": [0.02, 1.0]}
    spec = write(tmp_path / "tiny.yaml", data)
    proc = subprocess.run([RAYSL, "scale", str(spec), "--storage", str(tmp_path / "runs")], capture_output=True,
                          text=True, timeout=HANG, env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("raysl: error:")]
    assert len(lines) == 1 and "data.fraction 0.02 leaves" in lines[0] and "fewer than one batch" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_fit_all_on_synthetic_runs_recovers_the_law_and_predicts():
    """Runs drawn from E = 0.1 + 5 N^-0.35 + 20 D^-0.4 (1% noise) with C = 6 N D: the E(N, D) fit finds
    the exponents within 15% (E_inf, A and alpha trade off: with this seed's noise the least-squares
    optimum, lower in cost than the truth, has alpha 0.385; interval coverage is
    tests/test_scaling_laws.py's job), the frontier uses k = 6, and both predictions are made."""
    spec = load_scaling(str(QUICKSTART), [], [])
    spec.fit.predict = [{"model.width": 64}, {"compute": 1e13}]
    spec.fit.bootstrap = 200
    rng = np.random.default_rng(0)
    runs = []
    for i, n in enumerate([1e4, 3e4, 1e5, 3e5, 1e6]):
        for j, d in enumerate([1e4, 3e4, 1e5, 3e5, 1e6]):
            err = (0.1 + 5 * n ** -0.35 + 20 * d ** -0.4) * math.exp(rng.normal(0, 0.01))
            runs.append({"trial_id": f"t{i}{j}", "config": {}, "error": err, "n_params": int(n),
                         "train_images": int(d), "flops": 6 * n * d, "curve": []})
    result = fit_all(runs, spec, point_values=lambda point: (2e6, 1e6, 6 * 2e6 * 1e6))
    md = result["model_data"]
    for name, truth in (("alpha", 0.35), ("beta", 0.4)):
        assert md["params"][name] == pytest.approx(truth, rel=0.15)
    assert result["frontier"]["k"] == pytest.approx(6.0)
    assert result["compute"]["points"] == "frontier"
    width, compute = result["predictions"]
    med, lo, hi = width["error_model_data"]
    truth = 0.1 + 5 * 2e6 ** -0.35 + 20 * 1e6 ** -0.4
    assert med == pytest.approx(truth, rel=0.05) and lo <= med <= hi
    assert "error_compute" in compute and compute["compute"] == 1e13
    text = format_report(result, 0.9)
    assert "E(N, D) = E_inf + A / N^alpha + B / D^beta" in text and "predict model.width=64" in text


def test_fit_all_says_what_it_could_not_fit():
    spec = load_scaling(str(QUICKSTART), [], [])
    spec.fit.predict = []
    runs = [{"trial_id": f"t{i}", "config": {}, "error": 0.1 / (i + 1), "n_params": 1000, "train_images": 100,
             "flops": 1e9 * (i + 1), "curve": []} for i in range(3)]
    result = fit_all(runs, spec, point_values=None)
    assert "compute" not in result and "model_data" not in result
    assert any("E(C) not fitted" in n for n in result["notes"])


# --------------------------------------------------------------------------
# end to end


def _trial_status(trial_dir: Path) -> str | None:
    result = trial_dir / "result.json"
    if not result.exists():
        return None
    lines = [line for line in result.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]).get("status") if lines else None
    except json.JSONDecodeError:
        return None  # a half-written last line


def _finished(experiment: Path) -> int:
    return sum(_trial_status(d) == "finished" for d in experiment.glob("raysl_trial_*"))


@pytest.mark.slow
def test_scale_interrupted_and_resumed_fits_every_run(tmp_path):
    data = yaml.safe_load(QUICKSTART.read_text())
    data["grid"] = {"model.width": [4, 8, 16], "data.fraction": [0.5, 1.0]}
    data["base"]["optim"]["epochs"] = 2
    data["base"]["eval"]["every_epochs"] = 1
    data["base"]["checkpoint"]["every_epochs"] = 1
    data["fit"] = {"metric": "knn_acc", "bootstrap": 50, "predict": [{"compute": 1e10}]}
    data["tune"] = {"max_concurrent": 1}  # one at a time: the grid is still running after 2 runs
    scaling = write(tmp_path / "tiny.yaml", data)
    storage = tmp_path / "results"
    experiment = storage / "tiny"
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    args = [RAYSL, "scale", str(scaling), "--storage", str(storage), "--predict", "width=32"]
    try:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = interrupt_when(proc, lambda: _finished(experiment) >= 2, "the grid")
        assert proc.returncode == 130, f"{proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
        assert not (experiment / "scaling.json").exists()  # no fit on a partial grid
        assert "--resume" in err

        resumed = subprocess.run([*args, "--resume"], env=env, cwd=REPO, capture_output=True, text=True,
                                 timeout=HANG)
        assert resumed.returncode == 0, f"{resumed.stdout[-2000:]}\n{resumed.stderr[-4000:]}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    result = json.loads((experiment / "scaling.json").read_text())
    assert len(result["runs"]) == 6 and not result["not_used"]
    configs = {(r["config"]["model.width"], r["config"]["data.fraction"]) for r in result["runs"]}
    assert configs == {(w, f) for w in (4, 8, 16) for f in (0.5, 1.0)}
    for run in result["runs"]:
        assert run["flops"] > 0 and run["n_params"] > 0 and 0 < run["error"] < 1
        assert run["wall_time_s"] and run["wall_time_s"] > 0
    # FLOPs grow with width and with the data fraction
    by = {(r["config"]["model.width"], r["config"]["data.fraction"]): r for r in result["runs"]}
    assert by[(4, 1.0)]["flops"] < by[(8, 1.0)]["flops"] < by[(16, 1.0)]["flops"]
    assert by[(8, 0.5)]["flops"] < by[(8, 1.0)]["flops"]
    assert result["compute"]["n_runs"] >= 4 and set(result["compute"]["params"]) == {"E_inf", "a", "b"}
    assert result["model_data"]["n_runs"] == 6
    points = [p["point"] for p in result["predictions"]]
    assert {"compute": 1e10} in points and {"model.width": 32} in points
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["scaling_json"].endswith("tiny/scaling.json") and summary["runs"] == 6
    assert "E(C) = E_inf + a * C^-b" in resumed.stderr
    # every report of every trial carries the FLOPs
    for trial in experiment.glob("raysl_trial_*"):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        assert rows and all(r.get("flops", 0) > 0 for r in rows)
