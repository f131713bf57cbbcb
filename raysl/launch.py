"""Driver side of a run: resolve the data, start (or join) Ray, build and fit a TorchTrainer.

Everything a user can get wrong is checked here, before Ray starts. :func:`make_trainer` is the one place a
``TorchTrainer`` is built (``raysl train`` here, a multi-worker ``raysl tune`` trial in :mod:`raysl.trial`).
What the run's ``--out`` folder holds is :mod:`raysl.run_folder`; what happens when the run fails or is
stopped, :mod:`raysl.run_faults`.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from raysl import local_cluster, ray_compat, storage
from raysl.local_cluster import ALLOCATOR_ENV, LOCAL_TRAIN_ENV
from raysl.config import RunConfig
from raysl.console import stream_isatty
from raysl.data.locate import resolve_data_dir
from raysl.errors import ConfigError, Interrupted, RayslError, StorageError, TrainingError, WorkerDiedError
from raysl.interrupts import interrupt_signals, received_signal
from raysl.outcome import METRICS_FILE, TRAIN_RUN_NAME, status_of
from raysl.placement import check_placement, run_needs
from raysl.run_faults import (
    interrupted_detail,
    make_failure_policy,
    make_resize_callback,
    relay_line,
    stop_run,
    user_error_from,
    worker_death_from,
)
from raysl.run_folder import (
    MetricsFile,
    finished_run,
    kept_epochs,
    metrics_callback,
    refuse_unresumable,
    registered_checkpoints,
    repair_checkpoint_record,
    restore_metrics_rows,
)

if TYPE_CHECKING:
    import ray.train
    from ray.train.torch import TorchTrainer

    from raysl.data.read.dataset import RunData


def check_against_data(cfg: RunConfig, data_dir: str, source: str) -> "RunData":
    """Checks that need the manifest: labels, batch size vs data set size, the images the model sees vs the
    ViT's patch size, a GPU share; the run's data (its manifest read once) when they pass."""
    from raysl.data.read.dataset import RunData
    from raysl.methods import METHODS

    data = RunData.load(cfg, data_dir)
    manifest = data.manifest
    if METHODS[cfg.method.name].needs_labels and not manifest.labeled:
        raise ConfigError(
            f"{cfg.origin('method.name', source)}: method {cfg.method.name} needs labelled data; {data_dir} has no "
            "labels (prepared from an unlabelled source); use a labelled data set or a self-supervised method"
        )
    rows = manifest.splits["train"]["rows"]
    if cfg.optim.batch_size > rows:
        raise ConfigError(
            f"{cfg.origin('optim.batch_size', source)}: optim.batch_size: {cfg.optim.batch_size} is larger than "
            f"the {rows} training images in {data_dir}; use at most {rows}"
        )
    size = data.image_size  # what the model sees: the crop size (encoded images hold many sizes)
    if cfg.model.backbone == "vit_tiny" and size < cfg.model.patch_size:
        raise ConfigError(
            f"{cfg.origin('model.patch_size', source)}: model.patch_size: {cfg.model.patch_size} px patches do not "
            f"fit the {size} px images in {data_dir}; set data.crop_size or a smaller model.patch_size"
        )
    from raysl.gpu_memory import check_gpu_share

    # a fractional GPU share too small for the run; per-image state spans every split (rows index the source)
    check_gpu_share(cfg, manifest.channels, size, source, manifest.total_rows)
    return data


def reexec_with_allocator_env() -> None:
    """Re-execute this script with ALLOCATOR_ENV set (glibc reads it at start-up): for benches that
    compare raysl's Ray workers with an in-process baseline under the same allocator."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        os.environ.update(ALLOCATOR_ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def init_ray(num_cpus: int | None = None, *, verbose: bool = False) -> None:
    """Join RAY_ADDRESS if set (ray job submit), else the local cluster ``raysl up`` started if it runs
    (:mod:`raysl.local_cluster`), else start a local cluster of this process's own.

    Locally Ray gets more logical CPUs than cores: the Train workers, the Ray
    Data read tasks and (under Tune) the trial drivers must all be placed, and
    on a 2-core machine exact accounting deadlocks.

    Unless ``verbose``, Ray's own output stays out of the user's terminal: the
    workers' and actors' stdout/stderr is not forwarded (``log_to_driver``;
    it stays in the session's log files) and the driver's "ray" loggers show
    errors only. What raysl wants shown travels through :mod:`raysl.progress`.
    """
    import ray

    if ray.is_initialized():
        return
    quiet_ray(verbose)
    level = "WARNING" if verbose else "ERROR"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=verbose, logging_level=level)
        return
    # keep glibc from returning (and re-faulting) the large activation buffers on every step, and Ray Train's
    # settings for one machine (raysl.local_cluster); a user's own values win
    for key, value in {**ALLOCATOR_ENV, **LOCAL_TRAIN_ENV}.items():
        os.environ.setdefault(key, value)
    joined = local_cluster.running()
    if joined is not None:  # `raysl up`'s cluster: start-up once, not per command
        print(f"raysl: joining the local Ray cluster `raysl up` started at {joined.address} (`raysl down` stops "
              "it)", file=sys.stderr, flush=True)
        ray.init(address=joined.address, log_to_driver=verbose, logging_level=level)
        return
    cpus = num_cpus or local_cluster.default_num_cpus()
    # A scheduler's SIGTERM goes to the whole process group (`timeout`, Slurm, Kubernetes' `kill -- -PGID`).
    # Ray shields its processes from the group's SIGINT (Ctrl-C) but not from SIGTERM: the GCS and raylet
    # died with the driver's group, the driver's abort of the Train run waited for them, and Ray's core
    # worker ended the driver with exit 1 after 60 s of no GCS, nothing said, the checkpoints written after
    # the last registered one left behind. In their own session only the driver gets the signal; it stops
    # the run and ray.shutdown() stops the cluster, as for a SIGTERM to the driver alone.
    try:
        with ray_compat.processes_in_own_session():
            ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=verbose, configure_logging=True,
                     logging_level=level)
    except Exception as exc:
        if not ray_compat.is_node_startup_timeout(exc):
            raise
        # what it had started ends with this process (Ray ties them to it); nothing of the run is written yet
        raise RayslError(
            "Ray's local cluster did not start: its node did not register within Ray's 30 s (an overloaded "
            "machine: other jobs' CPU or memory); run the same command again when the machine is less busy "
            "(a run folder resumes from its last checkpoint), or join a running cluster with RAY_ADDRESS=...") from None


