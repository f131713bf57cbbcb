"""`raysl scale`: a grid of small runs as one Ray Tune experiment, then scaling-law fits.

A scaling file::

    base:                    # a complete run config (what `raysl train` accepts)
      ...
    grid:                    # axes, each a list; every combination is one run
      model.width: [4, 8, 16]
      data.fraction: [0.25, 0.5, 1.0]
      optim.batch_size: [64, 128]      # optional: a critical-batch-size fit per group
      optim.epochs: [5]
      scale.num_workers: [1, 2, 4]     # optional: images/s, speed-up and parallel efficiency per worker count
    fit:                     # all optional
      metric: knn_acc        # error = 1 - metric
      predict: [{model.width: 64}, {compute: 1e15}]
      level: 0.9             # interval level
      bootstrap: 500         # bootstrap refits
      target_error: 0.05     # critical batch size: steps to reach this error (default: one every run reaches)
      budgets: [1e13, 1e14]  # compute-optimal frontier at these FLOPs (default: 1x, 10x, 100x the largest run)
    tune:                    # all optional
      max_concurrent: 2
      max_failures: 2
      seed: 0

The grid runs through ``raysl tune``'s own machinery (the same trainable,
Tuner, storage layout, interruption and ``--resume``) as a search space with
one ``choice`` per axis, Optuna's grid sampler and no early stopping
(``scheduler: fifo``). Every report carries the run's training FLOPs
(``flops``, counted by :mod:`raysl.flops`), backbone parameters (``n_params``)
and training images seen (``train_images``) beside Tune's wall time. At the
end the pure fits of :mod:`raysl.scaling_laws` run on the finished runs and
``scaling.json`` is written into the experiment folder: the scaling file and
the fits are :mod:`raysl.scaling` (which ``raysl analyze`` reads a finished
scaling experiment with, without Ray), the report text
:mod:`raysl.scaling_text`; this module is what runs the grid.

With a ``search:`` section (and raysl tune's own ``tune:``) the file is a
transfer experiment, "search small, train big" (:func:`transfer_main`): each
grid point is a budget searched by ``raysl tune``'s machinery
(:func:`raysl.search.run_search`: one Tune experiment and one Optuna study in
``<experiment>/budget_<i>/``), one budget after another; then the fits of
:mod:`raysl.transfer` (``h_opt(C) = a C^b`` per searched hyperparameter) and
a run config per prediction point.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import yaml

from raysl import jsonio
from raysl.config import RunConfig
from raysl.data.locate import resolve_data_dir
from raysl.errors import ConfigError
from raysl.scaling import SCALING_FILE, grid_points, load_scaling
from raysl.scaling_fits import collect_runs, fit_all, point_values_for, write_result
from raysl.scaling_text import format_report, trajectory_csv

if TYPE_CHECKING:  # raysl.search_options imports Ray Tune: scale_main imports it when it runs
    from raysl.search_options import SearchOptions


# --------------------------------------------------------------------------
# per-trial values (run inside each Tune trial: a module-level function pickles)


def trial_flops(cfg: RunConfig, data_dir: str) -> dict[str, Any]:
    """``flops`` (training FLOPs of the whole run), ``n_params`` (backbone), ``train_images`` (D)."""
    from raysl.data.read.dataset import global_crop_size
    from raysl.data.read.shards import load_manifest
    from raysl.data.read.subset import train_rows
    from raysl.flops import run_flops

    manifest = load_manifest(data_dir)
    rows = train_rows(data_dir, manifest, cfg.data.fraction, cfg.seed)
    counted = run_flops(cfg, manifest.channels, global_crop_size(cfg, manifest), rows)
    return {"flops": counted["flops"], "n_params": counted["params"], "n_params_heads": counted["params_heads"],
            "train_images": counted["images"], "train_rows": rows,
            "forward_flops_per_image": counted["forward_flops_per_image"]}


# --------------------------------------------------------------------------
# entry point


def check_batches(points: list[tuple[str, Any]]) -> None:
    """Every grid point trains at least one full batch an epoch (a small ``data.fraction`` may not)."""
    from raysl.data.read.shards import load_manifest
    from raysl.data.read.subset import train_rows

    seen: dict[tuple, int] = {}
    for where, cfg in points:
        data_dir = resolve_data_dir(cfg)
        key = (data_dir, cfg.data.fraction, cfg.seed)
        if key not in seen:
            seen[key] = train_rows(data_dir, load_manifest(data_dir), cfg.data.fraction, cfg.seed)
        rows = seen[key]
        if rows < cfg.optim.batch_size:
            raise ConfigError(
                f"{where}: data.fraction {cfg.data.fraction:g} leaves {rows} train images, fewer than one batch "
                f"(optim.batch_size {cfg.optim.batch_size}); use larger fractions in grid: or a smaller "
                f"optim.batch_size")


@dataclass(frozen=True)
class ScaleOptions:
    """``raysl scale``: the grid's search options (``search.space_path`` is the scaling file) and what to
    predict once it is fitted."""

    search: SearchOptions
    predict: tuple[str, ...] = ()
    trajectory: bool = False


def scale_main(opts: ScaleOptions) -> int:
    from raysl import storage
    from raysl.search import run_search
    from raysl.search_options import experiment_name, storage_root
    from raysl.space_file import space_from_dict

    # a resume command rebuilt without argv (a grid started from Python) is this command's, with its options
    search = replace(opts.search, command="scale", command_args=(
        *(x for p in opts.predict for x in ("--predict", p)), *(("--trajectory",) if opts.trajectory else ())))
    # the file as raysl scale reads it (with --trajectory: the grid can give that fit what it needs)
    spec = load_scaling(search.space_path, list(search.overrides), list(opts.predict), opts.trajectory)
    if spec.transfer:  # search: a raysl tune search per grid point, then h_opt(C) per searched key
        return transfer_main(search, spec)
    space = space_from_dict(spec.space_dict(), spec.source)
    grid_size = math.prod(len(v) for v in spec.grid.values())
    points = grid_points(spec)  # every run's config is valid before Ray starts
    check_batches(points)
    space.tune.num_samples = grid_size
    experiment = storage.join_uri(storage_root(search), experiment_name(search))
    print(f"[raysl] scale: {grid_size} runs ({' x '.join(f'{len(v)} {k}' for k, v in spec.grid.items())}), "
          f"no early stopping; then fits of 1 - {spec.fit.metric}", file=sys.stderr, flush=True)
    # every grid point once, whatever the options said: the grid is the space
    code = run_search(replace(search, num_samples=None), space=space, extra_metrics=trial_flops)
    storage.write_atomic(storage.join_uri(experiment, SCALING_FILE), yaml.safe_dump(spec.to_yaml_dict(),
                                                                                   sort_keys=False), option="--storage")
    if code != 0:
        if code == 130:
            print("[raysl] scale: fits run once every run has finished (resume with --resume)", file=sys.stderr)
        return code

    runs, others = collect_runs(experiment, spec.fit.metric, list(spec.grid))
    result = fit_all(runs, spec, point_values_for(spec))
    out = {"experiment": experiment, "metric": spec.fit.metric, "error": f"1 - {spec.fit.metric}",
           "level": spec.fit.level, "grid": spec.grid, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "runs": runs, "not_used": others, **result}
    where = write_result(experiment, out)
    for i, prediction in enumerate(result.get("predictions", [])):
        if prediction.get("trajectory"):  # the predicted whole curve, for a spreadsheet or a plot of one's own
            prediction["trajectory_csv"] = storage.join_uri(experiment, f"trajectory_{i}.csv")
            storage.write_atomic(prediction["trajectory_csv"], trajectory_csv(prediction), option="--storage")
    if any(p.get("trajectory_csv") for p in result.get("predictions", [])):
        where = write_result(experiment, out)  # with where each curve's CSV is
    print(format_report(result, spec.fit.level), file=sys.stderr, flush=True)
    summary = {"experiment": experiment, "scaling_json": where, "runs": len(runs), "not_used": len(others)}
    for key in ("compute", "model_data"):
        if key in result:
            summary[key] = result[key]["params"]
    summary["predictions"] = result["predictions"]
    jsonio.print_line(summary)
    return 0


# --------------------------------------------------------------------------
# a transfer experiment: search small, train big (raysl.transfer)


def _stored_sections_differ(experiment: str, spec) -> str | None:
    """The first section of base:, grid:, search:, tune: that differs from the scaling file the experiment was
    started with (None when they are the same, or when nothing was stored)."""

    from raysl import storage

    text = storage.read_text(storage.join_uri(experiment, SCALING_FILE), missing_ok=True)
    if text is None:
        return None
    before = yaml.safe_load(text) or {}
    now = jsonio.plain(spec.to_yaml_dict())
    return next((s for s in ("base", "grid", "search", "tune") if before.get(s) != now.get(s)), None)


def transfer_main(search: SearchOptions, spec) -> int:
    """Each budget (grid point) searched with raysl tune's machinery in ``<experiment>/budget_<i>/``, one after
    another; a budget whose search has ended holds ``raysl_budget.json`` and ``--resume`` skips it (and
    continues the one that was running). Then the fits, predictions and configs of :mod:`raysl.transfer`
    into ``scaling.json`` (key ``transfer``) and ``predicted_config_<i>.yaml``."""
    from raysl import storage
    from raysl import transfer as tr
    from raysl.data.read.shards import load_manifest
    from raysl.search import run_search
    from raysl.search_options import experiment_name, storage_root, tune_resume_command

    points = grid_points(spec)  # every budget's config is valid before Ray starts
    check_batches(points)
    budgets = spec.budget_points()
    spaces = [spec.budget_space(point) for point in budgets]
    counter = point_values_for(spec)
    counted = [counter(point) for point in budgets]  # (N, D, C) of each budget at the base's searched values
    if len({c for _, _, c in counted}) < 2:
        raise ConfigError(f"{spec.source}: grid: every budget trains {counted[0][2]:.4g} FLOPs, and h_opt(C) needs "
                          "budgets that differ in compute; scale model.width, data.fraction or optim.epochs")
    manifest = load_manifest(resolve_data_dir(points[0][1]))
    metric, mode = spaces[0].objectives(labeled=manifest.labeled)[0]
    params = tr.param_info(spaces[0].params)
    root, name = storage_root(search), experiment_name(search)
    experiment = storage.join_uri(root, name)
    listing = {entry for entry, _ in storage.list_dir(experiment)} - {SCALING_FILE}
    if search.trust_experiment and not search.resume:
        raise ConfigError("--trust-experiment signs an experiment's saved state to resume it; use it with --resume "
                          "(a new experiment needs no trust)")
    if listing and not search.resume:
        raise ConfigError(f"{experiment} already holds an experiment named {name!r}; pass --resume to continue it "
                          "(budgets whose search has ended are skipped: on a finished experiment --resume refits "
                          "and predicts again, e.g. with --predict compute=1e13), or --name NEW for a new one "
                          "(raysl never deletes results)")
    if search.resume and not storage.exists(experiment):
        raise ConfigError(f"no experiment {name} in {root} to resume; drop --resume to start it")
    changed = _stored_sections_differ(experiment, spec) if search.resume else None
    if changed:
        raise ConfigError(f"--resume: the {changed}: of {spec.source} (with --set) differs from the one {experiment} "
                          f"was started with ({storage.join_uri(experiment, SCALING_FILE)}); resume with the same "
                          "file and --set, or pass --name NEW")
    storage.write_atomic(storage.join_uri(experiment, SCALING_FILE), yaml.safe_dump(spec.to_yaml_dict(),
                                                                                   sort_keys=False), option="--storage")
    # every budget's search says this command (with --resume) when it is interrupted
    resume_command = tune_resume_command(search, root)
    trials = spaces[0].tune.num_samples
    print(f"[raysl] scale: search small, train big: {len(budgets)} budgets "
          f"({' x '.join(f'{len(v)} {k}' for k, v in spec.grid.items())}), {trials} trials each over "
          f"{', '.join(p['key'] for p in params)}; then h_opt(C) = a C^b through the near-optimal trials",
          file=sys.stderr, flush=True)
    handlers = _signal_handlers()
    for i, (point, space, (_, _, compute)) in enumerate(zip(budgets, spaces, counted)):
        _put_back(handlers)
        where = storage.join_uri(experiment, tr.budget_dir(i))
        if storage.exists(storage.join_uri(where, tr.BUDGET_DONE_FILE)):
            print(f"[raysl] scale: budget {i} ({_text(point)}) has ended; skipped", file=sys.stderr, flush=True)
            continue
        started = bool(storage.list_dir(where))
        print(f"[raysl] scale: budget {i} ({i + 1} of {len(budgets)}): {_text(point)} (C = {compute:.4g} FLOPs)"
              + (", resumed" if started else ""), file=sys.stderr, flush=True)
        budget_opts = replace(search, storage=experiment, name=tr.budget_dir(i), resume=started,
                              trust_experiment=search.trust_experiment and started, num_samples=None,
                              optuna_storage=None, resume_command=resume_command)
        begun = time.monotonic()
        try:
            code = run_search(budget_opts, space=space, extra_metrics=trial_flops)
        except KeyboardInterrupt as stop:  # before this budget's search could say it: the experiment is kept
            if not getattr(stop, "resume_command", None):
                stop.resume_command = resume_command  # type: ignore[attr-defined]
            raise
        if code == 130:
            return code  # run_search said so, with the command that resumes the whole experiment
        ended = _budget_ended(where, metric, params)
        if code != 0 and not ended:
            return code  # trials unfinished although nothing interrupted it: run_search said so
        storage.write_atomic(storage.join_uri(where, tr.BUDGET_DONE_FILE), jsonio.dumps(
            {"index": i, "point": point, "compute": compute, "exit_code": code,
             "wall_s_last_session": round(time.monotonic() - begun, 1), "ended": time.strftime("%Y-%m-%dT%H:%M:%S")},
            indent=1), option="--storage")
    _put_back(handlers)
    return _transfer_fit(spec, experiment, budgets, counted, points, metric, mode, params, counter)


def _signal_handlers() -> dict:
    """SIGINT's and SIGUSR1's handlers now (none off the main thread, where none can be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, getattr(signal, "SIGUSR1", None)) if sig is not None}


