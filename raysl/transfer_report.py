"""The report of a transfer experiment ("search small, train big", :mod:`raysl.transfer`): the ``transfer`` key
of its ``scaling.json`` -> one PNG plot + ``report.html``.

A scaling file with ``search:`` is a transfer experiment; ``raysl analyze`` of its folder calls
:func:`write_report` here instead of :func:`raysl.scaling_report.write_report` (:func:`is_transfer` tells
them apart). The plot (:func:`plot_transfer`): one panel per searched hyperparameter, its value against
compute (log-log for a log-distributed one), every budget's trials as points with the near-optimal ones
marked, the fitted ``h_opt(C) = a C^b`` with its bootstrap band and the predictions. Tables: the laws, the
predictions (those ``raysl scale`` made and any ``--predict`` of ``raysl analyze``, from the stored laws)
and the budgets.

What it shares with the scaling report is defined there, never here: the stored scaling file and the number and
point text (:mod:`raysl.scaling_stored`), the figure helpers (:mod:`raysl.scaling_plots`) and the table helper
(:mod:`raysl.scaling_report`); this module imports those, never the reverse.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from raysl import jsonio
from raysl import scaling_laws as laws
from raysl.scaling_plots import _message, _panels, _save
from raysl.scaling_report import _html_table
from raysl.scaling_stored import FROM_ANALYZE, FROM_SCALE, _g, _interval, point_text, stored_spec

# a transfer experiment's one plot (its report has none of raysl.scaling_plots's PLOTS)
TRANSFER_PLOT = "scaling_transfer.png"
TRANSFER_CAPTION = ("Each searched hyperparameter against the training FLOPs of its budget (log x; log y for a "
                    "log-distributed one): every trial that trained the whole budget (rings), the near-optimal ones "
                    "(filled red), trials stopped early or failed (grey x, not fitted), each budget's geometric "
                    "mean of the near-optimal values (open squares), the fitted h_opt(C) = a C^b (line) with its "
                    "bootstrap band over budgets, and the predictions (diamonds, with their intervals). A "
                    "categorical one: its values by budget, the chosen value starred.")


def is_transfer(result: dict) -> bool:
    from raysl.transfer import RESULT_KEY

    return isinstance(result.get(RESULT_KEY), dict)


def transfer_predictions(result: dict, points: list[dict[str, Any]],
                         point_values: Callable[[], Callable] | None = None) -> list[dict[str, Any]]:
    """The stored predictions (with the configs raysl scale wrote), then one per new point from the stored
    laws (no config: ``raysl scale FILE --resume --predict ...`` writes one)."""
    from raysl.transfer import RESULT_KEY, predict_at_point

    transfer = result[RESULT_KEY]
    out = [{**p, "source": FROM_SCALE} for p in transfer.get("predictions") or []]
    stored = [jsonio.key(p["point"]) for p in out]
    counter = None
    for point in points:
        if jsonio.key(point) in stored:
            continue
        if "compute" not in point and counter is None:
            counter = point_values()
        out.append({**predict_at_point(transfer, point, counter if "compute" not in point else None),
                    "config": None, "source": FROM_ANALYZE})
    return out


def _band(law: dict, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    samples = np.asarray(law.get("samples") or [], dtype=float).reshape(-1, 2)
    if not len(samples):
        return None
    tail = (1 - float(law.get("level") or laws.DEFAULT_LEVEL)) / 2
    at = samples[:, :1] + samples[:, 1:] * np.log(grid)[None, :]
    return np.exp(np.quantile(at, tail, axis=0)), np.exp(np.quantile(at, 1 - tail, axis=0))


def _panel_y(value: Any, numeric: bool, choices: list) -> float | int | None:
    """Where a hyperparameter's value goes on its panel's y axis: the number, or a choice's index."""
    from raysl.transfer import is_number

    if numeric:
        return float(value) if is_number(value) else None
    text = jsonio.key(value)
    return next((i for i, c in enumerate(choices) if jsonio.key(c) == text), None)


