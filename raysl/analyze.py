"""``raysl analyze``: leaderboard, parameter importance, best config and a report.

Reads one or more Ray Tune experiments (:mod:`raysl.results`), ranks the trials,
measures how much each searched parameter mattered (Optuna's fANOVA over the
finished trials), how well the label-free RankMe tracked kNN accuracy (Spearman
rank correlation), how each label-free metric (RankMe, alpha-ReQ, LiDAR, alignment,
uniformity) would have picked the best trial without labels (Spearman with kNN and
the kNN lost by selecting with it), how many trial-epochs ASHA saved, and writes into ``--out``:

``leaderboard.csv``, ``leaderboard.md``, ``best_config.yaml``, ``summary.json``,
the PNG plots and ``report.html`` (:mod:`raysl.report`).

A scaling experiment (a folder ``raysl scale`` wrote, with ``scaling.json``) gets the
scaling report as ``report.html`` (:mod:`raysl.scaling_report`: fits, frontier,
predictions, ``--predict`` from the stored fits; a transfer experiment's is
:mod:`raysl.transfer_report`) and the search report of the same runs as
``search_report.html``.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
from typing import Any

import numpy as np
import pandas as pd
import yaml

from raysl import jsonio, storage
from raysl.errors import ConfigError, RayslError
from raysl.outcome import BAD_STATUSES, UNFINISHED
from raysl.results import BEST_TAG, Experiment, Param, flatten, is_best_row, load_experiments

# Leaderboard columns after the searched parameters (each "final" = last reported value).
METRIC_COLUMNS = ("objective_final", "objective_best", "best_epoch", "epochs", "knn_acc", "knn_acc_k200",
                  "rankme", "alpha_req", "lidar", "agreed_rank", "alignment", "uniformity", "loss", "images_per_s",
                  "wall_time_s")


# --------------------------------------------------------------------------
# leaderboard


def rank_trials(exp: Experiment) -> pd.DataFrame:
    """Trials best first by their final objective; diverged/collapsed/errored trials and trials
    with no objective yet go last."""
    trials = exp.trials.copy()
    key = trials["objective_final"].astype(float)
    key = -key if exp.mode == "max" else key
    # usable trials first, then unfinished ones (never the best), then diverged/collapsed/errored
    trials["_bad"] = trials["status"].map(lambda s: 2 if s in BAD_STATUSES else 1 if s == UNFINISHED else 0)
    trials["_key"] = key.fillna(np.inf)
    trials = trials.sort_values(["_bad", "_key", "trial_id"], kind="stable").drop(columns=["_bad", "_key"])
    trials = trials.reset_index(drop=True)
    trials.insert(1, "rank", range(1, len(trials) + 1))
    return trials


def leaderboard(experiments: list[Experiment]) -> pd.DataFrame:
    """One row per trial over all experiments: id, status, searched params, objective, metrics, wall time."""
    frames = []
    params: list[str] = []
    for exp in experiments:
        params.extend(p for p in exp.param_names if p not in params)
        ranked = rank_trials(exp)
        for metric in ("alpha_req", "lidar", "agreed_rank"):  # label-free metrics the trial table does not carry
            if metric not in ranked:
                ranked[metric] = ranked["trial_id"].map(dict(zip(exp.trials["trial_id"], final_values(exp, metric))))
        frames.append(ranked)
    table = pd.concat(frames, ignore_index=True)
    columns = ["experiment", "rank", "trial_id", "status", *params, *METRIC_COLUMNS, "trial_dir"]
    for col in columns:
        if col not in table:
            table[col] = None
    table = table[columns]
    if len(experiments) == 1:
        table = table.drop(columns="experiment")
    return table


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(table: pd.DataFrame, best: tuple[str, str] | None = None) -> str:
    """The leaderboard as Markdown; the best trial's id carries ``★ best`` whatever stopped it."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    lines = [header, rule]
    for record in table.to_dict("records"):
        cells = [_cell(v) for v in record.values()]
        if is_best_row(record, best) and "trial_id" in record:
            i = list(record).index("trial_id")
            cells[i] = f"**{cells[i]}** {BEST_TAG}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# parameter importance


