"""`raysl tune`: Ray Tune + Optuna over a search-space file.

One Tune function trainable per trial builds the run config (base + sampled
keys) and trains it:

- ``scale.num_workers == 1``: ``train_worker`` runs in the trial's own process
  with :class:`TuneIO` (reports and checkpoints go straight to Tune; the trial
  reserves the worker's CPUs/GPU);
- more workers: the trial fits a ``TorchTrainer`` (Ray Train V2 cannot be
  wrapped by a Tuner; a trainable that fits one is the supported way) whose
  callback relays rank 0's reports to Tune, each Train checkpoint as a small Tune
  checkpoint that points at it (so PBT can clone multi-worker trials: a clone's
  workers start from the donor's Train checkpoint, see :mod:`raysl.pbt`); the
  trial driver reserves no CPU.

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
import json
import logging
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
from raysl.config import RunConfig, to_yaml
from raysl.console import without_passwords
from raysl.data.locate import absolute_data_path, resolve_data_dir
from raysl.errors import CollapsedError, ConfigError, DivergedError, Interrupted, RayslError, StorageError
from raysl.pbt import PBT_EXTRA_KEEP, RESUMED_FILE
from raysl.outcome import (BAD_STATUSES, BEST_CONFIG_FILE, SPACE_FILE, TRAIN_KEYS, UNFINISHED, Status, status_of,
                           worst_value)
from raysl.space import SearchSpace, apply_sample, load_space
from raysl.study import OPTION as OPTUNA_OPTION
from raysl.study import STUDY_FILES, prepare_new, prepare_resume

DEFAULT_STORAGE = "./raysl_results"


# --------------------------------------------------------------------------
# what a trial reports


class ResultFiller:
    """Makes every report carry the objective(s).

    Evaluations run every ``eval.every_epochs``; between them the last
    evaluated values are repeated (``eval_epoch`` says from when) because Tune
    and its searcher expect the metric in every result. A collapsed report gets
    the worst objective value.

    What it returns is the Tune result Ray writes to the trial's ``result.json``:
    strict JSON, so a non-finite value is None there (raysl.jsonio), except the
    objectives, which stay numbers because ASHA, PBT and the searcher compare
    them: a non-finite or missing one gets the worst value.
    """

    def __init__(self, objectives: list[tuple[str, str]], extra: dict[str, Any] | None = None):
        self.objectives = objectives
        self.extra = dict(extra or {})  # constant per trial, in every report (raysl scale: flops, params)
        self.last_eval: dict[str, Any] = {}
        self.eval_epoch = 0
        self.epoch = 0

    def __call__(self, metrics: dict) -> dict:
        out = dict(metrics)
        fresh = {k: v for k, v in metrics.items() if k not in TRAIN_KEYS}
        self.epoch = int(metrics.get("epoch", self.epoch))
        if fresh:
            self.last_eval, self.eval_epoch = fresh, self.epoch
        else:
            out = {**self.last_eval, **out}
        out["eval_epoch"] = self.eval_epoch
        out.update(self.extra)
        out = jsonio.to_json_safe(out)  # first: a non-finite objective of any type (np.float32 too) is then None
        for metric, mode in self.objectives:
            if metric not in out or out.get("status") in BAD_STATUSES or _nan(out[metric]):
                out[metric] = worst_value(metric, mode)
        return out

    def final(self, status: str, message: str) -> dict:
        """The last report of a trial that stopped on a user-level error."""
        out = {**self.last_eval, **self.extra, "epoch": self.epoch, "eval_epoch": self.eval_epoch, "status": status,
               "error": message[:500]}
        for metric, mode in self.objectives:
            out[metric] = worst_value(metric, mode)
        return jsonio.to_json_safe(out)


def _nan(value: Any) -> bool:
    """Not a number the searcher can compare: NaN, +-inf, or None (what raysl.jsonio makes of those,
    and what a metric that could not be measured is reported as)."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


