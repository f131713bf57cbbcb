"""Search small, train big (issue 27): a hyperparameter search at each budget of a scaling grid, then the best
value of each searched hyperparameter as a power law of compute, and a run config at a larger budget.

A scaling file with ``search:`` (raysl.scaling; the file format is in docs/scaling.md) is a transfer experiment:
``raysl scale`` (:mod:`raysl.scale`) runs one ``raysl tune`` search (Optuna, ASHA allowed) per grid point, one
after another, each in ``<experiment>/budget_<i>/``. This module is what needs no Ray:

- :func:`read_budget_trials`: a finished budget's trials (status, objective, searched values, FLOPs);
- :func:`fit_transfer`: each budget's near-optimal trials (objective within ``fit.margin`` of its best, among
  the trials that trained the whole budget) and, per numeric hyperparameter, ``h_opt(C) = a C^b`` through
  them with a bootstrap interval over budgets (:mod:`raysl.hp_transfer`); a categorical one gets the value
  most frequent among the near-optimal trials of the largest budget (no law: a choice has no power of C);
- :func:`predict_at_point`: the predicted value of each at a compute (``compute=...``, or grid keys counted
  in FLOPs), and the run config there (:func:`write_predicted_configs`, what ``raysl train`` accepts);
- :func:`format_transfer`: the report text; ``raysl analyze`` (raysl.transfer_report) reads the same
  ``scaling.json`` key again for its plots.

A budget's compute is the training FLOPs of its grid point with the base's values of the searched keys
(raysl.flops, as ``raysl scale`` counts every run). A trial's own FLOPs are kept beside it: searching
``optim.batch_size`` changes them a little (each epoch drops its last incomplete batch).
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from functools import partial
from typing import Any, Callable

from raysl import hp_transfer as hp
from raysl import jsonio, storage
from raysl.config_load import set_dotted
from raysl.console import format_number
from raysl.space import Param, apply_sample, walk

RESULT_KEY = "transfer"  # scaling.json's key of a transfer experiment's fits and predictions
BUDGET_DONE_FILE = "raysl_budget.json"  # in a budget's folder once its search has ended: --resume skips it
SCALED_AXIS = "optim.epochs"  # a compute=... prediction's config: the largest budget's, this axis scaled


def budget_dir(index: int) -> str:
    return f"budget_{index}"


def config_file(index: int) -> str:
    return f"predicted_config_{index}.yaml"


# --------------------------------------------------------------------------
# the searched hyperparameters


def param_info(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    """Each searched key once (a key in several ``when:`` branches has one distribution), as plain data."""
    out, seen = [], set()
    for p in walk(params):
        if p.key in seen:
            continue
        seen.add(p.key)
        out.append({"key": p.key, "kind": p.kind, "log": p.log, "low": p.low, "high": p.high,
                    "choices": list(p.choices)})
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_numeric(info: dict[str, Any]) -> bool:
    """A power law can be fitted: a range, or a choice of positive numbers (a batch size)."""
    if info["kind"] != "choice":
        return True
    return all(is_number(c) and c > 0 for c in info["choices"])


def is_integer(info: dict[str, Any]) -> bool:
    if info["kind"] == "int":
        return True
    return info["kind"] == "choice" and all(isinstance(c, int) and not isinstance(c, bool) for c in info["choices"])


def searched_range(info: dict[str, Any]) -> list[float] | None:
    if info["kind"] == "choice":
        return [min(info["choices"]), max(info["choices"])] if is_numeric(info) else None
    return [info["low"], info["high"]]


# --------------------------------------------------------------------------
# reading a finished budget


def read_budget_trials(location: str, metric: str, keys: list[str]) -> list[dict[str, Any]]:
    """One dict per trial of the budget's experiment at ``location``: ``trial_id``, ``status``, ``epochs``,
    ``score`` (its last measured ``metric``, None when none), ``flops`` (its run's training FLOPs, as
    reported), ``values`` (the searched keys it sampled) and ``eligible``: it trained the whole budget
    (``finished``) and has a score. Only eligible trials can be near-optimal: a trial ASHA stopped was
    measured on fewer epochs than its budget."""
    from raysl.results import flatten, load_experiments

    exp = load_experiments(location)[0]
    history = exp.history
    out = []
    for _, row in exp.trials.iterrows():
        config = flatten(row["config"] or {})
        rows = history[history["trial_id"] == row["trial_id"]] if not history.empty else history
        flops = None
        if "flops" in rows:
            reported = [v for v in rows["flops"] if is_number(v)]
            flops = float(reported[-1]) if reported else None
        score = row["objective_final"] if exp.metric == metric else row.get(metric)
        score = float(score) if is_number(score) else None
        status = str(row["status"])
        epochs = row["epochs"]
        out.append({"trial_id": str(row["trial_id"]), "status": status,
                    "epochs": int(epochs) if is_number(epochs) else 0,
                    "score": score, "flops": flops,
                    "values": {k: config[k] for k in keys if k in config},
                    "eligible": status == "finished" and score is not None})
    return out


# --------------------------------------------------------------------------
# the fits (pure)


def mark_near_optimal(trials: list[dict[str, Any]], mode: str, margin: float) -> list[dict[str, Any]]:
    """Set each trial's ``near_optimal``: eligible and within ``margin`` of the budget's best eligible score
    (:func:`raysl.hp_transfer.near_optimal`). Returns the near-optimal ones, best first."""
    eligible = [i for i, t in enumerate(trials) if t.get("eligible")]
    kept = {int(i) for i in hp.near_optimal(eligible, [trials[i]["score"] for i in eligible], mode=mode,
                                             margin=margin)}
    for i, t in enumerate(trials):
        t["near_optimal"] = i in kept
    best_first = sorted(kept, key=lambda i: trials[i]["score"], reverse=mode == "max")
    return [trials[i] for i in best_first]


def _by_compute(budgets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The budgets, largest compute first (the grid's order among equal computes)."""
    return sorted(budgets, key=lambda b: -float(b["compute"]))


