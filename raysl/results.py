"""Read what Ray Tune wrote into pandas: one row per trial and one row per reported epoch.

Tune's own experiment layout is read by :mod:`raysl.tune_files` (``params.json``,
``result.json``, ``progress.csv``, ``error.txt``, Tune's experiment state); this module
adds the two optional files ``raysl tune`` writes: ``raysl_space.yaml`` (the search space)
and ``best_config.yaml``, and makes an :class:`Experiment` of it: each trial's status,
final and best values, budget and time, the searched parameters and the report history.
Experiments that are still running are fine: a half-written last line of
``result.json`` is skipped and a trial that has not ended shows up as ``unfinished``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import yaml

from raysl import jsonio
from raysl.outcome import (
    BAD_STATUSES,
    BEST_CONFIG_FILE,
    SPACE_FILE,
    TERMINAL_STATUSES,
    TRAIN_KEYS,
    UNFINISHED,
    metric_mode,
    status_from_error_text,
)
from raysl.tune_files import (
    RESULT_FILE,
    TUNE_KEYS,
    ResultsError,
    Storage,
    find_experiments,
    is_trial_dir,
    no_trials_message,
    read_trial,
    tune_statuses,
)

# Metrics a raysl trial reports (its final value goes into the leaderboard).
RAYSL_METRICS = (
    "loss", "knn_acc", "knn_acc_k200", "linear_acc", "rankme", "alignment", "uniformity", "images_per_s",
)
DEFAULT_METRIC, DEFAULT_MODE = "knn_acc", "max"


# --------------------------------------------------------------------------
# small helpers


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b": value}``; lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------
# search-space distributions


@dataclass
class SearchedParam:
    """One parameter a finished experiment searched, as analysis reads it back: its dotted name and distribution
    (from the space file's ``search:`` section, a choice's ``when:`` branches flattened in, or inferred from the
    trials' values). Not :class:`raysl.space.Param`, a search space's key as a search samples it (this layer may
    not import that one)."""

    name: str
    kind: str  # loguniform | uniform | int | choice
    low: float | None = None
    high: float | None = None
    choices: list[Any] | None = None
    log: bool = False


# the distributions of a search: section (raysl.space_file parses and checks them, this module reads them back)
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")


def params_from_search(search: dict) -> list[SearchedParam]:
    """The ``search:`` section of a space file -> SearchedParams (a choice's ``when:`` branches included)."""
    out: list[SearchedParam] = []
    for name, spec in search.items():
        param = param_from_spec(str(name), spec)
        if param is not None:
            out.append(param)
        when = spec.get("when") if isinstance(spec, dict) else None
        if isinstance(when, dict):
            for branch in when.values():
                if isinstance(branch, dict):
                    out.extend(p for p in params_from_search(branch) if p.name not in [q.name for q in out])
    return out


def param_from_spec(name: str, spec: Any) -> SearchedParam | None:
    """One entry (``{loguniform: [lo, hi]}``, ``uniform``, ``{int: [lo, hi], log: true}``, ``choice``)."""
    if not isinstance(spec, dict):
        return None
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        return None
    kind, args = kinds[0], spec[kinds[0]]
    if kind == "choice":
        return SearchedParam(name, "choice", choices=list(args)) if isinstance(args, list) and args else None
    if not (isinstance(args, list) and len(args) == 2):
        return None
    try:
        low, high = float(args[0]), float(args[1])
    except (TypeError, ValueError):
        return None
    log = kind == "loguniform" or (kind == "int" and bool(spec.get("log", False)))
    return SearchedParam(name, kind, low=low, high=high, log=log)


def infer_param(name: str, values: list[Any]) -> SearchedParam:
    """A distribution for a parameter seen only in trial configs (no space file)."""
    present = [v for v in values if v is not None]
    if present and all(_finite(v) for v in present):
        low, high = float(min(present)), float(max(present))
        if all(isinstance(v, int) for v in present):
            return SearchedParam(name, "int", low=low, high=high)
        log = low > 0 and high / low >= 20
        return SearchedParam(name, "loguniform" if log else "uniform", low=low, high=high, log=log)
    choices: list[Any] = []
    for v in present:
        v = _hashable(v)
        if v not in choices:
            choices.append(v)
    return SearchedParam(name, "choice", choices=choices)


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return jsonio.key(value)
    return value


# --------------------------------------------------------------------------
# one experiment


@dataclass
class Experiment:
    """A Ray Tune experiment folder, read into pandas."""

    location: str
    name: str
    trials: pd.DataFrame  # one row per trial (see ``_trial_row``)
    history: pd.DataFrame  # one row per report: trial_id, epoch, metrics, timestamp
    params: list[SearchedParam]  # the searched parameters
    metric: str = DEFAULT_METRIC
    mode: str = DEFAULT_MODE
    max_epochs: int | None = None
    space: dict | None = None  # raysl_space.yaml, when the experiment has one
    best_config_text: str | None = None  # the experiment's own best_config.yaml
    notes: list[str] = field(default_factory=list)
    # PBT clones, oldest first: {trial_id, donor, epoch, mutation, time, ...} (raysl.pbt's lineage records)
    lineage: list[dict] = field(default_factory=list)

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


# the best trial's mark in a leaderboard (raysl analyze's Markdown and its HTML report)
BEST_TAG = "★ best"


def is_best_row(row: Any, best: tuple[str, str] | None) -> bool:
    """Whether a leaderboard row (a mapping) is the best trial ``(experiment, trial_id)``."""
    if best is None:
        return False
    return str(row.get("trial_id")) == best[1] and str(row.get("experiment", best[0])) == best[0]


def final_values(exp: Experiment, metric: str) -> pd.Series:
    """Each trial's last reported value of ``metric`` (NaN when it never reported one), aligned with
    ``exp.trials``: the leaderboard's column when it has one, else read from the history."""
    if metric in exp.trials:
        return pd.to_numeric(exp.trials[metric], errors="coerce").astype(float)
    if exp.history.empty or metric not in exp.history:
        return pd.Series(np.nan, index=exp.trials.index, dtype=float)
    hist = exp.history[["trial_id", metric]].copy()
    hist[metric] = pd.to_numeric(hist[metric], errors="coerce")
    last = hist[np.isfinite(hist[metric])].groupby("trial_id")[metric].last()
    return exp.trials["trial_id"].map(last).astype(float)


def load_experiments(location: str) -> list[Experiment]:
    """Every experiment under ``location`` (usually exactly one)."""
    out = []
    for storage, root in find_experiments(location):
        shown = location if root == storage.root else f"{location.rstrip('/')}/{root.rsplit('/', 1)[-1]}"
        out.append(read_experiment(storage, root, shown))
    return out


def read_experiment(storage: Storage, root: str, location: str) -> Experiment:
    entries = storage.listdir(root)
    names = {name for name, _ in entries}
    notes: list[str] = []

    space = None
    if SPACE_FILE in names:
        try:
            loaded = yaml.safe_load(storage.read_text(f"{root}/{SPACE_FILE}") or "")
            space = loaded if isinstance(loaded, dict) else None
        except yaml.YAMLError:
            notes.append(f"{SPACE_FILE} is not valid YAML; searched parameters are inferred from the trials")
    best_config_text = storage.read_text(f"{root}/{BEST_CONFIG_FILE}") if BEST_CONFIG_FILE in names else None
    tune_status = tune_statuses(storage, root, entries)
    raw = []
    for name, is_dir in entries:
        path = f"{root}/{name}"
        if is_dir and is_trial_dir(storage, path):
            t = read_trial(storage, path, name, tune_status.get(name, ""))
            raw.append({**t, "start": _trial_start(t["rows"])})
    if not raw:
        raise ResultsError(no_trials_message(location))
    if not any(t["rows"] for t in raw):
        raise ResultsError(f"{location}: none of its {len(raw)} Ray Tune trials has reported a result yet "
                           f"(their {RESULT_FILE} files are empty); wait for the first epoch and run again")
    reported = {k for t in raw for row in t["rows"] for k in row}
    if not reported & set(RAYSL_METRICS):
        raise ResultsError(f"{location}: its trials report none of raysl's metrics ({', '.join(RAYSL_METRICS[:4])}, "
                           "...); expected an experiment written by `raysl tune`")
    objectives = _objectives((space or {}).get("tune") or {}, reported)
    metric, mode = objectives[0]
    if len(objectives) > 1:
        notes.append("several objectives: trials are ranked by the first, " + metric)
    if metric not in reported:
        fallback = next((m for m in ("knn_acc", "rankme", "loss") if m in reported), "loss")
        notes.append(f"objective {metric!r} was never reported; ranking by {fallback!r}")
        metric, mode = fallback, mode_of(fallback)
    for t in raw:
        t["rows"] = [measured(row, [m for m, _ in objectives]) for row in t["rows"]]
    params = _searched_params(space, raw, notes)
    max_epochs = _max_epochs(space, raw)
    history = _history(raw)
    trials = pd.DataFrame([_trial_row(t, params, metric, mode, max_epochs) for t in raw])
    trials.insert(0, "experiment", _short_name(location))
    if not history.empty:
        history.insert(0, "experiment", _short_name(location))
    lineage = sorted((entry for t in raw for entry in t["lineage"]), key=lambda e: (e.get("time") or 0))
    return Experiment(location=location, name=_short_name(location), trials=trials, history=history, params=params,
                      metric=metric, mode=mode, max_epochs=max_epochs, space=space,
                      best_config_text=best_config_text, notes=notes, lineage=lineage)


def mode_of(metric: str) -> str:
    """The better direction of a metric (raysl.outcome's; "max" for one raysl does not know)."""
    return metric_mode(metric, default="max") or "max"


def _objectives(tune_cfg: dict, reported: set[str]) -> list[tuple[str, str]]:
    """[(metric, mode), ...] of the space file's ``tune:`` (raysl tune's defaults when unset)."""
    many = tune_cfg.get("objectives")
    items: list[tuple[str, str]] = []
    if isinstance(many, dict):
        items = [(str(k), str(v)) for k, v in many.items()]
    elif isinstance(many, list):
        items = [(str(k), str(v)) for d in many if isinstance(d, dict) for k, v in d.items()]
    if not items:
        metric = tune_cfg.get("metric") or (DEFAULT_METRIC if DEFAULT_METRIC in reported else "rankme")
        items = [(str(metric), str(tune_cfg.get("mode") or mode_of(str(metric))))]
    return [(m, mode if mode in ("max", "min") else mode_of(m)) for m, mode in items]


def measured(row: dict, objectives: list[str]) -> dict:
    """A report with only what was measured at its epoch.

    ``raysl tune`` puts the objective in every report: between evaluations it repeats the
    last evaluation (``eval_epoch`` < ``epoch``), before the first one and on a trial that
    diverged, collapsed or errored it reports the objective's worst value. Those values
    are bookkeeping for the searcher, not measurements, and are left out here.
    """
    fresh = "eval_epoch" not in row or row.get("eval_epoch") == row.get("epoch")
    bad = row.get("status") in BAD_STATUSES
    out = {}
    for key, value in row.items():
        if key in TUNE_KEYS or key in TRAIN_KEYS:
            out[key] = value
        elif fresh and not (bad and key in objectives):
            out[key] = value
    return out


def _short_name(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1] or location


def _trial_start(rows: list[dict]) -> float | None:
    """When the trial started (unix seconds). Tune's ``timestamp`` is truncated to whole seconds while
    ``time_total_s`` is exact, so the median of their differences places every report to well under 1 s."""
    offsets = [float(r["timestamp"]) - float(r["time_total_s"]) for r in rows
               if _finite(r.get("timestamp")) and _finite(r.get("time_total_s"))]
    if offsets:
        return float(pd.Series(offsets).median()) + 0.5  # a truncated timestamp is 0.5 s early on average
    stamps = [float(r["timestamp"]) for r in rows if _finite(r.get("timestamp"))]
    return min(stamps) if stamps else None


def _searched_params(space: dict | None, raw: list[dict], notes: list[str]) -> list[SearchedParam]:
    flat = [flatten(t["config"]) for t in raw]
    search = (space or {}).get("search")
    if isinstance(search, dict) and search:
        params = params_from_search(search)
        known = {p.name for p in params}
        for name in search:  # an entry this reader does not understand: infer it from the trials
            if str(name) not in known:
                params.append(infer_param(str(name), [f.get(str(name)) for f in flat]))
        return params
    if space is None:
        notes.append(f"no {SPACE_FILE}: searched parameters are the config keys that vary across trials")
    keys: list[str] = []
    for f in flat:
        keys.extend(k for k in f if k not in keys)
    varying = []
    for key in keys:
        values = {jsonio.key(_hashable(f.get(key))) for f in flat}
        if len(values) > 1:
            varying.append(infer_param(key, [f.get(key) for f in flat]))
    return varying


def _max_epochs(space: dict | None, raw: list[dict]) -> int | None:
    """The epoch budget of a full trial: where ``finished`` trials ended, else ``optim.epochs``."""
    finished = [_epoch(t["rows"][-1]) for t in raw if t["rows"] and t["rows"][-1].get("status") == "finished"]
    finished = [e for e in finished if e is not None]
    if finished:
        return max(finished)
    configured = [flatten(t["config"]).get("optim.epochs") for t in raw]
    configured = [int(e) for e in configured if _finite(e)]
    if configured:
        return max(configured)
    base = ((space or {}).get("base") or {}).get("optim") or {}
    return int(base["epochs"]) if _finite(base.get("epochs")) else None


def _epoch(row: dict) -> int | None:
    for key in ("epoch", "training_iteration"):
        if _finite(row.get(key)):
            return int(row[key])
    return None


def _history(raw: list[dict]) -> pd.DataFrame:
    records = []
    for t in raw:
        previous = 0
        for i, row in enumerate(t["rows"]):
            rec = {"trial_id": t["trial_id"], "epoch": _epoch(row) or i + 1}
            # epochs this report adds (0 for a trial's closing status report on the same epoch)
            rec["new_epochs"], previous = max(0, rec["epoch"] - previous), max(previous, rec["epoch"])
            for key, value in row.items():
                if key in TUNE_KEYS or key in ("epoch", "error") or isinstance(value, (dict, list)):
                    continue
                rec[key] = value
            for key in ("timestamp", "time_total_s", "time_this_iter_s"):
                rec[key] = row.get(key)
            # when this report happened, on the experiment's wall-clock (unix seconds)
            timed = t["start"] is not None and _finite(row.get("time_total_s"))
            rec["wall_clock"] = t["start"] + float(row["time_total_s"]) if timed else row.get("timestamp")
            records.append(rec)
    return pd.DataFrame(records)


def last_value(rows: list[dict], key: str) -> float | None:
    """The last finite value of ``key`` reported by a trial (evaluation may skip epochs)."""
    for row in reversed(rows):
        if _finite(row.get(key)):
            return float(row[key])
    return None


def _trial_budget(t: dict, max_epochs: int | None) -> int | None:
    """Epochs this trial would run to the end: its own ``optim.epochs`` when that was searched."""
    own = flatten(t["config"]).get("optim.epochs")
    return int(own) if _finite(own) else max_epochs


def _reported_since_error(t: dict) -> bool:
    """Whether the trial reported after its error.txt was written (Tune restarted it and it went on).
    Tune's ``timestamp`` is in whole seconds: a report counts only when clearly after the error."""
    last = last_value(t["rows"], "timestamp")
    return t.get("error_time") is not None and last is not None and last > t["error_time"] + 1


def _status(t: dict, budget: int | None) -> str:
    """What finally happened to a trial. ``error.txt`` stays after a crash Tune recovered from
    (FailureConfig restarts the trial from its checkpoint): only Tune's final ERROR, or an error
    with no experiment state to say otherwise and no report after it, makes a trial errored.
    A trial that has not ended (running, waiting, or caught by an interruption) is ``unfinished``."""
    rows = t["rows"]
    reported = str(rows[-1].get("status", "")) if rows else ""
    if reported in TERMINAL_STATUSES and reported != "finished":
        return reported
    if t["tune_status"] == "ERROR" or (t["error"] and not t["tune_status"] and not _reported_since_error(t)):
        return status_from_error_text(t["error"] or "")
    if reported == "finished":
        return "finished"
    if not rows:
        return UNFINISHED
    if t["tune_status"] in ("RUNNING", "PENDING", "PAUSED"):
        return UNFINISHED
    epoch = _epoch(rows[-1])
    if budget is not None and epoch is not None and epoch >= budget:
        return "finished"
    if t["tune_status"] == "TERMINATED" or rows[-1].get("done"):
        return "stopped"  # ended before its last epoch without an error: the scheduler stopped it
    # no experiment state and no end marker yet: the trial may still be running
    return UNFINISHED if not t["tune_status"] else "stopped"


def _trial_row(t: dict, params: list[SearchedParam], metric: str, mode: str, max_epochs: int | None) -> dict:
    rows = t["rows"]
    flat = flatten(t["config"])
    values = [(float(r[metric]), _epoch(r)) for r in rows if _finite(r.get(metric))]
    best = (max if mode == "max" else min)(values, key=lambda v: v[0]) if values else (None, None)
    budget = _trial_budget(t, max_epochs)
    start = t["start"]
    total = last_value(rows, "time_total_s")
    end = start + total if start is not None and total is not None else last_value(rows, "timestamp")
    error = t["error"] or next((str(r["error"]) for r in reversed(rows) if r.get("error")), None)
    row: dict[str, Any] = {"trial_id": t["trial_id"], "status": _status(t, budget)}
    for p in params:
        row[p.name] = _hashable(flat.get(p.name))
    row.update({
        "objective_final": last_value(rows, metric),
        "objective_best": best[0],
        "best_epoch": best[1],
        "epochs": _epoch(rows[-1]) if rows else 0,
        "max_epochs": budget,
    })
    for key in RAYSL_METRICS:
        row[key] = last_value(rows, key)
    row["wall_time_s"] = total
    row["start_time"] = start
    row["end_time"] = end
    row["trial_dir"] = t["dir"]
    row["error"] = error.strip().splitlines()[-1][:300] if error and error.strip() else None
    row["config"] = t["config"]
    return row