class TuneIO:
    """LoopIO for a one-worker trial running inside its Tune trial process."""

    def __init__(self, data_dir: str, use_gpu: bool, filler: ResultFiller, trial=None, delivered=None,
                 where: str = ""):
        self.data_dir = data_dir
        self.use_gpu = use_gpu
        self.filler = filler
        self.trial = trial  # raysl.pbt.TrialRef: each checkpoint says which trial wrote it (PBT lineage)
        self.delivered = delivered if delivered is not None else _Delivered()
        self.where = where  # the trial's folder in the experiment, for a storage error's message

    def dataset_shard(self, name: str):
        # The trial reads its shards with pyarrow in its own process: under Tune on a small
        # machine, Ray Data tasks compete with the trials for CPUs (and can get none).
        from raysl.data.shards import shard_uris
        from raysl.data.stream import ParquetBatches

        return ParquetBatches(shard_uris(self.data_dir, name))

    def checkpoint_dir(self):
        import ray.tune

        ckpt = ray.tune.get_checkpoint()
        return None if ckpt is None else ckpt.to_directory()

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.tune

        from raysl.pbt import write_pointer

        if checkpoint_dir and self.trial is not None:
            write_pointer(checkpoint_dir, self.trial.pointer(metrics["epoch"]))
        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        filled = self.filler(metrics)
        try:
            ray.tune.report(filled, checkpoint=checkpoint)  # copies the checkpoint into the experiment first
        except Exception as exc:
            failure = storage.error_in(exc, self.where, "writing a checkpoint of the trial", "--storage")
            if failure is None:
                raise
            raise failure from exc
        self.delivered.result = filled

    def device(self):
        import torch

        return torch.device("cuda" if self.use_gpu and torch.cuda.is_available() else "cpu")


def _relay_callback(objectives: list[tuple[str, str]], extra: dict[str, Any] | None, reports, run_uri: str):
    """A Train callback (it runs in the TrainController) that hands rank 0's reports, the objectives filled
    in, to the trial through the ``reports`` queue, with where the report's Train checkpoint is (``run_uri``
    + its folder name) for the trial to report as a Tune checkpoint (Ray's TuneReportCallback relays the
    metrics only, which leaves PBT nothing to clone)."""
    from ray.train import UserCallback

    class RayslTuneRelay(UserCallback):
        def __init__(self):
            self.filler = ResultFiller(objectives, extra)
            self.worker_failures = 0  # worker groups Ray Train restarted from the last checkpoint

        def after_exception(self, run_context, worker_exceptions):
            self.worker_failures += 1

        def after_report(self, run_context, metrics, checkpoint):
            first = self.filler(metrics[0])
            if self.worker_failures:
                first = {**first, "worker_failures": self.worker_failures}
            where = None if checkpoint is None else storage.join_uri(run_uri, str(checkpoint.path).rstrip("/")
                                                                     .rsplit("/", 1)[-1])
            reports.put((first, where))  # blocks while the trial has the previous one: Tune's pace

    return RayslTuneRelay()


def _relay_to_tune(reports, trial, run: str, fit, delivered=None) -> None:
    """Run ``fit`` (``trainer.fit``) in a thread while this one, the trial's, reports what the relay queue
    brings to Tune, each Train checkpoint as a small Tune checkpoint pointing at it (raysl.pbt); then
    raise what ``fit`` raised."""
    import tempfile
    import threading

    import ray.tune

    from raysl.pbt import write_pointer

    outcome: dict[str, BaseException] = {}

    def run_fit() -> None:
        try:
            fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the trial's thread
            outcome["error"] = exc
        finally:
            reports.put(None)

    # a daemon: when Tune stops the trial (ASHA, a PBT pause) its process ends with the Train run it owns
    thread = threading.Thread(target=run_fit, name="raysl-train-fit", daemon=True)
    thread.start()
    while (item := reports.get()) is not None:
        metrics, where = item
        if where is None:
            ray.tune.report(metrics)
        else:
            with tempfile.TemporaryDirectory(prefix="raysl-pointer-") as tmp:
                write_pointer(tmp, trial.pointer(metrics["epoch"], run, where))
                ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))
        if delivered is not None:
            delivered.result = metrics
    thread.join()
    if "error" in outcome:
        raise outcome["error"]


