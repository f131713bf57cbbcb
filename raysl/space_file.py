"""Search-space files: parse and validate (before Ray starts).

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

The space these make is :class:`raysl.space.SearchSpace`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from raysl.config import RunConfig
from raysl.config_load import format_validation_error, parse_override, read_yaml, set_dotted
from raysl.errors import ConfigError
from raysl.outcome import METRIC_MODES, known_metric
from raysl.results import DISTRIBUTIONS
from raysl.space import Param, SearchSpace, TuneSettings, apply_sample, walk

_EXTRA_KEYS = {"choice": {"when"}, "int": {"log"}, "loguniform": set(), "uniform": set()}
_DIST_HELP = "{loguniform: [lo, hi]}, {uniform: [lo, hi]}, {int: [lo, hi]} or {choice: [a, b, ...]}"
# keys PBT must not mutate: they change the model's shape or the run's length, so a
# cloned checkpoint would no longer fit
_PBT_FIXED = ("method.name", "model.", "scale.", "optim.name", "optim.epochs", "data.source", "data.path", "seed")


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


# --------------------------------------------------------------------------
# checking and loading


def _check_value(tree: dict, p: Param, value: Any, source: str, context: str = "") -> dict:
    from raysl.run_config import build_config  # imports the methods (torch): not when raysl.space_file is imported

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
    from raysl.run_config import build_config  # imports the methods (torch): not when raysl.space_file is imported

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
