"""`raysl tune`: Ray Tune + Optuna over a search-space file.

This module is the search's driver: the Tuner and its stopper, ``best_config.yaml`` and how the search
ended. Its searcher and scheduler are :mod:`raysl.searcher`; its options, the checks a ``--resume`` makes
and the command that resumes it :mod:`raysl.search_options`; its trials as rows and the leaderboard it
prints :mod:`raysl.search_rows`. What runs inside a trial (the Tune function trainable, with one worker in
the trial's own process or a ``TorchTrainer`` it fits, what it reports and the resources it asks for) is
:mod:`raysl.trial`; running the fit (signals, a resume Tune cannot restore, storage that fills up) is
:mod:`raysl.search_fit`.

A trial that diverges, collapses or samples an unusable config ends normally with
``status`` set and its objective at the worst value, so the search goes on
and the searcher learns that region is bad. Crashed trials (a worker killed)
restart from their last checkpoint, and their status is what finally happened.
An interrupted search (Ctrl-C, SIGTERM) exits 130 with the command that resumes
it; the trials it caught before they ended are ``unfinished``, and only a trial
with a measured objective can be the best (``best_config.yaml``). Storage that
cannot take a write (full, read-only) stops the search the same way, its state
saved in room set aside for it, with one error line (exit 2) and that command;
a ``--resume`` that Ray cannot restore is one line and leaves the folder as it was.

Results follow Ray Tune's layout under ``--storage/--name`` (so
``Tuner.restore(path, trainable)`` and ``raysl analyze`` read them), plus
``raysl_space.yaml`` (the space as run) and ``best_config.yaml`` (a run config
``raysl train`` accepts).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml
from ray.tune.stopper import Stopper

from raysl import jsonio, storage
from raysl.config_load import to_yaml
from raysl.data.locate import absolute_data_path, resolve_data_dir
from raysl.errors import ConfigError, RayslError, StorageError
from raysl.outcome import BAD_STATUSES, BEST_CONFIG_FILE, SPACE_FILE, UNFINISHED
from raysl.pbt import PBT_EXTRA_KEEP
from raysl.search_fit import (_INTERRUPTED_BY, _TUNE_STOPS_ON_SIGUSR1, _before_tune_runs, _fit, _FolderSnapshot,
                              _install_sigterm, _remove_unregistered_checkpoints, _reserve_bytes, _restore_error)
from raysl.search_options import SearchOptions, _check_resumable, experiment_name, storage_root, tune_resume_command
from raysl.search_rows import _leaderboard, _ranked, _trial_rows, format_cell
from raysl.searcher import _default_concurrency, _search_and_scheduler
from raysl.space import SearchSpace, apply_sample
from raysl.space_file import load_space
from raysl.study import OPTION as OPTUNA_OPTION
from raysl.study import prepare_new, prepare_resume
from raysl.trial import make_trainable, storage_failure_in, trial_resources, trial_variants_needs


# --------------------------------------------------------------------------
# the search's stopper and its trials' names: Tune pickles them into the experiment's saved state
# (tuner.pkl) as raysl.search.<name>, which a --resume unpickles: they stay in this module


class EpochBudget(Stopper):
    """A Tune stopper: end the whole search once its trials have trained ``budget`` epochs
    in all (a fixed compute budget, however the scheduler spends it)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.epochs: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), int(result.get("epoch") or 0))
        return False

    def stop_all(self) -> bool:
        return sum(self.epochs.values()) >= self.budget


class SearchStop(Stopper):
    """The search's Tune stopper: its epoch budget (``tune.budget_epochs``, :class:`EpochBudget`), and a
    trial's report that it met storage that cannot take more (raysl.trial._hold_on_full_storage). Such a
    report is noted (raysl.storage.note_failure): the search gets back the room it set aside for its last
    state and stops as an interruption does (raysl.search_fit._stop_search), its trials unfinished, so that
    --resume continues them from their last registered checkpoint (a stop through ``stop_all`` would end
    them for good)."""

    def __init__(self, budget: int | None = None):
        self.budget = EpochBudget(budget) if budget else None

    def __call__(self, trial_id: str, result: dict) -> bool:
        message = storage_failure_in(result)
        if message is not None:
            storage.note_failure(StorageError(message))
            return False  # not this trial: the search stops, this one unfinished
        return self.budget(trial_id, result) if self.budget is not None else False

    def stop_all(self) -> bool:
        if storage.noted_failure() is not None and not _TUNE_STOPS_ON_SIGUSR1["yes"]:
            return True  # no signal to stop Tune with (not the main thread, no SIGUSR1): end the trials
        return self.budget is not None and self.budget.stop_all()