def _distribution(param: Param, values: list[Any]):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    present = [v for v in values if v is not None]
    if param.kind == "choice":
        choices = list(param.choices or [])
        for v in present:
            if v not in choices:
                choices.append(v)
        return CategoricalDistribution([c if isinstance(c, (int, float, str, bool)) or c is None else jsonio.key(c)
                                        for c in choices])
    low = min([param.low, *present]) if param.low is not None else min(present)
    high = max([param.high, *present]) if param.high is not None else max(present)
    if param.kind == "int":
        return IntDistribution(int(math.floor(low)), int(math.ceil(high)), log=param.log and low > 0)
    return FloatDistribution(float(low), float(high), log=param.log and low > 0)


# What optuna-dashboard (0.21) shows on its "Hyperparameter Importance" card, and so what `raysl
# dashboard` shows: Optuna's PED-ANOVA evaluator over the study's COMPLETE trials (optuna_dashboard/
# _importance.py). The report shows the same numbers, so the two never disagree about one search.
DASHBOARD_EVALUATOR = "PED-ANOVA (Optuna's PedAnovaImportanceEvaluator, as optuna-dashboard shows it)"
STUDY_RECORD = "raysl_study.json"  # raysl.study.STUDY_FILE, named here to look for it without importing Ray Tune
FANOVA_SEED = 0  # fANOVA fits a random forest: a fixed seed gives the same numbers on every analyze


def param_importance(exp: Experiment, *, seed: int = FANOVA_SEED) -> dict[str, Any]:
    """Importances of the searched parameters for the objective, as ``raysl dashboard`` shows them.

    A search with an Optuna study (every ``raysl tune`` but PBT): optuna-dashboard's estimator on the
    study's trials (:func:`study_importance`). Without one (PBT, a study that cannot be opened):
    Optuna's fANOVA (``seed``) over the Tune trials' final objective (:func:`fanova_importance`);
    ``note`` says why.

    Returns ``{"importances": {param: share}, "evaluator": ..., "trials": n, "used": ..., "note": ...}``;
    ``importances`` is empty (and ``note`` says why) when there is too little to go on.
    """
    found, why_not = study_importance(exp)
    if found is not None:
        return found
    out = fanova_importance(exp, seed=seed)
    if why_not:
        out["note"] = "; ".join(n for n in (why_not, out["note"]) if n)
    return out


def _study_trials(exp: Experiment):
    """(the experiment's Optuna study, None) or (None, why there is none to read)."""
    if not storage.exists(storage.join_uri(exp.location, STUDY_RECORD)):
        return None, "no Optuna study (a PBT search keeps none), so not the dashboard's estimator"
    from raysl import study as studies  # imports Ray Tune (a second or two): only for a search with a study

    try:
        place = studies.load(exp.location)
        if place.url.startswith("sqlite"):
            from sqlalchemy.engine import make_url

            database = make_url(place.url).database
            if database and not os.path.exists(database):  # opening it would create an empty study database
                return None, f"the study database {database} is missing"
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=place.name, storage=place.open()), None
    except (RayslError, KeyError) as exc:  # KeyError: no study of that name in the database
        return None, f"the Optuna study could not be read ({' '.join(str(exc).split())[:200]})"


def study_importance(exp: Experiment) -> tuple[dict[str, Any] | None, str | None]:
    """(importances, None) as optuna-dashboard computes them for the experiment's study, or (None, why not).

    The dashboard's estimator on the dashboard's trials: PED-ANOVA over the study's COMPLETE trials
    (a trial ASHA stopped is COMPLETE with its last reported value, as Ray's OptunaSearch tells it),
    the objective negated for a maximized metric; when PED-ANOVA returns nothing, equal shares over
    the searched parameters, as the dashboard draws them.
    """
    import warnings

    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    study, why_not = _study_trials(exp)
    if study is None:
        return None, why_not
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    used = (f"the {len(complete)} COMPLETE trials of Optuna study {study.study_name} (the trials raysl dashboard "
            f"shows: finished and early-stopped alike, each with its last reported {exp.metric})")
    out: dict[str, Any] = {"importances": {}, "evaluator": DASHBOARD_EVALUATOR, "trials": len(complete),
                           "used": used, "note": None}
    if len(study.directions) > 1:
        out["note"] = f"objective 1 of {len(study.directions)} ({exp.metric}), as the dashboard's first card"
    if len(complete) <= 1:  # the dashboard shows no importance either
        out["note"] = f"needs at least 2 COMPLETE trials in the Optuna study, has {len(complete)}"
        return out, None
    maximize = study.directions[0] == StudyDirection.MAXIMIZE
    with warnings.catch_warnings():
        # PED-ANOVA warns that it ranks low target values; the target below is negated for a max metric
        warnings.simplefilter("ignore")
        scores = get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(),
            target=(lambda t: -t.values[0]) if maximize else (lambda t: t.values[0]))
    if not scores:  # the dashboard then shows equal shares over every parameter any trial searched
        names = sorted({name for t in trials for name in t.distributions})
        scores = {name: 1.0 / len(names) for name in names}
        out["note"] = "PED-ANOVA found no difference between the parameters; equal shares, as the dashboard shows"
    out["importances"] = {k: float(v) for k, v in scores.items()}
    return out, None