def quiet_ray(verbose: bool) -> None:
    """How much of Ray's own output reaches the user; set before Ray starts (a user's own env values win)."""
    import logging

    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI colour in forwarded log prefixes
    if not verbose:
        for name in ("ray", "ray.train", "ray.tune", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Tune's new output engine prints its experiment box and result tables even at verbose=0;
        # the classic one prints nothing at verbose=0 (`raysl tune` shows its own lines)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # Ray's driver prints cluster error messages to stdout, which holds raysl's JSON summary
        ray_compat.filter_cluster_errors(_UNACTIONABLE_RAY_ERRORS, lambda: sys.stderr)


# the raylet's "N PYTHON worker processes have been started ... which is Nx the maximum expected
# startup concurrency" warning: every run on a small machine triggers it and a user cannot act on it
# Also "A worker died or was killed": when it is a Train worker, raysl's own line says so and how to resume.
_UNACTIONABLE_RAY_ERRORS = ("worker processes have been started on node",
                            "A worker died or was killed while executing a task")


def run_worker(loop_config: dict) -> None:
    """What each Train worker of a ``raysl train`` run runs: raysl.train's loop, imported there. The Train
    controller unpickles the function it is given by reference; this module does not import torch, so the
    controller of a one-worker run (make_trainer) does not either."""
    from raysl.train import train_worker

    train_worker(loop_config)


def make_trainer(train_loop: Callable[[dict], None], loop_config: dict[str, Any], cfg: RunConfig, *, name: str,
                 storage_path: str, failure_config: ray.train.FailureConfig, callbacks: list[Any],
                 datasets: dict[str, Any], keep_extra: int = 0) -> TorchTrainer:
    """The TorchTrainer of a run: ``train_loop(loop_config)`` on ``cfg.scale``'s workers (a number, or
    ``(min, max)``: elastic), each holding ``scale.cpus_per_worker`` CPUs and, with ``scale.use_gpu``,
    ``scale.gpus_per_worker`` GPUs; Train run ``name`` in ``storage_path`` (the same name and storage again
    resume from its last checkpoint), keeping ``cfg.checkpoint.keep + keep_extra`` checkpoints.

    ``raysl train`` (:func:`train_run`) and a multi-worker ``raysl tune`` trial (raysl.trial) differ in the
    loop, its config, the name and storage, the failure config, the callbacks and the Ray Datasets (``{}``
    where the workers read the shards themselves), and a PBT trial keeps ``keep_extra`` more checkpoints.
    """
    import ray.train

    scale = cfg.scale
    resources = {"CPU": scale.cpus_per_worker, **({"GPU": scale.gpus_per_worker} if scale.use_gpu else {})}
    # One worker needs no torch process group (raysl.distributed checks the world size), and without
    # TorchTrainer's backend the run's Train controller does not import torch (its CPU at start-up fell from
    # ~2.8 to ~2.0 s in single runs on a 2-core VM). Elastic and multi-worker runs keep the gloo/NCCL group.
    if scale.num_workers == 1:
        trainer_class = ray_compat.data_parallel_trainer()
    else:
        from ray.train.torch import TorchTrainer as trainer_class
    return trainer_class(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scale.num_workers,  # (min, max): elastic
            use_gpu=scale.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep + keep_extra),
            failure_config=failure_config,
            callbacks=callbacks,
        ),
        datasets=datasets,
    )