def fit_transfer(budgets: list[dict[str, Any]], params: list[dict[str, Any]], *, mode: str = "max",
                 margin: float = hp.DEFAULT_MARGIN, n_bootstrap: int = hp.DEFAULT_BOOTSTRAP,
                 level: float = hp.DEFAULT_LEVEL, seed: int = 0) -> dict[str, Any]:
    """Fit every searched hyperparameter over the budgets.

    ``budgets``: ``{"index", "point", "compute", "epochs", "trials": [read_budget_trials' dicts]}`` (each trial gets
    ``near_optimal``); ``params``: :func:`param_info`. Returns the ``transfer`` entry of scaling.json:
    ``budgets`` (with each one's best trial and near-optimal count), ``params`` (per key: ``law``, the
    fitted :class:`raysl.hp_transfer.HPLaw` with its bootstrap samples, or ``categorical``, or a ``note``
    saying why neither), ``notes``."""
    notes: list[str] = []
    out_budgets = []
    for budget in budgets:
        near = mark_near_optimal(budget["trials"], mode, margin)
        eligible = [t for t in budget["trials"] if t["eligible"]]
        entry = {**budget, "finished": len(eligible), "near_optimal": len(near),
                 "best": ({"trial_id": near[0]["trial_id"], "score": near[0]["score"], "values": near[0]["values"]}
                          if near else None)}
        if not near:
            notes.append(f"budget {budget['index']} ({_point_text(budget['point'])}): no trial trained the whole "
                         f"budget with a measured objective ({len(budget['trials'])} trials); it is left out of the "
                         "fits")
        out_budgets.append(entry)
    fitted = []
    for info in params:
        fitted.append(_fit_param(info, out_budgets, mode, margin, n_bootstrap, level, seed))
    return {"mode": mode, "margin": margin, "level": level, "budgets": out_budgets, "params": fitted,
            "notes": notes}