def fanova_importance(exp: Experiment, *, seed: int = FANOVA_SEED) -> dict[str, Any]:
    """fANOVA importances of the searched parameters for the final objective of the Tune trials.

    Over the finished trials when at least three of them differ; else (ASHA stopped most
    trials) over every usable trial's last value, which ``used`` says.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    trials = exp.trials
    usable = trials[trials["objective_final"].notna() & ~trials["status"].isin(BAD_STATUSES)]
    done = usable[usable["status"] == "finished"]
    used = f"the {len(done)} finished trials' final {exp.metric}"
    if len(done) < 3 or done["objective_final"].astype(float).nunique() < 2:
        # ASHA may leave too few trials at the full budget to compare: use every trial's last value
        done = usable
        used = f"the last {exp.metric} of {len(done)} trials, early-stopped ones too (too few finished trials differ)"
    out: dict[str, Any] = {"importances": {}, "trials": int(len(done)), "used": used, "note": None,
                           "evaluator": f"fANOVA (Optuna's FanovaImportanceEvaluator, seed {seed})"}
    names = [p.name for p in exp.params if p.name in trials]
    if not names:
        out["note"] = "no searched parameters"
        return out
    if len(done) < 2:
        out["note"] = f"needs at least 2 trials with an objective, has {len(done)}"
        return out
    conditional = [n for n in names if done[n].isna().any()]
    if conditional:  # a branch's keys (searched only under one choice) are not in every trial
        names = [n for n in names if n not in conditional]
        out["note"] = "left out (not in every trial): " + ", ".join(conditional)
        if not names:
            return out
    if len(names) == 1:
        out["importances"] = {names[0]: 1.0}
        out["note"] = out["note"] or "a single searched parameter carries all the importance"
        return out
    if done["objective_final"].astype(float).nunique() < 2:
        out["note"] = "every trial has the same objective value"
        return out
    dists = {p.name: _distribution(p, done[p.name].tolist()) for p in exp.params if p.name in names}
    frozen = []
    for _, row in done.iterrows():
        params = {n: row[n] for n in names if not pd.isna(row[n])}
        frozen.append(optuna.trial.create_trial(
            params=params, distributions={n: dists[n] for n in params}, value=float(row["objective_final"])))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if exp.mode == "max" else "minimize")
    study.add_trials(frozen)
    try:
        scores = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), params=names)
    except (ValueError, RuntimeError) as exc:
        out["note"] = f"importance could not be computed ({exc})"
        return out
    out["importances"] = {k: float(v) for k, v in scores.items()}
    return out


# --------------------------------------------------------------------------
# RankMe vs kNN


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties get their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Any, y: Any) -> float | None:
    """Spearman's rank correlation (Pearson's r of the average ranks); None when undefined.

    Equal to ``scipy.stats.spearmanr`` (tested); computed here because importing
    ``scipy.stats`` alone takes seconds.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum()))


# --------------------------------------------------------------------------
# label-free selectors vs kNN

# each label-free metric, how it picks a trial, and the score that is highest for the trial it picks
LABEL_FREE_SELECTORS: dict[str, tuple[str, Any]] = {
    "rankme": ("max", lambda v: v),
    "alpha_req": ("closest to 1", lambda v: -np.abs(v - 1.0)),  # raysl.evaluate.alpha_req_score
    "lidar": ("max", lambda v: v),
    "view_agreement": ("max", lambda v: v),
    "agreed_rank": ("max", lambda v: v),
    "alignment": ("min", lambda v: -v),
    "uniformity": ("min", lambda v: -v),
}


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


