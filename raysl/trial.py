"""What runs inside a ``raysl tune`` trial: the Tune function trainable and what it reports to Tune.

One Tune function trainable per trial (:func:`make_trainable`) builds the run config (base + sampled
keys) and trains it:

- ``scale.num_workers == 1``: ``train_worker`` runs in the trial's own process
  with :class:`TuneIO` (reports and checkpoints go straight to Tune; the trial
  reserves the worker's CPUs/GPU, :func:`trial_resources`);
- more workers: the trial fits a ``TorchTrainer`` (Ray Train V2 cannot be
  wrapped by a Tuner; a trainable that fits one is the supported way) whose
  callback relays rank 0's reports to Tune, each Train checkpoint as a small Tune
  checkpoint that points at it (so PBT can clone multi-worker trials: a clone's
  workers start from the donor's Train checkpoint, see :mod:`raysl.pbt`); the
  trial driver reserves no CPU.

Every report carries the objectives (:class:`ResultFiller`). A trial that diverges, collapses or samples
an unusable config ends normally with ``status`` set and its objective at the worst value, so the search
goes on and the searcher learns that region is bad. A trial whose storage cannot take a write (full,
read-only) reports its last result again with the error and waits for the search to stop
(:func:`storage_failure_in`, read by raysl.search.SearchStop).

The search that runs these trials is :mod:`raysl.search`, which imports this module (not the reverse).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from raysl import jsonio, storage
from raysl.config import RunConfig
from raysl.data.locate import resolve_data_dir
from raysl.data.read.dataset import RunData
from raysl.errors import CollapsedError, DivergedError, RayslError
from raysl.outcome import BAD_STATUSES, TRAIN_KEYS, Status, status_of, worst_value
from raysl.pbt import RESUMED_FILE
from raysl.space import SearchSpace, apply_sample

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

    def __init__(self, use_gpu: bool, filler: ResultFiller, trial=None, delivered=None,
                 where: str = "", report_resume: bool = False):
        self.report_resume = report_resume  # a PBT clone: its first report says which weights it continued from
        self.use_gpu = use_gpu
        self.filler = filler
        self.trial = trial  # raysl.pbt.TrialRef: each checkpoint says which trial wrote it (PBT lineage)
        self.delivered = delivered if delivered is not None else _Delivered()
        self.where = where  # the trial's folder in the experiment, for a storage error's message

    def train_shard(self, data: RunData):
        # The trial reads its shards with pyarrow in its own process: under Tune on a small
        # machine, Ray Data tasks compete with the trials for CPUs (and can get none).
        return data.worker_reader()

    def checkpoint_dir(self):
        import ray.tune

        from raysl.pbt import checkpoint_folder

        ckpt = ray.tune.get_checkpoint()
        return None if ckpt is None else checkpoint_folder(ckpt)

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

    def on_resume(self, epoch: int, state_dict: dict) -> dict:
        from raysl.pbt import resume_report

        return resume_report(epoch, state_dict) if self.report_resume else {}


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
    from raysl.loop_io import RayTrainIO
    from raysl.train import train_worker

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
# saying so, see raysl.search.SearchStop); past it, it fails as any other trial would.
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
        from raysl.launch import check_against_data
        from raysl.run_config import build_config
        from raysl.run_faults import user_error_from
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
                train_worker(loop_config, TuneIO(cfg.scale.use_gpu, filler, trial, delivered, where,
                                                 report_resume=start.cloned))
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
    from ray.util.queue import Queue

    from raysl.launch import make_trainer

    train_storage = storage.join_uri(experiment, trial.trial_dir)
    data = RunData.load(cfg, data_dir)
    in_worker = data.reads_in_worker
    loop_config = {**loop_config, "stop_marker": storage.join_uri(train_storage, start.run, "raysl_stop.json"),
                   "read_in_worker": in_worker,
                   "resume_from": start.resume_from,
                   "resume_record": storage.join_uri(train_storage, start.run, RESUMED_FILE) if start.cloned else None}
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Read tasks take no CPU slot: trials' Train workers can hold every CPU of a small
    # cluster, and a read task waiting for one would stall the trial forever. JPEG shards
    # add decode tasks of one CPU each: raysl.searcher._default_concurrency leaves a CPU per trial for them.
    # (small-image shards: each worker reads its part itself, no Ray Dataset)
    datasets = {} if in_worker else {"train": data.ray_dataset(read_remote_args={"num_cpus": 0})}
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = make_trainer(
        train_worker_in_trial,
        loop_config,
        cfg,
        # same name and storage on a restarted trial: Train resumes from its last checkpoint
        name=start.run,
        storage_path=train_storage,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        callbacks=[_relay_callback(objectives, extra, reports, storage.join_uri(train_storage, start.run))],
        datasets=datasets,
        keep_extra=keep_extra,
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


def trial_variants_needs(space: SearchSpace, decode_tasks: bool, limit: int = 64) -> list:
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
    return [trial_needs(cfg, decode_tasks) for cfg in configs]
