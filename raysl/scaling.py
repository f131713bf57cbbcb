"""A scaling experiment without Ray: its scaling file, its finished runs, the fits and predictions.

``raysl scale`` (:mod:`raysl.scale`, where the scaling file's format is described) trains the grid and then
calls these; ``raysl analyze`` reads a finished scaling experiment with them again (the stored
``raysl_scaling.yaml`` and ``scaling.json``) and so imports nothing that starts Ray. The fits themselves
are the pure functions of :mod:`raysl.scaling_laws`; the report text ``raysl scale`` prints is
:mod:`raysl.scaling_text`.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Literal

import numpy as np

from pydantic import BaseModel, ConfigDict, Field, field_validator

from raysl import hp_transfer as hp
from raysl import jsonio
from raysl import scaling_laws as laws
from raysl import trajectory as traj
from raysl.config_load import parse_override, read_yaml, set_dotted
from raysl.errors import ConfigError
from raysl.space import SearchSpace, TuneSettings, metric_mode, space_from_dict, validate_section, walk

SCALING_FILE = "raysl_scaling.yaml"
RESULT_FILE = "scaling.json"
GRID_AXES = ("model.width", "model.backbone", "data.fraction", "optim.batch_size", "optim.epochs",
             "scale.num_workers")
WORKERS_AXIS = "scale.num_workers"  # a throughput axis: images/s, speed-up and parallel efficiency per group
# --predict width=64: short names for the grid axes
SHORT_KEYS = {"width": "model.width", "backbone": "model.backbone", "fraction": "data.fraction",
              "batch_size": "optim.batch_size", "epochs": "optim.epochs", "workers": "scale.num_workers",
              "num_workers": "scale.num_workers", "compute": "compute", "flops": "compute"}


class FitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = "knn_acc"
    predict: list[dict[str, Any]] = Field(default_factory=list)
    level: float = Field(laws.DEFAULT_LEVEL, gt=0.0, lt=1.0)
    bootstrap: int = Field(laws.DEFAULT_BOOTSTRAP, ge=20, le=100_000)
    seed: int = Field(0, ge=0)
    target_error: float | None = Field(None, gt=0.0, lt=1.0)
    budgets: list[float] | None = None
    # the whole-curve law L(N, S_min) (raysl.trajectory), fitted on every evaluation of every run; needs
    # >= 2 model sizes and >= 2 batch sizes. `raysl scale --trajectory` sets it
    trajectory: bool = False
    # target errors for the trajectory law's answers: the critical batch at each, and the steps and
    # examples to reach each at every prediction point (fit.target_error too, when set)
    targets: list[float] = Field(default_factory=list)
    # a transfer experiment (search:): a budget's near-optimal trials are those whose objective is within this
    # relative margin of its best (raysl.hp_transfer.near_optimal)
    margin: float = Field(hp.DEFAULT_MARGIN, ge=0.0, lt=1.0)

    @field_validator("targets")
    @classmethod
    def _errors(cls, value: list[float]) -> list[float]:
        for target in value:
            if not 0.0 < target < 1.0:
                raise ValueError(f"a target error is in (0, 1) (1 - accuracy); got {target}")
        return value

    def all_targets(self) -> list[float]:
        return sorted({*self.targets, *([self.target_error] if self.target_error else [])})


class ScaleTuneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)
    seed: int = Field(0, ge=0)
    reuse_actors: bool = True  # as raysl tune's tune.reuse_actors: a run's process runs the next run


# fit: keys of the error laws (E(C), E(N, D), the critical batch, the trajectory law): not of a transfer experiment
ERROR_LAW_FIT_KEYS = ("metric", "target_error", "budgets", "targets")
MIN_BUDGETS = 3  # a power law h_opt(C) = a C^b (2 constants) through 3 budgets has one residual to judge it by


class ScalingSpec(BaseModel):
    base: dict
    grid: dict[str, list]
    fit: FitSettings
    # a grid: ScaleTuneSettings; a transfer experiment (search:): raysl tune's own tune: section, one search of
    # tune.num_samples trials per budget
    tune: ScaleTuneSettings | TuneSettings
    source: str
    mode: Literal["max"] = "max"
    # search: as in a raysl tune space file: each grid point (a budget) is searched over it (raysl.transfer)
    search: dict | None = None

    @property
    def transfer(self) -> bool:
        return self.search is not None

    def space_dict(self) -> dict:
        """The search space this grid runs as (see the module docstring)."""
        return {
            "base": self.base,
            "search": {key: {"choice": list(values)} for key, values in self.grid.items()},
            "tune": {"sampler": "grid", "scheduler": "fifo", "metric": self.fit.metric, "mode": "max",
                     "seed": self.tune.seed, "max_failures": self.tune.max_failures,
                     "reuse_actors": self.tune.reuse_actors,
                     **({"max_concurrent": self.tune.max_concurrent} if self.tune.max_concurrent else {})},
        }

    def to_yaml_dict(self) -> dict:
        out = {"base": self.base, "grid": self.grid}
        if self.search is not None:
            out["search"] = self.search
        fit = self.fit.model_dump(exclude_none=True)
        if self.search is None:
            fit.pop("margin", None)
        else:  # the error laws' keys are refused with search: (their defaults too, as read back)
            fit = {k: v for k, v in fit.items() if k not in (*ERROR_LAW_FIT_KEYS, "trajectory")}
        return {**out, "fit": fit, "tune": self.tune.model_dump(exclude_none=True)}

    def budget_points(self) -> list[dict[str, Any]]:
        """Every grid point as ``{axis: value}``, in the order raysl scale runs them (as :func:`grid_points`)."""
        return [dict(zip(self.grid, combo)) for combo in itertools.product(*self.grid.values())]

    def budget_space_dict(self, point: dict[str, Any]) -> dict:
        """A transfer experiment's search space of one budget: ``base:`` with the grid point's values, the
        file's ``search:`` and ``tune:`` (what raysl tune would read from a space file)."""
        tree = copy.deepcopy(self.base)
        for key, value in point.items():
            tree = set_dotted(tree, key, value)
        return {"base": tree, "search": copy.deepcopy(self.search),
                "tune": self.tune.model_dump(exclude_none=True)}

    def budget_space(self, point: dict[str, Any]) -> SearchSpace:
        """:meth:`budget_space_dict` validated as raysl tune validates a space file."""
        return space_from_dict(self.budget_space_dict(point), self.source)


