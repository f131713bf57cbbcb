"""Fits over a scaling experiment's finished runs, and predictions from them (no Ray).

:func:`collect_runs` reads the runs of a finished grid, :func:`fit_all` makes every fit they support (E(C),
E(N, D) and its compute-optimal frontier, the critical batch per group of runs that differ only in batch
size, throughput per worker count, the whole-curve trajectory law) and the predictions at ``fit.predict``;
:func:`point_values_for` counts a prediction point's N, D and C, and :func:`write_result` writes
``scaling.json``. The scaling file these read is :mod:`raysl.scaling`; the fits themselves are the pure
functions of :mod:`raysl.scaling_laws` and :mod:`raysl.trajectory`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from raysl import jsonio
from raysl import scaling_laws as laws
from raysl import trajectory as traj
from raysl.config_load import set_dotted
from raysl.scaling import RESULT_FILE, WORKERS_AXIS, ScalingSpec

# --------------------------------------------------------------------------
# collecting the runs and fitting


def collect_runs(experiment: str, metric: str, grid_keys: list[str]) -> tuple[list[dict], list[dict]]:
    """(finished runs, the others) from the experiment folder: one dict per trial."""
    from raysl.results import load_experiments

    exp = load_experiments(experiment)[0]
    history = exp.history
    runs, others = [], []
    for _, trial in exp.trials.iterrows():
        rows = history[history["trial_id"] == trial["trial_id"]] if not history.empty else history
        config = trial["config"] or {}
        run: dict[str, Any] = {"trial_id": trial["trial_id"], "status": trial["status"],
                               "config": {k: config.get(k) for k in grid_keys}}
        if rows.empty or trial["status"] != "finished":
            others.append(run)
            continue
        last = rows.iloc[-1]
        value = last.get(metric)
        if value is None or not math.isfinite(float(value)):
            others.append(run)
            continue
        curve = rows[["step", metric]].dropna() if "step" in rows else rows.iloc[0:0]
        rates = rows[["epoch", "images_per_s"]].dropna() if "images_per_s" in rows else rows.iloc[0:0]
        run.update({
            metric: float(value), "error": 1.0 - float(value),
            "flops": float(last.get("flops")), "n_params": int(last.get("n_params")),
            "train_images": int(last.get("train_images")), "epochs": int(last.get("epoch") or 0),
            "wall_time_s": _number(trial["wall_time_s"]),
            "noise_scale": _last_noise_scale(rows),
            "curve": [[float(s), 1.0 - float(v)] for s, v in curve.drop_duplicates("step").itertuples(index=False)],
            # one value per epoch in epoch order (a closing report repeats its epoch's value)
            "images_per_s": [float(v) for v in rates.drop_duplicates("epoch").sort_values("epoch")["images_per_s"]],
        })
        runs.append(run)
    return runs, others


def _last_noise_scale(rows) -> float | None:
    """B_simple at the last evaluation that logged it (raysl.noise_scale); None where none did, or where
    the last one could not measure it (null with a ``noise_scale_note``): an earlier evaluation's value
    is not taken for it, since B_simple changes as the loss falls."""
    logged = None
    for key in ("noise_scale", "noise_scale_note"):
        if key in rows:
            logged = rows[key].notna() if logged is None else logged | rows[key].notna()
    if logged is None or not logged.any():
        return None
    return _number(rows.loc[logged, "noise_scale"].iloc[-1]) if "noise_scale" in rows else None


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _compute_frontier(runs: list[dict]) -> list[dict]:
    """Runs no other run beats with less or equal compute (Kaplan et al.'s compute-efficient frontier)."""
    out = []
    for r in sorted(runs, key=lambda r: (r["flops"], r["error"])):
        if not out or r["error"] < out[-1]["error"]:
            out.append(r)
    return out


def fit_all(runs: list[dict], spec: ScalingSpec, point_values) -> dict[str, Any]:
    """Every fit the runs support, and the predictions. ``point_values(point) -> (N, D, C)``."""
    fit = spec.fit
    kw = {"n_bootstrap": fit.bootstrap, "level": fit.level, "seed": fit.seed}
    result: dict[str, Any] = {"notes": []}
    frontier = _compute_frontier(runs)
    points = frontier if len(frontier) >= 4 and len({r["flops"] for r in frontier}) >= 3 else runs
    compute_fit = None
    try:
        compute_fit = laws.fit_compute_law([r["flops"] for r in points], [r["error"] for r in points], **kw)
        result["compute"] = {**compute_fit.to_dict(samples=True),
                             "points": "frontier" if points is frontier else "all runs",
                             "runs": [r["trial_id"] for r in points],
                             "outlier_runs": [points[i]["trial_id"] for i in compute_fit.outliers]}
    except ValueError as exc:
        result["notes"].append(f"E(C) not fitted: {exc}")
    model_data_fit = None
    try:
        model_data_fit = laws.fit_model_data_law([r["n_params"] for r in runs], [r["train_images"] for r in runs],
                                                 [r["error"] for r in runs], **kw)
        result["model_data"] = {**model_data_fit.to_dict(samples=True), "N": "backbone parameters",
                                "D": "training images seen (rows x epochs)",
                                "outlier_runs": [runs[i]["trial_id"] for i in model_data_fit.outliers]}
    except ValueError as exc:
        result["notes"].append(f"E(N, D) not fitted: {exc}")
    if model_data_fit is not None:
        k = laws.flops_per_param_example([r["flops"] for r in runs], [r["n_params"] for r in runs],
                                         [r["train_images"] for r in runs])
        biggest = max(r["flops"] for r in runs)
        budgets = fit.budgets or [biggest, 10 * biggest, 100 * biggest]
        result["frontier"] = {"k": k, "formula": "C = k N D; N_opt = G (C/k)^(beta/(alpha+beta))",
                              "points": laws.compute_optimal_frontier(model_data_fit, budgets, k)}
    if "optim.batch_size" in spec.grid and len(spec.grid["optim.batch_size"]) >= 2:
        result["critical_batch"] = _critical_batch(runs, spec)
    if WORKERS_AXIS in spec.grid:
        result["worker_scaling"] = _worker_scaling(runs, spec)
    trajectory_fit = None
    if fit.trajectory:
        trajectory_fit = _trajectory(runs, spec, result)
    result["predictions"] = [predict_at(point, compute_fit, model_data_fit, point_values) for point in fit.predict]
    if trajectory_fit is not None:
        for entry in result["predictions"]:
            if "n_params" in entry:  # a point of grid axes (not compute=...): its size, batch and steps
                _predict_curve(entry, trajectory_fit, spec)
    return result


def batch_size_of(spec: ScalingSpec, values: dict[str, Any]) -> int:
    """The batch size of a run or prediction point (its grid value, else the base config's)."""
    if "optim.batch_size" in values and values["optim.batch_size"] is not None:
        return int(values["optim.batch_size"])
    from raysl.run_config import build_config

    return int(build_config(spec.base, spec.source).optim.batch_size)


def _trajectory(runs: list[dict], spec: ScalingSpec, result: dict) -> traj.TrajectoryFit | None:
    """Fit the trajectory law on every run's curve (error per evaluated step) into ``result["trajectory"]``."""
    fit = spec.fit
    used = [r for r in runs if r.get("curve")]
    curves = [traj.Curve(r["n_params"], batch_size_of(spec, r["config"]), [s for s, _ in r["curve"]],
                         [e for _, e in r["curve"]]) for r in used]
    try:
        fitted = traj.fit_trajectory_law(curves, n_bootstrap=min(fit.bootstrap, traj.TRAJECTORY_BOOTSTRAP),
                                         level=fit.level, seed=fit.seed)
    except ValueError as exc:
        result["notes"].append(f"trajectory L(N, S_min) not fitted: {exc}")
        return None
    result["trajectory"] = {**fitted.to_dict(), "runs": [r["trial_id"] for r in used],
                            "outlier_runs": [used[i]["trial_id"] for i in fitted.outliers],
                            "critical_batch": [traj.critical_batch_at(fitted, t) for t in fit.all_targets()]}
    return fitted


def _predict_curve(entry: dict[str, Any], fitted: traj.TrajectoryFit, spec: ScalingSpec) -> None:
    """A prediction point's whole curve (error per step, with its band) and its steps to each target."""
    batch = batch_size_of(spec, entry["point"])
    total = max(1.0, entry["train_images"] / batch)  # the run's optimizer steps (images seen / batch)
    steps = sorted({float(round(s)) for s in np.geomspace(max(1.0, total / 100), total, 40)})
    entry["batch_size"] = batch
    entry["trajectory"] = traj.predict_trajectory(fitted, entry["n_params"], batch, steps)
    answers = []
    floor = traj.minimum_error(fitted, entry["n_params"])["minimum"]  # E + (N_c / N)^alpha_N
    for target in spec.fit.all_targets():
        reached = traj.steps_to_error(fitted, entry["n_params"], batch, target)
        answer = {"target": target, "reachable": reached is not None, **(reached or {})}
        if reached is None and target <= floor:  # at or below what this size reaches in infinitely many steps
            answer.update(why="floor", floor=floor)
        elif reached is None:  # alpha_S = 0: the law's error does not fall with steps
            answer["why"] = "alpha_S"
        answers.append(answer)
    entry["steps_to_target"] = answers


def predict_at(point: dict[str, Any], compute_fit: laws.LawFit | None, model_data_fit: laws.LawFit | None,
               point_values) -> dict[str, Any]:
    """The predicted error at ``{compute: C}`` or at grid-axis values (``point_values(point) -> (N, D, C)``)
    from each fit there is: ``error_compute`` / ``error_model_data`` = [median, lo, hi] of the curve, and
    ``run_compute`` / ``run_model_data`` = the same for one new run there (the prediction interval, which
    adds the runs' scatter around the curve: what a held-out run is checked against)."""
    entry: dict[str, Any] = {"point": point}
    if "compute" in point:
        entry["compute"] = float(point["compute"])
    else:
        n, d, c = point_values(point)
        entry.update({"n_params": n, "train_images": d, "compute": c})
        if model_data_fit is not None:
            entry["error_model_data"] = list(laws.predict(model_data_fit, N=n, D=d))
            entry["run_model_data"] = list(laws.predict_run(model_data_fit, N=n, D=d))
    if compute_fit is not None:
        entry["error_compute"] = list(laws.predict(compute_fit, C=entry["compute"]))
        entry["run_compute"] = list(laws.predict_run(compute_fit, C=entry["compute"]))
    return entry


def _worker_scaling(runs: list[dict], spec: ScalingSpec) -> list[dict]:
    """One throughput table (images/s, speed-up, parallel efficiency per worker count) per group of runs
    that differ only in ``scale.num_workers`` (a wider model is slower at any worker count)."""
    others = [k for k in spec.grid if k != WORKERS_AXIS]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(repr(r["config"].get(k)) for k in others), []).append(r)
    out = []
    for members in groups.values():
        entry: dict[str, Any] = {"group": {k: members[0]["config"].get(k) for k in others}}
        try:
            entry.update(laws.worker_scaling([m["config"].get(WORKERS_AXIS) or 1 for m in members],
                                             [m.get("images_per_s") or [] for m in members]))
        except ValueError as exc:
            entry["note"] = str(exc)
        out.append(entry)
    return out