def _fit_param(info: dict[str, Any], budgets: list[dict[str, Any]], mode: str, margin: float, n_bootstrap: int,
               level: float, seed: int) -> dict[str, Any]:
    key = info["key"]
    entry: dict[str, Any] = {**info, "numeric": is_numeric(info), "integer": is_integer(info)}
    if not entry["numeric"]:
        entry["categorical"] = _most_frequent(key, budgets, mode)
        if entry["categorical"] is None:
            entry["note"] = f"{key}: no near-optimal trial of any budget sampled it"
        return entry
    compute, values, scores = [], [], []
    for budget in budgets:
        have = [t for t in budget["trials"] if t["eligible"] and is_number(t["values"].get(key))]
        compute.append(float(budget["compute"]))
        values.append([float(t["values"][key]) for t in have])
        scores.append([t["score"] for t in have])
    try:
        law = hp.fit_hp_law(key, compute, values, scores, mode=mode, margin=margin, n_bootstrap=n_bootstrap,
                            level=level, seed=seed)
        entry["law"] = law.to_dict(samples=True)
    except ValueError as exc:
        entry["law"] = None
        entry["note"] = f"{key}: no power law: {exc}"
        entry["fallback"] = _largest_best(key, budgets)
    return entry


def _most_frequent(key: str, budgets: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The value most frequent among the near-optimal trials of the largest budget that has any that sampled
    ``key`` (a tie goes to the value of the best of them); ``counts``: [value, count] per value, best first."""
    for budget in _by_compute(budgets):
        near = [t for t in budget["trials"] if t.get("near_optimal") and key in t["values"]]
        if not near:
            continue
        near.sort(key=lambda t: t["score"], reverse=mode == "max")  # best first
        counts = Counter(jsonio.dumps(t["values"][key]) for t in near)
        top = max(counts.values())
        value = next(t["values"][key] for t in near if counts[jsonio.dumps(t["values"][key])] == top)
        distinct: dict[str, Any] = {}
        for t in near:
            distinct.setdefault(jsonio.dumps(t["values"][key]), t["values"][key])
        return {"value": value, "budget": budget["index"], "compute": float(budget["compute"]), "count": top,
                "near_optimal": len(near), "counts": [[v, counts[k]] for k, v in distinct.items()]}
    return None


def _largest_best(key: str, budgets: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A numeric key with no law: the value of the best near-optimal trial of the largest budget that has one."""
    for budget in _by_compute(budgets):
        best = budget.get("best")
        if best and is_number(best["values"].get(key)):
            return {"value": best["values"][key], "budget": budget["index"], "compute": float(budget["compute"])}
    return None


# --------------------------------------------------------------------------
# predictions


def predict_values(transfer: dict[str, Any], compute: float) -> dict[str, dict[str, Any]]:
    """Each searched key's predicted value at ``compute``: ``value``, ``interval`` (the law's bootstrap
    interval), ``how`` (``law`` | ``most frequent`` | ``largest budget's best``), ``config_value`` (an int
    key rounded), ``outside_range`` (beyond the searched range: an extrapolation of the law)."""
    out: dict[str, dict[str, Any]] = {}
    for info in transfer["params"]:
        key = info["key"]
        if info.get("law"):
            pred = hp.predict_hp(hp.HPLaw.from_dict(info["law"]), compute)
            entry = {"value": pred["value"], "interval": pred.get("interval"), "how": "law"}
        elif info.get("categorical"):
            cat = info["categorical"]
            entry = {"value": cat["value"], "interval": None, "how": "most frequent",
                     "budget": cat["budget"], "count": cat["count"], "near_optimal": cat["near_optimal"]}
        elif info.get("fallback"):
            entry = {"value": info["fallback"]["value"], "interval": None, "how": "largest budget's best",
                     "budget": info["fallback"]["budget"]}
        else:
            continue  # no trial to take a value from: the config keeps the base's
        value = entry["value"]
        if info["numeric"] and is_number(value):
            entry["config_value"] = max(1, int(round(value))) if info["integer"] else float(value)
            bounds = searched_range(info)
            entry["outside_range"] = bool(bounds) and not bounds[0] <= value <= bounds[1]
            entry["range"] = bounds
        else:
            entry["config_value"] = value
        out[key] = entry
    return out


def largest_budget(transfer: dict[str, Any]) -> dict[str, Any]:
    """The budget of the largest compute (the first such in the grid's order)."""
    return _by_compute(transfer["budgets"])[0]


def predict_at_point(transfer: dict[str, Any], point: dict[str, Any],
                     point_values: Callable[[dict], tuple[float, float, float]] | None) -> dict[str, Any]:
    """A prediction at ``{compute: C}`` or at grid keys (counted in FLOPs by ``point_values(point) -> (N, D,
    C)``, raysl.scaling_fits.point_values_for), with the grid values of its run config (``config_point``) and that
    config's own compute (``config_compute``; None without a counter).

    ``compute=C``: the config is the largest budget's grid point with ``optim.epochs`` scaled by C / its
    compute (a run's FLOPs are linear in its epochs), a whole number of epochs >= 1: its compute can differ
    from C by the rounding, and says so. Grid keys: the config is base: with those keys (the others at the
    base's values, as raysl scale's error predictions count them)."""
    entry: dict[str, Any] = {"point": dict(point)}
    if "compute" in point:
        compute = float(point["compute"])
        big = largest_budget(transfer)
        epochs_now = int(big["epochs"])  # the budget's optim.epochs (a grid axis or the base's)
        epochs = max(1, int(round(epochs_now * compute / float(big["compute"]))))
        entry["config_point"] = {**big["point"], SCALED_AXIS: epochs}
        entry["config_from"] = (f"budget {big['index']} ({_point_text(big['point'])}), {SCALED_AXIS} "
                                f"{epochs_now} -> {epochs}")
    else:
        if point_values is None:
            raise ValueError("a prediction at grid keys needs the FLOP counter of the scaling file's base")
        n_params, images, compute = point_values(point)
        entry.update(n_params=n_params, train_images=images)
        entry["config_point"] = dict(point)
        entry["config_from"] = "base: with " + _point_text(point)
    entry["compute"] = compute
    entry["config_compute"] = None
    if point_values is not None:
        entry["config_compute"] = (compute if "compute" not in point else
                                   float(point_values(entry["config_point"])[2]))
    entry["values"] = predict_values(transfer, compute)
    return entry


def predicted_config_tree(base: dict, config_point: dict[str, Any], values: dict[str, dict[str, Any]]) -> dict:
    """``base`` with the grid values and the predicted hyperparameters (``method.name`` first, as a trial's)."""
    tree = base
    for key, value in config_point.items():
        tree = set_dotted(tree, key, value)
    return apply_sample(tree, {key: v["config_value"] for key, v in values.items()})


def write_predicted_configs(experiment: str, base: dict, predictions: list[dict[str, Any]], source: str) -> None:
    """Write each prediction's run config as ``predicted_config_<i>.yaml`` in the experiment folder (each
    ``config`` set to where); a config the values make invalid gets ``config_error`` instead."""
    from raysl.config_load import to_yaml
    from raysl.errors import ConfigError
    from raysl.run_config import build_config

    for i, entry in enumerate(predictions):
        where = storage.join_uri(experiment, config_file(i))
        try:
            cfg = build_config(predicted_config_tree(base, entry["config_point"], entry["values"]),
                               f"{source}: predicted config at {_point_text(entry['point'])}")
        except ConfigError as exc:
            entry["config"] = None
            entry["config_error"] = " ".join(str(exc).split())
            continue
        storage.write_atomic(where, config_header(entry, experiment) + to_yaml(cfg), option="--storage")
        entry["config"] = where


def config_header(entry: dict[str, Any], experiment: str) -> str:
    lines = [f"# predicted by raysl scale (search small, train big) from {experiment}",
             f"# at {_point_text(entry['point'])}: C = {_g(entry['compute'])} training FLOPs",
             f"# grid values: {entry['config_from']}"
             + (f"; this config trains {_g(entry['config_compute'])} FLOPs" if entry.get("config_compute") else "")]
    for key, v in entry["values"].items():
        lines.append(f"# {key}: {value_text(v)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# text


_g = partial(format_number, others_as_str=True)  # a categorical value (a str, a bool) as it is


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def value_text(v: dict[str, Any]) -> str:
    """``0.0021 [0.0012, 0.0035]`` and how it was found."""
    text = _g(v["value"])
    if v.get("interval"):
        text += f" [{_g(v['interval'][0])}, {_g(v['interval'][1])}]"
    if v["how"] == "most frequent":
        text += (f" (categorical: the most frequent among the {v['near_optimal']} near-optimal trials of budget "
                 f"{v['budget']}, {v['count']} of them)")
    elif v["how"] == "largest budget's best":
        text += f" (no law: the best trial's value in budget {v['budget']})"
    if v.get("config_value") is not None and v.get("config_value") != v["value"]:
        text += f", {v['config_value']} in the config"
    if v.get("outside_range"):
        text += f", outside the searched range [{_g(v['range'][0])}, {_g(v['range'][1])}]"
    return text


def format_transfer(transfer: dict[str, Any], predictions: list[dict[str, Any]], metric: str) -> str:
    pct = f"{100 * transfer['level']:g}%"
    lines = [f"search small, train big: {len(transfer['budgets'])} budgets; near-optimal = {metric} within "
             f"{100 * transfer['margin']:g}% of the budget's best, among the trials that trained the whole budget"]
    for b in transfer["budgets"]:
        best = b.get("best")
        lines.append(f"  budget {b['index']} {_point_text(b['point'])} (C = {_g(b['compute'])} FLOPs): "
                     f"{len(b['trials'])} trials, {b['finished']} finished, {b['near_optimal']} near-optimal"
                     + (f", best {metric} {_g(best['score'])} at " + ", ".join(f"{k}={_g(v)}" for k, v in
                                                                               best["values"].items())
                        if best else ""))
    for info in transfer["params"]:
        law = info.get("law")
        if law:
            a_lo, a_hi = law["intervals"].get("a", (None, None))
            b_lo, b_hi = law["intervals"].get("b", (None, None))
            lines.append(f"{info['key']}_opt(C) = a C^b: a = {_g(law['a'])} {pct} [{_g(a_lo)}, {_g(a_hi)}], "
                         f"b = {_g(law['b'])} [{_g(b_lo)}, {_g(b_hi)}] ({len(law['budgets'])} budgets)")
        elif info.get("categorical"):
            cat = info["categorical"]
            lines.append(f"{info['key']} (categorical, no law): {_g(cat['value'])}, the most frequent among the "
                         f"{cat['near_optimal']} near-optimal trials of budget {cat['budget']} ({cat['count']} of "
                         "them)")
        if info.get("note"):
            lines.append(f"  {info['note']}")
    for p in predictions:
        lines.append(f"predict {_point_text(p['point'])} (C = {_g(p['compute'])} FLOPs): "
                     + ("; ".join(f"{k} {value_text(v)}" for k, v in p["values"].items()) or "no values"))
        if p.get("config"):
            lines.append(f"  config: {p['config']} ({p['config_from']}"
                         + (f"; it trains {_g(p['config_compute'])} FLOPs" if p.get("config_compute") else "")
                         + ")")
        elif p.get("config_error"):
            lines.append(f"  no config: {p['config_error']}")
    lines += [f"note: {n}" for n in transfer.get("notes", [])]
    return "\n".join(lines)