def train_worker_in_trial(loop_config: dict) -> None:
    """``train_worker`` for multi-worker trials, made to stop for good on divergence/collapse.

    The rank that raises leaves a marker; a Train restart then fails at once on
    every rank instead of re-training into the same NaN. A PBT clone's workers start
    from ``loop_config["resume_from"]`` (the donor's Train checkpoint).
    """
    from raysl.train import RayTrainIO, train_worker

    marker = loop_config["stop_marker"]
    text = storage.read_text(marker, missing_ok=True)
    if text is not None:
        stop = json.loads(text)
        cls = DivergedError if stop["status"] == "diverged" else CollapsedError
        raise cls(stop["error"])
    try:
        train_worker(loop_config, RayTrainIO.for_loop(loop_config))
    except (DivergedError, CollapsedError) as exc:
        storage.write_atomic(marker, jsonio.dumps({"status": status_of(exc), "error": str(exc)}))
        raise


class _Delivered:
    """The last report Tune took from a trial: what the trial says again when its storage fills up."""

    def __init__(self):
        self.result: dict | None = None


# How long a trial that met full storage waits for the search to stop it (the driver does so at the report
# saying so, see SearchStop); past it, it fails as any other trial would.
_HOLD_S = 300.0


def storage_failure_in(result: dict | None) -> str | None:
    """The message of a report saying that a trial met storage it cannot write (_hold_on_full_storage)."""
    if result and result.get("status") == "running" and isinstance(result.get("error"), str):
        return result["error"]
    return None


def _hold_on_full_storage(exc: BaseException, where: str, objectives, delivered: _Delivered) -> bool:
    """A trial whose checkpoint (or other write) could not be written, no space left, read-only or denied:
    instead of failing (which Tune answers by restarting it on the same full disk, each time with a traceback
    and a "worker died" line, and by writing error files there), the trial reports its last result again
    with the storage error (``status`` running: it has not ended) and waits for the search to stop; the
    search saves its state as of its last registered checkpoint and ends in one line (raysl.search.run_search).
    Returns False when ``exc`` is not such a failure."""
    import time

    import ray.tune

    failure = storage.error_in(exc, where, "writing a checkpoint of the trial", "--storage")
    if failure is None or not storage.is_capacity_failure(failure):
        return False
    last = dict(delivered.result or {})
    if not last:  # nothing reported yet: a placeholder that no scheduler or searcher acts on
        last = {"epoch": 0, "eval_epoch": 0, **{metric: worst_value(metric, mode) for metric, mode in objectives}}
    ray.tune.report({**last, "status": Status.RUNNING, "error": " ".join(str(failure).split())[:500]})
    deadline = time.monotonic() + _HOLD_S
    while time.monotonic() < deadline:
        time.sleep(1.0)
    raise failure from None


