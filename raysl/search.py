"""`raysl tune`: Ray Tune + Optuna over a search-space file.

This module is the search's driver: its searcher and scheduler, the Tuner and its stopper, the leaderboard
and ``best_config.yaml``. What runs inside a trial (the Tune function trainable, with one worker in the
trial's own process or a ``TorchTrainer`` it fits, what it reports and the resources it asks for) is
:mod:`raysl.trial`; running the fit (signals, a resume Tune cannot restore, storage that fills up) is
:mod:`raysl.search_fit`.

Searching is Ray Tune's ``OptunaSearch`` with a define-by-run space
(:class:`raysl.space.SpaceSampler`), seeded, with the base config as the first
trial; ASHA stops poor trials, PBT (no searcher) mutates running ones. A trial
that diverges, collapses or samples an unusable config ends normally with
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.tune.stopper import Stopper

from raysl import jsonio, ray_compat, signing, storage
from raysl.config_load import to_yaml
from raysl.console import without_passwords
from raysl.data.locate import absolute_data_path, resolve_data_dir
from raysl.errors import ConfigError, RayslError, StorageError
from raysl.outcome import BAD_STATUSES, BEST_CONFIG_FILE, SPACE_FILE, UNFINISHED, pareto_front, rank
from raysl.pbt import PBT_EXTRA_KEEP
from raysl.search_fit import (_INTERRUPTED_BY, _TUNE_STOPS_ON_SIGUSR1, _before_tune_runs, _fit, _FolderSnapshot,
                              _install_sigterm, _remove_unregistered_checkpoints, _reserve_bytes, _restore_error)
from raysl.space import SearchSpace, apply_sample, load_space
from raysl.study import OPTION as OPTUNA_OPTION
from raysl.study import STUDY_FILES, prepare_new, prepare_resume
from raysl.trial import _nan, make_trainable, storage_failure_in, trial_resources, trial_variants_needs

DEFAULT_STORAGE = "./raysl_results"


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
# searcher and scheduler


def _sampler(space: SearchSpace, num_samples: int):
    import optuna

    name, seed = space.sampler_name(), space.tune.seed
    startup = space.tune.startup_trials or max(2, min(10, num_samples // 3))
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=space.conditional, n_startup_trials=startup, constant_liar=True
        )
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 3)))


def _search_and_scheduler(space: SearchSpace, objectives, num_samples: int, max_concurrent: int, study=None):
    """``study``: the :class:`raysl.study.StudyPlace` the Optuna searcher keeps its study in (PBT has none)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from raysl.space import SpaceSampler

    base_point = space.base_point()
    scheduler_name = space.scheduler_name()
    if scheduler_name == "pbt":
        interval = space.tune.perturbation_interval or max(
            space.base_config.checkpoint.every_epochs, space.base_config.eval.every_epochs
        )
        mutations = {p.key: p.tune_domain() for p in space.params}
        scheduler = PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=interval, hyperparam_mutations=mutations,
            quantile_fraction=0.25, resample_probability=0.25, synch=space.tune.synch,
        )
        searcher = BasicVariantGenerator(
            points_to_evaluate=[base_point] if base_point else None, random_state=space.tune.seed,
            max_concurrent=max_concurrent,
        )
        return searcher, scheduler, dict(mutations)

    single = len(objectives) == 1
    metric = objectives[0][0] if single else [m for m, _ in objectives]
    mode = objectives[0][1] if single else [m for _, m in objectives]
    points = [base_point] if base_point and space.sampler_name() != "grid" else None
    searcher_args = dict(space=SpaceSampler(space.params), metric=metric, mode=mode, points_to_evaluate=points,
                         sampler=_sampler(space, num_samples))
    if study is not None:
        from raysl.study import StudySearch

        searcher = StudySearch(study, **searcher_args)
    else:
        searcher = OptunaSearch(**searcher_args)
    searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    if scheduler_name == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=space.max_epochs(), grace_period=space.grace_period(),
            reduction_factor=space.tune.reduction_factor,
            # a trial reaching max_t ends by itself: stopping it would kill a multi-worker
            # trial's Train controller mid-shutdown (and can leak its placement group)
            stop_last_trials=False,
        )
    else:
        scheduler = FIFOScheduler()
    return searcher, scheduler, None