def plot_transfer(transfer: dict, preds: list[dict], path: str) -> dict[str, Any]:
    """One panel per searched hyperparameter (see TRANSFER_CAPTION). Returns what was drawn."""
    params = transfer.get("params") or []
    budgets = transfer.get("budgets") or []
    n = max(1, len(params))
    fig, axes = _panels(n, 2, (6.4, 4.6))
    drawn: dict[str, Any] = {"panels": [], "trials": 0, "near_optimal": 0, "lines": 0, "bands": 0, "predictions": 0}
    if not params or not budgets:
        _message(axes[0], "no searched hyperparameter or no budget to plot")
        _save(fig, path)
        return drawn
    computes = [float(b["compute"]) for b in budgets]
    at = [float(p["compute"]) for p in preds if p.get("compute")]
    lo_c, hi_c = min(computes + at) / 2, max(computes + at) * 2
    margin = 100 * float(transfer.get("margin") or 0)
    for ax, info in zip(axes, params):
        key = info["key"]
        choices = list(info.get("choices") or [])
        numeric = bool(info.get("numeric"))

        groups: dict[str, tuple[list, list]] = {"near": ([], []), "whole": ([], []), "other": ([], [])}
        for b in budgets:
            for t in b["trials"]:
                y = _panel_y(t["values"].get(key), numeric, choices) if key in t["values"] else None
                if y is None:
                    continue
                which = "near" if t.get("near_optimal") else "whole" if t.get("eligible") else "other"
                groups[which][0].append(float(b["compute"]))
                groups[which][1].append(y)
        ax.scatter(*groups["whole"], facecolors="none", edgecolors="tab:blue", s=34, zorder=3,
                   label="trials (trained the whole budget)")
        ax.scatter(*groups["near"], color="tab:red", s=40, zorder=4, label=f"near-optimal (within {margin:g}% of "
                   "the budget's best)")
        if groups["other"][0]:
            ax.scatter(*groups["other"], marker="x", color="0.55", s=30, zorder=2,
                       label="stopped early or failed (not fitted)")
        drawn["trials"] += sum(len(g[0]) for g in groups.values())
        drawn["near_optimal"] += len(groups["near"][0])
        law = info.get("law")
        if numeric and law:
            grid = np.logspace(math.log10(lo_c), math.log10(hi_c), 120)
            ax.plot(grid, law["a"] * grid ** law["b"], color="k", lw=1.6, zorder=5,
                    label=f"fit: {_g(law['a'], 3)} C^{_g(law['b'], 3)}")
            drawn["lines"] += 1
            band = _band(law, grid)
            if band is not None:
                ax.fill_between(grid, *band, color="0.5", alpha=0.22, lw=0, zorder=1,
                                label=f"{100 * float(law.get('level') or laws.DEFAULT_LEVEL):g}% bootstrap band")
                drawn["bands"] += 1
            means = law.get("budgets") or []
            ax.scatter([m["compute"] for m in means], [m["geometric_mean"] for m in means], marker="s",
                       facecolors="none", edgecolors="k", lw=1.2, s=90, zorder=6,
                       label="geometric mean of the near-optimal")
        for p in preds:
            v = (p.get("values") or {}).get(key)
            y = _panel_y(v["value"], numeric, choices) if v else None
            if y is None or not p.get("compute"):
                continue
            yerr = None
            if numeric and v.get("interval"):
                yerr = [[max(0.0, y - v["interval"][0])], [max(0.0, v["interval"][1] - y)]]
            ax.errorbar([p["compute"]], [y], yerr=yerr, fmt="D", color="tab:green", ms=8, capsize=4, zorder=7,
                        label=f"prediction at {point_text(p['point'])}")
            drawn["predictions"] += 1
        ax.set_xscale("log")
        if numeric and info.get("log"):
            ax.set_yscale("log")
        if not numeric:
            ax.set_yticks(range(len(choices)))
            ax.set_yticklabels([str(c) for c in choices], fontsize=8)
            cat = info.get("categorical")
            if cat:
                ax.plot([cat["compute"]], [_panel_y(cat["value"], numeric, choices)], "*", color="gold", mec="k", ms=16, zorder=8,
                        label=f"chosen: {cat['value']} ({cat['count']} of {cat['near_optimal']} near-optimal)")
        ax.set_xlabel("training FLOPs of the budget (C)")
        ax.set_ylabel(key)
        title = key + (f": b = {_g(law['b'], 3)}" if numeric and law else
                       " (categorical)" if not numeric else " (no law)")
        ax.set_title(title, fontsize=10)
        if info.get("note") and not law:
            ax.text(0.02, 0.02, info["note"], transform=ax.transAxes, fontsize=7, wrap=True)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
        drawn["panels"].append(key)
    _save(fig, path)
    return drawn


