"""The self-contained ``report.html`` of ``raysl analyze``.

Every image (:mod:`raysl.report_plots` draws them) is embedded in the HTML as a base64 data URI: the page
can be mailed or uploaded on its own, and the PNG files sit next to it as well.
"""

from __future__ import annotations

import base64
import html
import math
import os
from typing import Any

import pandas as pd

from raysl.results import BEST_TAG, Experiment, is_best_row

# each plot's caption on the page (the keys of raysl.report_plots.PLOTS)
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
# a label-free selector that no trial reported (its evaluation switch was off)
NOT_MEASURED = "not measured"
# leaderboard columns left to leaderboard.csv, to keep the page's table readable
HTML_HIDDEN = ("best_epoch", "knn_acc_k200", "alpha_req", "lidar", "agreed_rank", "alignment", "uniformity", "loss",
               "trial_dir")


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
