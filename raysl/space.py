"""Search-space files: parse, validate (before Ray starts), sample.

A search-space file has three sections::

    base:                      # a complete run config (what `raysl train` accepts)
      method: {name: simclr, temperature: 0.2}
      optim: {lr: 0.002, epochs: 30}
    search:                    # dotted config keys -> distributions
      optim.lr: {loguniform: [0.0003, 0.01]}
      optim.weight_decay: {uniform: [0.0, 0.1]}
      optim.batch_size: {choice: [128, 256]}
      model.width: {int: [8, 32]}              # {int: [lo, hi], log: true} samples on a log scale
      method.name:                             # a conditional space: each branch's keys are
        choice: [simclr, byol]                 # searched only when that choice is picked
        when:
          simclr: {method.temperature: {loguniform: [0.05, 1.0]}}
          byol: {method.ema_base: {uniform: [0.9, 0.999]}}
    tune:                      # how to search (all optional)
      num_samples: 16
      metric: knn_acc          # default: knn_acc with labels, rankme without
      scheduler: asha          # asha | pbt | fifo
      sampler: tpe             # tpe | cmaes | random | grid | gp | nsga2
      budget_epochs: 60        # optional: stop once the trials trained 60 epochs in all

Every range end and every choice is checked by building the run config with
it, so a typo'd key, a negative temperature or a method knob searched for the
wrong method fails here with the file, the key and what is allowed.

Sampled trial configs are flat ``{dotted.key: value}`` mappings (the Optuna
parameter names); :func:`apply_sample` turns one into a run-config tree. When a
trial picks another method than the base's, the base's method section is
replaced by that method's defaults: a SimCLR temperature never leaks into BYOL.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raysl.config import DEFAULT_METHOD, MAX_SEED, RunConfig
from raysl.config_load import format_validation_error, get_dotted, parse_override, read_yaml, set_dotted
from raysl.errors import ConfigError
from raysl.outcome import METRIC_MODES, known_metric, metric_mode, worst_value  # noqa: F401 (re-exported)

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
_EXTRA_KEYS = {"choice": {"when"}, "int": {"log"}, "loguniform": set(), "uniform": set()}
_DIST_HELP = "{loguniform: [lo, hi]}, {uniform: [lo, hi]}, {int: [lo, hi]} or {choice: [a, b, ...]}"

SAMPLERS = ("tpe", "cmaes", "random", "grid", "gp", "nsga2")
SCHEDULERS = ("asha", "pbt", "fifo")
# keys PBT must not mutate: they change the model's shape or the run's length, so a
# cloned checkpoint would no longer fit
_PBT_FIXED = ("method.name", "model.", "scale.", "optim.name", "optim.epochs", "data.source", "data.path", "seed")


# --------------------------------------------------------------------------
# distributions


@dataclass(frozen=True)
class Param:
    """One searched key. ``when`` maps a choice to the params searched only when it is picked."""

    key: str
    kind: str  # loguniform | uniform | int | choice
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple = ()
    log: bool = False
    when: tuple[tuple[Any, tuple["Param", ...]], ...] = ()

    def branch(self, value: Any) -> tuple["Param", ...]:
        for choice, params in self.when:
            if choice == value and type(choice) is type(value):
                return params
        return ()

    def test_values(self) -> list[Any]:
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {list(self.choices)}"
        return f"{self.kind}{' (log)' if self.log and self.kind == 'int' else ''} [{self.low}, {self.high}]"

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or Ray's wrapper of one) for this key's value."""
        if self.kind == "loguniform":
            return trial.suggest_float(self.key, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.key, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def tune_domain(self) -> Any:
        """The same distribution as a Ray Tune domain (for PBT, which runs without a searcher)."""
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "int":
            return tune.lograndint(self.low, self.high + 1) if self.log else tune.randint(self.low, self.high + 1)
        return tune.choice(list(self.choices))

    def same_distribution(self, other: "Param") -> bool:
        if self.kind != other.kind or self.log != other.log:
            return False
        return self.kind != "choice" or list(self.choices) == list(other.choices)


def walk(params: tuple[Param, ...]):
    """Every param, branches included (depth first)."""
    for p in params:
        yield p
        for _, sub in p.when:
            yield from walk(sub)


class SpaceSampler:
    """Define-by-run space for Ray Tune's OptunaSearch: a branch's keys are suggested only
    when its choice was picked. A plain class (not a closure) so the searcher's state pickles."""

    def __init__(self, params: tuple[Param, ...]):
        self.params = params

    def __call__(self, trial: Any) -> None:
        self._sample(trial, self.params)
        return None

    def _sample(self, trial: Any, params: tuple[Param, ...]) -> None:
        for p in params:
            value = p.suggest(trial)
            if p.when:
                self._sample(trial, p.branch(value))


# --------------------------------------------------------------------------
# the tune: section


class TuneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(10, ge=1)
    metric: str | None = None  # default: knn_acc when the data has labels, else rankme
    mode: Literal["max", "min"] | None = None  # default: the metric's better direction
    objectives: list[dict[str, Literal["max", "min"]]] | dict[str, Literal["max", "min"]] | None = None
    scheduler: Literal["asha", "pbt", "fifo"] | None = None  # default: asha (fifo with objectives)
    sampler: Literal["tpe", "cmaes", "random", "grid", "gp", "nsga2"] | None = None
    max_concurrent: int | None = Field(None, ge=1)  # default: what the cluster's CPUs fit
    seed: int = Field(0, ge=0, le=MAX_SEED)  # Optuna's samplers seed numpy, which takes 32 bits
    grace_period: int | None = Field(None, ge=1)  # ASHA, in epochs; default eval.every_epochs
    reduction_factor: float = Field(3.0, gt=1.0)  # ASHA
    perturbation_interval: int | None = Field(None, ge=1)  # PBT, in epochs
    # PBT: every trial waits at each perturbation point and the bottom quantile clones the top together
    # (Ray's synch=True): reproducible exploits at the cost of the slowest trial's pace; default asynchronous
    synch: bool = False
    startup_trials: int | None = Field(None, ge=1)  # TPE/GP random trials before modelling
    max_failures: int = Field(2, ge=0)  # restarts of a trial (and of its Train workers) after a crash
    budget_epochs: int | None = Field(None, ge=1)  # end the search once its trials trained this many epochs
    # a trial's process (Ray, torch and raysl imported, the data loaded) runs the next trial on the same
    # resources instead of a new process starting: ~7 CPU-s less per trial on a 2-core machine
    # (bench/trial_reuse.py); false starts every trial afresh
    reuse_actors: bool = True


@dataclass
class SearchSpace:
    source: str
    base: dict  # run-config tree, --set overrides applied
    base_config: RunConfig
    params: tuple[Param, ...]
    tune: TuneSettings
    raw: dict = field(default_factory=dict)  # search: as written (for raysl_space.yaml)

    @property
    def conditional(self) -> bool:
        return any(p.when for p in walk(self.params))

    def objectives(self, labeled: bool = True) -> list[tuple[str, str]]:
        """[(metric, mode), ...]: one for a single-objective search."""
        t = self.tune
        if t.objectives:
            items = t.objectives.items() if isinstance(t.objectives, dict) else [
                kv for d in t.objectives for kv in d.items()
            ]
            return [(k, v) for k, v in items]
        metric = t.metric or ("knn_acc" if labeled else "rankme")
        # an unknown metric has no mode: None here, and _check_tune refuses it by name when the file loads
        return [(metric, t.mode or (metric_mode(metric) if known_metric(metric) else None))]

    def sampler_name(self) -> str | None:
        if self.tune.sampler:
            return self.tune.sampler
        if self.scheduler_name() == "pbt":
            return None
        return "nsga2" if len(self.objectives()) > 1 else "tpe"

    def scheduler_name(self) -> str:
        return self.tune.scheduler or ("fifo" if self.tune.objectives else "asha")

    def max_epochs(self) -> int:
        for p in walk(self.params):
            if p.key == "optim.epochs":
                return int(max(p.test_values()))
        return self.base_config.optim.epochs

    def grace_period(self) -> int:
        return self.tune.grace_period or min(self.base_config.eval.every_epochs, self.max_epochs())

    def base_point(self) -> dict[str, Any]:
        """The base config's value of every searched key it reaches: the first trial runs the base."""
        tree = self.base_config.model_dump(mode="json")
        point: dict[str, Any] = {}

        def visit(params: tuple[Param, ...]) -> None:
            for p in params:
                value = get_dotted(tree, p.key, _MISSING)
                if value is _MISSING or not p.contains(value):
                    continue
                point[p.key] = value
                if p.when:
                    visit(p.branch(value))

        visit(self.params)
        return point

    def grid(self) -> dict[str, list]:
        return {p.key: (list(p.choices) if p.kind == "choice" else list(range(int(p.low), int(p.high) + 1)))
                for p in self.params}

    def to_yaml_dict(self) -> dict:
        return {"base": self.base, "search": self.raw, "tune": self.tune.model_dump(exclude_none=True)}


_MISSING = object()


# --------------------------------------------------------------------------
# parsing


def _number(value: Any, where: str, what: str) -> float:
    # PyYAML reads 1e-3 (no dot) as a string; accept it as the number it means
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {what} must be a finite number, got {value!r}")
    return value


def _parse_param(key: Any, spec: Any, where: str, source: str) -> Param:
    here = f"{where}.{key}"
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: {key!r} is not a dotted config key like optim.lr")
    if not isinstance(spec, dict):
        raise ConfigError(f"{here}: expected a distribution {_DIST_HELP}; got {spec!r}")
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    if not kinds:
        unknown = ", ".join(repr(k) for k in spec) or "nothing"
        raise ConfigError(f"{here}: unknown distribution {unknown}; allowed: {', '.join(DISTRIBUTIONS)}")
    if len(kinds) > 1:
        raise ConfigError(f"{here}: one distribution per key, got {', '.join(kinds)}")
    kind = kinds[0]
    for extra in spec:
        if extra != kind and extra not in _EXTRA_KEYS[kind]:
            allowed = sorted(_EXTRA_KEYS[kind])
            hint = f"{kind} takes: {', '.join(allowed)}" if allowed else f"{kind} takes no other keys"
            if extra in ("when",):
                hint = "only a choice has branches (when:)"
            raise ConfigError(f"{here}: {extra!r} is not allowed next to {kind}; {hint}")
    arg = spec[kind]
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{here}: choice needs a non-empty list, e.g. {{choice: [a, b]}}; got {arg!r}")
        for c in arg:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise ConfigError(f"{here}: choice values must be numbers, strings, booleans or null; got {c!r}")
        if len({(type(c), c) for c in arg}) != len(arg):
            raise ConfigError(f"{here}: choice has repeated values {arg!r}")
        when = spec.get("when")
        branches: list[tuple[Any, tuple[Param, ...]]] = []
        if when is not None:
            if not isinstance(when, dict) or not when:
                raise ConfigError(f"{here}.when: expected a mapping of choice -> keys to search, e.g. "
                                  f"when: {{{arg[0]}: {{...}}}}")
            for choice, sub in when.items():
                match = [c for c in arg if c == choice and type(c) is type(choice)]
                if not match:
                    raise ConfigError(f"{here}.when: {choice!r} is not one of the choices {arg!r}")
                branches.append((match[0], _parse_params(sub or {}, f"{here}.when.{choice}", source)))
        return Param(key, "choice", choices=tuple(arg), when=tuple(branches))
    if not isinstance(arg, list) or len(arg) != 2:
        raise ConfigError(f"{here}: {kind} needs [low, high], got {arg!r}")
    lo, hi = (_number(v, here, f"{kind} bounds") for v in arg)
    if kind == "int":
        if int(lo) != lo or int(hi) != hi:
            raise ConfigError(f"{here}: int bounds must be whole numbers, got [{arg[0]}, {arg[1]}]")
        lo, hi = int(lo), int(hi)
    if not lo < hi:
        raise ConfigError(
            f"{here}: {kind} needs low < high, got [{arg[0]}, {arg[1]}]; for a fixed value set it in base:"
        )
    log = bool(spec.get("log", False)) if kind == "int" else kind == "loguniform"
    if log and lo <= 0:
        raise ConfigError(f"{here}: {kind}{' log' if kind == 'int' else ''} needs low > 0 (log scale), got "
                          f"[{arg[0]}, {arg[1]}]; use uniform for ranges that include 0")
    return Param(key, kind, low=lo, high=hi, log=log)


def _parse_params(mapping: Any, where: str, source: str) -> tuple[Param, ...]:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted config keys to distributions {_DIST_HELP}")
    return tuple(_parse_param(k, v, where, source) for k, v in mapping.items())


def apply_sample(base: dict, sample: dict[str, Any]) -> dict:
    """A trial's run-config tree: ``base`` with the sampled ``{dotted.key: value}`` set.

    ``method.name`` goes first; a method other than the base's starts from its own defaults.
    """
    tree = copy.deepcopy(base)
    for key, value in sorted(sample.items(), key=lambda kv: kv[0] != "method.name"):
        if key == "method.name" and value != get_dotted(tree, "method.name", DEFAULT_METHOD):
            tree["method"] = {"name": value}
        else:
            tree = set_dotted(tree, key, value)
    return tree


def _check_value(tree: dict, p: Param, value: Any, source: str, context: str = "") -> dict:
    from raysl.run_config import build_config  # imports the methods (torch): not when raysl.space is imported

    trial_tree = apply_sample(tree, {p.key: value})
    try:
        build_config(trial_tree, "x")
    except ConfigError as exc:
        why = str(exc).removeprefix("x: ")
        which = "value" if p.kind == "choice" else ("low" if value == p.low else "high")
        msg = f"{source}: search.{p.key}: {which} {value!r} of {p.describe()} is not valid{context}: {why}"
        if p.key.startswith("method.") and p.key != "method.name" and "unknown key" in why:
            msg += "; search a method's own knobs under method.name: {choice: [...], when: {METHOD: {...}}}"
        raise ConfigError(msg) from None
    return trial_tree


def _validate(
    params: tuple[Param, ...], tree: dict, source: str, seen: dict[str, Param], path: tuple[str, ...]
) -> None:
    keys = [p.key for p in params]
    for key in keys:
        if keys.count(key) > 1 or key in path:
            raise ConfigError(f"{source}: search.{key} is searched twice on one branch; keep one")
    structural = next((p for p in params if p.key == "method.name"), None)
    contexts = [(tree, "")]
    if structural is not None:
        contexts = [(apply_sample(tree, {"method.name": c}), f" with method.name={c}") for c in structural.choices]
    for p in params:
        other = seen.get(p.key)
        if other is not None and not other.same_distribution(p):
            raise ConfigError(
                f"{source}: search.{p.key} has {other.describe()} in one branch and {p.describe()} in another; "
                "Optuna needs the same kind of distribution (and the same choices) for one key"
            )
        seen.setdefault(p.key, p)
        for ctx_tree, ctx in ([(tree, "")] if p is structural else contexts):
            for value in p.test_values():
                branch_tree = _check_value(ctx_tree, p, value, source, ctx)
                sub = p.branch(value) if p.kind == "choice" else ()
                if sub:
                    _validate(sub, branch_tree, source, seen, path + tuple(keys))


def load_space(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """Read and validate a search-space file; ``--set key=value`` edits base: (``tune.key=value`` edits tune:)."""
    data = read_yaml(path, "a search-space file needs base: (a run config), search: and tune:; "
                           "start from a copy of search_spaces/quickstart.yaml")
    return space_from_dict(data, str(path), overrides)


def space_from_dict(data: dict, source: str, overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """:func:`load_space` on a mapping (``raysl scale`` turns a scaling file into one); ``source`` names it."""
    from raysl.run_config import build_config  # imports the methods (torch): not when raysl.space is imported

    unknown = [k for k in data if k not in ("base", "search", "tune")]
    if unknown:
        raise ConfigError(f"{source}: unknown section {unknown[0]!r}; a search-space file has base:, search: and tune:")
    base = data.get("base")
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: needs a 'base:' mapping with the run config (what raysl train accepts)")
    tune_raw = data.get("tune") or {}
    if not isinstance(tune_raw, dict):
        raise ConfigError(f"{source}: tune: must be a mapping, e.g. tune: {{num_samples: 8, scheduler: asha}}")
    tune_raw = dict(tune_raw)
    base = copy.deepcopy(base)
    set_keys: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("tune."):
            tune_raw[key.removeprefix("tune.")] = value
        else:
            base = set_dotted(base, key.removeprefix("base."), value)
            set_keys[key.removeprefix("base.")] = item.strip()
    base_config = build_config(base, f"{source}: base", set_keys)

    search_raw = data.get("search") or {}
    params = _parse_params(search_raw, f"{source}: search", source)
    if not params:
        raise ConfigError(
            f"{source}: search: is empty; add at least one key, e.g. optim.lr: {{loguniform: [0.0003, 0.01]}}"
        )
    _validate(params, base, source, {}, ())
    _check_methods(base_config, params, source)
    if base_config.scale.elastic:  # (a search: choice cannot hold a list)
        raise ConfigError(f"{source}: base: scale.num_workers: [min, max] (elastic) is for raysl train; a trial "
                          "runs a fixed number of workers: give one number (tune.max_failures restarts a trial "
                          "whose workers failed)")

    settings = validate_section(TuneSettings, tune_raw, source, "tune")
    space = SearchSpace(source, base, base_config, params, settings, raw=search_raw)
    _check_tune(space)
    return space


def validate_section(model: type, raw: Any, source: str, name: str) -> Any:
    """A file's top-level section (``tune:``, ``fit:``...) as ``model``; errors name ``source: name.key``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {name}: must be a mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: {name}: unknown key {err['loc'][0]!r}; allowed: "
                              f"{', '.join(model.model_fields)}") from None
        msg = format_validation_error(exc, source)
        raise ConfigError(msg.replace(f"{source}: ", f"{source}: {name}.", 1)) from None


def _check_methods(base_config: RunConfig, params: tuple[Param, ...], source: str) -> None:
    """Every method a trial can pick must be implemented, not only named in the config schema."""
    from raysl.methods import METHODS

    names = [base_config.method.name] + [c for p in walk(params) if p.key == "method.name" for c in p.choices]
    for name in names:
        if name not in METHODS:
            where = "base: method.name" if name == base_config.method.name else "search.method.name"
            raise ConfigError(f"{source}: {where}: {name!r} is not implemented yet; available: {', '.join(METHODS)}")


def _check_tune(space: SearchSpace) -> None:
    source, t = space.source, space.tune
    if t.objectives is not None:
        objectives = space.objectives()
        if len(objectives) < 2:
            raise ConfigError(f"{source}: tune.objectives needs two or more metrics, e.g. "
                              "[knn_acc: max, images_per_s: max]; for one, use tune.metric")
        if t.metric or t.mode:
            raise ConfigError(f"{source}: tune: set either metric/mode or objectives, not both")
    for metric, mode in space.objectives():
        if not known_metric(metric):
            raise ConfigError(f"{source}: tune.metric: unknown metric {metric!r}; allowed: "
                              f"{', '.join(METRIC_MODES)} (projector_ prefixed too, and knn_acc_k<K>)")
        if mode is None:
            raise ConfigError(f"{source}: tune.metric: {metric} (alpha-ReQ's eigenspectrum decay) is best near 1, "
                              f"neither max nor min: search {metric}_score (-|{metric} - 1|, max) instead, or set "
                              "tune.mode")
    sampler, scheduler = space.sampler_name(), space.scheduler_name()
    multi = len(space.objectives()) > 1
    if scheduler == "pbt":
        if t.sampler is not None:
            raise ConfigError(
                f"{source}: tune.sampler: {t.sampler} cannot be used with scheduler: pbt; Ray Tune cannot combine "
                "PopulationBasedTraining with a search algorithm (PBT samples the start values at random and then "
                "mutates them); remove tune.sampler, or use scheduler: asha or fifo"
            )
        if multi:
            raise ConfigError(f"{source}: scheduler: pbt ranks trials by one metric; use tune.metric, not objectives")
        if space.conditional:
            raise ConfigError(f"{source}: scheduler: pbt cannot search conditional (when:) spaces; use asha or fifo")
        for p in space.params:
            if any(p.key == k or (k.endswith(".") and p.key.startswith(k)) for k in _PBT_FIXED):
                raise ConfigError(
                    f"{source}: search.{p.key}: scheduler: pbt mutates running trials, which continue from a "
                    f"checkpoint, and {p.key} changes the model or the run's length; search it with asha or fifo"
                )
        interval = t.perturbation_interval or 1
        every = space.base_config.checkpoint.every_epochs
        if interval % every:
            raise ConfigError(f"{source}: tune.perturbation_interval ({interval}) must be a multiple of "
                              f"checkpoint.every_epochs ({every}): PBT clones the checkpoint at each interval")
    if scheduler == "asha":
        if multi:
            raise ConfigError(f"{source}: scheduler: asha stops trials by one metric; with tune.objectives use "
                              "scheduler: fifo")
        grace = space.grace_period()
        if grace > space.max_epochs():
            raise ConfigError(f"{source}: tune.grace_period ({grace}) is longer than the run "
                              f"(optim.epochs {space.max_epochs()}); use at most {space.max_epochs()}")
        if t.grace_period is not None and grace < min(space.base_config.eval.every_epochs, space.max_epochs()):
            raise ConfigError(f"{source}: tune.grace_period ({grace}) is shorter than eval.every_epochs "
                              f"({space.base_config.eval.every_epochs}): ASHA would judge trials before their "
                              "first evaluation; raise grace_period or evaluate more often")
    if t.perturbation_interval is not None and scheduler != "pbt":
        raise ConfigError(f"{source}: tune.perturbation_interval is for scheduler: pbt (got {scheduler})")
    if t.synch and scheduler != "pbt":
        raise ConfigError(f"{source}: tune.synch is for scheduler: pbt (got {scheduler})")
    if sampler == "grid":
        if space.conditional:
            raise ConfigError(f"{source}: sampler: grid cannot search conditional (when:) spaces; use tpe or random")
        for p in space.params:
            if p.kind in ("loguniform", "uniform"):
                raise ConfigError(f"{source}: search.{p.key}: sampler: grid needs choice or int ranges, "
                                  f"got {p.kind}; list the values with choice: [...]")
    if sampler == "nsga2" and not multi:
        raise ConfigError(f"{source}: sampler: nsga2 is for multi-objective searches (tune.objectives); "
                          "use tpe, cmaes, random, grid or gp")
    if sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError(f"{source}: sampler: cmaes needs the cmaes package: pip install cmaes") from None
    if sampler == "gp":
        import optuna

        if not hasattr(optuna.samplers, "GPSampler"):
            raise ConfigError(f"{source}: sampler: gp needs optuna >= 3.6 (found {optuna.__version__})")
        if multi:
            raise ConfigError(f"{source}: sampler: gp is single-objective; use nsga2 or tpe with tune.objectives")
    if sampler == "cmaes" and multi:
        raise ConfigError(f"{source}: sampler: cmaes is single-objective; use nsga2 or tpe with tune.objectives")