def trial_dirname(trial) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"


# --------------------------------------------------------------------------
# entry point


def _setup_wandb(name: str) -> list:
    try:
        from ray.air.integrations.wandb import WandbLoggerCallback
    except ImportError:
        raise ConfigError("--wandb needs the wandb package: pip install wandb") from None
    logged_in = bool(os.environ.get("WANDB_API_KEY"))
    if not logged_in:
        netrc = Path.home() / ".netrc"
        logged_in = netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    if not logged_in and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
        print("[raysl] W&B: not logged in, logging offline (wandb sync later)", file=sys.stderr)
    kwargs = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
    return [WandbLoggerCallback(project="raysl", group=name, upload_checkpoints=False, **kwargs)]


def run_search(opts: SearchOptions, space: SearchSpace | None = None, extra_metrics=None) -> int:
    """``raysl tune``; ``raysl scale`` passes its grid as ``space`` and its FLOP counter as ``extra_metrics``.
    Returns the exit code (0, 130 interrupted); a user's or the environment's error raises RayslError.

    An interruption that reaches the caller as a ``KeyboardInterrupt`` (Ctrl-C or a SIGTERM before Tune's
    own handlers run) once the experiment folder is kept carries ``resume_command``: the command as typed
    would be refused there (the folder holds an experiment), and raysl.cli's line names this one."""
    said: dict[str, str] = {}
    try:
        return _run_search(opts, space, extra_metrics, said)
    except KeyboardInterrupt as stop:
        if "resume_command" in said:
            stop.resume_command = said["resume_command"]  # type: ignore[attr-defined]
        raise


