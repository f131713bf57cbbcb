"""What a run or a trial produced: the one contract between what writes results (``raysl train``,
``tune``, ``scale``) and what reads them (``analyze``, the report, the dashboard).

- :class:`Status`: what finally happened to a run or trial (the ``status`` of its reports and of
  the summary line), and :func:`status_of`, the status an error carries, decided by its class;
- :data:`TRAIN_KEYS`: what every training report carries (anything else is an evaluation's);
- :func:`metric_mode` / :func:`worst_value`: each metric's better direction, and the value a
  trial that failed reports so a searcher learns it was bad;
- :func:`rank`: the one order of trials, best first (``raysl tune``'s leaderboard and best trial,
  ``raysl analyze``'s leaderboard and best config), with :func:`standing` and :func:`pareto_front`;
- the file names an experiment folder holds besides Ray Tune's own.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any, TypeVar

from raysl.errors import CollapsedError, DivergedError
from raysl.timing import TIME_KEYS

__all__ = [
    "BAD_STATUSES",
    "BEST_CONFIG_FILE",
    "METRIC_MODES",
    "SPACE_FILE",
    "Status",
    "TERMINAL_STATUSES",
    "TRAIN_KEYS",
    "TRAIN_RUN_NAME",
    "UNFINISHED",
    "known_metric",
    "metric_mode",
    "pareto_front",
    "rank",
    "standing",
    "status_from_error_text",
    "status_of",
    "worst_value",
]


class Status(str, Enum):
    """What finally happened (a ``str``: it compares, and writes to JSON, as its value)."""

    FINISHED = "finished"  # every epoch trained
    STOPPED = "stopped"  # ended early without an error: a scheduler (ASHA, a stopper) stopped it
    DIVERGED = "diverged"  # the loss became NaN or infinite
    COLLAPSED = "collapsed"  # the embeddings became (nearly) constant against the network at initialisation
    ERRORED = "errored"  # any other error
    # not ended: still running or waiting, or caught by an interrupted search (`raysl tune --resume`
    # continues it); never the best trial
    UNFINISHED = "unfinished"
    RUNNING = "running"  # a report of a trial that is waiting (e.g. for free storage) and has not ended

    def __str__(self) -> str:
        return self.value

    # as its value in sets, dict keys and pandas' isin (Enum hashes the member's name)
    __hash__ = str.__hash__


TERMINAL_STATUSES = (Status.FINISHED, Status.STOPPED, Status.DIVERGED, Status.COLLAPSED, Status.ERRORED)
BAD_STATUSES = (Status.DIVERGED, Status.COLLAPSED, Status.ERRORED)
UNFINISHED = Status.UNFINISHED


def status_of(error: BaseException) -> Status:
    """The status an error ends a run with, by its class (raysl.errors)."""
    if isinstance(error, DivergedError):
        return Status.DIVERGED
    if isinstance(error, CollapsedError):
        return Status.COLLAPSED
    return Status.ERRORED


def status_from_error_text(text: str) -> Status:
    """The status of a trial that Tune ended with an error and that left no report saying its status:
    all that is left of the error is Tune's ``error.txt``. raysl's own messages for a diverged or
    collapsed run start with those words (raysl.divergence, raysl.train); anything else is errored."""
    first = (text or "").lower()
    for status in (Status.DIVERGED, Status.COLLAPSED):
        if re.search(rf"\b{status.value}\b", first):
            return status
    return Status.ERRORED


# Files of an experiment folder besides Ray Tune's own: the search space it was started with (a resume
# must use the same) and the best trial's config as a run config `raysl train` accepts.
SPACE_FILE = "raysl_space.yaml"
BEST_CONFIG_FILE = "best_config.yaml"
# the search's Optuna study: raysl's record of it (its storage URL, study name) and, by default, its SQLite
# database in the experiment folder (raysl.study writes both; analyze and signing look for them without it)
STUDY_FILE = "raysl_study.json"
STUDY_DB_FILE = "optuna.db"
# a train run's --out: one JSON line per reported epoch (raysl train writes it, resumes and reports read it)
METRICS_FILE = "metrics.jsonl"
# the Ray Train run name under a run's --out: checkpoints land in OUT/train/checkpoint_*/ (raysl train writes
# them, raysl export reads them)
TRAIN_RUN_NAME = "train"

# What every training report carries; any other metric comes from an evaluation, which `raysl tune`
# repeats between evaluations (``eval_epoch`` says when it was measured).
TRAIN_KEYS = frozenset({"epoch", "step", "loss", "images_per_s", "lr", "status", "eval_epoch", "error",
                        "resumed_epoch", "resumed_weights", *TIME_KEYS})

# metric -> the direction that is better; a trial that diverged or collapsed reports _WORST.
# alpha_req (alpha-ReQ's decay coefficient) has none: it is best near 1, so a search gives tune.mode
# with it or searches alpha_req_score = -|alpha_req - 1| (raysl.evaluate.alpha_req_score)
METRIC_MODES = {
    "knn_acc": "max",
    "linear_acc": "max",
    "rankme": "max",
    "lidar": "max",
    "view_agreement": "max",
    "agreed_rank": "max",
    "alpha_req_score": "max",
    "alpha_req": None,
    "images_per_s": "max",
    "feature_std": "max",
    "loss": "min",
    "alignment": "min",
    "uniformity": "min",
}
_WORST = {"knn_acc": 0.0, "linear_acc": 0.0, "rankme": 0.0, "lidar": 0.0, "view_agreement": 0.0,
          "agreed_rank": 0.0, "alpha_req_score": -1e9,
          "images_per_s": 0.0, "feature_std": 0.0, "alignment": 4.0, "uniformity": 0.0, "loss": 1e9}


def _base_metric(name: str) -> str:
    name = name.removeprefix("projector_")
    return "knn_acc" if re.fullmatch(r"knn_acc_k\d+", name) else name


def known_metric(name: str) -> bool:
    return _base_metric(name) in METRIC_MODES


def metric_mode(name: str, default: str | None = None) -> str | None:
    """The better direction of a raysl metric (``projector_`` and ``knn_acc_kN`` variants too); for a
    metric raysl does not know, ``default`` (None: a KeyError, for callers that must know)."""
    base = _base_metric(name)
    if base not in METRIC_MODES and default is not None:
        return default
    return METRIC_MODES[base]


def worst_value(name: str, mode: str | None = None) -> float:
    """The value a diverged/collapsed/errored trial reports, so the searcher learns it is bad."""
    if mode is None or mode == metric_mode(name):
        return _WORST[_base_metric(name)]
    return -1e9 if mode == "max" else 1e9


# --------------------------------------------------------------------------
# ranking trials

T = TypeVar("T")


def standing(status: Any) -> int:
    """Where a status puts a trial in a ranking: 0 it ended with a result to rank by (finished, stopped
    early), 1 unfinished (never the best), 2 diverged, collapsed or errored."""
    return 2 if status in BAD_STATUSES else 1 if status == UNFINISHED else 0


def _measured(value: Any) -> float | None:
    """A value to rank by, or None for a missing or NaN one."""
    return value if isinstance(value, numbers.Real) and not math.isnan(value) else None


def _dominates(a: Sequence[Any], b: Sequence[Any], modes: Sequence[str]) -> bool:
    """Whether objective values ``a`` are no worse than ``b`` in every objective and better in one."""
    better = False
    for x, y, mode in zip(a, b, modes):
        if mode == "min":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(trials: Sequence[T], objectives: Sequence[tuple[str, str]],
                 values: Callable[[T], Mapping[str, Any]],
                 status: Callable[[T], Any] | None = None) -> list[bool]:
    """For each trial, whether it is on the Pareto front of ``objectives`` (``[(metric, mode), ...]``):
    it ended with a result (:func:`standing` 0), every objective measured, and no other such trial
    dominates it. ``values(trial)`` maps a metric to the trial's value, ``status(trial)`` is its status
    (None: every trial ended with a result)."""
    modes = [mode for _, mode in objectives]
    points: dict[int, list[Any]] = {}
    for i, trial in enumerate(trials):
        if status is not None and standing(status(trial)) != 0:
            continue
        point = [_measured(values(trial).get(metric)) for metric, _ in objectives]
        if all(v is not None for v in point):
            points[i] = point
    return [i in points and not any(_dominates(other, points[i], modes) for j, other in points.items() if j != i)
            for i in range(len(trials))]


def rank(trials: Iterable[T], objectives: Sequence[tuple[str, str]], values: Callable[[T], Mapping[str, Any]],
         status: Callable[[T], Any] | None = None, tiebreak: Callable[[T], Any] | None = None,
         front: Sequence[bool] | None = None) -> list[T]:
    """``trials`` best first: the one ranking of trials (``raysl tune``'s leaderboard and best trial,
    ``raysl analyze``'s leaderboard and best config).

    ``objectives``: ``[(metric, mode), ...]``; ``values(trial)`` maps a metric to the trial's value,
    ``status(trial)`` is its status (None: every trial ended with a result). The order: by
    :func:`standing` (trials with a result, then unfinished ones, then diverged/collapsed/errored ones);
    for several objectives, the :func:`pareto_front` first; then by the first objective in its mode, a
    trial without a value of it (missing or NaN) last; then by ``tiebreak(trial)``, else as given.
    ``front``: the :func:`pareto_front` of these ``trials`` (the same ``objectives``, ``values`` and ``status``)
    when the caller has it already (None: computed here, for several objectives).
    """
    trials = list(trials)
    metric, mode = objectives[0]
    sign = -1 if mode == "max" else 1
    if front is None:
        front = pareto_front(trials, objectives, values, status) if len(objectives) > 1 else [True] * len(trials)

    def key(i: int) -> tuple:
        trial = trials[i]
        value = _measured(values(trial).get(metric))
        return (standing(status(trial)) if status is not None else 0, not front[i],
                math.inf if value is None else sign * value, tiebreak(trial) if tiebreak is not None else 0)

    return [trials[i] for i in sorted(range(len(trials)), key=key)]