# Fewer finished trials than this and raysl names no best label-free selector: with 4 trials even a
# perfect rank agreement with kNN is not significant (exact two-sided Spearman test, p = 2/4! = 0.083;
# with 5, p = 2/5! = 0.017), and a selector picks the best of 2-4 trials by chance 25-50% of the time.
MIN_SELECTOR_TRIALS = 5


def too_few_for_selectors(trials: int) -> str:
    """What raysl says instead of naming a best label-free selector from ``trials`` finished trials."""
    return (f"{trials} finished trial{'s' * (trials != 1)} with kNN accuracy, fewer than {MIN_SELECTOR_TRIALS} "
            "needed to compare them")


def label_free_selectors(exp: Experiment) -> dict[str, Any]:
    """How each label-free metric would have picked among the finished trials, judged by kNN accuracy.

    Over the finished trials that report ``knn_acc`` (final values), for each metric of
    :data:`LABEL_FREE_SELECTORS`: ``spearman``, the rank correlation between the metric's selection
    score (the metric for max, minus it for min, ``-|alpha_req - 1|`` for alpha-ReQ; so +1 means it
    orders the trials as kNN does) and ``knn_acc``; the trial it picks (the highest score) and
    ``regret``, the best ``knn_acc`` minus the picked trial's (0 = it picked the best; trials tied on
    the score count with their mean ``knn_acc``). A trial without the metric cannot be picked by it;
    the best ``knn_acc`` is over every trial in the pool, so missing the best costs regret.

    Returns ``{"trials", "min_trials", "best_knn_acc", "best_trial", "rows": [{"metric", "selects",
    "trials", "spearman", "picked_trial", "picked_value", "picked_knn_acc", "regret"}], "note"}``;
    ``rows`` is empty (and ``note`` says why) when no finished trial reports ``knn_acc`` or fewer than
    :data:`MIN_SELECTOR_TRIALS` do.
    """
    trials = exp.trials
    knn = final_values(exp, "knn_acc")
    pool = (trials["status"] == "finished") & np.isfinite(knn)
    out: dict[str, Any] = {"trials": int(pool.sum()), "min_trials": MIN_SELECTOR_TRIALS, "best_knn_acc": None,
                           "best_trial": None, "rows": [], "note": None}
    if not pool.any():
        out["note"] = "no finished trial reports knn_acc (labels are needed to judge the selectors)"
        return out
    if pool.sum() < MIN_SELECTOR_TRIALS:
        out["note"] = too_few_for_selectors(int(pool.sum()))
        return out
    knn = knn[pool]
    ids = trials.loc[pool, "trial_id"].astype(str)
    best = float(knn.max())
    out["best_knn_acc"], out["best_trial"] = best, str(ids[knn.idxmax()])
    for metric, (rule, score_of) in LABEL_FREE_SELECTORS.items():
        values = final_values(exp, metric)[pool]
        have = np.isfinite(values)
        row: dict[str, Any] = {"metric": metric, "selects": rule, "trials": int(have.sum()), "spearman": None,
                               "picked_trial": None, "picked_value": None, "picked_knn_acc": None, "regret": None}
        if have.any():
            score = score_of(values[have].to_numpy(dtype=float))
            picked = np.flatnonzero(score == score.max())
            picked_knn = float(knn[have].to_numpy(dtype=float)[picked].mean())
            first = values[have].index[picked[0]]
            row.update(spearman=spearman(score, knn[have]), picked_trial=str(ids[first]),
                       picked_value=float(values[first]), picked_knn_acc=picked_knn, regret=best - picked_knn)
        out["rows"].append(row)
    return out


# --------------------------------------------------------------------------
# budget