def _run_search(opts: SearchOptions, space: SearchSpace | None, extra_metrics, said: dict[str, str]) -> int:
    from raysl.launch import check_against_data, init_ray
    from raysl.placement import check_placement

    space = space if space is not None else load_space(opts.space_path, list(opts.overrides))
    if opts.num_samples is not None:
        if opts.num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1 (got {opts.num_samples})")
        space.tune.num_samples = opts.num_samples
    num_samples = space.tune.num_samples
    if space.sampler_name() == "grid":
        grid_size = math.prod(len(v) for v in space.grid().values())
        explicit = opts.num_samples is not None or "num_samples" in space.tune.model_fields_set
        if explicit and num_samples > grid_size:
            print(f"[raysl] sampler grid: the grid has {grid_size} points; running {grid_size} trials, "
                  f"not {num_samples}", file=sys.stderr)
        if not explicit or num_samples > grid_size:
            num_samples = space.tune.num_samples = grid_size
    name = experiment_name(opts)
    root = storage_root(opts)
    experiment = storage.join_uri(root, name)
    if os.environ.get("RAY_ADDRESS") and opts.storage is None:
        print(f"[raysl] note: results go to {experiment} on the driver's node; on a multi-node cluster pass "
              "--storage s3://... (or a shared folder) so every trial can write there", file=sys.stderr)

    space.base = absolute_data_path(space.base)
    data_dir = resolve_data_dir(space.base_config)
    data = check_against_data(space.base_config, data_dir, f"{opts.space_path}: base")
    manifest = data.manifest
    manifest.require_val_images(data_dir)  # before Ray: a val split of 0 or 1 image fails every trial's evaluation
    objectives = space.objectives(labeled=manifest.labeled)
    for metric, _ in objectives:
        if "knn_acc" in metric and not manifest.labeled:
            raise ConfigError(f"{opts.space_path}: tune.metric {metric} needs labels and {data_dir} has none; "
                              "use metric: rankme (label-free)")
    # what a failed resume puts back (the state files Tune, the study and --trust-experiment would rewrite)
    snapshot = _FolderSnapshot(experiment) if opts.resume else None
    restore = _check_resumable(experiment, space, opts)
    given_study = opts.optuna_storage  # raysl scale has no --optuna-storage
    if space.scheduler_name() == "pbt" and given_study:
        raise ConfigError(f"{OPTUNA_OPTION}: a PBT search keeps no Optuna study (PBT mutates running trials "
                          f"without a sampler); drop {OPTUNA_OPTION}, or use scheduler: asha")
    fresh = not restore and not storage.exists(experiment)
    if restore:
        study = prepare_resume(experiment, given_study)
    elif space.scheduler_name() == "pbt":
        study = None
    else:  # validated before anything is written: a database that does not answer leaves no experiment behind
        study = prepare_new(experiment, name, given_study, retry=opts.resume)

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    verbose = opts.verbose
    try:
        init_ray(verbose=verbose)  # a local Ray that does not start is one RayslError (raysl.launch.init_ray)
        # before Tune places a trial: on a cluster that cannot hold one it would wait forever, silently
        check_placement(trial_variants_needs(space, data.rows.decode_tasks),
                        space.base_config.scale.placement_timeout_s)
    except (RayslError, KeyboardInterrupt):  # refused, Ray did not start, or Ctrl-C while waiting to grow
        if fresh:  # all there is, is the empty study database prepare_new opened: the experiment stays new
            storage.remove(experiment)
        raise
    # the folder is kept from here
    resume_command = said["resume_command"] = opts.resume_command or tune_resume_command(opts, root)
    with _before_tune_runs(experiment, fresh, resume_command):
        if not restore:
            storage.write_atomic(storage.join_uri(experiment, SPACE_FILE),
                                 yaml.safe_dump(space.to_yaml_dict(), sort_keys=False), option="--storage")
            if study is not None:
                study.record()
    callbacks = _setup_wandb(name) if opts.wandb else []
    import ray.tune

    from raysl.progress import tune_view
    from raysl.trial_log import EpochOnce

    if not verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"

    max_concurrent = space.tune.max_concurrent or _default_concurrency(space, num_samples)
    trainable = ray.tune.with_resources(
        make_trainable(space.base, objectives, experiment, space.tune.max_failures, extra_metrics,
                       keep_extra=PBT_EXTRA_KEEP if space.scheduler_name() == "pbt" else 0),
        trial_resources(space.base),
    )
    _install_sigterm()
    with _before_tune_runs(experiment, fresh, resume_command):
        # room for the search's last state, should its storage fill up (raysl.storage.Reserve)
        reserve = storage.Reserve(experiment, _reserve_bytes(experiment))
    if restore:
        print(f"[raysl] resuming {experiment}", file=sys.stderr)
        try:  # it unpickles tuner.pkl (signed and checked whole, raysl.signing)
            tuner = ray.tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
        except Exception as exc:  # noqa: BLE001 - whatever Ray could not read: one line, the folder as it was
            reserve.release()
            snapshot.put_back()
            raise _restore_error(experiment, exc) from None
    else:
        searcher, scheduler, param_space = _search_and_scheduler(space, objectives, num_samples, max_concurrent,
                                                                 study)
        single = len(objectives) == 1
        tuner = ray.tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=ray.tune.TuneConfig(
                metric=objectives[0][0] if single else None,
                mode=objectives[0][1] if single else None,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=num_samples,
                reuse_actors=space.tune.reuse_actors,
                trial_dirname_creator=trial_dirname,
                trial_name_creator=trial_dirname,
            ),
            run_config=ray.tune.RunConfig(
                name=name,
                storage_path=root,
                failure_config=ray.tune.FailureConfig(max_failures=space.tune.max_failures),
                # PBT: Tune deletes no trial checkpoint (raysl.pbt, "Retention"), so the one PBT hands a
                # clone is there when the clone restores it
                checkpoint_config=ray.tune.CheckpointConfig(
                    num_to_keep=None if space.scheduler_name() == "pbt" else space.base_config.checkpoint.keep),
                # one line per ended trial and a status line, instead of Tune's result tables
                # each epoch once in a trial's result.json / progress.csv across restarts (raysl.trial_log)
                callbacks=[EpochOnce(), *callbacks] + ([] if verbose else [tune_view(objectives, num_samples)]),
                stop=SearchStop(space.tune.budget_epochs),
                verbose=1 if verbose else 0,
            ),
        )
    print(
        f"[raysl] {name}: {num_samples} trials, objective "
        + ", ".join(f"{m} ({mode})" for m, mode in objectives)
        + f", sampler {space.sampler_name() or 'random (pbt)'}, scheduler {space.scheduler_name()}, "
        f"{max_concurrent} at a time; results in {experiment}"
        + (f"; Optuna study {study.name} in {study.public_url}" if study is not None else ""),
        file=sys.stderr, flush=True,
    )
    results, interrupted = _fit(tuner, experiment, reserve, snapshot if restore else None, resume_command)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return _finish(results, space, objectives, experiment, num_samples, resume_command,
                   interrupted=interrupted, failure=storage.noted_failure())