def _critical_batch(runs: list[dict], spec: ScalingSpec) -> list[dict]:
    """One McCandlish fit per group of runs that differ only in batch size."""
    others = [k for k in spec.grid if k != "optim.batch_size"]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(repr(r["config"].get(k)) for k in others), []).append(r)
    out = []
    for key, members in groups.items():
        label = {k: members[0]["config"].get(k) for k in others}
        if len({m["config"]["optim.batch_size"] for m in members}) < 2:
            continue
        target = spec.fit.target_error or max(min(e for _, e in m["curve"]) for m in members if m["curve"])
        batches, steps = [], []
        for m in members:
            s = laws.steps_to_target([p[0] for p in m["curve"]], [p[1] for p in m["curve"]], target)
            if s is not None and s > 0:
                batches.append(m["config"]["optim.batch_size"])
                steps.append(s)
        entry: dict[str, Any] = {"group": label, "target_error": target,
                                 "runs": [{"batch_size": b, "steps": s} for b, s in zip(batches, steps)]}
        try:
            entry.update(laws.fit_critical_batch(batches, steps, n_bootstrap=spec.fit.bootstrap, level=spec.fit.level,
                                                 seed=spec.fit.seed).to_dict())
        except ValueError as exc:
            entry["note"] = str(exc)
        out.append(entry)
    return out


