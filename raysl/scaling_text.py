"""A scaling experiment's fits as text: what ``raysl scale`` prints after fitting (:func:`format_report`) and a
predicted curve as CSV (:func:`trajectory_csv`).

The fits and predictions themselves are :mod:`raysl.scaling` (this module reads the ``scaling.json`` mapping
they produce and imports nothing of raysl but :func:`raysl.console.format_number`); the HTML report and plots of
the same fits are :mod:`raysl.scaling_report`, which uses :func:`critical_batch_bound` for the same words.
"""

from __future__ import annotations

from typing import Any

from raysl.console import format_number as _g


def critical_batch_bound(cb: dict[str, Any]) -> str:
    """What an end-point critical-batch fit says when its runs do not determine ``B_crit`` (``bound``)."""
    batches = [r["batch_size"] for r in cb.get("runs") or []]
    if cb["bound"] == "above":
        return (f"B_crit above the largest batch size run ({_g(max(batches, default=None))}): the steps to the "
                f"target fell in proportion to 1 / B over every batch size, so S_min and B_crit are not determined "
                f"(E_min = {_g(cb.get('E_min'))} examples); add a larger batch size")
    return (f"B_crit below the smallest batch size run ({_g(min(batches, default=None))}): the steps to the target "
            f"did not fall with the batch, so E_min and B_crit are not determined (S_min = {_g(cb.get('S_min'))} "
            f"steps); add a smaller batch size")