def transfer_summary_line(transfer: dict, preds: list[dict]) -> str:
    budgets = transfer.get("budgets") or []
    parts = [f"search small, train big: {len(budgets)} budgets, {sum(len(b['trials']) for b in budgets)} trials"]
    for info in transfer.get("params") or []:
        if info.get("law"):
            parts.append(f"{info['key']} b = {_g(info['law']['b'], 3)}")
        elif info.get("categorical"):
            parts.append(f"{info['key']}: {info['categorical']['value']} (most frequent)")
        else:
            parts.append(f"{info['key']} not fitted")
    parts.append(f"{len(preds)} prediction(s)")
    return "; ".join(parts)


def write_transfer_report(result: dict, spec, out: str, *, name: str = "", predict: list[dict[str, Any]] = (),
                          search_report: str | None = None) -> dict[str, Any]:
    """Plot + ``report.html`` of a transfer experiment into the local folder ``out``; returns its summary."""
    from raysl.transfer import RESULT_KEY, value_text

    transfer = result[RESULT_KEY]

    def counter():
        if spec is None:
            from raysl.errors import ConfigError

            raise ConfigError(f"{name}: --predict at grid axes needs the experiment's raysl_scaling.yaml (its base "
                              "config counts the FLOPs); predict at compute=... instead")
        from raysl.scaling_fits import point_values_for

        return point_values_for(spec)

    preds = transfer_predictions(result, list(predict), counter)
    plots = {"transfer": TRANSFER_PLOT}
    drawn = {"transfer": plot_transfer(transfer, preds, os.path.join(out, TRANSFER_PLOT))}
    summary = {"name": name, "summary": transfer_summary_line(transfer, preds), "plots": plots, "drawn": drawn,
               "fitted": [p["key"] for p in transfer.get("params") or [] if p.get("law")],
               "notes": [*(transfer.get("notes") or []), *(p["note"] for p in transfer.get("params") or []
                                                           if p.get("note"))],
               "predictions": preds}

    from raysl.report import CSS, _image

    esc = html.escape
    level = f"{100 * float(transfer.get('level') or laws.DEFAULT_LEVEL):g}%"
    metric = result.get("metric", "the objective")
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>raysl scaling report"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>raysl scaling report: {esc(name)} (search small, train big)</h1>",
             f"<div class=\"summary\" id=\"summary\">{esc(summary['summary'])}</div>",
             f"<p>Budgets: {esc('; '.join(f'{k}: {v}' for k, v in (result.get('grid') or {}).items()))}, each "
             f"searched over {esc(', '.join(p['key'] for p in transfer.get('params') or []))}. Near-optimal: "
             f"{esc(str(metric))} ({esc(str(transfer.get('mode')))}) within {100 * float(transfer['margin']):g}% "
             "of the budget's best, among the trials that trained the whole budget. Intervals are "
             f"{level} bootstrap percentile intervals over the budgets (with few budgets, narrower than they should "
             f"be). From <code>scaling.json</code> written {esc(str(result.get('written', '?')))}.</p>"]
    if search_report:
        parts.append(f"<p>Every budget's leaderboard and search plots: <a href=\"{esc(search_report)}\">"
                     f"{esc(search_report)}</a>.</p>")
    parts.append("<h2>Fitted laws</h2>")
    law_rows = []
    for info in transfer.get("params") or []:
        law = info.get("law")
        if law:
            law_rows.append(({"data-key": info["key"]},
                             [info["key"], f"{info['key']}_opt(C) = a C^b", _g(law["a"]),
                              _interval(law["intervals"].get("a")), _g(law["b"]), _interval(law["intervals"].get("b")),
                              str(len(law.get("budgets") or [])), ""]))
        else:
            cat = info.get("categorical")
            law_rows.append(({"data-key": info["key"]},
                             [info["key"], "categorical: most frequent" if cat else "-",
                              str(cat["value"]) if cat else "-", "-", "-", "-",
                              f"budget {cat['budget']}" if cat else "-", info.get("note") or ""]))
    parts.append(_html_table("laws", ["hyperparameter", "law", "a (or value)", f"a {level}", "b", f"b {level}",
                                      "budgets", "note"], law_rows))
    for note in transfer.get("notes") or []:
        parts.append(f"<p class=\"note\">{esc(note)}</p>")
    parts.append("<h2>Predictions</h2>")
    if preds:
        pred_rows = [({"data-point": jsonio.dumps(p["point"], sort_keys=True)},
                      [point_text(p["point"]), p.get("source", FROM_SCALE), _g(p.get("compute")),
                       "; ".join(f"{k} {value_text(v)}" for k, v in p["values"].items()),
                       p.get("config") or p.get("config_error") or "-"]) for p in preds]
        parts.append(_html_table("predictions", ["point", "from", "C (FLOPs)", "predicted values", "config"],
                                 pred_rows))
    else:
        parts.append("<p class=\"note\" id=\"predictions-missing\">No predictions: add <code>fit.predict</code> "
                     "to the scaling file, or <code>raysl analyze EXP --predict compute=1e13</code>.</p>")
    parts.append("<h2>Plots</h2>")
    parts.append(f"<figure id=\"transfer\">{_image(out, TRANSFER_PLOT)}<figcaption>{esc(TRANSFER_CAPTION)} "
                 f"(<a href=\"{TRANSFER_PLOT}\">{TRANSFER_PLOT}</a>)</figcaption></figure>")
    parts.append("<h2>Budgets</h2>")
    budget_rows = []
    for b in transfer.get("budgets") or []:
        best = b.get("best")
        budget_rows.append(({"data-budget": str(b["index"])},
                            [f"budget {b['index']}", point_text(b["point"]), _g(b["compute"]), str(len(b["trials"])),
                             str(b.get("finished")), str(b.get("near_optimal")), _g(best["score"]) if best else "-",
                             ", ".join(f"{k}={_g(v) if isinstance(v, float) else v}"
                                       for k, v in best["values"].items()) if best else "-"]))
    parts.append(_html_table("budgets", ["budget", "grid point", "C (FLOPs)", "trials", "finished", "near-optimal",
                                         f"best {metric}", "best trial's values"], budget_rows))
    parts.append("</body></html>\n")
    with open(os.path.join(out, "report.html"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return summary


def write_report(result: dict, spec_data: dict | None, out: str, *, name: str = "",
                 predict: list[dict[str, Any]] = (), search_report: str | None = None) -> dict[str, Any]:
    """:func:`raysl.scaling_report.write_report` for a transfer experiment (same arguments): the stored scaling
    file read, then :func:`write_transfer_report`."""
    spec = stored_spec(result, spec_data, name)
    return write_transfer_report(result, spec, out, name=name, predict=predict, search_report=search_report)
