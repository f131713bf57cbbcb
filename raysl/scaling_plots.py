"""The plots of a scaling experiment's report: one PNG per section (:data:`PLOTS`, captioned by
:data:`CAPTIONS`), drawn from ``scaling.json`` by :func:`write_plots`, and the figure helpers
:mod:`raysl.transfer_report` shares. Figures are ``matplotlib.figure.Figure`` (no pyplot), as in
:mod:`raysl.report`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from raysl import jsonio
from raysl import scaling_laws as laws
from raysl.scaling_stored import _g, _label, _level, _note_for, _short, point_text, stored_fit

PLOTS = {
    "error_vs_compute": "scaling_error_vs_compute.png",
    "slices": "scaling_slices.png",
    "frontier": "scaling_frontier.png",
    "critical_batch": "scaling_critical_batch.png",
    "worker_scaling": "scaling_workers.png",
    "trajectory": "scaling_trajectory.png",
}
CAPTIONS = {
    "error_vs_compute": "Error (1 - metric) of every run against its training FLOPs, log-log. Ringed: the runs "
                        "the E(C) fit used; line: the fitted E(C); band: its bootstrap interval; dotted: E_inf; "
                        "diamonds: predictions at compute=... with their intervals.",
    "slices": "One panel per grid axis: error against that axis, one line per value of the other axes (solid, "
              "dots: the runs); dashed, same colour: the fitted E(N, D) along that line.",
    "frontier": "Compute-optimal frontier from E(N, D) with C = k N D: the model size that reaches the lowest "
                "error per compute budget and that error, with bootstrap intervals; grey: the runs.",
    "critical_batch": "Steps against examples to reach the target error, one point per batch size; the curve is "
                      "the fitted (S / S_min - 1)(E / E_min - 1) = 1, the star its critical batch B_crit = "
                      "E_min / S_min.",
    "worker_scaling": "Training throughput against the number of workers (median images/s over the epochs "
                      "after the first) with perfect linear scaling dashed, and the parallel efficiency "
                      "(speed-up / workers).",
    "trajectory": "Error against optimizer steps, log-log: every run's evaluations (dots, one colour per model "
                  "size, solid for the smallest batch size, dashed for larger ones) and the fitted L(N, S_min) "
                  "through them (thin lines); thick: each prediction point's whole predicted curve with its "
                  "bootstrap band.",
}
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
          "tab:red", "tab:gray"]


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_error_vs_compute(result: dict, fit: laws.LawFit | None, preds: list[dict], path: str) -> dict[str, Any]:
    """Runs, fitted E(C) and its band, predictions at compute points. Returns what was drawn."""
    runs = result.get("runs") or []
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    drawn: dict[str, Any] = {"runs": 0, "curve": False, "band": False, "predictions": 0}
    if not runs:
        _message(ax, "no finished run to plot")
        _save(fig, path)
        return drawn
    axis = next(iter(result.get("grid") or {}), None)
    values = sorted({r["config"].get(axis) for r in runs}, key=_order) if axis else [None]
    used = set((result.get("compute") or {}).get("runs") or [])
    for i, value in enumerate(values):
        group = [r for r in runs if not axis or r["config"].get(axis) == value]
        label = f"{_short(axis)}={group[0]['config'].get(axis)}" if axis else "runs"
        ax.scatter([r["flops"] for r in group], [r["error"] for r in group], color=COLORS[i % len(COLORS)], s=36,
                   zorder=3, label=label)
        drawn["runs"] += len(group)
    ringed = [r for r in runs if r["trial_id"] in used]
    if ringed:
        ax.scatter([r["flops"] for r in ringed], [r["error"] for r in ringed], facecolors="none", edgecolors="k",
                   s=110, lw=1.2, zorder=4, label=f"used by the E(C) fit ({result['compute'].get('points')})")
    flops = [r["flops"] for r in runs]
    at = [p["compute"] for p in preds if p.get("compute") and "error_compute" in p]
    lo_c, hi_c = min(flops + at) / 2, max(flops + at) * 2
    if fit is not None:
        grid = np.logspace(math.log10(lo_c), math.log10(hi_c), 200)
        ax.plot(grid, laws.law_value(fit, fit.params, C=grid), color="k", lw=1.8, zorder=5,
                label=laws.FORMULAS["compute"] + ", fitted")
        drawn["curve"] = True
        if len(fit.samples):
            _, lo, hi = laws.predict(fit, C=grid)
            ax.fill_between(grid, lo, hi, color="0.5", alpha=0.25, lw=0, zorder=1,
                            label=f"{_level(result)} bootstrap band ({len(fit.samples)} refits)")
            drawn["band"] = True
        if fit.params["E_inf"] > 0:
            ax.axhline(fit.params["E_inf"], color="0.4", ls=":", lw=1, label=f"E_inf = {_g(fit.params['E_inf'])}")
        p = fit.params
        ax.set_title(f"E(C) = {_g(p['E_inf'], 3)} + {_g(p['a'], 3)} C^-{_g(p['b'], 3)}", fontsize=10)
    else:
        ax.set_title(_note_for(result, "E(C)"), fontsize=8, wrap=True)
    for p in preds:
        if "error_compute" not in p or p["error_compute"][0] is None:
            continue
        med, lo, hi = p["error_compute"]
        yerr = None if lo is None or hi is None else [[med - lo], [hi - med]]
        ax.errorbar([p["compute"]], [med], yerr=yerr, fmt="D", color="tab:red", ms=7, capsize=4, zorder=6,
                    label="prediction" if not drawn["predictions"] else None)
        drawn["predictions"] += 1
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs (C)")
    ax.set_ylabel(f"error ({result.get('error', '1 - metric')})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)
    return drawn


def _order(value: Any) -> tuple:
    """Sort key for grid values of any type: numbers by value, then anything else by text."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, float(value), "") if numeric else (1, 0.0, str(value))