def predict_point(item: str) -> dict[str, Any]:
    """``--predict width=64,fraction=1`` / ``--predict compute=1e15`` -> {dotted key: value}."""
    point: dict[str, Any] = {}
    for part in item.split(","):
        if "=" not in part or not part.split("=", 1)[1].strip():
            raise ConfigError(f"--predict {item!r}: expected axis=value, e.g. --predict width=64 or "
                              "--predict compute=1e15")
        key, value = parse_override(part)
        point[SHORT_KEYS.get(key, key)] = value
    return point


def load_scaling(path: str, overrides: list[str] = (), predictions: list[str] = (),
                 trajectory: bool = False) -> ScalingSpec:
    """Read and validate a scaling file (``--set`` edits base:, ``--predict`` adds to fit.predict,
    ``--trajectory`` sets fit.trajectory)."""
    spec = scaling_from_dict(read_yaml(path), str(path), overrides, predictions)
    spec.fit.trajectory = spec.fit.trajectory or trajectory
    # here, not in scaling_from_dict: that one also reads the files of finished experiments (raysl analyze)
    if spec.transfer:
        check_transfer(spec)
        return spec
    if math.prod(len(values) for values in spec.grid.values()) == 1:
        # every fit compares runs that differ (in compute, model or data size, batch size, workers): one
        # run gives none, which raysl scale would only say after training it
        axes = ", ".join(f"{key}: {values}" for key, values in spec.grid.items())
        raise ConfigError(f"{spec.source}: grid: {axes} is one run, and no scaling law fits one run (E(C) needs "
                          ">= 4 runs at >= 3 compute values, E(N, D) >= 6 runs at >= 2 model and data sizes); give "
                          "an axis more values, e.g. model.width: [4, 8, 16] and data.fraction: [0.25, 0.5, 1.0], "
                          "or train the one run with raysl train")
    if spec.fit.trajectory:  # fit.trajectory: true in the file, or --trajectory
        check_trajectory_grid(spec)
    return spec