def make_trainable(base: dict, objectives: list[tuple[str, str]], experiment: str, max_failures: int,
                   extra_metrics=None, keep_extra: int = 0):
    """The Tune function trainable: one call trains one sampled config.

    ``extra_metrics(cfg, data_dir) -> dict`` (a module-level function: it is pickled to the
    trials) adds constant per-trial values to every report (``raysl scale``: FLOPs).
    ``keep_extra``: Train checkpoints a multi-worker trial keeps beyond ``checkpoint.keep``
    (PBT: as many more as Tune keeps, see raysl.pbt).
    """

    def raysl_trial(config: dict) -> None:
        import ray.tune

        from raysl import pbt
        from raysl.launch import check_against_data, user_error_from
        from raysl.run_config import build_config
        from raysl.train import train_worker

        filler = ResultFiller(objectives)
        try:
            cfg = build_config(apply_sample(base, config), "trial config")
            cfg.eval.search_metrics = [m for m, _ in objectives]  # evaluations compute what the search ranks by
            data_dir = resolve_data_dir(cfg)
            check_against_data(cfg, data_dir, "trial config")
            if extra_metrics is not None:
                filler.extra = extra_metrics(cfg, data_dir)
        except RayslError as exc:
            ray.tune.report(filler.final("errored", str(exc)))
            return
        loop_config = {"config": cfg.model_dump(mode="json"), "data_dir": data_dir}
        context = ray.tune.get_context()
        trial = pbt.TrialRef(context.get_trial_id(), os.path.basename(context.get_trial_dir().rstrip("/")),
                             dict(config))
        handed = ray.tune.get_checkpoint()  # a PBT clone's is another trial's
        try:
            start = pbt.start_of(pbt.read_pointer(handed), trial, experiment, cfg.scale.num_workers > 1,
                                 None if handed is None else str(handed.path))
        except RayslError as exc:
            ray.tune.report(filler.final("errored", str(exc)))
            return
        loop_config["report_resume"] = start.cloned
        delivered, where = _Delivered(), storage.join_uri(experiment, trial.trial_dir)
        if cfg.scale.num_workers == 1:
            try:
                train_worker(loop_config, TuneIO(data_dir, cfg.scale.use_gpu, filler, trial, delivered, where))
            except CollapsedError:
                return  # train_worker reported status "collapsed" before raising
            except Exception as exc:  # a user-level error ends the trial, anything else is retried
                if _hold_on_full_storage(exc, where, objectives, delivered):
                    return
                if not isinstance(exc, RayslError):
                    raise
                ray.tune.report(filler.final(status_of(exc), str(exc)))
            return
        try:
            _fit_torch_trainer(cfg, loop_config, data_dir, objectives, experiment, max_failures, filler.extra,
                               trial, start, keep_extra, delivered)
        except Exception as exc:  # noqa: BLE001 - a user-level error ends the trial, anything else is retried
            if _hold_on_full_storage(exc, where, objectives, delivered):
                return
            user = user_error_from(exc)
            if user is None:
                raise
            ray.tune.report(filler.final(status_of(user), str(user)))

    return raysl_trial


def _fit_torch_trainer(cfg: RunConfig, loop_config: dict, data_dir: str, objectives, experiment: str,
                       max_failures: int, extra: dict[str, Any] | None, trial, start, keep_extra: int = 0,
                       delivered=None) -> None:
    """Fit the trial's TorchTrainer: Train run ``start.run`` in the trial's folder (a PBT clone's starts
    from the donor's checkpoint, ``start.resume_from``), its reports relayed to Tune with pointer
    checkpoints (raysl.pbt)."""
    import ray.data
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from raysl.data.pipeline import reads_in_worker, train_dataset
    from raysl.data.shards import load_manifest

    train_storage = storage.join_uri(experiment, trial.trial_dir)
    in_worker = reads_in_worker(cfg, load_manifest(data_dir))
    loop_config = {**loop_config, "stop_marker": storage.join_uri(train_storage, start.run, "raysl_stop.json"),
                   "read_in_worker": in_worker,
                   "resume_from": start.resume_from,
                   "resume_record": storage.join_uri(train_storage, start.run, RESUMED_FILE) if start.cloned else None}
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Read tasks take no CPU slot: trials' Train workers can hold every CPU of a small
    # cluster, and a read task waiting for one would stall the trial forever. JPEG shards
    # add decode tasks of one CPU each: _default_concurrency leaves a CPU per trial for them.
    # (small-image shards: each worker reads its part itself, no Ray Dataset)
    datasets = {} if in_worker else {"train": train_dataset(cfg, data_dir, read_remote_args={"num_cpus": 0})}
    resources = {"CPU": cfg.scale.cpus_per_worker}
    if cfg.scale.use_gpu:
        resources["GPU"] = cfg.scale.gpus_per_worker
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_worker_in_trial,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scale.num_workers, use_gpu=cfg.scale.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            # same name and storage on a restarted trial: Train resumes from its last checkpoint
            name=start.run,
            storage_path=train_storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep + keep_extra),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=[_relay_callback(objectives, extra, reports, storage.join_uri(train_storage, start.run))],
        ),
        datasets=datasets,
    )
    _relay_to_tune(reports, trial, start.run, trainer.fit, delivered)