def budget(exp: Experiment) -> dict[str, Any]:
    """Trial-epochs run vs every trial run to the full budget, and the experiment's wall-clock."""
    trials = exp.trials
    run = int(trials["epochs"].fillna(0).sum())
    budgets = trials["max_epochs"] if "max_epochs" in trials else pd.Series([exp.max_epochs] * len(trials))
    full = int(budgets.sum()) if len(budgets) and budgets.notna().all() else None
    starts = trials["start_time"].dropna()
    ends = trials["end_time"].dropna()
    wall = float(ends.max() - starts.min()) if len(starts) and len(ends) else None
    return {
        "trial_epochs_run": run,
        "max_epochs": exp.max_epochs,
        "trial_epochs_if_all_ran_to_max": full,
        "trial_epochs_saved": (full - run) if full is not None else None,
        "saved_fraction": ((full - run) / full) if full else None,
        "wall_clock_s": wall,
        "trial_time_s": float(trials["wall_time_s"].fillna(0).sum()),
    }


# --------------------------------------------------------------------------
# best config


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b or jsonio.key(a) == jsonio.key(b)


def best_run_config(exp: Experiment, trial: pd.Series) -> tuple[str | None, str]:
    """The run config ``raysl train`` accepts for ``trial`` as YAML, and where it came from.

    The experiment's own ``best_config.yaml`` is used when its searched values are the
    trial's; otherwise the space file's ``base:`` gets the trial's parameters applied.
    """
    from raysl.config import RunConfig, to_yaml
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
                return to_yaml(build_config(tree, "best_config.yaml")), "the experiment's best_config.yaml"
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
        from raysl.config import set_dotted

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
        best_flat = _normalized_flat(loaded, "best_config.yaml") or {}
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


def _overall_best(experiments: list[Experiment]) -> tuple[Experiment, pd.Series] | None:
    first = experiments[0]
    best = None
    for exp in experiments:
        if (exp.metric, exp.mode) != (first.metric, first.mode):
            continue
        ranked = rank_trials(exp)
        top = ranked.iloc[0]
        if pd.isna(top["objective_final"]) or top["status"] in (*BAD_STATUSES, UNFINISHED):
            continue
        if best is None or first.better(float(top["objective_final"]), float(best[1]["objective_final"])):
            best = (exp, top)
    return best


# --------------------------------------------------------------------------
# the command


def pbt_lineage(exp: Experiment) -> list[dict[str, Any]]:
    """Each PBT clone, oldest first: the trial, the trial it cloned, the epoch it continued from and the
    mutation (``{key: [donor's value, new value]}`` and as text); ``fallback`` when the donor's checkpoint
    of that epoch was gone and the clone took the donor's newest one."""
    from raysl.pbt import describe_mutation

    rows = []
    for e in exp.lineage:
        change = e.get("mutation") if isinstance(e.get("mutation"), dict) else {}
        rows.append({"trial_id": str(e.get("trial_id")), "cloned": str(e.get("donor")), "epoch": e.get("epoch"),
                     "mutation": describe_mutation(change), "changes": change, "time": e.get("time"),
                     "fallback": bool(e.get("fallback"))})
    return rows


def experiment_summary(exp: Experiment) -> dict[str, Any]:
    ranked = rank_trials(exp)
    counts = {str(k): int(v) for k, v in exp.trials["status"].value_counts().items()}
    top = ranked.iloc[0]
    has_best = not pd.isna(top["objective_final"]) and top["status"] not in (*BAD_STATUSES, UNFINISHED)
    both = exp.trials[["rankme", "knn_acc"]].astype(float).dropna()
    return {
        "path": exp.location,
        "name": exp.name,
        "metric": exp.metric,
        "mode": exp.mode,
        "trials": int(len(exp.trials)),
        "status_counts": counts,
        "searched_params": exp.param_names,
        "best": {
            "trial_id": str(top["trial_id"]),
            "objective": float(top["objective_final"]),
            "objective_best": float(top["objective_best"]),
            "status": str(top["status"]),
            "epochs": int(top["epochs"]),
            "params": {p: top[p] for p in exp.param_names if p in top},
            "trial_dir": str(top["trial_dir"]),
        } if has_best else None,
        "budget": budget(exp),
        "rankme_knn_spearman": spearman(both["rankme"], both["knn_acc"]),
        "rankme_knn_trials": int(len(both)),
        "pbt_lineage": pbt_lineage(exp),
        "label_free_selectors": label_free_selectors(exp),
        "importance": param_importance(exp),
        "notes": list(exp.notes),
    }