def train_run(cfg: RunConfig, out: str, *, source: str = "config", verbose: bool = False) -> dict:
    """Train one run into ``out`` (resuming from its last checkpoint); returns the summary.

    Progress (rank 0's banner and steps, each epoch's line) reaches stderr through a
    relay actor that a driver thread polls while ``trainer.fit()`` runs (raysl.progress).
    """
    # a run in --out that this config cannot resume: refused before anything is written (config.yaml below)
    refuse_unresumable(cfg, storage.resolve(out))
    done = finished_run(cfg, storage.resolve(out))
    if done is not None:  # before the data and Ray: nothing is left to train
        print(f"[raysl] the run in {done['out']} is already finished (all {cfg.optim.epochs} epochs, status finished); "
              f"nothing to train. Its results: {storage.join_uri(done['out'], 'metrics.jsonl')}, final checkpoint "
              f"{done['checkpoint']}; to train longer, pass --set optim.epochs=N (more than {cfg.optim.epochs})",
              file=sys.stderr)
        return done
    import ray.train

    from raysl import progress
    from raysl.config_load import to_yaml
    data_dir = resolve_data_dir(cfg)
    data = check_against_data(cfg, data_dir, source)
    from raysl.data.read import shards

    # a shard deleted or changed since prepare fails here, in one line, not inside a Ray Data task
    shards.verify_shards(data_dir, data.manifest, checksums=storage.resolve(data_dir).is_local)
    out_dir = storage.make_dirs(out)  # a local folder or a URI; read-only or full: one line, before Ray
    resuming = storage.exists(out_dir.join("config.yaml")) and storage.exists(out_dir.join(TRAIN_RUN_NAME))
    if resuming:
        print(f"[raysl] resuming the run in {out_dir} from its last checkpoint", file=sys.stderr)
        repaired = repair_checkpoint_record(out_dir)
        if repaired:
            print(repaired, file=sys.stderr)
        restore_metrics_rows(out_dir)
    storage.write_atomic(out_dir.join("config.yaml"), to_yaml(cfg))

    init_ray(verbose=verbose)
    # before the trainer asks for its workers: on a cluster that cannot hold them it would wait forever
    check_placement([run_needs(cfg, not data.reads_in_worker)], cfg.scale.placement_timeout_s)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    in_worker = data.reads_in_worker
    # pixel rows, or JPEG crops cut by Ray Data tasks; none where the one worker reads the shards itself
    datasets = {} if in_worker else {"train": data.ray_dataset()}
    relay = progress.start_relay()
    failure_config = ray.train.FailureConfig(max_failures=cfg.scale.max_failures)
    say = functools.partial(relay_line, relay)  # restarts and resizes, told from the TrainController
    trainer = make_trainer(
        run_worker,
        {"config": cfg.model_dump(mode="json"), "data_dir": data_dir, "read_in_worker": in_worker,
         "progress": progress.relay_config(relay, stream_isatty(sys.stderr))},
        cfg,
        name=TRAIN_RUN_NAME,
        storage_path=out_dir.uri,
        failure_config=failure_config,
        callbacks=[metrics_callback(out_dir, show=False),
                   make_resize_callback(say, cfg.optim.batch_size)],
        datasets=datasets,
    )
    # Ray Train V2 hands its controller to a SIGINT handler of its own; raysl's handlers stop the run
    # instead (SIGTERM too) and say what was kept
    # and Ray's failure policy, with raysl's: user errors are final, each restart is told (see above)
    controllers: list = []
    ray_compat.run_controller_with(trainer, controllers, make_failure_policy(failure_config, say, out_dir))
    view = progress.DriverView(relay)
    try:
        with interrupt_signals():
            try:
                with view:
                    result = trainer.fit()
            except KeyboardInterrupt:  # raysl's Interrupted, or the plain one Ray's ray.get makes of it
                stop_run(controllers, out_dir)
                registered = registered_checkpoints(out_dir)
                reported = max((int(r.get("epoch") or 0) for r in MetricsFile(out_dir.join(METRICS_FILE),
                                                                                show=False).rows()), default=0)
                # the last epoch line the user saw (or a later epoch metrics.jsonl holds), and where a resume
                # continues: the two differ by the epochs since the last checkpoint, and the line says so
                detail = interrupted_detail(max(view.renderer.epochs_done, reported),
                                            registered[1] if registered else 0, cfg.optim.epochs,
                                            cfg.checkpoint.every_epochs, out_dir)
                raise Interrupted(received_signal("SIGINT"), detail) from None
    except Exception as exc:  # noqa: BLE001 - translate worker errors a user can act on
        user = user_error_from(exc) or storage.error_in(exc, out_dir.uri)  # e.g. Ray's own write on a full disk
        if user is None and worker_death_from(exc) is not None:
            stop_run(controllers, out_dir)
            _, kept = kept_epochs(out_dir, cfg.optim.epochs)
            restarts = cfg.scale.max_failures
            spent = f", with the {restarts} restart{'s' * (restarts != 1)} of --max-failures {restarts} used up" \
                if restarts else ""
            error = WorkerDiedError(
                f"a training worker died (killed by a signal: out of memory or preemption?){spent}; {kept}")
            error.summary = {"status": "errored", "error": str(error), "out": str(out_dir)}  # type: ignore[attr-defined]
            raise error from None
        if user is None:
            raise
        summary = {"status": status_of(user), "error": str(user), "out": str(out_dir)}
        error = user if isinstance(user, StorageError) else TrainingError(str(user))
        error.summary = summary  # type: ignore[attr-defined]
        raise error from None
    summary = dict(result.metrics or {})
    summary["out"] = str(out_dir)
    if result.checkpoint is not None:
        summary["checkpoint"] = result.checkpoint.path
    return summary
