"""The best trial of ``raysl analyze``: which trial is best over the experiments analyzed, its run config as
``best_config.yaml`` (a run config ``raysl train`` accepts) and what it changed against the search space's
``base:``."""

from __future__ import annotations

import copy
import math
from typing import Any

import pandas as pd
import yaml

from raysl import jsonio
from raysl.leaderboard import rank_trials
from raysl.outcome import BEST_CONFIG_FILE, standing
from raysl.results import Experiment, flatten


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b or jsonio.key(a) == jsonio.key(b)


def best_run_config(exp: Experiment, trial: pd.Series) -> tuple[str | None, str]:
    """The run config ``raysl train`` accepts for ``trial`` as YAML, and where it came from.

    The experiment's own ``best_config.yaml`` is used when its searched values are the
    trial's; otherwise the space file's ``base:`` gets the trial's parameters applied.
    """
    from raysl.config import RunConfig
    from raysl.config_load import to_yaml
    from raysl.errors import ConfigError
    from raysl.run_config import build_config

    flat = flatten(trial["config"] if isinstance(trial["config"], dict) else {})
    searched = exp.param_names
    if exp.best_config_text:
        try:
            tree = yaml.safe_load(exp.best_config_text)
            if isinstance(tree, dict) and "base" in tree:
                tree = tree["base"]
            compared = [k for k in searched if k in flat]
            if isinstance(tree, dict) and (compared or not searched) and all(
                    _same(flatten(tree).get(k), flat.get(k)) for k in compared):
                return to_yaml(build_config(tree, BEST_CONFIG_FILE)), "the experiment's best_config.yaml"
        except (yaml.YAMLError, ConfigError):
            pass
    base = (exp.space or {}).get("base")
    sections = set(RunConfig.model_fields)
    sample = {k: v for k, v in flat.items() if k in searched or k.split(".")[0] in sections}
    candidates = []
    if isinstance(base, dict):
        candidates.append((_apply_sample(base, sample), "raysl_space.yaml base + the trial's params"))
        candidates.append((_apply_sample(base, {k: v for k, v in sample.items() if k in searched}),
                           "raysl_space.yaml base + the trial's searched params"))
    if sample and len({k.split(".")[0] for k in sample}) > 2:  # params.json holds a whole run config
        candidates.append((_apply_sample({}, sample), "the trial's params.json"))
    for tree, source in candidates:
        try:
            return to_yaml(build_config(tree, source)), source
        except ConfigError:
            continue
    return None, "no raysl_space.yaml and the trial's params are not a run config"


def _apply_sample(base: dict, sample: dict[str, Any]) -> dict:
    """``base`` with the trial's ``{dotted.key: value}`` set, as ``raysl tune`` builds a trial's config
    (a sampled ``method.name`` other than the base's starts from that method's defaults)."""
    try:
        from raysl.space import apply_sample
    except ImportError:  # pragma: no cover - raysl.space ships with raysl
        from raysl.config_load import set_dotted

        tree = copy.deepcopy(base)
        for key, value in sample.items():
            tree = set_dotted(tree, key, value)
        return tree
    return apply_sample(base, sample)


def _normalized_flat(tree: Any, source: str) -> dict[str, Any] | None:
    """A run-config mapping with raysl's defaults filled in, flattened; None when it is not one."""
    from raysl.errors import ConfigError
    from raysl.run_config import build_config

    if not isinstance(tree, dict):
        return None
    try:
        return flatten(build_config(tree, source).model_dump(mode="json"))
    except ConfigError:
        return flatten(tree)


def config_vs_base(exp: Experiment, trial: pd.Series, best_yaml: str | None) -> list[dict[str, Any]]:
    """What the best trial changed against the search space's ``base:``.

    One row per searched key (in the space's order, whether or not its value differs),
    then every other key whose value differs from the base (a sampled ``method.name``
    brings that method's defaults, for instance). Each row: ``key``, ``best``, ``base``
    (None when the experiment has no ``raysl_space.yaml``), ``searched``, ``differs``.
    """
    trial_flat = flatten(trial["config"] if isinstance(trial["config"], dict) else {})
    best_flat: dict[str, Any] = {}
    if best_yaml:
        loaded = yaml.safe_load(best_yaml)
        best_flat = _normalized_flat(loaded, BEST_CONFIG_FILE) or {}
    base_flat = _normalized_flat((exp.space or {}).get("base"), "raysl_space.yaml base")
    rows = []
    for key in exp.param_names:
        value = best_flat.get(key, trial_flat.get(key))
        base = base_flat.get(key) if base_flat is not None else None
        rows.append({"key": key, "best": value, "base": base, "searched": True,
                     "differs": base_flat is None or key not in base_flat or not _same(value, base)})
    if base_flat is not None and best_flat:
        searched = set(exp.param_names)
        for key in [*best_flat, *(k for k in base_flat if k not in best_flat)]:
            if key in searched:
                continue
            if key not in best_flat or key not in base_flat or not _same(best_flat[key], base_flat[key]):
                rows.append({"key": key, "best": best_flat.get(key), "base": base_flat.get(key), "searched": False,
                             "differs": True})
    return rows


def overall_best(experiments: list[Experiment]) -> tuple[Experiment, pd.Series] | None:
    """The best trial over ``experiments`` (those ranked by the first one's metric and mode) as (its experiment,
    its ranked row); None when no top trial ended with a result."""
    first = experiments[0]
    best = None
    for exp in experiments:
        if (exp.metric, exp.mode) != (first.metric, first.mode):
            continue
        ranked = rank_trials(exp)
        top = ranked.iloc[0]
        if pd.isna(top["objective_final"]) or standing(top["status"]) != 0:
            continue
        if best is None or first.better(float(top["objective_final"]), float(best[1]["objective_final"])):
            best = (exp, top)
    return best

