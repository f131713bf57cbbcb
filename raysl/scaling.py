"""A scaling experiment's scaling file, without Ray: read and checked (:func:`load_scaling`, :class:`ScalingSpec`),
its grid points and prediction points.

``raysl scale`` (:mod:`raysl.scale`, where the scaling file's format is described) trains the grid and then
fits its runs (:mod:`raysl.scaling_fits`); ``raysl analyze`` reads a finished scaling experiment with these
again (the stored ``raysl_scaling.yaml`` and ``scaling.json``) and so imports nothing that starts Ray. The
fits themselves are the pure functions of :mod:`raysl.scaling_laws`; the report text ``raysl scale`` prints
is :mod:`raysl.scaling_text`.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from raysl import hp_transfer as hp
from raysl import scaling_laws as laws
from raysl import trajectory as traj
from raysl.config_load import parse_override, read_yaml, set_dotted
from raysl.errors import ConfigError
from raysl.outcome import metric_mode
from raysl.space import SearchSpace, TuneSettings, walk
from raysl.space_file import space_from_dict, validate_section

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
