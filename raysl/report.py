"""Plots (PNG) and the self-contained ``report.html`` of ``raysl analyze``.

Figures are drawn with ``matplotlib.figure.Figure`` directly (no pyplot, no GUI
backend), so the report works on a headless machine and inside Ray workers.
Every image is embedded in the HTML as a base64 data URI: the page can be
mailed or uploaded on its own, and the PNG files sit next to it as well.
"""

from __future__ import annotations

import base64
import html
import math
import os
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from raysl.results import BEST_TAG, Experiment, is_best_row

PLOTS = {
    "learning_curves": "learning_curves.png",
    "objective_vs_params": "objective_vs_params.png",
    "param_importance": "param_importance.png",
    "rankme_vs_knn": "rankme_vs_knn.png",
    "budget": "budget.png",
}
CAPTIONS = {
    "learning_curves": "Learning curves of every trial. Thick dark blue, on top, with a star at its best value: "
                       "the best trial, whatever stopped it; solid: ran to the full budget; dashed grey: stopped "
                       "early by the scheduler; red: diverged, collapsed or errored.",
    "objective_vs_params": "Final objective of each trial against each searched parameter "
                           "(filled: finished, hollow: stopped early).",
    "param_importance": "Parameter importance, as raysl dashboard shows it: Optuna's PED-ANOVA over the COMPLETE "
                        "trials of the search's Optuna study. A search without a study (PBT) gets Optuna's fANOVA "
                        "over the trials' final objective instead; the Parameter importance section names the "
                        "estimator and the trials of each experiment.",
    "rankme_vs_knn": "RankMe (label-free) against kNN accuracy, final values per trial, with Spearman's "
                     "rank correlation: how well RankMe would have picked the same trials without labels.",
    "budget": "Trial-epochs used over wall-clock time; the dashed line is what running every trial to "
              "the full budget would have cost.",
}
STATUS_STYLE = {
    "finished": {"ls": "-", "alpha": 0.9},
    "unfinished": {"ls": "-", "alpha": 0.6},
    "stopped": {"ls": "--", "alpha": 0.55, "color": "0.55"},
    "diverged": {"ls": ":", "alpha": 0.8, "color": "tab:red"},
    "collapsed": {"ls": ":", "alpha": 0.8, "color": "tab:red"},
    "errored": {"ls": ":", "alpha": 0.8, "color": "tab:red"},
}
# a label-free selector that no trial reported (its evaluation switch was off)
NOT_MEASURED = "not measured"
# leaderboard columns left to leaderboard.csv, to keep the page's table readable
HTML_HIDDEN = ("best_epoch", "knn_acc_k200", "alpha_req", "lidar", "agreed_rank", "alignment", "uniformity", "loss",
               "trial_dir")
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