# --------------------------------------------------------------------------
# a prediction point's N, D and C; scaling.json


def point_values_for(spec: ScalingSpec):
    """``point_values(point) -> (N, D, C)``: backbone parameters, training images seen and training FLOPs
    of the run that ``spec.base`` with ``point``'s grid values would be (counted as each trial counts its own)."""
    from raysl.data.locate import absolute_data_path, resolve_data_dir
    from raysl.data.read.dataset import global_crop_size
    from raysl.data.read.shards import load_manifest
    from raysl.data.read.subset import train_rows
    from raysl.flops import run_flops
    from raysl.run_config import build_config

    base = build_config(absolute_data_path(spec.base), spec.source)
    data_dir = resolve_data_dir(base)
    manifest = load_manifest(data_dir)

    def point_values(point: dict) -> tuple[float, float, float]:
        tree = absolute_data_path(spec.base)
        for key, value in point.items():
            tree = set_dotted(tree, key, value)
        cfg = build_config(tree, f"{spec.source}: fit.predict {point}")
        rows = train_rows(data_dir, manifest, cfg.data.fraction, cfg.seed)
        counted = run_flops(cfg, manifest.channels, global_crop_size(cfg, manifest), rows)
        return float(counted["params"]), float(counted["images"]), float(counted["flops"])

    return point_values


def write_result(experiment: str, out: dict[str, Any]) -> str:
    """Write ``out`` as the experiment's ``scaling.json`` and return where. Strict JSON: a fit can be
    unbounded (``B_crit`` is inf when ``S_min`` is 0, an interval open at one end), written as null."""
    from raysl import storage

    where = storage.join_uri(experiment, RESULT_FILE)
    storage.write_atomic(where, jsonio.dumps(out, indent=1), option="--storage")
    return where
