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
``scaling.json`` is written into the experiment folder: the scaling file, the
fits and the report text are :mod:`raysl.scaling` (which ``raysl analyze``
reads a finished scaling experiment with, without Ray); this module is what
runs the grid.
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
from raysl.scaling import (SCALING_FILE, collect_runs, fit_all, format_report, grid_points, load_scaling,
                           point_values_for, trajectory_csv, write_result)

if TYPE_CHECKING:  # raysl.search imports Ray Tune: scale_main imports it when it runs
    from raysl.search import SearchOptions


# --------------------------------------------------------------------------
# per-trial values (run inside each Tune trial: a module-level function pickles)


def trial_flops(cfg: RunConfig, data_dir: str) -> dict[str, Any]:
    """``flops`` (training FLOPs of the whole run), ``n_params`` (backbone), ``train_images`` (D)."""
    from raysl.data.pipeline import global_crop_size
    from raysl.data.shards import load_manifest
    from raysl.data.subset import train_rows
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
    from raysl.data.shards import load_manifest
    from raysl.data.subset import train_rows

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
    from raysl.search import experiment_name, run_search, storage_root
    from raysl.space import space_from_dict

    # a resume command rebuilt without argv (a grid started from Python) is this command's, with its options
    search = replace(opts.search, command="scale", command_args=(
        *(x for p in opts.predict for x in ("--predict", p)), *(("--trajectory",) if opts.trajectory else ())))
    # the file as raysl scale reads it (with --trajectory: the grid can give that fit what it needs)
    spec = load_scaling(search.space_path, list(search.overrides), list(opts.predict), opts.trajectory)
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