def format_report(result: dict, level: float) -> str:
    pct = f"{100 * level:g}%"
    lines = []
    for key in ("compute", "model_data"):
        fit = result.get(key)
        if not fit:
            continue
        extra = f", fitted on {fit['points']}" if key == "compute" else f" (N = {fit['N']}, D = {fit['D']})"
        lines.append(f"{fit['formula']}: {fit['n_runs']} runs{extra}, rms log residual {fit['rmse_log']:.3g}")
        if fit.get("outlier_runs"):
            lines.append(f"  outlier runs (log residual far beyond the others'): {', '.join(fit['outlier_runs'])}")
        for name, value in fit["params"].items():
            lo, hi = fit["intervals"][name]
            lines.append(f"  {name:6s} = {_g(value):>10s}   {pct} [{_g(lo)}, {_g(hi)}]")
    frontier = result.get("frontier")
    if frontier:
        lines.append(f"compute-optimal frontier (C = k N D, k = {frontier['k']:.4g} FLOPs per parameter per image):")
        for p in frontier["points"]:
            lo, hi = p["N_opt_interval"] or (None, None)
            lines.append(f"  C = {p['compute']:.3g}: N_opt = {_g(p['N_opt'])} [{_g(lo)}, {_g(hi)}], "
                         f"D_opt = {_g(p['D_opt'])}, error {_g(p['E_opt'])}")
    for cb in result.get("critical_batch", []):
        if cb.get("bound"):
            lines.append(f"critical batch size {cb['group']} at error {cb['target_error']:.3g}: "
                         f"{critical_batch_bound(cb)}")
        elif "B_crit" in cb:
            lo, hi = cb["intervals"]["B_crit"]
            lines.append(f"critical batch size {cb['group']} at error {cb['target_error']:.3g}: B_crit = "
                         f"{_g(cb['B_crit'])} {pct} [{_g(lo)}, {_g(hi)}], S_min = {_g(cb['S_min'])}, "
                         f"E_min = {_g(cb['E_min'])}")
        else:
            lines.append(f"critical batch size {cb['group']}: not fitted ({cb.get('note')})")
    for ws in result.get("worker_scaling", []):
        group = f" {ws['group']}" if ws["group"] else ""
        if "rows" not in ws:
            lines.append(f"worker scaling{group}: {ws.get('note')}")
            continue
        lines.append(f"worker scaling{group} (median images/s over epochs after the first; "
                     f"speed-up against {ws['reference_workers']} worker(s)):")
        for row in ws["rows"]:
            lines.append(f"  {row['num_workers']:3d} workers: {row['images_per_s']:10.1f} images/s, speed-up "
                         f"{row['speedup']:.2f}x, efficiency {100 * row['efficiency']:.0f}%")
    for p in result.get("predictions", []):
        where = ", ".join(f"{k}={v}" for k, v in p["point"].items())
        parts = []
        for key, run, label in (("error_model_data", "run_model_data", "E(N, D)"),
                                ("error_compute", "run_compute", "E(C)")):
            if key in p:
                med, lo, hi = p[key]
                one = f", one run [{_g(p[run][1])}, {_g(p[run][2])}]" if run in p else ""
                parts.append(f"{label} {_g(med)} [{_g(lo)}, {_g(hi)}]{one}")
        lines.append(f"predict {where} (C = {_g(p.get('compute'))} FLOPs): error " + ("; ".join(parts) or "no fit"))
    lines += _trajectory_lines(result, pct)
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def _trajectory_lines(result: dict, pct: str) -> list[str]:
    fit = result.get("trajectory")
    if not fit:
        return []
    lines = [f"{fit['law']}: {fit['n_runs']} runs, {fit['n_points']} evaluations (after the first 10% of each "
             "run's steps)"]
    if fit.get("outlier_runs"):
        names = ", ".join(fit["outlier_runs"])
        if fit.get("outliers_left_out"):
            lines.append(f"  outlier runs (left out of the fit): {names}")
        elif fit.get("outliers_kept"):  # the runs without them could not be fitted
            lines.append(f"  outlier runs (kept in the fit: leaving them out would leave {fit['outliers_kept']}): "
                         f"{names}")
        else:  # a scaling.json from before raysl said whether they were left out
            lines.append(f"  outlier runs (log residual far beyond the others'): {names}")
    if fit.get("at_bounds"):
        lines.append(f"  warning: {', '.join(fit['at_bounds'])} stopped at the edge of the fit's range: these runs "
                     "do not determine it, and the predictions below rest on it (add model sizes, batch sizes or "
                     "evaluations)")
    for name, value in fit["constants"].items():
        lo, hi = fit["intervals"][name]
        lines.append(f"  {name:8s} = {_g(value):>10s}   {pct} [{_g(lo)}, {_g(hi)}]")
    for cb in fit.get("critical_batch", []):
        lo, hi = cb.get("interval") or (None, None)
        lines.append(f"  critical batch at error {_g(cb['target'])}: B_crit = {_g(cb['B_crit'])} [{_g(lo)}, {_g(hi)}]")
    for p in result.get("predictions", []):
        curve = p.get("trajectory")
        if not curve:
            continue
        where = ", ".join(f"{k}={v}" for k, v in p["point"].items())
        ends = [(curve["steps"][i], curve["value"][i], (curve.get("low") or [None] * len(curve["steps"]))[i],
                 (curve.get("high") or [None] * len(curve["steps"]))[i]) for i in (0, len(curve["steps"]) // 2, -1)]
        lines.append(f"trajectory {where} (N = {_g(p['n_params'])}, batch {p['batch_size']}): " + ", ".join(
            f"step {_g(s)}: error {_g(v)} [{_g(lo)}, {_g(hi)}]" for s, v, lo, hi in ends))
        for answer in p.get("steps_to_target", []):
            if not answer["reachable"]:
                lines.append(f"  error {_g(answer['target'])}: not reachable: {_unreachable(answer)}")
                continue
            lo, hi = (answer.get("intervals") or {}).get("steps", (None, None))
            if answer["steps"] < 1:  # a fraction of one step: no run measures that, and its examples mean nothing
                lines.append(f"  error {_g(answer['target'])}: below it from the first step on (the law puts it at "
                             f"{_g(answer['steps'])} steps [{_g(lo)}, {_g(hi)}]: a target this run passes before "
                             "any evaluation; ask for a lower one)")
                continue
            lines.append(f"  error {_g(answer['target'])}: {_g(answer['steps'])} steps [{_g(lo)}, {_g(hi)}] = "
                         f"{_g(answer['examples'])} examples; S_min {_g(answer['S_min'])}, E_min "
                         f"{_g(answer['E_min'])}, B_crit {_g(answer['B_crit'])}")
    return lines


def _unreachable(answer: dict[str, Any]) -> str:
    """Why the trajectory law gives no step count for a target (``why``, from
    ``raysl.scaling_fits._predict_curve``)."""
    if answer.get("why") == "floor":
        return (f"the law's floor at this size, E + (N_c / N)^alpha_N, is {_g(answer.get('floor'))}, at or above "
                "it")
    if answer.get("why") == "alpha_S":
        return ("alpha_S is 0 (at the edge of its range): the fitted error does not fall with more steps, so no "
                "step count reaches it")
    return "the fitted law does not reach it at this size"  # a scaling.json from before raysl said why


def trajectory_csv(prediction: dict[str, Any]) -> str:
    """A predicted curve as CSV: step (a whole number of optimizer steps), error and its band."""
    curve = prediction["trajectory"]
    n = len(curve["steps"])
    low, high = curve.get("low") or [None] * n, curve.get("high") or [None] * n
    rows = ["step,error,low,high"] + [f"{round(s)},{v:.6g},{'' if lo is None else f'{lo:.6g}'},"
                                      f"{'' if hi is None else f'{hi:.6g}'}"
                                      for s, v, lo, hi in zip(curve["steps"], curve["value"], low, high)]
    return "\n".join(rows) + "\n"
