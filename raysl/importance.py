"""How much each searched parameter mattered for the objective: optuna-dashboard's estimator (PED-ANOVA) on
a search's Optuna study, or Optuna's fANOVA over the Tune trials' final objective when there is no study."""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd

from raysl import jsonio, storage
from raysl.errors import RayslError
from raysl.outcome import BAD_STATUSES, STUDY_FILE
from raysl.results import Experiment, SearchedParam


def _distribution(param: SearchedParam, values: list[Any]):
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
    if not storage.exists(storage.join_uri(exp.location, STUDY_FILE)):
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