def _default_concurrency(space: SearchSpace, num_samples: int) -> int:
    """Trials the cluster fits at once, leaving a CPU for Ray Data when trials use Ray Train."""
    import ray

    scale = space.base_config.scale
    total = ray.cluster_resources()
    per_trial = scale.cpus_per_worker * scale.num_workers + (1 if scale.num_workers > 1 else 0)
    fits = int(total.get("CPU", 1) // per_trial)
    if scale.use_gpu and total.get("GPU", 0) > 0:
        fits = min(fits, int(total["GPU"] // (scale.gpus_per_worker * scale.num_workers)))
    return max(1, min(num_samples, fits))


# --------------------------------------------------------------------------
# summary





def _saved_trial_states(experiment: str | None) -> dict[str, str]:
    """Trial folder name -> Tune's status as its experiment state recorded it. Tune saves that state
    when a search is interrupted, before it stops the trials (and marks them TERMINATED in memory)."""
    if experiment is None:
        return {}
    from raysl.tune_files import Storage, tune_statuses

    try:
        where = Storage(experiment)
        return tune_statuses(where, where.root, where.listdir(where.root))
    except Exception:  # noqa: BLE001 - without it, the in-memory statuses decide
        return {}


def _trial_rows(results, objectives, experiment: str | None = None) -> list[dict]:
    """One row per trial: its raysl status (what finally happened), last metrics and sampled config.

    ``measured``: the objective is a real evaluation (not the placeholder a trial reports before its
    first evaluation, nor the worst value of a diverged/collapsed/errored one)."""
    trial_state = {}
    for trial in ray_compat.experiment_trials(results):
        trial_state[str(trial.path).rstrip("/")] = trial.status
    saved = _saved_trial_states(experiment)
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        path = str(result.path).rstrip("/")
        state = trial_state.get(path, "TERMINATED")
        saved_state = saved.get(Path(path).name, state)
        status = metrics.get("status")
        if status in BAD_STATUSES or status == "finished":
            pass  # the trial's own last word: a crash Tune recovered from does not change it
        elif result.error is not None or state == "ERROR":
            status = "errored"
        elif state != "TERMINATED" or saved_state in ("RUNNING", "PENDING", "PAUSED"):
            status = UNFINISHED  # interrupted before it ended: --resume continues it
        elif status in (None, "running"):
            status = "stopped"  # ended early by the scheduler
        rows.append({
            "trial_id": metrics.get("trial_id") or Path(str(result.path)).name,
            "status": status,
            "epoch": metrics.get("epoch"),
            "measured": status not in BAD_STATUSES and (
                "eval_epoch" not in metrics or int(metrics.get("eval_epoch") or 0) > 0),
            "metrics": {m: metrics.get(m) for m, _ in objectives},
            "knn_acc": metrics.get("knn_acc"),
            "rankme": metrics.get("rankme"),
            "config": dict(result.config or {}),
            "path": str(result.path),
        })
    return rows


def _ranked(rows: list[dict], objectives) -> list[dict]:
    """Usable trials, best first (:func:`raysl.outcome.rank`): by the objective, or the Pareto front first
    for several (marked ``pareto``)."""
    usable = [r for r in rows if r["status"] in ("finished", "stopped") and r.get("measured", True)
              and all(isinstance(r["metrics"][m], (int, float)) and not _nan(r["metrics"][m]) for m, _ in objectives)]
    if len(objectives) > 1:
        for r, on_front in zip(usable, pareto_front(usable, objectives, values=lambda r: r["metrics"])):
            r["pareto"] = on_front
    return rank(usable, objectives, values=lambda r: r["metrics"])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _leaderboard(ranked: list[dict], rows: list[dict], objectives, top: int = 10) -> str:
    keys = sorted({k for r in rows for k in r["config"]})
    cols = ["trial", "status", "epoch"] + [m for m, _ in objectives]
    for extra in ("knn_acc", "rankme"):
        if extra not in cols:
            cols.append(extra)
    cols += keys
    shown = ranked[:top] + [r for r in rows if r["status"] in BAD_STATUSES][: max(0, top - len(ranked))]
    table = []
    for r in shown:
        values = {"trial": r["trial_id"], "status": r["status"] + ("*" if r.get("pareto") else ""),
                  "epoch": r["epoch"], "knn_acc": r["knn_acc"], "rankme": r["rankme"], **r["metrics"], **r["config"]}
        table.append([_fmt(values.get(c)) for c in cols])
    widths = [max(len(c), *(len(row[i]) for row in table)) if table else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    if len(objectives) > 1:
        lines.append("(* = on the Pareto front)")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# entry point


@dataclass(frozen=True)
class SearchOptions:
    """What a search is asked to do besides its space: the options of ``raysl tune`` (``raysl scale`` fills
    them for its grid). ``argv`` is the command as typed, which the resume command repeats."""

    space_path: str  # the space (or scaling) file: names the experiment, and every message
    overrides: tuple[str, ...] = ()
    num_samples: int | None = None
    name: str | None = None
    storage: str | None = None
    resume: bool = False
    trust_experiment: bool = False
    optuna_storage: str | None = None
    wandb: bool = False
    verbose: bool = False
    argv: tuple[str, ...] = ()
    # the subcommand (tune or scale) and that command's own arguments (scale's --predict, --trajectory): the
    # resume command is rebuilt from them when there is no argv (a search started from Python)
    command: str = "tune"
    command_args: tuple[str, ...] = ()
    # the command that resumes this search when it is one part of a larger one (raysl scale's transfer
    # experiment runs a search per budget in its folder: --resume of the scale command continues it)
    resume_command: str | None = None


def experiment_name(opts: SearchOptions) -> str:
    name = opts.name or Path(opts.space_path).stem
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"--name {name!r}: use a plain folder name, e.g. --name quickstart_lr")
    return name


def storage_root(opts: SearchOptions) -> str:
    return storage.resolve(opts.storage or DEFAULT_STORAGE).uri


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


def _check_resumable(experiment: str, space: SearchSpace, opts: SearchOptions) -> bool:
    """Decide between a new experiment and a resumed one; returns True to restore."""
    from ray.tune import Tuner

    listing = [entry for entry, _ in storage.list_dir(experiment)]
    if opts.trust_experiment and not opts.resume:
        raise ConfigError(f"{signing.TRUST_OPTION} signs an experiment's saved state to resume it; use it with "
                          "--resume (a new experiment needs no trust)")
    if not opts.resume:
        if listing:
            raise ConfigError(
                f"{experiment} already holds an experiment named {Path(experiment).name!r}; pass --resume to "
                "continue it, or --name NEW for a new one (raysl never deletes results)"
            )
        return False
    if not listing:  # a typo in --name or --storage must not quietly start a new search
        where, name = experiment.rstrip("/").rsplit("/", 1)
        raise ConfigError(f"no experiment {name} in {where} to resume; drop --resume to start it")
    if not Tuner.can_restore(experiment):
        if set(listing) - {SPACE_FILE, storage.RESERVE_FILE} - STUDY_FILES:
            raise ConfigError(f"--resume: {experiment} has no Ray Tune experiment state to resume; "
                              "pass another --name to start a new experiment")
        # interrupted before Tune wrote its state: only the space raysl wrote first is there
        print(f"[raysl] --resume: nothing was run yet in {experiment}; starting it", file=sys.stderr)
        return False
    # before anything unpickles Ray's state (Tuner.restore does): a replaced pickle would run its code here
    if opts.trust_experiment:
        signing.check_intact(experiment, trusting=True)  # a damaged file is not signed: Ray would fail on it
        signed = signing.sign_experiment(experiment)
        print(f"[raysl] {signing.TRUST_OPTION}: signed the {signed} state files of {experiment} with your secret "
              "as they are", file=sys.stderr)
    else:
        signing.verify_experiment(experiment)
    stored = storage.read_text(storage.join_uri(experiment, SPACE_FILE), missing_ok=True)
    if stored is not None:
        before = yaml.safe_load(stored) or {}
        now = jsonio.plain(space.to_yaml_dict())
        for section in ("base", "search"):
            if before.get(section) != now.get(section):
                raise ConfigError(
                    f"--resume: the {section}: of {space.source} (with --set) differs from the one "
                    f"{experiment} was started with ({storage.join_uri(experiment, SPACE_FILE)}); resume with the same "
                    "space and --set, or pass --name NEW"
                )
    return True


def tune_resume_command(opts: SearchOptions, storage_root: str) -> str:
    """The exact `raysl tune` (or `raysl scale`) command that continues this search: the command as given
    (``opts.argv``, else rebuilt from ``opts``), with --storage made absolute and --resume."""
    import shlex

    argv = list(opts.argv)
    if not argv:
        argv = [opts.command, opts.space_path, *(x for o in opts.overrides for x in ("--set", o)),
                *opts.command_args]
        if opts.num_samples is not None:
            argv += ["--num-samples", str(opts.num_samples)]
        if opts.name:
            argv += ["--name", opts.name]
    # a database password is never printed: the resumed search gets it from PGPASSWORD, ~/.pgpass or an
    # --optuna-storage typed again
    argv = without_passwords(argv, OPTUNA_OPTION)
    parts: list[str] = []
    given = False
    for i, arg in enumerate(argv):
        # --trust-experiment is for one resume: the state is signed when this one ends
        if arg in ("--resume", signing.TRUST_OPTION) or (i > 0 and argv[i - 1] == "--storage"):
            continue
        if arg == "--storage" or arg.startswith("--storage="):
            parts += ["--storage", storage_root]  # where it is, as given, made absolute
            given = True
            continue
        parts.append(arg)
    if not given:
        parts += ["--storage", storage_root]
    return shlex.join(["raysl", *parts, "--resume"])


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
    from raysl.data.pipeline import is_encoded
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
    manifest = check_against_data(space.base_config, data_dir, f"{opts.space_path}: base")
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
        check_placement(trial_variants_needs(space, is_encoded(manifest)),
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
            + ", ".join(f"{m}={_fmt(best['metrics'][m])}" for m, _ in objectives)
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
    best = (f"best so far {summary['best_trial']} ({_fmt(summary['best_metric'])})" if summary["best_trial"]
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