def summary_line(summary: dict) -> str:
    parts = []
    for exp in summary["experiments"]:
        counts = exp["status_counts"]
        status = ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        text = f"{exp['name']}: {exp['trials']} trials ({status})"
        if exp["best"]:
            text += (f"; best {exp['metric']} {exp['best']['objective']:.4g} (trial {exp['best']['trial_id']}"
                     + (f", {exp['best']['status']}" if exp["best"]["status"] != "finished" else "") + ")")
        if exp.get("pbt_lineage"):
            text += f"; {len(exp['pbt_lineage'])} PBT clone(s)"
        b = exp["budget"]
        if b["trial_epochs_saved"] is not None:
            text += (f"; {b['trial_epochs_run']} of {b['trial_epochs_if_all_ran_to_max']} trial-epochs run "
                     f"({b['trial_epochs_saved']} saved by early stopping)")
        if exp["rankme_knn_spearman"] is not None:
            text += f"; RankMe vs kNN Spearman {exp['rankme_knn_spearman']:.2f}"
        selectors = exp["label_free_selectors"]
        # a metric reported by fewer trials than the minimum is in the table, never the headline
        chosen = [r for r in selectors["rows"]
                  if r["regret"] is not None and r["trials"] >= selectors.get("min_trials", MIN_SELECTOR_TRIALS)]
        if chosen:
            top = min(chosen, key=lambda r: r["regret"])
            text += f"; best label-free selector {top['metric']} (kNN regret {top['regret']:.4f})"
        elif 0 < selectors["trials"] < selectors.get("min_trials", MIN_SELECTOR_TRIALS):
            text += f"; label-free selectors: {selectors['note']}"
        parts.append(text)
    return " | ".join(parts)


SEARCH_REPORT = "search_report.html"  # a scaling experiment's search report (its report.html is the scaling one)


def _scaling_of(experiments: list[Experiment], predict: list[dict],
                paths: list[str] = ()) -> tuple[dict, dict | None] | None:
    """(scaling.json, stored scaling file) when the one experiment analyzed is a ``raysl scale`` one, or the
    one folder given is a transfer experiment's (``raysl scale`` with search:, one search per budget in it)."""
    from raysl.scaling_stored import read_scaling

    found = read_scaling(experiments[0].location) if len(experiments) == 1 else None
    if found is None and len(paths) == 1 and len(experiments) > 1:
        found = read_scaling(paths[0])
    if predict and found is None:
        where = ", ".join(e.location for e in experiments)
        raise ConfigError(f"--predict needs one scaling experiment (a folder `raysl scale` wrote, with scaling.json); "
                          f"{where} is not one" + (" (analyze it alone)" if len(experiments) > 1 else ""))
    return found


def analyze(paths: list[str], out: str, predict: list[dict] = ()) -> dict[str, Any]:
    """Analyze the experiments at ``paths`` and write every output into ``out``; returns the summary.

    ``predict``: points (``{"model.width": 64}``, ``{"compute": 1e15}``) at which a scaling
    experiment's stored fits predict the error."""
    experiments: list[Experiment] = []
    for path in paths:
        experiments.extend(load_experiments(path))
    names = [e.name for e in experiments]
    for i, exp in enumerate(experiments):  # keep experiment labels unique when comparing
        if names.count(exp.name) > 1:
            exp.name = f"{exp.name}#{i + 1}"
            exp.trials["experiment"] = exp.name
            if not exp.history.empty:
                exp.history["experiment"] = exp.name
    scaling = _scaling_of(experiments, list(predict), list(paths))

    # the report is made in a local staging folder, then each file is written atomically into --out
    # (a folder or URI): a read-only or full --out leaves the old report or the new file, never a torn one
    target = storage.make_dirs(out)
    with tempfile.TemporaryDirectory(prefix="raysl-report-") as local_out:
        name = experiments[0].name if len(experiments) == 1 else paths[0].rstrip("/").rsplit("/", 1)[-1]
        summary = _write_outputs(experiments, local_out, scaling, list(predict), name)
        with storage.guard(target, "writing the report"):
            for name in sorted(os.listdir(local_out)):
                with open(os.path.join(local_out, name), "rb") as fh:
                    storage.write_atomic(target.join(name), fh.read())
    return summary


