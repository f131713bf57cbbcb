"""Label-free selectors vs kNN: how each label-free metric (RankMe, alpha-ReQ, LiDAR, alignment, uniformity, ...)
would have picked the best trial without labels, judged by kNN accuracy (Spearman's rank correlation, and the kNN
lost by selecting with it)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from raysl.results import Experiment, final_values

# --------------------------------------------------------------------------
# Spearman's rank correlation


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