# --------------------------------------------------------------------------
# how the search ended: the leaderboard, best_config.yaml, the exit code


def _finish(results, space: SearchSpace, objectives, experiment: str, num_samples: int,
            resume_command: str = "the same command with --resume", interrupted: bool = True,
            failure: StorageError | None = None) -> int:
    """The leaderboard and the summary line, ``best_config.yaml``; then how the search ended: 0 all trials
    ended, 130 ``interrupted`` by a signal with trials unfinished, a StorageError (one line, exit 2, the
    resume command) when ``failure``, storage that could not take a write, stopped it."""
    if failure is not None:
        with contextlib.suppress(RayslError):  # a torn checkpoint is not left behind (the resume writes it again)
            _remove_unregistered_checkpoints(results, experiment)
    rows = _trial_rows(results, objectives, experiment)
    ranked = _ranked(rows, objectives)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    summary: dict[str, Any] = {
        "experiment": experiment,
        "metric": objectives[0][0] if len(objectives) == 1 else [m for m, _ in objectives],
        "best_metric": None,
        "best_config_path": None,
        "best_trial": None,
        "num_trials": len(rows),
        "statuses": statuses,
    }
    if ranked:
        from raysl.run_config import build_config

        best = ranked[0]
        cfg = build_config(apply_sample(space.base, best["config"]), "best trial")
        where = storage.join_uri(experiment, BEST_CONFIG_FILE)
        header = (
            f"# best trial {best['trial_id']} of {experiment}: "
            + ", ".join(f"{m}={format_cell(best['metrics'][m])}" for m, _ in objectives)
            + f" at epoch {best['epoch']}\n# train it: raysl train {where}\n"
        )
        try:
            storage.write_atomic(where, header + to_yaml(cfg), option="--storage")
            summary.update(best_config_path=where)
        except StorageError:
            if failure is None:
                raise
        summary.update(best_metric=best["metrics"][objectives[0][0]] if len(objectives) == 1 else best["metrics"],
                       best_trial=best["trial_id"], best_config=best["config"])
    try:
        storage.write_atomic(storage.join_uri(experiment, SPACE_FILE), yaml.safe_dump(space.to_yaml_dict(),
                                                                                      sort_keys=False),
                             option="--storage")
    except StorageError:
        if failure is None:
            raise
    print(_leaderboard(ranked, rows, objectives))
    used = sum(int(r["epoch"] or 0) for r in rows)
    summary["epochs_trained"] = used
    unfinished = num_samples - sum(statuses.get(s, 0) for s in ("finished", "stopped", *BAD_STATUSES))
    budget = space.tune.budget_epochs
    if budget is not None and used >= budget and not statuses.get(UNFINISHED):
        unfinished = 0  # the budget ended the search, not an interruption
    ended = num_samples - max(0, unfinished)
    best = (f"best so far {summary['best_trial']} ({format_cell(summary['best_metric'])})" if summary["best_trial"]
            else "no trial has a result yet")
    if failure is not None:  # the search stopped itself: its storage could not take a write
        summary["error"] = " ".join(str(failure).split())
        jsonio.print_line(summary)
        raise StorageError(f"{summary['error']}; the search stopped with {ended} of {num_samples} trials ended, "
                           f"{max(0, unfinished)} unfinished ({best}); resume with: {resume_command}")
    if unfinished > 0 and not interrupted:
        # no signal came: whatever stopped Tune, it is not an interruption (and never said to be one)
        summary["error"] = "trials unfinished without an interruption"
        jsonio.print_line(summary)
        print(f"raysl: error: the search stopped with {ended} of {num_samples} trials ended and {unfinished} "
              f"unfinished although nothing interrupted it (see the messages above); {best}; results in {experiment}; "
              f"resume with: {resume_command}", file=sys.stderr, flush=True)
        return 1
    if unfinished > 0:
        summary["interrupted"] = True
        jsonio.print_line(summary)
        print(f"raysl: interrupted ({_INTERRUPTED_BY['signal']}): {ended} of {num_samples} trials ended, "
              f"{unfinished} unfinished; {best}; results in {experiment}; resume with: {resume_command}",
              file=sys.stderr, flush=True)
        return 130
    jsonio.print_line(summary)
    if not ranked:
        print("raysl: no trial produced a usable result (see statuses)", file=sys.stderr)
        return 1
    return 0
