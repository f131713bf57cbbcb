"""The PNG plots of ``raysl analyze``'s report: learning curves, objective against each searched parameter,
parameter importance, RankMe against kNN and the budget used.

Figures are drawn with ``matplotlib.figure.Figure`` directly (no pyplot, no GUI
backend), so the report works on a headless machine and inside Ray workers.
The page that embeds them, with their captions, is :mod:`raysl.report`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from raysl.results import Experiment

PLOTS = {
    "learning_curves": "learning_curves.png",
    "objective_vs_params": "objective_vs_params.png",
    "param_importance": "param_importance.png",
    "rankme_vs_knn": "rankme_vs_knn.png",
    "budget": "budget.png",
}
STATUS_STYLE = {
    "finished": {"ls": "-", "alpha": 0.9},
    "unfinished": {"ls": "-", "alpha": 0.6},
    "stopped": {"ls": "--", "alpha": 0.55, "color": "0.55"},
    "diverged": {"ls": ":", "alpha": 0.8, "color": "tab:red"},
    "collapsed": {"ls": ":", "alpha": 0.8, "color": "tab:red"},
    "errored": {"ls": ":", "alpha": 0.8, "color": "tab:red"},
}
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
# the other trials' curves: no blue, which is the best trial's
CURVE_COLORS = [c for c in COLORS if c != "tab:blue"]


def _save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _best_trial_id(summary: dict) -> str | None:
    return summary["best"]["trial_id"] if summary.get("best") else None


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------
# the plots


BEST_STYLE = {"ls": "-", "alpha": 1.0, "color": "#0b3d91", "lw": 3.2, "zorder": 10}


def best_legend_label(best: dict | None) -> str:
    """The legend entry of the best trial: ``best trial (<id>, <status>)``."""
    return f"best trial ({best['trial_id']}, {best['status']})" if best else "best trial"


def plot_learning_curves(experiments: list[Experiment], summaries: list[dict], path: str) -> dict[str, Any]:
    """Learning curves, one row per experiment (objective left, loss or kNN right).

    The best trial of each experiment (its summary's ``best``) is drawn last, on top, thick, solid
    and dark blue with a star at its best value, whatever stopped it; its legend entry is that very
    line. Returns what was drawn: ``{experiment: {"best": id, "legend": [labels], "lines": {metric:
    {trial_id: {"linestyle", "linewidth", "color", "zorder", "label"}}}}}``.
    """
    from matplotlib.colors import to_hex
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(12, 3.6 * len(experiments)))
    axes = fig.subplots(len(experiments), 2, squeeze=False)
    drawn_info: dict[str, Any] = {}
    for row, (exp, summary) in enumerate(zip(experiments, summaries)):
        best_summary = summary.get("best")
        best = _best_trial_id(summary)
        status = dict(zip(exp.trials["trial_id"], exp.trials["status"]))
        info = drawn_info.setdefault(exp.name, {"best": best, "legend": [], "lines": {}})
        for col, metric in enumerate((exp.metric, "loss" if exp.metric != "loss" else "knn_acc")):
            ax = axes[row][col]
            lines: dict[str, Line2D] = {}
            best_line = None
            if not exp.history.empty and metric in exp.history:
                groups = list(exp.history.groupby("trial_id", sort=True))
                # the best trial last, so that it is drawn on top of the others
                groups.sort(key=lambda g: g[0] == best)
                for i, (trial_id, hist) in enumerate(groups):
                    points = hist[["epoch", metric]].dropna().sort_values("epoch")
                    if points.empty:
                        continue
                    xs, ys = points["epoch"].to_numpy(), points[metric].to_numpy(dtype=float)
                    if trial_id == best:
                        style = dict(BEST_STYLE)
                        (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=best_legend_label(best_summary),
                                          **style)
                        best_line = line
                        if metric == exp.metric and len(ys):  # its best value
                            at = int(np.argmax(ys) if exp.mode == "max" else np.argmin(ys))
                            ax.plot(xs[at], ys[at], marker="*", ms=16, color=style["color"], mec="white", mew=1.0,
                                    ls="none", zorder=11)
                    else:
                        style = dict(STATUS_STYLE.get(status.get(trial_id, ""), {}))
                        style.setdefault("color", CURVE_COLORS[i % len(CURVE_COLORS)])
                        (line,) = ax.plot(xs, ys, marker="o", markersize=3, lw=1.3, zorder=2, **style)
                    if status.get(trial_id) in ("diverged", "collapsed", "errored"):
                        ax.plot(xs[-1], ys[-1], "x", color="tab:red", ms=9, zorder=3)
                    lines[str(trial_id)] = line
            if not lines:
                _message(ax, f"no trial reported {metric}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(metric)
            ax.set_title(f"{exp.name}: {metric}" + (f" ({exp.mode})" if metric == exp.metric else ""), fontsize=10)
            ax.grid(alpha=0.3)
            if col == 0:
                handles = [best_line] if best_line is not None else []
                handles += [Line2D([], [], color="0.15", lw=1.3, label="finished / running (one colour each)"),
                            Line2D([], [], color="0.55", ls="--", label="stopped early"),
                            Line2D([], [], color="tab:red", ls=":", marker="x", label="diverged / errored")]
                legend = ax.legend(handles=handles, fontsize=8, loc="best")
                legend.set_zorder(20)
                info["legend"] = [t.get_text() for t in legend.get_texts()]
            info["lines"][metric] = {
                tid: {"linestyle": line.get_linestyle(), "linewidth": float(line.get_linewidth()),
                      "color": to_hex(line.get_color()), "zorder": float(line.get_zorder()),
                      "label": line.get_label()}
                for tid, line in lines.items()}
    fig.tight_layout()
    _save(fig, path)
    return drawn_info


def _all_params(experiments: list[Experiment]):
    seen: dict[str, Any] = {}
    for exp in experiments:
        for p in exp.params:
            seen.setdefault(p.name, p)
    return list(seen.values())


def _positions(values: list[Any], choices: list[Any]) -> list[float]:
    return [choices.index(v) if v in choices else np.nan for v in values]


def plot_objective_vs_params(experiments: list[Experiment], path: str) -> None:
    params = _all_params(experiments)
    n = max(1, len(params))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    if not params:
        _message(axes[0], "no searched parameters (every trial used the same config)")
    metric = experiments[0].metric
    for ax, param in zip(axes, params):
        categorical = param.kind == "choice"
        choices: list[Any] = []
        if categorical:
            for exp in experiments:
                if param.name in exp.trials:
                    for v in [*(param.choices or []), *exp.trials[param.name].tolist()]:
                        if v is not None and v not in choices:
                            choices.append(v)
        for i, exp in enumerate(experiments):
            if param.name not in exp.trials:
                continue
            color = COLORS[i % len(COLORS)]
            for status, group in exp.trials.groupby("status"):
                group = group[group["objective_final"].notna()]
                if group.empty:
                    continue
                xs = _positions(group[param.name].tolist(), choices) if categorical else \
                    pd.to_numeric(group[param.name], errors="coerce").tolist()
                label = f"{exp.name} {status}" if len(experiments) > 1 else status
                ys = group["objective_final"].astype(float)
                if status in ("finished", "unfinished"):
                    ax.scatter(xs, ys, color=color, s=40, label=label)
                elif status == "stopped":
                    ax.scatter(xs, ys, facecolors="none", edgecolors=color, s=40, label=label)
                else:
                    ax.scatter(xs, ys, color="tab:red", marker="x", s=40, label=label)
        if categorical:
            ax.set_xticks(range(len(choices)))
            ax.set_xticklabels([str(c) for c in choices], rotation=20, fontsize=8)
        elif param.log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(param.name + (" (log)" if param.log else ""))
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(params):] if params else axes[1:]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def plot_importance(experiments: list[Experiment], summaries: list[dict], path: str) -> None:
    params = [p.name for p in _all_params(experiments)]
    fig = Figure(figsize=(8, 1.2 + 0.55 * max(2, len(params)) * max(1, len(experiments)) ** 0.5))
    ax = fig.subplots()
    have = [(exp, s["importance"]) for exp, s in zip(experiments, summaries) if s["importance"]["importances"]]
    if not have:
        notes = {s["importance"]["note"] for s in summaries if s["importance"]["note"]}
        _message(ax, "parameter importance not available: " + "; ".join(sorted(notes)))
    else:
        height = 0.8 / len(have)
        order = sorted(params, key=lambda p: max(imp["importances"].get(p, 0.0) for _, imp in have))
        for i, (exp, imp) in enumerate(have):
            ys = np.arange(len(order)) + (i - (len(have) - 1) / 2) * height
            ax.barh(ys, [imp["importances"].get(p, 0.0) for p in order], height=height,
                    color=COLORS[i % len(COLORS)], label=f"{exp.name} ({imp['trials']} trials)")
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels(order)
        # each experiment's own estimator (PED-ANOVA from its study, or fANOVA without one)
        estimators = sorted({imp["evaluator"].split(" (")[0] for _, imp in have})
        ax.set_xlabel(f"importance ({' / '.join(estimators)} share, summing to 1 per experiment)")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_rankme_vs_knn(experiments: list[Experiment], summaries: list[dict], path: str) -> None:
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    drawn = 0
    titles = []
    for i, (exp, summary) in enumerate(zip(experiments, summaries)):
        pts = exp.trials[["rankme", "knn_acc", "status"]].copy()
        pts = pts[pts["rankme"].notna() & pts["knn_acc"].notna()]
        if pts.empty:
            continue
        rho = summary["rankme_knn_spearman"]
        label = exp.name + (f" (Spearman {rho:.2f})" if rho is not None else "")
        filled = pts["status"].isin(["finished", "unfinished"])
        color = COLORS[i % len(COLORS)]
        ax.scatter(pts["rankme"][filled], pts["knn_acc"][filled], color=color, s=40, label=label)
        ax.scatter(pts["rankme"][~filled], pts["knn_acc"][~filled], facecolors="none", edgecolors=color, s=40,
                   label=None if filled.all() else f"{exp.name}: stopped early")
        titles.append(f"{exp.name}: " + (f"Spearman ρ = {rho:.2f} over {len(pts)} trials" if rho is not None
                                         else f"Spearman ρ undefined ({len(pts)} trials)"))
        drawn += 1
    if drawn:
        ax.set_xlabel("RankMe (final, backbone features)")
        ax.set_ylabel("kNN accuracy (final, k=20)")
        ax.set_title("\n".join(titles), fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    else:
        _message(ax, "no trial reported both rankme and knn_acc")
    fig.tight_layout()
    _save(fig, path)


def plot_budget(experiments: list[Experiment], summaries: list[dict], path: str) -> None:
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    drawn = 0
    for i, (exp, summary) in enumerate(zip(experiments, summaries)):
        hist = exp.history
        if hist.empty or "wall_clock" not in hist:
            continue
        points = pd.DataFrame({"t": pd.to_numeric(hist["wall_clock"], errors="coerce"),
                               "n": hist["new_epochs"]}).dropna().sort_values("t", kind="stable")
        if points.empty:
            continue
        start = exp.trials["start_time"].dropna()
        t0 = float(start.min()) if len(start) else float(points["t"].iloc[0])
        color = COLORS[i % len(COLORS)]
        xs = np.concatenate([[0.0], points["t"].to_numpy() - t0])
        ys = np.concatenate([[0], points["n"].cumsum().to_numpy()])
        b = summary["budget"]
        ax.step(xs, ys, where="post", color=color, lw=2,
                label=f"{exp.name}: {b['trial_epochs_run']} trial-epochs run")
        if b["trial_epochs_if_all_ran_to_max"]:
            full = b["trial_epochs_if_all_ran_to_max"]
            ax.axhline(full, color=color, ls="--", lw=1,
                       label=f"{exp.name}: all {len(exp.trials)} trials x {b['max_epochs']} epochs = {full} "
                             f"({b['trial_epochs_saved']} saved, {100 * (b['saved_fraction'] or 0):.0f}%)")
        drawn += 1
    if drawn:
        ax.set_xlabel("wall-clock since the first trial started (s)")
        ax.set_ylabel("cumulative trial-epochs")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    else:
        _message(ax, "no timestamps reported")
    fig.tight_layout()
    _save(fig, path)


def write_plots(experiments: list[Experiment], summaries: list[dict], out: str) -> dict[str, str]:
    """Write every PNG into ``out``; returns {plot key: file name}."""
    plot_learning_curves(experiments, summaries, os.path.join(out, PLOTS["learning_curves"]))
    plot_objective_vs_params(experiments, os.path.join(out, PLOTS["objective_vs_params"]))
    plot_importance(experiments, summaries, os.path.join(out, PLOTS["param_importance"]))
    plot_rankme_vs_knn(experiments, summaries, os.path.join(out, PLOTS["rankme_vs_knn"]))
    plot_budget(experiments, summaries, os.path.join(out, PLOTS["budget"]))
    return dict(PLOTS)
