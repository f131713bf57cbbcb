"""``raysl analyze``: leaderboard, parameter importance, best config and a report.

Reads one or more Ray Tune experiments (:mod:`raysl.results`), ranks the trials
(:mod:`raysl.leaderboard`), measures how much each searched parameter mattered
(:mod:`raysl.importance`: Optuna's fANOVA over the finished trials), how well the
label-free RankMe tracked kNN accuracy (Spearman rank correlation), how each label-free
metric (RankMe, alpha-ReQ, LiDAR, alignment, uniformity) would have picked the best trial
without labels (:mod:`raysl.selectors`: Spearman with kNN and the kNN lost by selecting
with it), how many trial-epochs ASHA saved, and writes into ``--out``:

``leaderboard.csv``, ``leaderboard.md``, ``best_config.yaml`` (:mod:`raysl.best_config`),
``summary.json``, the PNG plots (:mod:`raysl.report_plots`) and ``report.html`` (:mod:`raysl.report`).

A scaling experiment (a folder ``raysl scale`` wrote, with ``scaling.json``) gets the
scaling report as ``report.html`` (:mod:`raysl.scaling_report`: fits, frontier,
predictions, ``--predict`` from the stored fits; a transfer experiment's is
:mod:`raysl.transfer_report`) and the search report of the same runs as
``search_report.html``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import pandas as pd

from raysl import jsonio, storage
from raysl.best_config import best_run_config, config_vs_base, overall_best
from raysl.errors import ConfigError, RayslError
from raysl.importance import param_importance
from raysl.leaderboard import leaderboard, markdown_table, rank_trials
from raysl.outcome import BEST_CONFIG_FILE, standing
from raysl.results import Experiment, load_experiments
from raysl.selectors import MIN_SELECTOR_TRIALS, label_free_selectors, spearman

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
    has_best = not pd.isna(top["objective_final"]) and standing(top["status"]) == 0
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
    from raysl import report, report_plots  # matplotlib: only once there is something to plot

    table = leaderboard(experiments)
    table.to_csv(os.path.join(local_out, "leaderboard.csv"), index=False)

    summaries = [experiment_summary(e) for e in experiments]
    best = overall_best(experiments)
    best_info: dict[str, Any] | None = None
    best_yaml = None
    if best is not None:
        exp, trial = best
        best_yaml, source = best_run_config(exp, trial)
        vs_base = config_vs_base(exp, trial, best_yaml)
        best_info = {"experiment": exp.name, "trial_id": str(trial["trial_id"]), "status": str(trial["status"]),
                     "epochs": int(trial["epochs"]), "metric": exp.metric,
                     "objective": float(trial["objective_final"]), "config_source": source,
                     "best_config": BEST_CONFIG_FILE if best_yaml else None,
                     "searched": {r["key"]: r["best"] for r in vs_base if r["searched"]},
                     "vs_base": vs_base}
        if best_yaml:
            header = (f"# best trial {trial['trial_id']} of {exp.location} ({exp.metric} = "
                      f"{float(trial['objective_final']):.6g}); from {source}.\n"
                      f"# re-train: raysl train best_config.yaml [--set optim.epochs=N]\n")
            with open(os.path.join(local_out, BEST_CONFIG_FILE), "w") as fh:
                fh.write(header + best_yaml)
    with open(os.path.join(local_out, "leaderboard.md"), "w") as fh:
        fh.write(markdown_table(table, best=(best_info["experiment"], best_info["trial_id"]) if best_info else None))
    summary: dict[str, Any] = {"experiments": summaries, "best": best_info}
    summary["summary"] = summary_line(summary)
    summary["plots"] = report_plots.write_plots(experiments, summaries, local_out)
    summary["outputs"] = sorted(["leaderboard.csv", "leaderboard.md", "summary.json", "report.html",
                                 *([BEST_CONFIG_FILE] if best_yaml else []), *summary["plots"].values()])
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

