"""The report of a scaling experiment: ``scaling.json`` (written by ``raysl scale``) -> PNG plots + ``report.html``.

``raysl analyze`` of a folder that holds ``scaling.json`` calls :func:`write_report`, or for a transfer
experiment (a scaling file with ``search:``) :mod:`raysl.transfer_report`. The plots:

- error against training FLOPs (log-log) with the fitted ``E(C)`` and its bootstrap band, and the
  predictions made at ``compute=...``;
- one slice per grid axis: error against that axis, one line per value of the other axes, with the
  fitted ``E(N, D)`` along each line;
- the compute-optimal frontier (``N_opt`` and the error it reaches per budget);
- steps against examples for a batch-size axis (the critical-batch fit, McCandlish et al. 2018);
- images/s and parallel efficiency against ``scale.num_workers``.

Tables: the fitted constants with their intervals, the frontier, the critical batch sizes, the worker
scaling, the predictions (those ``raysl scale`` made and any ``--predict`` of ``raysl analyze``,
computed from the stored fits) and the runs. A fit the runs could not support is said in words.

The page is here; what it reads (``scaling.json``, its fits and predictions: :func:`read_scaling`,
:func:`stored_spec`, ...) is :mod:`raysl.scaling_stored`, the plots :mod:`raysl.scaling_plots`. Both kinds of
experiment share the printed prediction lines (:func:`prediction_lines`) and the table helper
:func:`_html_table` that :mod:`raysl.transfer_report` imports (this module imports nothing of it).
"""

from __future__ import annotations

import html
import os
from typing import Any

import numpy as np

from raysl import jsonio
from raysl.scaling_plots import CAPTIONS, write_plots
from raysl.scaling_stored import (
    FROM_SCALE,
    _g,
    _interval,
    _label,
    _level,
    _note_for,
    point_text,
    predictions,
    stored_spec,
)
from raysl.scaling_text import critical_batch_bound


