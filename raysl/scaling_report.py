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
Figures are ``matplotlib.figure.Figure`` (no pyplot), as in :mod:`raysl.report`.

Both kinds of experiment share what is here: reading ``scaling.json`` (:func:`read_scaling`, :func:`stored_spec`),
the printed prediction lines (:func:`prediction_lines`) and the small plot, table and page helpers that
:mod:`raysl.transfer_report` imports (this module imports nothing of it).
"""

from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Callable

import numpy as np
from matplotlib.figure import Figure

from raysl import scaling_laws as laws
from raysl import jsonio, storage
from raysl.scaling_text import critical_batch_bound

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
FROM_SCALE, FROM_ANALYZE = "raysl scale", "raysl analyze --predict"


# --------------------------------------------------------------------------
# reading and predicting


def read_scaling(location: str) -> tuple[dict, dict | None] | None:
    """(``scaling.json``, the stored scaling file as a mapping or None) of the experiment at ``location``;
    None when it holds no ``scaling.json`` (not a ``raysl scale`` experiment, or one whose fits have not run)."""
    import yaml

    from raysl.errors import RayslError
    from raysl.scaling import RESULT_FILE, SCALING_FILE

    text = storage.read_text(storage.join(location, RESULT_FILE), missing_ok=True)
    if text is None:
        return None
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RayslError(f"{storage.join_uri(location, RESULT_FILE)} is not valid JSON ({exc}); re-run "
                         "`raysl scale FILE --resume` to write it again") from None
    spec_text = storage.read_text(storage.join(location, SCALING_FILE), missing_ok=True)
    try:
        spec = yaml.safe_load(spec_text) if spec_text else None
    except yaml.YAMLError:
        spec = None
    return result, spec if isinstance(spec, dict) else None


def stored_spec(result: dict, spec_data: dict | None, name: str = ""):
    """The stored scaling file (``spec_data``, from :func:`read_scaling`) as a ``ScalingSpec``; None without one."""
    from raysl.scaling import scaling_from_dict

    spec = None
    if spec_data is not None:
        spec = scaling_from_dict(spec_data, f"{result.get('experiment', name)}/raysl_scaling.yaml")
    return spec


def stored_fit(result: dict, key: str, spec=None) -> laws.LawFit | None:
    """The fit ``key`` (``compute`` | ``model_data``) of ``scaling.json`` as a :class:`LawFit`.

    Its bootstrap samples are in the file (``raysl scale`` stores them); a file written before they were
    is refitted from its runs with the scaling file's settings (same seed: the same samples).
    """
    data = result.get(key)
    if not data:
        return None
    fit = laws.LawFit.from_dict(data)
    if len(fit.samples) or spec is None:
        return fit
    runs = result.get("runs") or []
    kw = {"n_bootstrap": spec.fit.bootstrap, "level": spec.fit.level, "seed": spec.fit.seed}
    if key == "compute":
        used = set(data.get("runs") or [r["trial_id"] for r in runs])
        points = [r for r in runs if r["trial_id"] in used]
        return laws.fit_compute_law([r["flops"] for r in points], [r["error"] for r in points], **kw)
    return laws.fit_model_data_law([r["n_params"] for r in runs], [r["train_images"] for r in runs],
                                   [r["error"] for r in runs], **kw)


def predictions(result: dict, spec, points: list[dict[str, Any]],
                point_values: Callable[[], Callable] | None = None) -> list[dict[str, Any]]:
    """The stored predictions, then one per new point in ``points`` (not already stored), from the stored fits.

    ``point_values()`` gives the ``point -> (N, D, C)`` counter of :func:`raysl.scaling.point_values_for`; it is
    called only when a point names grid axes (it reads the data set's manifest).
    """
    from raysl.scaling import predict_at

    out = [{**p, "source": FROM_SCALE} for p in result.get("predictions") or []]
    stored = [jsonio.key(p["point"]) for p in out]
    new = [p for p in points if jsonio.key(p) not in stored]
    if not new:
        return out
    fits = {key: stored_fit(result, key, spec) for key in ("compute", "model_data")}
    counter = None
    for point in new:
        if "compute" not in point and counter is None:
            counter = point_values()
        out.append({**predict_at(point, fits["compute"], fits["model_data"], counter), "source": FROM_ANALYZE})
    return out


# --------------------------------------------------------------------------
# small helpers


def _g(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    return f"{float(x):.{digits}g}"


def _interval(pair: Any) -> str:
    if not pair or any(v is None or not math.isfinite(float(v)) for v in pair):
        return "-"
    return f"[{_g(pair[0])}, {_g(pair[1])}]"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{_short(k)}={v}" for k, v in values.items()) or "all runs"


def point_text(point: dict[str, Any]) -> str:
    """``model.width=64`` / ``compute=1e+15``: a prediction point as typed."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _note_for(result: dict, prefix: str) -> str:
    return next((n for n in result.get("notes") or [] if n.startswith(prefix)), f"{prefix} not fitted")


def _level(result: dict) -> str:
    return f"{100 * float(result.get('level') or laws.DEFAULT_LEVEL):g}%"


# --------------------------------------------------------------------------
# the plots


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


# --------------------------------------------------------------------------
# the tables and the page


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
    from raysl.scaling import point_values_for

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