def _write_outputs(experiments: list[Experiment], local_out: str, scaling: tuple[dict, dict | None] | None = None,
                   predict: list[dict] = (), scaling_name: str | None = None) -> dict[str, Any]:
    from raysl import report  # matplotlib: only once there is something to plot

    table = leaderboard(experiments)
    table.to_csv(os.path.join(local_out, "leaderboard.csv"), index=False)

    summaries = [experiment_summary(e) for e in experiments]
    best = _overall_best(experiments)
    best_info: dict[str, Any] | None = None
    best_yaml = None
    if best is not None:
        exp, trial = best
        best_yaml, source = best_run_config(exp, trial)
        vs_base = config_vs_base(exp, trial, best_yaml)
        best_info = {"experiment": exp.name, "trial_id": str(trial["trial_id"]), "status": str(trial["status"]),
                     "epochs": int(trial["epochs"]), "metric": exp.metric,
                     "objective": float(trial["objective_final"]), "config_source": source,
                     "best_config": "best_config.yaml" if best_yaml else None,
                     "searched": {r["key"]: r["best"] for r in vs_base if r["searched"]},
                     "vs_base": vs_base}
        if best_yaml:
            header = (f"# best trial {trial['trial_id']} of {exp.location} ({exp.metric} = "
                      f"{float(trial['objective_final']):.6g}); from {source}.\n"
                      f"# re-train: raysl train best_config.yaml [--set optim.epochs=N]\n")
            with open(os.path.join(local_out, "best_config.yaml"), "w") as fh:
                fh.write(header + best_yaml)
    with open(os.path.join(local_out, "leaderboard.md"), "w") as fh:
        fh.write(markdown_table(table, best=(best_info["experiment"], best_info["trial_id"]) if best_info else None))
    summary: dict[str, Any] = {"experiments": summaries, "best": best_info}
    summary["summary"] = summary_line(summary)
    summary["plots"] = report.write_plots(experiments, summaries, local_out)
    summary["outputs"] = sorted(["leaderboard.csv", "leaderboard.md", "summary.json", "report.html",
                                 *(["best_config.yaml"] if best_yaml else []), *summary["plots"].values()])
    summary = jsonio.to_json_safe(summary)  # what summary.json holds is also what the report shows
    report.write_html(experiments, summary, table, best_yaml, local_out)
    if scaling is not None:  # report.html is the scaling report; the search report of the same runs is kept
        from raysl import scaling_report, transfer_report

        os.replace(os.path.join(local_out, "report.html"), os.path.join(local_out, SEARCH_REPORT))
        # a transfer experiment (search small, train big) has its own report; both take the same arguments
        write = (transfer_report.write_report if transfer_report.is_transfer(scaling[0])
                 else scaling_report.write_report)
        scaled = write(*scaling, local_out, name=scaling_name or experiments[0].name,
                       predict=predict,
                       search_report=SEARCH_REPORT)
        summary["scaling"] = jsonio.to_json_safe({k: scaled[k] for k in ("summary", "plots", "fitted", "notes",
                                                                        "predictions")})
        summary["summary"] += " | scaling: " + scaled["summary"]
        summary["outputs"] = sorted([*summary["outputs"], SEARCH_REPORT, *scaled["plots"].values()])
    with open(os.path.join(local_out, "summary.json"), "w") as fh:
        fh.write(jsonio.dumps(summary, indent=2))
    return summary


def default_out(first_path: str) -> str:
    return first_path.rstrip("/") + "/report"


def analyze_main(paths: list[str], out: str | None = None, predict: list[str] = ()) -> int:
    """``raysl analyze PATHS [--out OUT] [--predict POINT ...]``."""
    from raysl.scaling import check_predict_points, predict_point

    points = check_predict_points([predict_point(p) for p in predict], "--predict")
    out = out or default_out(paths[0])
    try:
        summary = analyze(list(paths), out, points)
    except OSError as exc:
        raise RayslError(f"cannot read or write the results: {exc}") from None
    print(f"[raysl] {summary['summary']}", file=sys.stderr)
    final = {"out": out, "report": out.rstrip("/") + "/report.html", "best": summary["best"]}
    if "scaling" in summary:
        from raysl.scaling_report import prediction_lines

        for line in prediction_lines(summary["scaling"]["predictions"]):
            print(f"[raysl] {line}", file=sys.stderr)
        final["search_report"] = out.rstrip("/") + "/" + SEARCH_REPORT
        final["predictions"] = summary["scaling"]["predictions"]
    jsonio.print_line(final)
    return 0