def _put_back(handlers: dict) -> None:
    """Tune leaves its stop handler on SIGINT and SIGUSR1 after a fit; the next budget's fit must find those its
    first one found, or a Ctrl-C during it would put back the last fit's handler, which raysl.search_fit reads as
    no interruption (``_tune_was_interrupted``), and a SIGTERM would stop the last fit, long ended."""
    import signal

    for sig, handler in handlers.items():
        if handler is not None:  # None: set outside Python, nothing to put back
            signal.signal(sig, handler)


def _budget_ended(where: str, metric: str, params: list[dict]) -> bool:
    """Every trial of the budget's search has ended (none unfinished): a search with no usable trial ended too."""
    from raysl import transfer as tr
    from raysl.errors import RayslError

    try:
        trials = tr.read_budget_trials(where, metric, [p["key"] for p in params])
    except RayslError:
        return False
    return bool(trials) and all(t["status"] != "unfinished" for t in trials)


def _text(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def _transfer_fit(spec, experiment: str, budgets: list[dict], counted: list[tuple], points: list, metric: str,
                  mode: str, params: list[dict], counter) -> int:
    from raysl import storage
    from raysl import transfer as tr
    from raysl.data.locate import absolute_data_path

    rows = []
    for i, (point, (n_params, images, compute), (_, cfg)) in enumerate(zip(budgets, counted, points)):
        trials = tr.read_budget_trials(storage.join_uri(experiment, tr.budget_dir(i)), metric,
                                       [p["key"] for p in params])
        rows.append({"index": i, "point": point, "compute": compute, "n_params": n_params, "train_images": images,
                     "epochs": cfg.optim.epochs, "trials": trials})
    fit = spec.fit
    result = tr.fit_transfer(rows, params, mode=mode, margin=fit.margin, n_bootstrap=fit.bootstrap, level=fit.level,
                             seed=fit.seed)
    base = absolute_data_path(spec.base)
    predictions = [tr.predict_at_point(result, point, counter) for point in fit.predict]
    tr.write_predicted_configs(experiment, base, predictions, spec.source)
    result["predictions"] = predictions
    out = {"experiment": experiment, "kind": "transfer", "metric": metric, "mode": mode, "level": fit.level,
           "grid": spec.grid, "search": spec.search, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
           tr.RESULT_KEY: result}
    where = write_result(experiment, out)
    print(tr.format_transfer(result, predictions, metric), file=sys.stderr, flush=True)
    summary = {"experiment": experiment, "scaling_json": where, "budgets": len(rows),
               "trials": sum(len(r["trials"]) for r in rows),
               "laws": {p["key"]: {"a": p["law"]["a"], "b": p["law"]["b"]} for p in result["params"] if p.get("law")},
               "predictions": [{"point": p["point"], "compute": p["compute"],
                                "values": {k: v["config_value"] for k, v in p["values"].items()},
                                "config": p.get("config")} for p in predictions]}
    jsonio.print_line(summary)
    return 0
