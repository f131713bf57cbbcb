"""raysl.outcome: the one definition of a trial's status, its report keys and its metrics' directions."""

from __future__ import annotations

import json

import pandas as pd

from raysl import outcome
from raysl.errors import CollapsedError, DivergedError, StorageError, TrainingError
from raysl.outcome import BAD_STATUSES, Status


def test_a_status_is_its_string_everywhere_results_are_read():
    # catches: Enum's own hash (of the member's name) made "diverged" not found in a set of statuses, and
    # pandas' isin (hash-based) miss every bad trial read back from result.json as a plain string
    assert "diverged" in set(BAD_STATUSES) and {"finished": 1}.get(Status.FINISHED) == 1
    column = pd.Series(["finished", "diverged", "stopped", "errored"])
    assert column.isin(BAD_STATUSES).tolist() == [False, True, False, True]
    assert json.dumps({"status": Status.COLLAPSED}) == '{"status": "collapsed"}'
    assert f"{Status.STOPPED}" == "stopped" and str(Status.UNFINISHED) == "unfinished"


def test_an_errors_status_is_decided_by_its_class_not_its_words():
    # catches the old text search: a storage error whose path holds the word "diverged" became a diverged trial
    assert outcome.status_of(DivergedError("loss is nan at step 3")) is Status.DIVERGED
    assert outcome.status_of(CollapsedError("the embeddings became constant")) is Status.COLLAPSED
    assert outcome.status_of(StorageError("/runs/diverged/out: no space left")) is Status.ERRORED
    assert outcome.status_of(TrainingError("a training worker died")) is Status.ERRORED


def test_status_from_tunes_error_text_matches_whole_words():
    assert outcome.status_from_error_text("DivergedError: Diverged at epoch 2: loss is nan") is Status.DIVERGED
    assert outcome.status_from_error_text("CollapsedError: collapsed at epoch 3") is Status.COLLAPSED
    assert outcome.status_from_error_text("undiverged-ish path/x: ValueError") is Status.ERRORED
    assert outcome.status_from_error_text("") is Status.ERRORED


def test_metric_directions_are_one_table():
    assert outcome.metric_mode("knn_acc_k200") == "max" and outcome.metric_mode("projector_alignment") == "min"
    assert outcome.metric_mode("my_metric", default="max") == "max"
    assert outcome.worst_value("loss") == 1e9 and outcome.worst_value("knn_acc") == 0.0
    from raysl.results import mode_of
    from raysl.space import metric_mode

    # the readers and the search space use the same table
    assert metric_mode is outcome.metric_mode and mode_of("uniformity") == "min" and mode_of("lidar") == "max"


def test_train_keys_are_not_evaluation_metrics():
    assert {"epoch", "loss", "status", "eval_epoch", "train_s", "eval_s", "startup_s"} <= outcome.TRAIN_KEYS
    assert not {"knn_acc", "rankme", "alignment"} & outcome.TRAIN_KEYS


def test_one_ranking_for_tune_and_analyze():
    # raysl tune's leaderboard (raysl.search) and raysl analyze's (raysl.leaderboard) both rank with outcome.rank
    trials = [("a", "errored", 0.9), ("b", "finished", 0.5), ("c", "unfinished", 0.99), ("d", "stopped", 0.7),
              ("e", "finished", float("nan")), ("f", "finished", 0.5)]

    def ranked(mode, tiebreak=None):
        return [t[0] for t in outcome.rank(trials, [("knn_acc", mode)], values=lambda t: {"knn_acc": t[2]},
                                           status=lambda t: t[1], tiebreak=tiebreak)]

    # usable trials by the objective (a missing value last), then unfinished ones, then diverged/collapsed/errored
    assert ranked("max") == ["d", "b", "f", "e", "c", "a"]
    assert ranked("min", tiebreak=lambda t: -ord(t[0])) == ["f", "b", "d", "e", "c", "a"]
    # several objectives: the Pareto front first, each part by the first objective
    points = [{"m": 0.9, "s": 1.0}, {"m": 0.8, "s": 0.1}, {"m": 0.7, "s": 2.0}, {"m": 0.85, "s": 1.5}]
    objectives = [("m", "max"), ("s", "min")]
    assert outcome.pareto_front(points, objectives, values=lambda p: p) == [True, True, False, False]
    assert outcome.rank(points, objectives, values=lambda p: p) == [points[0], points[1], points[3], points[2]]
    # a caller that has the front already (raysl tune's leaderboard marks it) passes it instead of a second pass
    front = outcome.pareto_front(points, objectives, values=lambda p: p)
    assert outcome.rank(points, objectives, values=lambda p: p, front=front) == [points[0], points[1], points[3],
                                                                                   points[2]]


def test_tune_and_analyze_break_a_tie_the_same_way():
    """Two trials with the same final kNN accuracy (341 of 359 val images: seen in the session's quickstart
    search, a finished trial and an ASHA-stopped one): raysl tune's leaderboard and best config and raysl
    analyze's name the same one, the lower trial id, whatever order Tune lists them in. Catches tune keeping
    Tune's order while analyze broke ties by id (two different best_config.yaml files from one search)."""
    from raysl.leaderboard import rank_trials
    from raysl.results import Experiment
    from raysl.search_rows import _ranked

    def row(trial_id, status):
        return {"trial_id": trial_id, "status": status, "metrics": {"knn_acc": 341 / 359}, "measured": True}

    for order in (["ec828937", "404b2d71"], ["404b2d71", "ec828937"]):
        rows = [row(t, "finished" if t.startswith("ec") else "stopped") for t in order]
        assert [r["trial_id"] for r in _ranked(rows, [("knn_acc", "max")])] == ["404b2d71", "ec828937"]
        frame = pd.DataFrame({"trial_id": order, "status": [r["status"] for r in rows],
                              "objective_final": [341 / 359] * 2})
        exp = Experiment(location="", name="t1", trials=frame, history=pd.DataFrame(), params=[], metric="knn_acc",
                         mode="max")
        assert rank_trials(exp)["trial_id"].tolist() == ["404b2d71", "ec828937"]


def test_tunes_leaderboard_prints_no_nan_and_epochs_in_full():
    """raysl tune's leaderboard cells in raysl's one number format: a trial whose RankMe could not be computed
    (NaN) shows `-`, not `nan`; an epoch count shows in full, not as 1.2e+04; a categorical value as itself.
    Catches search_rows' own formatter, which printed `nan` (and `inf`) where every other raysl table prints `-`."""
    from raysl.search_rows import _leaderboard, format_cell

    row = {"trial_id": "404b2d71", "status": "finished", "epoch": 12345, "knn_acc": 0.912345, "rankme": float("nan"),
           "metrics": {"knn_acc": 0.912345}, "config": {"method.name": "byol", "optim.lr": 0.00123456,
                                                       "data.hflip": True}}
    header, line = _leaderboard([row], [row], [("knn_acc", "max")]).splitlines()
    cells = dict(zip(header.split(), line.split()))
    assert cells == {"trial": "404b2d71", "status": "finished", "epoch": "12345", "knn_acc": "0.9123", "rankme": "-",
                     "data.hflip": "True", "method.name": "byol", "optim.lr": "0.001235"}
    assert [format_cell(v) for v in (None, float("inf"), 3, 2.5e-7)] == ["-", "-", "3", "2.5e-07"]