# --------------------------------------------------------------------------
# the HTML page

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;
padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
.summary{background:#f4f7fb;border-left:4px solid #3b6fb6;padding:8px 12px;margin:12px 0}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 7px;
text-align:right} th{background:#f0f0f0} td.t{text-align:left}
tr.stopped{color:#777} tr.diverged,tr.collapsed,tr.errored{color:#b00}
tr.best,tr.best.stopped{background:#e3efff;color:#0b3d91;font-weight:600;outline:2px solid #0b3d91}
.tag{display:inline-block;margin-left:6px;padding:0 5px;border-radius:3px;background:#0b3d91;color:#fff;
font-size:11px;font-weight:600;white-space:nowrap}
#best-vs-base th,#best-vs-base td{text-align:left} #best-vs-base tr.differs td.best-value{font-weight:600}
#best-vs-base tr.same td{color:#777} details{margin:8px 0} summary{cursor:pointer;color:#3b6fb6}
.scroll{overflow-x:auto} figure{margin:16px 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12.5px;color:#555} pre{background:#f7f7f7;padding:10px;font-size:12px;overflow-x:auto}
.note{color:#8a5a00;font-size:12.5px}
"""


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(frame: pd.DataFrame, *, text_cols: set[str] = frozenset(), trial_rows: bool = False,
           best_key: tuple[str, str] | None = None) -> str:
    """An HTML table; ``trial_rows`` styles each row by its trial's status and marks ``best_key``."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        classes = [str(row.get("status", ""))] if trial_rows else []
        best = is_best_row(row, best_key)
        if best:
            classes.append("best")
        cells = []
        for c in frame.columns:
            text = html.escape(_fmt(row[c]))
            if best and c == "trial_id":
                text += f"<span class=\"tag\">{html.escape(BEST_TAG)}</span>"
            cls = "t" if c in text_cols or not isinstance(row[c], (int, float)) else ""
            cells.append(f"<td class=\"{cls}\" data-col=\"{html.escape(str(c))}\">{text}</td>")
        trial = f" data-trial=\"{html.escape(str(row.get('trial_id')))}\"" if trial_rows else ""
        body.append(f"<tr class=\"{' '.join(classes)}\"{trial}>{''.join(cells)}</tr>")
    return f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _value(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        from raysl import jsonio

        return jsonio.dumps(value)
    return str(value)


def _vs_base_table(rows: list[dict]) -> str:
    """key | best value | base value: the searched keys, then anything else that differs from the base."""
    if not rows:
        return "<p class=\"note\">no searched parameters and nothing differs from the base.</p>"
    have_base = any(r["base"] is not None for r in rows)
    body = []
    for r in rows:
        classes = ["searched" if r["searched"] else "other", "differs" if r["differs"] else "same"]
        key = html.escape(r["key"]) + ("" if r["searched"] else " <small>(not searched)</small>")
        base = html.escape(_value(r["base"])) if have_base else "(no raysl_space.yaml)"
        body.append(f"<tr class=\"{' '.join(classes)}\" data-key=\"{html.escape(r['key'])}\"><td class=\"t\">{key}</td>"
                    f"<td class=\"t best-value\">{html.escape(_value(r['best']))}</td>"
                    f"<td class=\"t base-value\">{base}</td></tr>")
    return ("<div class=\"scroll\"><table id=\"best-vs-base\"><thead><tr><th>key</th><th>best value</th>"
            f"<th>base value</th></tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _clock(stamp: Any) -> str:
    import datetime

    if not isinstance(stamp, (int, float)):
        return ""
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _image(out: str, name: str) -> str:
    with open(os.path.join(out, name), "rb") as fh:
        data = base64.b64encode(fh.read()).decode("ascii")
    return f"<img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(name)}\" data-file=\"{html.escape(name)}\">"


def write_html(experiments: list[Experiment], summary: dict, table: pd.DataFrame, best_yaml: str | None,
               out: str) -> str:
    """Write ``report.html`` (images embedded) into ``out``; returns its path."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>raysl report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>raysl report: {esc(', '.join(e.name for e in experiments))}</h1>",
             f"<div class=\"summary\" id=\"summary\">{esc(summary['summary'])}</div>"]

    parts.append("<h2>Experiments</h2>")
    rows = []
    for s in summary["experiments"]:
        b = s["budget"]
        imp = s["importance"]["importances"]
        rows.append({
            "experiment": s["name"], "path": s["path"], "objective": f"{s['metric']} ({s['mode']})",
            "trials": s["trials"], "status": ", ".join(f"{v} {k}" for k, v in s["status_counts"].items()),
            "best": (f"{s['best']['objective']:.4g} ({s['best']['trial_id']}, {s['best']['status']})" if s["best"]
                     else ""),
            "trial-epochs run / full": (f"{b['trial_epochs_run']} / {b['trial_epochs_if_all_ran_to_max']}"
                                        if b["trial_epochs_if_all_ran_to_max"] else str(b["trial_epochs_run"])),
            "saved by early stopping": (f"{100 * b['saved_fraction']:.0f}%" if b["saved_fraction"] is not None
                                        else ""),
            "wall-clock (s)": b["wall_clock_s"],
            "RankMe~kNN Spearman": s["rankme_knn_spearman"],
            "most important": (max(imp, key=imp.get) if imp else ""),
        })
    parts.append(_table(pd.DataFrame(rows), text_cols={"experiment", "path", "objective", "status", "best",
                                                       "most important"}))
    for s in summary["experiments"]:
        for note in s["notes"]:
            parts.append(f"<p class=\"note\">{esc(s['name'])}: {esc(note)}</p>")

    best = summary.get("best")
    parts.append("<h2>Leaderboard</h2>")
    parts.append("<p>One row per trial, best first by the final objective; metric columns are each trial's last "
                 "reported measurement (kNN: k=20 on backbone features, val split). More columns (k=200, "
                 "alpha-ReQ, LiDAR, alignment, uniformity, loss, trial folders) are in "
                 "<a href=\"leaderboard.csv\">leaderboard.csv</a>.</p>")
    shown = table.drop(columns=[c for c in HTML_HIDDEN if c in table.columns])
    parts.append(_table(shown, trial_rows=True, best_key=(best["experiment"], best["trial_id"]) if best else None,
                        text_cols={"experiment", "trial_id", "status", "trial_dir"}))

    lineages = [s for s in summary["experiments"] if s.get("pbt_lineage")]
    if lineages:  # PBT: which trial each clone continued from, when, with which mutation
        parts.append("<h2 id=\"pbt-lineage\">PBT lineage</h2>")
        parts.append("<p>Each time population-based training replaced a trial's weights with another's: the trial "
                     "continued from the cloned trial's checkpoint of that epoch with the mutated hyperparameters "
                     "(its config in the leaderboard is the last one).</p>")
        for s in lineages:
            frame = pd.DataFrame([{"trial_id": r["trial_id"], "cloned trial": r["cloned"], "at epoch": r["epoch"],
                                   "mutation": r["mutation"] + (" (from the donor's newest checkpoint)"
                                                                if r["fallback"] else ""),
                                   "time (UTC)": _clock(r["time"])} for r in s["pbt_lineage"]])
            if len(lineages) > 1:
                parts.append(f"<p>{esc(s['name'])}:</p>")
            parts.append(_table(frame, text_cols={"trial_id", "cloned trial", "mutation", "time (UTC)"}))
    parts.append("<h2>Plots</h2>")
    for key, name in summary["plots"].items():
        parts.append(f"<figure id=\"{esc(key)}\">{_image(out, name)}<figcaption>{esc(CAPTIONS[key])} "
                     f"(<a href=\"{esc(name)}\">{esc(name)}</a>)</figcaption></figure>")

    parts.append("<h2>Parameter importance</h2>")
    for s in summary["experiments"]:
        imp = s["importance"]
        if imp["importances"]:
            ranking = pd.DataFrame({"parameter": list(imp["importances"]),
                                    "importance": list(imp["importances"].values())})
            parts.append(f"<p data-importance-evaluator=\"{esc(imp['evaluator'])}\">{esc(s['name'])}: "
                         f"{esc(imp['evaluator'])} over {esc(imp['used'])}.</p>")
            parts.append(_table(ranking, text_cols={"parameter"}))
            if imp["note"]:
                parts.append(f"<p class=\"note\">{esc(imp['note'])}</p>")
        else:
            parts.append(f"<p class=\"note\">{esc(s['name'])}: not available ({esc(imp['note'] or '')}).</p>")

    parts.append("<h2>RankMe vs kNN</h2>")
    for s in summary["experiments"]:
        rho = s["rankme_knn_spearman"]
        parts.append(f"<p>{esc(s['name'])}: Spearman rank correlation between final RankMe and final kNN accuracy "
                     f"over {s['rankme_knn_trials']} trials: <b>{'undefined' if rho is None else f'{rho:.3f}'}</b>"
                     "</p>")

    parts.append("<h2 id=\"label-free-selectors\">Label-free selectors</h2>")
    parts.append("<p>How each label-free metric would have picked the best trial without labels, judged by kNN "
                 "accuracy over the finished trials (final values): Spearman between the metric's selection score "
                 "(higher picks; minus the metric for alignment and uniformity, -|alpha_req - 1| for alpha-ReQ) and "
                 "kNN accuracy (+1: it orders the trials as kNN does), the trial it picks, and the regret: the best "
                 "kNN accuracy minus the picked trial's (0: it picked the best).</p>")
    for s in summary["experiments"]:
        sel = s.get("label_free_selectors") or {}
        if not sel.get("rows"):
            parts.append(f"<p class=\"note\" data-selectors=\"none\">{esc(s['name'])}: no selector is compared "
                         f"({esc(sel.get('note') or '')}).</p>")
            continue
        parts.append(f"<p>{esc(s['name'])}: {sel['trials']} finished trials with kNN accuracy; label-based selection "
                     f"picks trial {esc(str(sel['best_trial']))} (kNN {sel['best_knn_acc']:.4g}).</p>")
        # a metric no trial reported was not measured (the view metrics are off unless asked for), not an error
        frame = pd.DataFrame([{"metric": r["metric"], "selects": r["selects"], "trials": r["trials"],
                               "Spearman with kNN": r["spearman"],
                               "picked trial": r["picked_trial"] if r["trials"] else NOT_MEASURED,
                               "its value": r["picked_value"], "its kNN": r["picked_knn_acc"],
                               "regret (kNN)": r["regret"]} for r in sel["rows"]])
        parts.append(_table(frame, text_cols={"metric", "selects", "picked trial"}))
        missing = [r["metric"] for r in sel["rows"] if not r["trials"]]
        if missing:
            parts.append(f"<p class=\"note\" data-selectors=\"not-measured\">{esc(', '.join(missing))}: "
                         f"{NOT_MEASURED} by these trials; LiDAR, view_agreement and agreed_rank are computed "
                         "with <code>eval.view_metrics: true</code> or when the search ranks by one of them.</p>")

    parts.append("<h2>Best config</h2>")
    if best:
        parts.append(f"<p id=\"best-trial\">Best trial <b>{esc(best['trial_id'])}</b> of {esc(best['experiment'])} "
                     f"({esc(best.get('status', ''))} after {best.get('epochs', '?')} epochs; {esc(best['metric'])} = "
                     f"{best['objective']:.4g}).</p>")
        parts.append(_vs_base_table(best.get("vs_base") or []))
    if best and best_yaml:
        parts.append(f"<p>Its run config, from {esc(best['config_source'])}, is saved as "
                     f"<a href=\"best_config.yaml\">best_config.yaml</a>; re-train with "
                     f"<code>raysl train best_config.yaml</code>.</p>"
                     f"<details id=\"full-config\"><summary>full config (best_config.yaml)</summary>"
                     f"<pre>{esc(best_yaml)}</pre></details>")
    else:
        why = best["config_source"] if best else "no trial has an objective value yet"
        parts.append(f"<p class=\"note\">no best config: {esc(why)}</p>")
    parts.append("</body></html>\n")
    path = os.path.join(out, "report.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return path