def check_transfer(spec: ScalingSpec) -> None:
    """Before any trial trains: a transfer experiment (``search:``) whose fits can be made, each budget's
    search space valid as raysl tune validates one (every range end builds a run config)."""
    source = spec.source
    if spec.fit.trajectory:
        raise ConfigError(f"{source}: search: with fit.trajectory (or --trajectory): the whole-curve law is fitted on "
                          "a grid of single runs, and a transfer experiment searches each grid point; drop "
                          "fit.trajectory and --trajectory, or drop search: for a plain grid")
    budgets = math.prod(len(values) for values in spec.grid.values())
    if budgets < MIN_BUDGETS:
        axes = ", ".join(f"{key}: {values}" for key, values in spec.grid.items())
        raise ConfigError(f"{source}: grid: {axes} is {budgets} budget{'s' * (budgets != 1)}, and h_opt(C) = a C^b "
                          f"needs >= {MIN_BUDGETS} (two constants: through fewer points it has no residual to judge "
                          "it by); give the grid >= 3 points, e.g. model.width: [8, 16, 32]")
    if spec.tune.objectives is not None:
        raise ConfigError(f"{source}: tune.objectives: a budget's near-optimal trials are ranked by one metric; "
                          "use tune.metric (and tune.mode)")
    if spec.tune.scheduler == "pbt":
        raise ConfigError(f"{source}: tune.scheduler: pbt changes a trial's hyperparameters while it trains, so its "
                          "end result belongs to no one value of them; use asha or fifo")
    space = spec.budget_space(spec.budget_points()[0])  # unknown keys, bad ranges, a bad tune: (one line each)
    for param in walk(space.params):
        if param.key in spec.grid:
            raise ConfigError(f"{source}: search.{param.key} is also a grid axis, and each budget fixes it at its "
                              f"grid value; search it or scale it, not both: drop it from grid: or from search:")
    for point in spec.budget_points()[1:]:  # a range end can be valid at one grid point and not at another
        spec.budget_space(point)


def grid_points(spec: ScalingSpec) -> list[tuple[str, Any]]:
    """(where, validated RunConfig) of every grid point: ``base`` with the point's values (``data.path``
    made absolute), in the order raysl scale runs them; an invalid point is a ConfigError naming it."""
    from raysl.data.locate import absolute_data_path
    from raysl.run_config import build_config

    points = []
    for combo in itertools.product(*spec.grid.values()):
        tree = absolute_data_path(spec.base)
        for key, value in zip(spec.grid, combo):
            tree = set_dotted(tree, key, value)
        where = f"{spec.source}: grid point {dict(zip(spec.grid, combo))}"
        points.append((where, build_config(tree, where)))
    return points


def fitted_evaluations(epochs: int, every_epochs: int, skip_fraction: float = traj.DEFAULT_SKIP_FRACTION) -> int:
    """The evaluations of a run of ``epochs`` epochs (one every ``every_epochs`` and one at its last epoch)
    that the trajectory fit takes: those at or after the first ``skip_fraction`` of its steps (its steps
    grow with its epochs, so the same share of its epochs)."""
    evaluated = {*range(every_epochs, epochs + 1, every_epochs), epochs}
    return sum(1 for epoch in evaluated if epoch >= skip_fraction * epochs)


def check_trajectory_grid(spec: ScalingSpec) -> None:
    """Before any run trains: the grid can give the trajectory law (raysl.trajectory) what its fit needs,
    >= 2 model sizes, >= 2 batch sizes and >= MIN_POINTS evaluations after the first 10% of each run's
    steps; a ConfigError naming the fix otherwise."""
    where = f"{spec.source}: fit.trajectory (or --trajectory)"
    batches = len(spec.grid.get("optim.batch_size", []))
    size_axis = next((key for key in ("model.width", "model.backbone") if key in spec.grid), None)
    sizes = len(spec.grid[size_axis]) if size_axis else 0
    if batches < 2 or sizes < 2:
        missing = []
        if batches < 2:
            missing.append(f"optim.batch_size with >= 2 values ({f'it has {batches}' if batches else 'not an axis'})")
        if sizes < 2:
            missing.append("model.width or model.backbone with >= 2 values "
                           f"({f'{size_axis} has {sizes}' if size_axis else 'neither is an axis'})")
        raise ConfigError(f"{where}: the whole-curve law needs runs at >= 2 model sizes and >= 2 batch sizes; add "
                          f"to grid: {' and '.join(missing)}, e.g. model.width: [4, 8, 16] and optim.batch_size: "
                          "[64, 256], or drop fit.trajectory and --trajectory")
    points = grid_points(spec)
    every = points[0][1].eval.every_epochs  # not a grid axis: the base's, for every run
    total = sum(fitted_evaluations(cfg.optim.epochs, cfg.eval.every_epochs) for _, cfg in points)
    if total < traj.MIN_POINTS:
        epochs = sorted({cfg.optim.epochs for _, cfg in points})
        raise ConfigError(
            f"{where}: the fit needs >= {traj.MIN_POINTS} evaluations after the first "
            f"{traj.DEFAULT_SKIP_FRACTION:.0%} of each run's steps (3 per constant), and the grid's {len(points)} "
            f"runs make {total} (optim.epochs {', '.join(map(str, epochs))}, eval.every_epochs {every}); evaluate "
            "more often (eval.every_epochs: 1), train more epochs or add runs to grid:")