def _html_table(table_id: str, head: list[str], rows: list[tuple[dict[str, str], list[str]]]) -> str:
    """rows: (attributes of the <tr>, cell texts); the first column is left-aligned text."""
    esc = html.escape
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = []
    for attrs, cells in rows:
        attr = "".join(f' {k}="{esc(v)}"' for k, v in attrs.items())
        tds = "".join(f'<td class="{"t" if j == 0 else ""}" data-col="{esc(head[j])}">{esc(c)}</td>'
                      for j, c in enumerate(cells))
        body.append(f"<tr{attr}>{tds}</tr>")
    return (f'<div class="scroll"><table id="{esc(table_id)}"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def constants_rows(result: dict) -> list[tuple[dict[str, str], list[str]]]:
    rows = []
    for key in ("compute", "model_data"):
        fit = result.get(key)
        if not fit:
            continue
        for name, value in fit["params"].items():
            rows.append(({"data-law": key, "data-name": name},
                         [fit["formula"], name, _g(value), _interval(fit["intervals"].get(name)),
                          str(fit["n_runs"]), _g(fit.get("rmse_log"), 3)]))
    return rows


def prediction_rows(preds: list[dict]) -> list[tuple[dict[str, str], list[str]]]:
    rows = []
    for p in preds:
        cells = [point_text(p["point"]), p.get("source", FROM_SCALE),
                 _g(p.get("n_params")), _g(p.get("train_images")), _g(p.get("compute"))]
        for key in ("error_model_data", "error_compute"):
            med, lo, hi = p.get(key) or (None, None, None)
            cells += [_g(med), _interval((lo, hi)) if key in p else "no fit"]
        for key in ("run_model_data", "run_compute"):
            cells.append(_interval(p[key][1:]) if key in p else "-")
        rows.append(({"data-point": jsonio.dumps(p["point"], sort_keys=True)}, cells))  # read by scripts
    return rows


def write_html(result: dict, summary: dict, preds: list[dict], plots: dict[str, str], out: str,
               search_report: str | None = None) -> str:
    """Write the scaling ``report.html`` (images embedded) into ``out``; returns its path."""
    from raysl.report import CSS, _image

    esc = html.escape
    level = _level(result)
    name = summary.get("name") or str(result.get("experiment", "")).rstrip("/").rsplit("/", 1)[-1]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>raysl scaling report"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>raysl scaling report: {esc(name)}</h1>",
             f"<div class=\"summary\" id=\"summary\">{esc(summary['summary'])}</div>"]
    grid = result.get("grid") or {}
    parts.append(f"<p>Grid: {esc('; '.join(f'{k}: {v}' for k, v in grid.items()))}. Error = "
                 f"{esc(str(result.get('error', '1 - metric')))}; intervals are {level} bootstrap percentile "
                 "intervals over the runs (the uncertainty of the fitted curve, not the spread of one new run). "
                 f"From <code>scaling.json</code> written {esc(str(result.get('written', '?')))}.</p>")
    if search_report:
        parts.append(f"<p>Leaderboard, learning curves and the other search plots of the same runs: "
                     f"<a href=\"{esc(search_report)}\">{esc(search_report)}</a>.</p>")

    parts.append("<h2>Fitted constants</h2>")
    rows = constants_rows(result)
    if rows:
        parts.append(_html_table("constants", ["law", "constant", "value", f"{level} interval", "runs",
                                               "rms log residual"], rows))
    else:
        parts.append("<p class=\"note\" id=\"constants-missing\">No law could be fitted to these runs.</p>")
    for note in result.get("notes") or []:
        parts.append(f"<p class=\"note\">{esc(note)}</p>")

    parts.append("<h2>Predictions</h2>")
    if preds:
        parts.append(_html_table("predictions", ["point", "from", "N (params)", "D (images)", "C (FLOPs)",
                                                 "E(N, D)", f"E(N, D) {level}", "E(C)", f"E(C) {level}",
                                                 f"one run, E(N, D) {level}", f"one run, E(C) {level}"],
                                 prediction_rows(preds)))
        parts.append(f"<p>E(N, D) and E(C) {level}: where the fitted curve lies (bootstrap over the runs). "
                     f"<em>One run</em>: the {level} prediction interval of a single new run there, which adds "
                     "the runs' scatter around the curve (the fit's residual spread in log error): the interval "
                     "a held-out run is checked against.</p>")
    else:
        parts.append("<p class=\"note\" id=\"predictions-missing\">No predictions: add <code>fit.predict</code> "
                     "to the scaling file, or <code>raysl analyze EXP --predict width=64 --predict compute=1e15"
                     "</code>.</p>")

    parts.append("<h2>Plots</h2>")
    for key, file in plots.items():
        parts.append(f"<figure id=\"{esc(key)}\">{_image(out, file)}<figcaption>{esc(CAPTIONS[key])} "
                     f"(<a href=\"{esc(file)}\">{esc(file)}</a>)</figcaption></figure>")

    frontier = result.get("frontier")
    parts.append("<h2>Compute-optimal frontier</h2>")
    if frontier:
        parts.append(f"<p>{esc(frontier['formula'])}; k = {_g(frontier['k'])} (FLOPs per parameter per image, "
                     "the runs' geometric mean).</p>")
        parts.append(_html_table("frontier", ["C (FLOPs)", "N_opt", f"N_opt {level}", "D_opt", "E_opt",
                                              f"E_opt {level}"],
                                 [({}, [_g(p["compute"]), _g(p["N_opt"]), _interval(p.get("N_opt_interval")),
                                        _g(p["D_opt"]), _g(p["E_opt"]), _interval(p.get("E_opt_interval"))])
                                  for p in frontier["points"]]))
    else:
        parts.append(f"<p class=\"note\">Not available: it needs the E(N, D) fit ({esc(_note_for(result, 'E(N, D)'))})."
                     "</p>")

    if "critical_batch" in result or "optim.batch_size" in grid:
        parts.append("<h2>Critical batch size</h2>")
        cb_rows = []
        for cb in result.get("critical_batch") or []:
            if cb.get("bound"):  # the runs bound B_crit on one side only: no value, no interval, say which side
                row = [_label(cb["group"]), _g(cb["target_error"]), "-", "-",
                       "-" if cb["bound"] == "above" else _g(cb.get("S_min")),
                       "-" if cb["bound"] == "below" else _g(cb.get("E_min")), str(len(cb.get("runs") or [])),
                       critical_batch_bound(cb)]
            else:
                row = [_label(cb["group"]), _g(cb["target_error"]), _g(cb.get("B_crit")),
                       _interval((cb.get("intervals") or {}).get("B_crit")), _g(cb.get("S_min")),
                       _g(cb.get("E_min")), str(len(cb.get("runs") or [])), cb.get("note") or ""]
            cb_rows.append(({}, row))
        parts.append(_html_table("critical-batch", ["group", "target error", "B_crit", f"B_crit {level}", "S_min",
                                                    "E_min", "runs", "note"], cb_rows) if cb_rows else
                     "<p class=\"note\">Needs two or more batch sizes per group.</p>")

    if "worker_scaling" in result:
        parts.append("<h2>Worker scaling</h2>")
        ws_rows = []
        for e in result["worker_scaling"]:
            if not e.get("rows"):
                ws_rows.append(({}, [_label(e["group"]), "-", "-", "-", "-", "-", e.get("note") or ""]))
            for r in e.get("rows") or []:
                ws_rows.append(({"data-workers": str(r["num_workers"])},
                                [_label(e["group"]), str(r["num_workers"]), f"{r['images_per_s']:.1f}",
                                 str(r["epochs"]), f"{r['speedup']:.3g}", f"{r['efficiency']:.3g}",
                                 "first epoch only (one-epoch runs)" if r.get("first_epoch_only") else ""]))
        parts.append("<p>Median images/s over the epochs after the first (start-up excluded); speed-up against "
                     "the fewest workers; efficiency = speed-up / (workers / fewest).</p>")
        parts.append(_html_table("worker-scaling", ["group", "workers", "images/s", "epochs", "speed-up",
                                                    "efficiency", "note"], ws_rows))

    parts.append("<h2>Runs</h2>")
    run_rows = []
    for r in result.get("runs") or []:
        rates = (r.get("images_per_s") or [])[1:] or (r.get("images_per_s") or [])
        run_rows.append(({"data-trial": str(r["trial_id"])},
                         [str(r["trial_id"]), *(str(r["config"].get(k)) for k in grid), _g(r["flops"]),
                          _g(r["n_params"]), _g(r["train_images"]), _g(r["error"]),
                          _g(float(np.median(rates)) if rates else None), _g(r.get("noise_scale"))]))
    parts.append(_html_table("runs", ["trial", *grid, "FLOPs", "N (params)", "D (images)", "error",
                                      "images/s", "B_simple"], run_rows))
    parts.append("<p class=\"note\">B_simple: the gradient noise scale tr(&Sigma;)/|G|&sup2; of the run's last "
                 "evaluation (raysl.noise_scale; logged by default only for losses that are means of per-sample terms, "
                 "biased for in-batch negatives and batch statistics), a rough critical batch size.</p>")
    not_used = result.get("not_used") or []
    if not_used:
        listed = ", ".join(f"{r['trial_id']} ({r['status']})" for r in not_used)
        parts.append(f"<p class=\"note\">{len(not_used)} run(s) not used (not finished or no metric): "
                     f"{esc(listed)}.</p>")
    parts.append("</body></html>\n")
    path = os.path.join(out, "report.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return path


def summary_line(result: dict, preds: list[dict]) -> str:
    """One line: runs, which laws were fitted (with their exponents), predictions."""
    parts = [f"{len(result.get('runs') or [])} runs ({len(result.get('not_used') or [])} not used)"]
    if result.get("compute"):
        p = result["compute"]["params"]
        parts.append(f"E(C) exponent b = {_g(p['b'], 3)}")
    else:
        parts.append("E(C) not fitted")
    if result.get("model_data"):
        p = result["model_data"]["params"]
        parts.append(f"E(N, D) alpha = {_g(p['alpha'], 3)}, beta = {_g(p['beta'], 3)}")
    else:
        parts.append("E(N, D) not fitted")
    tops = [ws["rows"][-1] for ws in result.get("worker_scaling") or [] if ws.get("rows")]
    if len(tops) == 1:
        parts.append(f"{tops[0]['num_workers']} workers: speed-up {tops[0]['speedup']:.2f}x "
                     f"(efficiency {100 * tops[0]['efficiency']:.0f}%)")
    elif tops:
        eff = [100 * t["efficiency"] for t in tops]
        parts.append(f"most workers: efficiency {min(eff):.0f}-{max(eff):.0f}% over {len(tops)} groups")
    parts.append(f"{len(preds)} prediction(s)")
    return "; ".join(parts)


def prediction_lines(preds: list[dict]) -> list[str]:
    """``predict width=64 (C = ...): error E(N, D) m [lo, hi]; E(C) m [lo, hi]`` per prediction (a transfer
    experiment's: each hyperparameter's predicted value and interval)."""
    from raysl.transfer import value_text

    lines = []
    for p in preds:
        where = point_text(p["point"])
        if "values" in p:  # a transfer experiment's
            lines.append(f"predict {where} (C = {_g(p.get('compute'))} FLOPs): "
                         + ("; ".join(f"{k} {value_text(v)}" for k, v in p["values"].items()) or "no values"))
            continue
        found = [f"{label} {_g(p[key][0])} {_interval(p[key][1:])}"
                 + (f", one run {_interval(p[run][1:])}" if run in p else "")
                 for key, run, label in (("error_model_data", "run_model_data", "E(N, D)"),
                                         ("error_compute", "run_compute", "E(C)")) if key in p]
        lines.append(f"predict {where} (C = {_g(p.get('compute'))} FLOPs): error "
                     + ("; ".join(found) or "no fit (see the notes)"))
    return lines


def write_report(result: dict, spec_data: dict | None, out: str, *, name: str = "",
                 predict: list[dict[str, Any]] = (), search_report: str | None = None) -> dict[str, Any]:
    """Plots + ``report.html`` of a scaling experiment into the local folder ``out``; returns its summary.

    Not of a transfer experiment: ``raysl analyze`` writes that one with :func:`raysl.transfer_report.write_report`
    (:func:`raysl.transfer_report.is_transfer` tells them apart)."""
    from raysl.scaling_fits import point_values_for

    spec = stored_spec(result, spec_data, name)

    def counter():
        if spec is None:
            from raysl.errors import ConfigError

            raise ConfigError(f"{name}: --predict at grid axes needs the experiment's raysl_scaling.yaml (its base "
                              "config counts N, D and FLOPs); predict at compute=... instead")
        return point_values_for(spec)

    preds = predictions(result, spec, list(predict), counter)
    plots, drawn = write_plots(result, spec, preds, out)
    summary = {"name": name, "summary": summary_line(result, preds), "plots": plots, "drawn": drawn,
               "fitted": [k for k in ("compute", "model_data", "frontier") if result.get(k)],
               "notes": list(result.get("notes") or []), "predictions": preds}
    write_html(result, summary, preds, plots, out, search_report)
    return summary