def trial_resources(base: dict):
    """Per-trial resources: a one-worker trial holds its worker's CPUs/GPU; a multi-worker
    trial's driver holds nothing (its Train workers reserve their own)."""
    from ray.tune import PlacementGroupFactory

    def resources(config: dict) -> PlacementGroupFactory:
        from raysl.run_config import RunConfig  # parses with every method registered

        try:
            scale = RunConfig.model_validate(apply_sample(base, config)).scale
        except Exception:  # noqa: BLE001 - the trial reports the error itself
            return PlacementGroupFactory([{"CPU": 1}])
        if scale.num_workers > 1:
            # Tune refuses an all-zero request; a hundredth of a CPU is as good as none
            return PlacementGroupFactory([{"CPU": 0.01}])
        bundle = {"CPU": scale.cpus_per_worker}
        if scale.use_gpu:
            bundle["GPU"] = scale.gpus_per_worker
        return PlacementGroupFactory([bundle])

    return resources


def trial_variants_needs(space: SearchSpace, encoded: bool, limit: int = 64) -> list:
    """What the trials of ``space`` ask the cluster for (raysl.placement.Needs): the base config's trial and,
    when the space searches scale.* keys, one per combination of their values (choices, or a range's
    ends), so that a grid axis ``scale.num_workers: [1, 2, 4]`` is checked at 4 before any trial runs."""
    import itertools

    from raysl.placement import trial_needs
    from raysl.run_config import RunConfig  # parses with every method registered

    scale_params = [p for p in space.params if p.key.startswith("scale.")]
    configs = [space.base_config]
    if scale_params:
        for values in itertools.islice(itertools.product(*(p.test_values() for p in scale_params)), limit):
            try:
                configs.append(RunConfig.model_validate(apply_sample(space.base, dict(zip(
                    (p.key for p in scale_params), values)))))
            except Exception:  # noqa: BLE001 - a combination that is not a valid config: the trial reports it
                continue
    return [trial_needs(cfg, encoded) for cfg in configs]


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
    trial's report that it met storage that cannot take more (_hold_on_full_storage). Such a report is
    noted (raysl.storage.note_failure): the search gets back the room it set aside for its last state and
    stops as an interruption does (_stop_search), its trials unfinished, so that --resume continues them
    from their last registered checkpoint (a stop through ``stop_all`` would end them for good)."""

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


_TUNE_STOPS_ON_SIGUSR1 = {"yes": False}


def _stop_search() -> None:
    """Stop the running fit as Ctrl-C does, through Tune's own stop handler (it takes SIGUSR1): the loop
    ends, Tune saves its state with the trials as they are (running ones unfinished) and stops them."""
    handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if ray_compat.is_tune_stop_handler(handler):
        _TUNE_STOPS_ON_SIGUSR1["yes"] = True
        os.kill(os.getpid(), signal.SIGUSR1)


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
    from raysl.results import Storage, _tune_statuses

    try:
        where = Storage(experiment)
        return _tune_statuses(where, where.root, where.listdir(where.root))
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


def _dominates(a: dict, b: dict, objectives) -> bool:
    better = False
    for m, mode in objectives:
        x, y = a["metrics"][m], b["metrics"][m]
        if mode == "min":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def _ranked(rows: list[dict], objectives) -> list[dict]:
    """Usable trials, best first: by the objective, or the Pareto front first for several."""
    usable = [r for r in rows if r["status"] in ("finished", "stopped") and r.get("measured", True)
              and all(isinstance(r["metrics"][m], (int, float)) and not _nan(r["metrics"][m]) for m, _ in objectives)]
    metric, mode = objectives[0]
    sign = -1 if mode == "max" else 1
    if len(objectives) > 1:
        for r in usable:
            r["pareto"] = not any(_dominates(o, r, objectives) for o in usable if o is not r)
        return sorted(usable, key=lambda r: (not r["pareto"], sign * r["metrics"][metric]))
    return sorted(usable, key=lambda r: sign * r["metrics"][metric])


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
        now = json.loads(json.dumps(space.to_yaml_dict()))
        for section in ("base", "search"):
            if before.get(section) != now.get(section):
                raise ConfigError(
                    f"--resume: the {section}: of {space.source} (with --set) differs from the one "
                    f"{experiment} was started with ({storage.join_uri(experiment, SPACE_FILE)}); resume with the same "
                    "space and --set, or pass --name NEW"
                )
    return True


# the signal that interrupted the search, for the closing line (Tune's own handler takes SIGINT)
_INTERRUPTED_BY = {"signal": "SIGINT"}


def _install_sigterm() -> None:
    """SIGTERM (ray job stop, a scheduler's kill) stops like Ctrl+C: Tune saves its state first. Before
    Tune's stop handler takes SIGUSR1 (it installs it as its fit starts), SIGUSR1 would end the process
    with no word (its default action): the SIGTERM is an Interrupted there, as raysl.cli's early one is."""
    if hasattr(signal, "SIGUSR1") and threading_is_main():
        def on_sigterm(*_):
            if not ray_compat.is_tune_stop_handler(signal.getsignal(signal.SIGUSR1)):
                raise Interrupted("SIGTERM", "before the search started")
            _INTERRUPTED_BY["signal"] = "SIGTERM"
            os.kill(os.getpid(), signal.SIGUSR1)

        signal.signal(signal.SIGTERM, on_sigterm)


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


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


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
# running the fit: a resume that fails leaves the folder as it was; full storage ends it in one line


@contextlib.contextmanager
def _before_tune_runs(experiment: str, fresh: bool, resume_command: str):
    """A storage error before Tune runs: a new experiment is removed again (the same command starts it once
    there is room); an existing one is told with the command that resumes it."""
    try:
        yield
    except StorageError as exc:
        if fresh:
            storage.remove(experiment)
            raise
        raise StorageError(f"{' '.join(str(exc).split())}; resume with: {resume_command}") from None


class _FolderSnapshot:
    """The files directly in an experiment folder, as bytes: what a failed ``--resume`` puts back.

    Only the top level: that is where Tune, the Optuna study and ``--trust-experiment`` write before a
    resumed search runs a trial (its experiment state, searcher state, optuna.db, raysl_signatures.json);
    trial folders are not touched until the restore has succeeded."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self.files = {name: storage.read_bytes(storage.join_uri(experiment, name))
                      for name, is_dir in storage.list_dir(experiment) if not is_dir}

    def put_back(self) -> None:
        for name, is_dir in storage.list_dir(self.experiment):
            if not is_dir and name not in self.files:
                storage.remove(storage.join_uri(self.experiment, name))
        for name, data in self.files.items():
            where = storage.join_uri(self.experiment, name)
            if storage.read_bytes(where, missing_ok=True) != data:
                storage.write_atomic(where, data or b"", option="--storage")


class _RestoreFailed(BaseException):
    """Tune's resume of a saved search failed. Not an Exception: Tune's controller catches every Exception
    of its resume, logs it and starts the experiment over, with no trials, over the saved state."""


@contextlib.contextmanager
def _restore_or_fail():
    """While it is open, a failed restore of Tune's saved state ends the fit (_RestoreFailed) instead of
    Tune's "Restarting experiment": that fresh start saved a state with 0 trials over the good one, and
    every later --resume failed on it."""
    def wrap(original):
        def resume(self, *args, **kwargs):
            try:
                return original(self, *args, **kwargs)
            except Exception as exc:
                raise _RestoreFailed() from exc

        return resume

    with ray_compat.tune_resume_wrapped(wrap):
        yield


def _restore_error(experiment: str, exc: BaseException) -> RayslError:
    detail = " ".join(str(exc).split())[:200]
    return RayslError(
        f"{experiment}: Ray Tune could not resume the search from its saved state ({type(exc).__name__}"
        f"{': ' + detail if detail else ''}); raysl left the experiment folder as it was; if one of its state files "
        "was damaged, put back an intact copy and resume again, otherwise start a new experiment with --name NEW")


class _StorageFailureLogs(logging.Filter):
    """Ray's own log records of a write that failed on full (read-only, denied) storage, e.g. "Saving
    experiment state to storage ... failed" with its traceback: noted for the search, which stops and says
    so in one line (SearchStop), and not shown."""

    def __init__(self, experiment: str):
        super().__init__()
        self.experiment = experiment

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        failure = None if exc is None else _capacity_failure(exc, self.experiment, "saving the search's state")
        if failure is None:
            return True
        storage.note_failure(failure)
        return False


@contextlib.contextmanager
def _storage_failures_noted(experiment: str, reserve):
    _TUNE_STOPS_ON_SIGUSR1["yes"] = False
    storage.watch_failures(reserve, _stop_search)
    quiet = _StorageFailureLogs(experiment)
    loggers = [logging.getLogger(name) for name in ray_compat.RAY_WRITE_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _capacity_failure(exc: BaseException, where: str, action: str) -> StorageError | None:
    """The StorageError in ``exc`` when storage could not take a write: no space, read-only, denied."""
    failure = storage.error_in(exc, where, action, "--storage")
    return failure if failure is not None and storage.is_capacity_failure(failure) else None


_RESERVE_MIN = 1 << 20


def _reserve_bytes(experiment: str) -> int:
    """Room for Tune's last save, the study's last writes and raysl's own: 1 MiB and twice what the
    experiment's top-level files other than the study take now (Tune rewrites them whole)."""
    sizes = [storage.size(storage.join_uri(experiment, name)) or 0
             for name, is_dir in storage.list_dir(experiment)
             if not is_dir and name not in STUDY_FILES and name != storage.RESERVE_FILE]
    return min(_RESERVE_MIN + 2 * sum(sizes), 256 << 20)


def _tune_was_interrupted() -> bool:
    """Whether a signal ended the fit that just returned. Tune's stop handler (SIGINT, and SIGUSR1, which
    raysl's SIGTERM handler sends) puts back the SIGINT handler it replaced when it runs; while Tune's own is
    still in place, no signal came (a fit that stopped for another reason is not an interruption)."""
    handler = signal.getsignal(signal.SIGINT)
    return not ray_compat.is_tune_stop_handler(handler)


def _fit(tuner, experiment: str, reserve, snapshot: _FolderSnapshot | None, resume_command: str):
    """``tuner.fit()``; returns (results, whether a signal interrupted it). A resume that Tune cannot restore
    leaves the folder as it was and is one line; full storage ends the search (SearchStop) with Tune's state
    saved in the room ``reserve`` kept; the state is signed for the next --resume however the fit ended."""
    sigint = signal.getsignal(signal.SIGINT)
    sign = True
    try:
        with _storage_failures_noted(experiment, reserve), _restore_or_fail():
            results = tuner.fit()
        # a signal raysl's own handlers took counts too (SIGTERM: _install_sigterm)
        signalled = _INTERRUPTED_BY.get("signal") != "SIGINT" or bool(_INTERRUPTED_BY.get("received"))
        return results, _tune_was_interrupted() or signalled
    except _RestoreFailed as failed:
        sign = False  # nothing of this run is kept: the folder goes back to what it was
        if threading_is_main():
            signal.signal(signal.SIGINT, sigint)  # Tune's handler would swallow a Ctrl-C from here on
        reserve.release()
        if snapshot is not None:
            snapshot.put_back()
        raise _restore_error(experiment, failed.__cause__ or failed) from None
    except Exception as exc:
        failure = storage.noted_failure() or _capacity_failure(exc, experiment, "saving the search's state")
        if failure is None:
            raise
        raise StorageError(f"{' '.join(str(failure).split())}; resume with: {resume_command}") from None
    finally:
        reserve.release()  # first: the last writes below and in _finish get its room
        if sign:
            # Ray has saved its state (also when interrupted): sign it for the next --resume (raysl.signing)
            signing.sign_quietly(experiment)


def _remove_unregistered_checkpoints(results, experiment: str) -> list[str]:
    """Delete each trial's checkpoint folders newer than the last one Tune registered: a checkpoint whose copy
    into the experiment failed (full storage) or that Tune never took. A resume starts the trial from the
    registered one and writes those again."""
    removed = []
    for result in results:
        trial_dir = storage.join_uri(experiment, Path(str(result.path)).name)
        latest = _checkpoint_index(Path(str(result.checkpoint.path)).name) if result.checkpoint is not None else -1
        for name, is_dir in storage.list_dir(trial_dir):
            index = _checkpoint_index(name) if is_dir else None
            if index is not None and index > latest:
                storage.remove(storage.join_uri(trial_dir, name))
                removed.append(storage.join_uri(trial_dir, name))
    return removed


def _checkpoint_index(name: str) -> int | None:
    head, _, number = name.rpartition("_")
    return int(number) if head == "checkpoint" and number.isdigit() else None


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