def scaling_from_dict(data: Any, source: str, overrides: list[str] = (), predictions: list[str] = ()) -> ScalingSpec:
    """:func:`load_scaling` of a file's parsed YAML (``raysl analyze`` reads the stored ``SCALING_FILE``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with base:, grid:, fit: and tune:")
    unknown = [k for k in data if k not in ("base", "grid", "search", "fit", "tune")]
    if unknown:
        raise ConfigError(f"{source}: unknown section {unknown[0]!r}; a scaling file has base:, grid:, fit: and tune: "
                          "(and search: for a transfer experiment)")
    base = data.get("base")
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: needs a 'base:' mapping with the run config (what raysl train accepts)")
    search = data.get("search")
    if search is not None and (not isinstance(search, dict) or not search):
        raise ConfigError(f"{source}: search: expected a mapping of dotted config keys to distributions, as in a "
                          "raysl tune space file, e.g. search: {optim.lr: {loguniform: [0.0003, 0.01]}}")
    base = copy.deepcopy(base)
    tune_raw = dict(data.get("tune") or {}) if isinstance(data.get("tune") or {}, dict) else data.get("tune")
    for item in overrides:
        key, value = parse_override(item)
        if search is not None and key.startswith("tune.") and isinstance(tune_raw, dict):
            tune_raw[key.removeprefix("tune.")] = value  # as raysl tune's --set tune.num_samples=4
            continue
        base = set_dotted(base, key.removeprefix("base."), value)
    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{source}: needs a 'grid:' mapping of axes to lists, e.g. grid: {{model.width: [4, 8, 16], "
                          "data.fraction: [0.25, 1.0]}}")
    for key, values in grid.items():
        if key not in GRID_AXES:
            raise ConfigError(f"{source}: grid.{key}: not a scaling axis; allowed: {', '.join(GRID_AXES)} "
                              "(set anything else in base:)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: grid.{key}: expected a non-empty list, e.g. [4, 8, 16]; got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{source}: grid.{key}: repeated values {values!r}")
    if "model.width" in grid and "model.backbone" in grid:
        raise ConfigError(f"{source}: grid: scale model.width or model.backbone, not both")
    fit = validate_section(FitSettings, data.get("fit"), source, "fit")
    if search is not None:
        for key in ERROR_LAW_FIT_KEYS:
            if key in fit.model_fields_set:
                fix = ("set the objective as tune.metric (and tune.mode), as in a raysl tune space file"
                       if key == "metric" else "drop it, or drop search: for a grid of single runs")
                raise ConfigError(f"{source}: fit.{key} is for the error laws of a grid of single runs, and with "
                                  f"search: the fits are h_opt(C) per searched hyperparameter; {fix}")
        tune = validate_section(TuneSettings, tune_raw, source, "tune")
    else:
        if "margin" in fit.model_fields_set:
            raise ConfigError(f"{source}: fit.margin is for a transfer experiment (the near-optimal trials of each "
                              "budget's search); add search: or drop fit.margin")
        tune = validate_section(ScaleTuneSettings, tune_raw, source, "tune")
        try:
            mode = metric_mode(fit.metric)
        except KeyError:
            mode = None
        if mode != "max" or "acc" not in fit.metric:
            raise ConfigError(f"{source}: fit.metric {fit.metric!r}: the fits need an accuracy (error = 1 - metric); "
                              "use knn_acc, knn_acc_k200, linear_acc or a projector_ one")
    fit.predict = check_predict_points(list(fit.predict) + [predict_point(p) for p in predictions],
                                       f"{source}: fit.predict")
    return ScalingSpec(base=base, grid=grid, fit=fit, tune=tune, source=source, search=search)


def check_predict_points(points: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Prediction points with short keys expanded and compute as a float; a key that is neither compute nor
    a grid axis, or a compute that is not a positive number, is an error."""
    out = []
    for point in points:
        expanded: dict[str, Any] = {}
        for key, value in point.items():
            key = SHORT_KEYS.get(key, key)
            if key != "compute" and key not in GRID_AXES:
                raise ConfigError(f"{where}: {key!r}: predict at compute=... or at grid axes "
                                  f"({', '.join(GRID_AXES)})")
            if key == "compute":  # YAML reads 1e15 (no dot) as text
                try:
                    value = float(value) if not isinstance(value, bool) else math.nan
                except (TypeError, ValueError):
                    value = math.nan
                if not value > 0:
                    raise ConfigError(f"{where}: compute={point.get('compute', point.get('flops'))!r}: expected "
                                      "training FLOPs > 0, e.g. 1e15")
            expanded[key] = value
        out.append(expanded)
    return out


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
    from raysl.data.pipeline import global_crop_size
    from raysl.data.shards import load_manifest
    from raysl.data.subset import train_rows
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
