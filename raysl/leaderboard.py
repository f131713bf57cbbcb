"""The leaderboard of ``raysl analyze``: an experiment's trials ranked best first (:func:`raysl.outcome.rank`),
one table over every experiment analyzed, and that table as Markdown."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from raysl.outcome import rank
from raysl.results import BEST_TAG, Experiment, final_values, is_best_row

# Leaderboard columns after the searched parameters (each "final" = last reported value).
METRIC_COLUMNS = ("objective_final", "objective_best", "best_epoch", "epochs", "knn_acc", "knn_acc_k200",
                  "rankme", "alpha_req", "lidar", "agreed_rank", "alignment", "uniformity", "loss", "images_per_s",
                  "wall_time_s")


# --------------------------------------------------------------------------
# leaderboard


def rank_trials(exp: Experiment) -> pd.DataFrame:
    """Trials best first by their final objective (:func:`raysl.outcome.rank`, ties by trial id);
    diverged/collapsed/errored trials and trials with no objective yet go last."""
    trials = exp.trials.reset_index(drop=True)
    objective = trials["objective_final"].astype(float).tolist()
    statuses, ids = trials["status"].tolist(), trials["trial_id"].tolist()
    # usable trials first, then unfinished ones (never the best), then diverged/collapsed/errored
    order = rank(range(len(trials)), [(exp.metric, exp.mode)], values=lambda i: {exp.metric: objective[i]},
                 status=lambda i: statuses[i], tiebreak=lambda i: ids[i])
    trials = trials.iloc[order].reset_index(drop=True)
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