def _groups(runs: list[dict], axis: str, others: list[str]) -> list[tuple[dict, list[dict]]]:
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for r in runs:
        label = {k: r["config"].get(k) for k in others}
        groups.setdefault(jsonio.key(label), (label, []))[1].append(r)
    return sorted(groups.values(), key=lambda g: tuple(_order(v) for v in g[0].values()))


def _panels(n: int, max_cols: int, size: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure of ``n`` panels, at most ``max_cols`` a row, each ``size`` inches; the grid's spare panels hidden."""
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def plot_slices(result: dict, fit: laws.LawFit | None, path: str) -> dict[str, Any]:
    """Error against each grid axis, one line per value of the other axes, with the fitted E(N, D)."""
    runs = result.get("runs") or []
    axes_keys = list(result.get("grid") or {})
    n = max(1, len(axes_keys))
    fig, axes = _panels(n, 3, (5.4, 4.4))
    drawn: dict[str, Any] = {"panels": [], "fit_lines": 0}
    if not runs or not axes_keys:
        _message(axes[0], "no finished run to plot")
        _save(fig, path)
        return drawn
    for ax, axis in zip(axes, axes_keys):
        others = [k for k in axes_keys if k != axis]
        values = [r["config"].get(axis) for r in runs]
        numeric = _numeric(values)
        order = sorted(set(values), key=_order)
        log_x = numeric and min(values) > 0 and max(values) / min(values) >= 4
        for i, (label, group) in enumerate(_groups(runs, axis, others)):
            color = COLORS[i % len(COLORS)]
            group = sorted(group, key=lambda r: order.index(r["config"].get(axis)))
            xs = [r["config"].get(axis) if numeric else order.index(r["config"].get(axis)) for r in group]
            ax.plot(xs, [r["error"] for r in group], "o-", color=color, lw=1.4, ms=5, label=_label(label))
            if fit is None:
                continue
            if numeric and len(group) >= 2 and len(set(xs)) == len(xs):
                # N and D between the runs: log-linear in the axis (N ~ width^2, D ~ fraction, epochs)
                tx = np.log(np.asarray(xs, float)) if log_x else np.asarray(xs, float)
                dense = np.linspace(tx.min(), tx.max(), 60)
                log_n = np.interp(dense, tx, np.log([r["n_params"] for r in group]))
                log_d = np.interp(dense, tx, np.log([r["train_images"] for r in group]))
                ax.plot(np.exp(dense) if log_x else dense, laws.law_value(fit, fit.params, N=np.exp(log_n),
                                                                          D=np.exp(log_d)),
                        "--", color=color, lw=1.2, alpha=0.9)
            else:
                ax.plot(xs, laws.law_value(fit, fit.params, N=[r["n_params"] for r in group],
                                           D=[r["train_images"] for r in group]),
                        "x", color=color, ms=8)
            drawn["fit_lines"] += 1
        if log_x:
            ax.set_xscale("log")
        if numeric:
            ax.set_xticks(order)
            ax.set_xticklabels([f"{v:g}" for v in order])
            ax.minorticks_off()
        else:
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels([str(v) for v in order], rotation=15, fontsize=8)
        errors = [r["error"] for r in runs]
        # power laws are straight lines on log-log; a narrow range reads better linear
        if max(errors) / min(errors) >= 3:
            ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("error")
        ax.set_title(f"error vs {_short(axis)}" + ("" if fit is not None else " (no E(N, D) fit)"), fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best", title="E(N, D) fit: dashed" if fit is not None else None,
                  title_fontsize=7)
        drawn["panels"].append(axis)
    _save(fig, path)
    return drawn


def plot_frontier(result: dict, path: str) -> dict[str, Any]:
    """N_opt(C) and E_opt(C) with intervals; the runs in grey."""
    frontier = result.get("frontier")
    runs = result.get("runs") or []
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    if not frontier or not frontier.get("points"):
        _message(left, "no compute-optimal frontier: it needs the E(N, D) fit\n(" +
                 _note_for(result, "E(N, D)") + ")")
        right.set_visible(False)
        _save(fig, path)
        return {"points": 0}
    pts = frontier["points"]
    c = [p["compute"] for p in pts]
    for ax, key, run_key, label in ((left, "N_opt", "n_params", "N_opt (backbone parameters)"),
                                    (right, "E_opt", "error", "E_opt (error at N_opt)")):
        ax.scatter([r["flops"] for r in runs], [r[run_key] for r in runs], color="0.6", s=25, label="runs")
        mid = [p[key] for p in pts]
        bars = [p.get(f"{key}_interval") for p in pts]
        if all(b and None not in b for b in bars):
            yerr = [[m - b[0] for m, b in zip(mid, bars)], [b[1] - m for m, b in zip(mid, bars)]]
            yerr = np.clip(np.asarray(yerr, float), 0, None)
        else:
            yerr = None
        ax.errorbar(c, mid, yerr=yerr, fmt="s-", color="tab:green", capsize=4, ms=6,
                    label=f"{key} ({_level(result)} interval)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute budget C (FLOPs)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    left.set_title(f"C = k N D, k = {_g(frontier.get('k'))} FLOPs per parameter per image", fontsize=9)
    _save(fig, path)
    return {"points": len(pts)}


def plot_critical_batch(result: dict, path: str) -> dict[str, Any]:
    """Steps vs examples per group, with the fitted hyperbola and B_crit."""
    entries = result.get("critical_batch") or []
    fig = Figure(figsize=(6.8, 4.8))
    ax = fig.subplots()
    fitted = 0
    for i, cb in enumerate(entries):
        color = COLORS[i % len(COLORS)]
        pts = cb.get("runs") or []
        label = f"{_label(cb['group'])}: error {_g(cb['target_error'], 3)}"
        if cb.get("B_crit") is not None:
            label += f", B_crit = {_g(cb['B_crit'])}"
        if pts:
            ax.scatter([p["steps"] * p["batch_size"] for p in pts], [p["steps"] for p in pts], color=color, s=40,
                       zorder=3, label=label)
            for p in pts:
                ax.annotate(f"B={p['batch_size']}", (p["steps"] * p["batch_size"], p["steps"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        s_min, e_min = cb.get("S_min"), cb.get("E_min")
        if s_min and e_min and pts:
            bs = np.logspace(math.log10(min(p["batch_size"] for p in pts) / 4),
                             math.log10(max(p["batch_size"] for p in pts) * 4), 100)
            steps = s_min + e_min / bs
            ax.plot(steps * bs, steps, color=color, lw=1.3)
            ax.plot([2 * e_min], [2 * s_min], "*", color=color, ms=14, mec="k")  # at B_crit: S = 2 S_min
            fitted += 1
    if not entries:
        _message(ax, "no batch-size axis with two or more values")
    elif not any(cb.get("runs") for cb in entries):
        _message(ax, "no run reached the target error: " + "; ".join(cb.get("note") or "" for cb in entries))
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("examples to the target error (E = S B)")
        ax.set_ylabel("optimizer steps to the target error (S)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    _save(fig, path)
    return {"groups": len(entries), "fitted": fitted}


def plot_worker_scaling(result: dict, path: str) -> dict[str, Any]:
    """images/s and parallel efficiency against scale.num_workers, one line per group."""
    entries = [e for e in result.get("worker_scaling") or [] if e.get("rows")]
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    if not entries:
        notes = "; ".join(e.get("note") or "" for e in result.get("worker_scaling") or [])
        _message(left, "no worker scaling: " + (notes or "scale.num_workers is not a grid axis"))
        right.set_visible(False)
        _save(fig, path)
        return {"groups": 0}
    workers_seen: set[int] = set()
    for i, e in enumerate(entries):
        color = COLORS[i % len(COLORS)]
        rows = e["rows"]
        w = [r["num_workers"] for r in rows]
        workers_seen.update(w)
        ref = next(r for r in rows if r["num_workers"] == e["reference_workers"])
        left.plot(w, [r["images_per_s"] for r in rows], "o-", color=color, label=_label(e["group"]))
        left.plot(w, [ref["images_per_s"] * x / ref["num_workers"] for x in w], "--", color=color, alpha=0.5,
                  label="linear scaling" if i == 0 else None)
        right.plot(w, [r["efficiency"] for r in rows], "o-", color=color, label=_label(e["group"]))
    right.axhline(1.0, color="0.4", ls="--", lw=1)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(workers_seen))
        ax.set_xticklabels([str(x) for x in sorted(workers_seen)])
        ax.minorticks_off()
        ax.set_xlabel("scale.num_workers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    left.set_ylabel("images/s (median over epochs after the first)")
    right.set_ylabel("parallel efficiency = speed-up / workers")
    right.set_ylim(bottom=0)
    _save(fig, path)
    return {"groups": len(entries)}


def plot_trajectory(result: dict, preds: list[dict], path: str) -> dict[str, Any]:
    """Each run's error curve with the fitted law's curve, and every predicted whole curve with its band."""
    from raysl import trajectory as traj

    fit = result.get("trajectory") or {}
    fig = Figure(figsize=(7.2, 5.0))
    ax = fig.subplots()
    runs = {r["trial_id"]: r for r in result.get("runs") or []}
    used = [runs[t] for t in fit.get("runs", []) if t in runs and runs[t].get("curve")]
    sizes = sorted({r["n_params"] for r in used})
    batches = sorted({int((r.get("config") or {}).get("optim.batch_size") or 0) for r in used})
    drawn = 0
    for r in used:
        color = COLORS[sizes.index(r["n_params"]) % len(COLORS)]
        batch = int((r.get("config") or {}).get("optim.batch_size") or 0)
        style = "-" if batch == batches[0] else "--"
        steps = [s for s, _ in r["curve"]]
        ax.plot(steps, [e for _, e in r["curve"]], "o", color=color, ms=3, alpha=0.7)
        stored = _stored_trajectory(fit)
        if stored is not None and batch:
            ax.plot(steps, traj.predict_trajectory(stored, r["n_params"], batch, steps)["value"], style,
                    color=color, lw=0.8, label=f"N = {_g(r['n_params'], 3)}, B = {batch}")
        drawn += 1
    for i, p in enumerate(q for q in preds if q.get("trajectory")):
        curve = p["trajectory"]
        color = COLORS[(len(sizes) + i) % len(COLORS)]
        ax.plot(curve["steps"], curve["value"], "-", color=color, lw=2.4,
                label=f"predicted {point_text(p['point'])} (N = {_g(p['n_params'], 3)}, B = {p['batch_size']})")
        if curve.get("low"):
            ax.fill_between(curve["steps"], curve["low"], curve["high"], color=color, alpha=0.2)
        drawn += 1
    if not drawn:
        if fit:  # fitted, but scaling.json holds no curve of its runs, and no prediction has one
            _message(ax, "no curve to draw: scaling.json holds no evaluations of the runs the trajectory law was "
                         "fitted on")
        else:  # the note of a fit that failed ("trajectory L(N, S_min) not fitted: ..."), else it was not asked for
            _message(ax, next((n for n in result.get("notes") or [] if n.startswith("trajectory")),
                              "no trajectory fit: fit.trajectory is off"))
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer steps (S)")
        ax.set_ylabel(f"error ({result.get('error', '1 - metric')})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    _save(fig, path)
    return {"runs": len(used), "predictions": sum(1 for q in preds if q.get("trajectory"))}


def _stored_trajectory(fit: dict):
    """The fitted trajectory law from scaling.json (its theta and centre, or an older file's constants; no
    bootstrap samples: the curve only); None where the stored fit cannot be rebuilt."""
    from raysl import trajectory as traj

    try:
        return traj.from_dict(fit)
    except (TypeError, ValueError):
        return None


def write_plots(result: dict, spec, preds: list[dict], out: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Write the PNGs that apply into ``out``: ({plot key: file name}, what each drew)."""
    grid = result.get("grid") or {}
    compute_fit = stored_fit(result, "compute", spec)
    model_data_fit = stored_fit(result, "model_data", spec)
    plots: dict[str, str] = {}
    drawn: dict[str, Any] = {}

    def emit(key: str, draw: Callable[[str], Any]) -> None:
        drawn[key] = draw(os.path.join(out, PLOTS[key]))
        plots[key] = PLOTS[key]

    emit("error_vs_compute", lambda p: plot_error_vs_compute(result, compute_fit, preds, p))
    emit("slices", lambda p: plot_slices(result, model_data_fit, p))
    emit("frontier", lambda p: plot_frontier(result, p))
    if "optim.batch_size" in grid:
        emit("critical_batch", lambda p: plot_critical_batch(result, p))
    if "scale.num_workers" in grid:
        emit("worker_scaling", lambda p: plot_worker_scaling(result, p))
    if result.get("trajectory") or any(p.get("trajectory") for p in preds):
        emit("trajectory", lambda p: plot_trajectory(result, preds, p))
    return plots, drawn
