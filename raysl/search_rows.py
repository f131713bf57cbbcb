"""A ``raysl tune`` search's trials as rows once its fit has ended, ranked, and the leaderboard it prints.

:mod:`raysl.search` (the driver) makes the rows and the leaderboard from the fit's results when the search
ends (``_finish``); ``raysl analyze``'s leaderboard of a finished experiment is :mod:`raysl.leaderboard`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysl import ray_compat
from raysl.console import format_number
from raysl.outcome import BAD_STATUSES, UNFINISHED, pareto_front, rank
from raysl.trial import _nan


def _saved_trial_states(experiment: str | None) -> dict[str, str]:
    """Trial folder name -> Tune's status as its experiment state recorded it. Tune saves that state
    when a search is interrupted, before it stops the trials (and marks them TERMINATED in memory)."""
    if experiment is None:
        return {}
    from raysl.tune_files import Storage, tune_statuses

    try:
        where = Storage(experiment)
        return tune_statuses(where, where.root, where.listdir(where.root))
    except Exception:  # noqa: BLE001 - without it, the in-memory statuses decide
        return {}


def _trial_rows(results, objectives, experiment: str | None = None) -> list[dict]:
    """One row per trial: its raysl status (what finally happened), last metrics and sampled config.

    ``measured``: the objective is a real evaluation (not the placeholder a trial reports before its
    first evaluation, nor the worst value of a diverged/collapsed/errored one)."""
    trial_state = {}
    for trial in ray_compat.experiment_trials(results):
        trial_state[str(trial.path).rstrip("/")] = trial.status
    saved = _saved_trial_states(experiment)
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        path = str(result.path).rstrip("/")
        state = trial_state.get(path, "TERMINATED")
        saved_state = saved.get(Path(path).name, state)
        status = metrics.get("status")
        if status in BAD_STATUSES or status == "finished":
            pass  # the trial's own last word: a crash Tune recovered from does not change it
        elif result.error is not None or state == "ERROR":
            status = "errored"
        elif state != "TERMINATED" or saved_state in ("RUNNING", "PENDING", "PAUSED"):
            status = UNFINISHED  # interrupted before it ended: --resume continues it
        elif status in (None, "running"):
            status = "stopped"  # ended early by the scheduler
        rows.append({
            "trial_id": metrics.get("trial_id") or Path(str(result.path)).name,
            "status": status,
            "epoch": metrics.get("epoch"),
            "measured": status not in BAD_STATUSES and (
                "eval_epoch" not in metrics or int(metrics.get("eval_epoch") or 0) > 0),
            "metrics": {m: metrics.get(m) for m, _ in objectives},
            "knn_acc": metrics.get("knn_acc"),
            "rankme": metrics.get("rankme"),
            "config": dict(result.config or {}),
            "path": str(result.path),
        })
    return rows


def _ranked(rows: list[dict], objectives) -> list[dict]:
    """Usable trials, best first (:func:`raysl.outcome.rank`): by the objective, or the Pareto front first
    for several (marked ``pareto``), ties by trial id."""
    usable = [r for r in rows if r["status"] in ("finished", "stopped") and r.get("measured", True)
              and all(isinstance(r["metrics"][m], (int, float)) and not _nan(r["metrics"][m]) for m, _ in objectives)]
    front = None
    if len(objectives) > 1:
        front = pareto_front(usable, objectives, values=lambda r: r["metrics"])
        for r, on_front in zip(usable, front):
            r["pareto"] = on_front
    # ties by trial id, as raysl analyze breaks them (raysl.leaderboard.rank_trials): both name the same best
    # trial and write the same best config
    return rank(usable, objectives, values=lambda r: r["metrics"], front=front, tiebreak=lambda r: str(r["trial_id"]))


def format_cell(value: Any) -> str:
    """A leaderboard cell or a headline's number: raysl's number format (``raysl.console.format_number``: 4
    significant digits, an int in full, ``-`` for none, NaN or inf), a config's text or bool as it is."""
    return format_number(value, exact_ints=True, others_as_str=True)


def _leaderboard(ranked: list[dict], rows: list[dict], objectives, top: int = 10) -> str:
    keys = sorted({k for r in rows for k in r["config"]})
    cols = ["trial", "status", "epoch"] + [m for m, _ in objectives]
    for extra in ("knn_acc", "rankme"):
        if extra not in cols:
            cols.append(extra)
    cols += keys
    shown = ranked[:top] + [r for r in rows if r["status"] in BAD_STATUSES][: max(0, top - len(ranked))]
    table = []
    for r in shown:
        values = {"trial": r["trial_id"], "status": r["status"] + ("*" if r.get("pareto") else ""),
                  "epoch": r["epoch"], "knn_acc": r["knn_acc"], "rankme": r["rankme"], **r["metrics"], **r["config"]}
        table.append([format_cell(values.get(c)) for c in cols])
    widths = [max(len(c), *(len(row[i]) for row in table)) if table else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    if len(objectives) > 1:
        lines.append("(* = on the Pareto front)")
    return "\n".join(lines)
