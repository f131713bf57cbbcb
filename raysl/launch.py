"""Driver side of a run: resolve the data, start (or join) Ray, fit a TorchTrainer.

Everything a user can get wrong is checked here, before Ray starts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from raysl.config import RunConfig
from raysl import jsonio, ray_compat, storage
from raysl.console import stream_isatty
from raysl.data.locate import resolve_data_dir
from raysl.errors import (ConfigError, Interrupted, RayslError, StorageError, TrainingError,
                          WorkerDiedError)
from raysl.interrupts import interrupt_signals, received_signal
from raysl.outcome import TRAIN_RUN_NAME, status_of
from raysl.placement import check_placement, run_needs
from raysl.progress import EPOCH_FIELDS, epoch_line

STATUS_FIELDS = EPOCH_FIELDS  # shown in each epoch line


def check_against_data(cfg: RunConfig, data_dir: str, source: str) -> Any:
    """Checks that need the manifest: batch size vs data set size, image size vs ViT patch size."""
    from raysl.data import shards
    from raysl.data.pipeline import global_crop_size, is_encoded
    from raysl.methods import METHODS

    manifest = shards.load_manifest(data_dir)
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
    # encoded shards hold images of many sizes: the crop size (224 by default) is what the model sees
    size = global_crop_size(cfg, manifest) if is_encoded(manifest) else (
        cfg.data.crop_size or min(manifest.height, manifest.width))
    if cfg.model.backbone == "vit_tiny" and size < cfg.model.patch_size:
        raise ConfigError(
            f"{cfg.origin('model.patch_size', source)}: model.patch_size: {cfg.model.patch_size} px patches do not "
            f"fit the {size} px images in {data_dir}; set data.crop_size or a smaller model.patch_size"
        )
    from raysl.gpu_memory import check_gpu_share

    # a fractional GPU share too small for the run; per-image state spans every split (rows index the source)
    check_gpu_share(cfg, manifest.channels, size, source, manifest.total_rows)
    return manifest


# glibc allocator thresholds for Ray's processes: keep large activation buffers instead of returning
# (and re-faulting) them every step; 32 MiB is glibc's maximum mmap threshold on 64-bit
ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def reexec_with_allocator_env() -> None:
    """Re-execute this script with ALLOCATOR_ENV set (glibc reads it at start-up): for benches that
    compare raysl's Ray workers with an in-process baseline under the same allocator."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        os.environ.update(ALLOCATOR_ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])


# What a run on a local cluster that raysl starts sets for Ray Train (public env vars its controller reads):
# - the preemption watcher (an actor per run) follows a cloud autoscaler's node drains; nothing drains
#   the one machine such a cluster is;
# - the controller polls its workers for reports and health every interval (2 s by default): a short
#   run's last epoch, and its end, waited up to that long each; on one machine a poll costs little.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def init_ray(num_cpus: int | None = None, *, verbose: bool = False) -> None:
    """Join RAY_ADDRESS if set (ray job submit), else start a local cluster.

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
    # keep glibc from returning (and re-faulting) the large activation buffers on every step
    for key, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(key, value)
    for key, value in LOCAL_TRAIN_ENV.items():  # see LOCAL_TRAIN_ENV; a user's own values win
        os.environ.setdefault(key, value)
    cpus = num_cpus or max(4, 2 * (os.cpu_count() or 2))
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


class MetricsFile:
    """Appends each report to ``metrics.jsonl`` (exactly once per epoch, across resumes).

    ``show``: also print the epoch line to stderr. ``raysl train`` does not: there this
    runs in the TrainController, and rank 0 relays the line itself, in order with its
    step progress (see raysl.progress).
    """

    def __init__(self, path: str | Path | storage.Location, show: bool = True):
        self.path = storage.resolve(path)  # a local path or a URI
        self.show = show

    def rows(self) -> list[dict]:
        rows = []
        for line in (storage.read_text(self.path, missing_ok=True) or "").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def write(self, metrics: dict) -> None:
        rows = [row for row in self.rows() if row.get("epoch", 0) < metrics.get("epoch", 0)]
        rows.append(metrics)
        # atomic: a full disk leaves the previous file, never a torn one; strict JSON (null for a
        # non-finite metric), so any JSON reader takes the file
        storage.write_atomic(self.path, "".join(jsonio.dumps(r) + "\n" for r in rows))
        if self.show:
            print(epoch_line(metrics, STATUS_FIELDS), file=sys.stderr, flush=True)


def restore_metrics_rows(out: storage.Location) -> None:
    """Put back the row of the checkpoint a resume starts from when metrics.jsonl lacks it.

    Ray registers a checkpoint before its callbacks run, so a run that failed while writing
    metrics.jsonl (a full disk) resumes after an epoch whose row was never written: the
    checkpoint holds that epoch's metrics, so the row is restored from it.
    """
    from raysl.checkpoint import load_state
    from raysl.train import CHECKPOINT_FILE

    run = out.join(TRAIN_RUN_NAME)
    storage.remove_temporaries(run)  # a checkpoint upload killed mid-way
    metrics = MetricsFile(out.join("metrics.jsonl"), show=False)
    have = {row.get("epoch") for row in metrics.rows()}
    names = sorted((n for n, is_dir in storage.list_dir(run) if is_dir and n.startswith("checkpoint_")), reverse=True)
    for name in names:  # Ray names checkpoint folders by time: the newest first
        state_file = run.join(name, CHECKPOINT_FILE)
        try:
            if state_file.is_local:
                state = load_state(state_file.path, mmap=True)
            else:
                import io

                import torch

                state = torch.load(io.BytesIO(storage.read_bytes(state_file)), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a torn or foreign one is not resumed from either
            continue
        row = dict(state.get("metrics") or {})
        if not row or row.get("epoch") in have:
            return
        row["checkpoint"] = run.join(name).path
        metrics.write(row)
        print(f"[raysl] restored the metrics.jsonl row of epoch {row['epoch']} from its checkpoint", file=sys.stderr)
        return


def _make_callback(path: storage.Location, show: bool = True):
    from ray.train.v2.api.callback import UserCallback

    class _Callback(UserCallback):
        def __init__(self):
            self.file = MetricsFile(path, show)

        def after_report(self, run_context, metrics, checkpoint):
            row = dict(metrics[0])
            if checkpoint is not None:
                row["checkpoint"] = checkpoint.path
            self.file.write(row)

    return _Callback()


def relay_line(relay, text: str) -> None:
    """A line for the user from the TrainController (an async actor: it does not wait)."""
    relay.put.remote({"kind": "line", "text": text})


def make_failure_policy(failure_config, say: Callable[[str], Any], out: storage.Location):
    """Ray Train's failure policy for ``raysl train``, with two changes: a RayslError a worker raised
    (diverged, collapsed, a full disk, no loadable checkpoint) ends the run at once, since a restart
    from the checkpoint would only repeat it; and each restart is told in one line (``say``)."""
    from ray.train.v2.api.exceptions import ControllerError

    DefaultFailurePolicy, FailureDecision = ray_compat.failure_policy_base()

    class _RunFailurePolicy(DefaultFailurePolicy):
        def make_decision(self, training_failed_error):
            if user_error_from(training_failed_error) is not None:
                return FailureDecision.RAISE
            _, preemptions = ray_compat.failure_counts(self) or (0, 0)  # Ray's own counts
            decision = super().make_decision(training_failed_error)
            if decision == FailureDecision.RETRY and not isinstance(training_failed_error, ControllerError):
                # (a ControllerError here is Ray retrying to start the group: no worker failed)
                registered = registered_checkpoints(out)
                failures, preemptions_now = ray_compat.failure_counts(self) or (0, 0)
                line = restart_line(training_failed_error, registered[1] if registered else 0,
                                    self.failure_config.max_failures, failures,
                                    preempted=preemptions_now > preemptions)
                say(line)
            return decision

    return _RunFailurePolicy(failure_config)


def restart_line(error: BaseException, epoch: int, max_failures: int, failures: int, preempted: bool = False) -> str:
    """``[raysl] a training worker died; restarting the worker group from the epoch 3 checkpoint
    (failure 1 of 2)``: what failed, where the run goes on from, and how much of the budget is used."""
    where = f"the epoch {epoch} checkpoint" if epoch else "the start (no epoch is checkpointed yet)"
    budget = f"failure {failures} of {max_failures}"
    if preempted:  # Ray counts them apart (FailureConfig.max_preemption_failures, unlimited)
        what, budget = "a worker's node was preempted", "preemptions do not count against --max-failures"
    elif worker_death_from(error) is not None:
        what = "a training worker died"
    else:  # an exception in the training code (not a RayslError: those end the run)
        cause = _find_cause(error, lambda e: not type(e).__module__.startswith("ray."))
        what = "a training worker failed"
        if cause is not None:
            what += f" ({type(cause).__name__}: {' '.join(str(cause).split())[:200]})"
    return f"[raysl] {what}; restarting the worker group from {where} ({budget})"


def make_resize_callback(say: Callable[[str], Any], batch_size: int):
    """Tells the user each time Ray Train starts the worker group at another size (elastic
    ``scale.num_workers: [min, max]``): the global batch stays, each worker's share changes."""
    class _ResizeCallback(ray_compat.controller_callback_base()):  # type: ignore[misc]
        def __init__(self):
            self.workers: int | None = None

        def on_controller_start_worker_group(self, *, scaling_config, num_workers):
            if self.workers is not None and num_workers != self.workers:
                say(resize_line(self.workers, num_workers, batch_size))
            self.workers = num_workers
            return None

    return _ResizeCallback()


def resize_line(before: int, after: int, batch_size: int) -> str:
    """``[raysl] workers: 2 -> 1, per-worker batch 64 -> 128 (global batch 128)``."""
    return (f"[raysl] workers: {before} -> {after}, per-worker batch {batch_size // before} -> "
            f"{batch_size // after} (global batch {batch_size})")


def user_error_from(exc: BaseException) -> RayslError | None:
    """The RayslError a worker raised, found through Ray's wrappers."""
    return _find_cause(exc, lambda e: isinstance(e, RayslError))


def _find_cause(exc: BaseException, wanted) -> Any:
    """The first exception in ``exc``'s chain (causes, Ray's wrapped causes, per-worker failures)
    for which ``wanted`` is true."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if wanted(e):
            return e
        for attr in ("cause", "health_check_failure"):  # Ray's wrapped cause; a failed worker health check's
            cause = getattr(e, attr, None)
            if isinstance(cause, BaseException):
                stack.append(cause)
        for attr in ("worker_failures", "_worker_failures"):
            failures = getattr(e, attr, None)
            if isinstance(failures, dict):
                stack.extend(failures.values())
        stack.extend([e.__cause__, e.__context__])
        as_inst = getattr(e, "as_instanceof_cause", None)
        if callable(as_inst):
            try:
                stack.append(as_inst())
            except Exception:
                pass
    return None


# --------------------------------------------------------------------------
# interruptions and dead workers: stop cleanly, keep every checkpoint Ray registered

# Ray Train's record of the checkpoints it registered (what a resume starts from)
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


@contextlib.contextmanager
def quiet_stderr():
    """Ray's own shutdown (aborted actors, a raylet going away) writes to fd 2 from C++: keep it out
    of the user's terminal while raysl stops the run (``RAYSL_DEBUG_STOP=1`` shows it)."""
    if os.environ.get("RAYSL_DEBUG_STOP"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def registered_checkpoints(out: storage.Location) -> tuple[list[str], int] | None:
    """(checkpoint folder names, epoch of the latest) that Ray Train registered for the run in ``out``:
    ``([], 0)`` before the first one; None when its record cannot be read."""
    text = storage.read_text(out.join(TRAIN_RUN_NAME, SNAPSHOT_FILE), missing_ok=True)
    if text is None:
        return [], 0
    try:
        snapshot = json.loads(text)
        names = [r["checkpoint_dir_name"] for r in snapshot.get("checkpoint_results") or []]
        latest = snapshot.get("latest_checkpoint_result") or {}
        return names, int((latest.get("metrics") or {}).get("epoch") or 0)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def discard_unregistered_checkpoints(out: storage.Location) -> None:
    """After a stop: remove what a stopped upload left (temporaries, and checkpoint folders written
    after the last one Ray registered: a resume never starts from them and their epochs are not in
    metrics.jsonl), so every checkpoint folder left is one the run can resume from."""
    run = out.join(TRAIN_RUN_NAME)
    if not storage.is_dir(run):
        return
    storage.remove_temporaries(run)
    registered = registered_checkpoints(out)
    if registered is None:
        return
    names, _ = registered
    newest = max(names) if names else ""
    for name, is_dir in storage.list_dir(run):
        if is_dir and name.startswith("checkpoint_") and name not in names and name > newest:
            storage.remove(run.join(name))


def kept_epochs(out: storage.Location, epochs: int) -> tuple[int, str]:
    """(the epoch a resume starts from, "epochs 1-N are checkpointed in OUT")."""
    registered = registered_checkpoints(out)
    done = registered[1] if registered else 0
    if done == 0:
        return 0, f"no epoch is checkpointed yet in {out}"
    if done >= epochs:
        return done, f"all {epochs} epochs are checkpointed in {out}"
    return done, (f"epoch 1 is checkpointed in {out}" if done == 1 else f"epochs 1-{done} are checkpointed in {out}")


def interrupted_detail(finished: int, checkpointed: int, epochs: int, every: int, out: storage.Location | str) -> str:
    """What an interrupted ``raysl train`` kept: ``after epoch 8 of 30; a resume continues from the epoch 6
    checkpoint in OUT and repeats epochs 7-8 (checkpoint.every_epochs=2)``.

    ``finished``: the last epoch that finished (its epoch line was printed); ``checkpointed``: the epoch
    of the newest checkpoint Ray registered, where a resume continues from; ``every``:
    ``checkpoint.every_epochs``. The epochs in between are trained again, and the line says why: not
    every epoch is checkpointed, or the stop came before the newest checkpoint was registered.
    """
    finished = max(finished, checkpointed)
    if finished == 0:
        return f"during epoch 1 of {epochs}; no epoch is checkpointed yet in {out}, a resume starts from epoch 1"
    head = f"after epoch {finished} of {epochs}; "
    if checkpointed == finished:
        return head + f"a resume continues from the epoch {checkpointed} checkpoint in {out}"
    due = epochs if finished == epochs else finished - finished % every  # the newest epoch meant to be checkpointed
    why = f"checkpoint.every_epochs={every}" if checkpointed >= due else \
        f"the epoch {due} checkpoint was not saved before the stop"
    again = f"epoch {finished}" if finished == checkpointed + 1 else f"epochs {checkpointed + 1}-{finished}"
    if checkpointed == 0:
        return head + f"no epoch is checkpointed yet in {out} ({why}), a resume starts from epoch 1"
    return head + f"a resume continues from the epoch {checkpointed} checkpoint in {out} and repeats {again} ({why})"


# What a re-run of `raysl train` on an --out that holds a run may change: it resumes that run from its
# checkpoint, and the run's config.yaml is then overwritten with the new config, so a change is allowed
# only when the checkpoint still loads and config.yaml still says how every epoch was trained:
# - optim.epochs: train longer (the finished-run line says to); the schedule stretches from the
#   checkpointed step on;
# - scale.*: where and how the same training runs (workers: the global batch optim.batch_size stays
#   whatever their number; GPUs, precision, threads, restarts, the placement timeout);
# - eval.*, checkpoint.*: what is measured and kept, not what is learned;
# - model.compile, model.channels_last, data.decode, data.cache_on_device, data.max_cached_bytes: how the
#   same computation runs; the checkpoint's tensors are the same.
# Everything else is the run itself, and a change is refused: model.* (the checkpoint's tensors have that
# architecture's shapes: a resume failed with a size mismatch after config.yaml was overwritten); method.*
# (the loss and what it keeps in the checkpoint: queues, prototypes, teacher, centres); data.* (what the
# run learns from: source, folder, fraction, crops, augmentations); the rest of optim.* and schedule.*
# (the optimizer state is that optimizer's; another batch size or schedule puts the checkpoint's step
# elsewhere in the lr schedule); seed (the order and augmentations of every epoch).
RESUME_MAY_CHANGE = ("optim.epochs", "scale.", "eval.", "checkpoint.", "model.compile", "model.channels_last",
                     "data.decode", "data.cache_on_device", "data.max_cached_bytes")
_UNSET = "(unset)"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def resume_conflicts(saved: Any, cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for each setting that ``cfg`` changes in a run's saved config
    (config.yaml, as loaded) and that a resume may not change (RESUME_MAY_CHANGE); [] when ``cfg`` can
    resume that run. Keys a config leaves to their default compare by their default."""
    from pydantic import ValidationError

    from raysl.run_config import RunConfig  # parses with every method registered

    try:  # with its defaults filled in (a run saved before a key existed has it at its default)
        saved = RunConfig.model_validate(saved).model_dump(mode="json")
    except (ValidationError, ValueError, TypeError):  # a config of another raysl: compared as it is
        pass
    old, new = _flat(saved), _flat(cfg.model_dump(mode="json"))
    for flat in (old, new):  # one prepared folder, however it was written
        path = flat.get("data.path")
        if isinstance(path, str) and not storage.is_uri(path):
            flat["data.path"] = str(Path(path).expanduser().resolve())
    conflicts = [(key, old.get(key, _UNSET), new.get(key, _UNSET)) for key in [*new, *(k for k in old if k not in new)]
                 if old.get(key, _UNSET) != new.get(key, _UNSET)
                 and not any(key == may or (may.endswith(".") and key.startswith(may)) for may in RESUME_MAY_CHANGE)]
    if any(key == "method.name" for key, _, _ in conflicts):  # another method: its knobs differ with it
        conflicts = [c for c in conflicts if c[0] == "method.name" or not c[0].startswith("method.")]
    return conflicts


def refuse_unresumable(cfg: RunConfig, out: storage.Location) -> None:
    """A ConfigError, before anything is written, when ``out`` holds a run (a checkpoint, or an epoch in
    metrics.jsonl) that ``cfg`` cannot resume: re-running it would overwrite its config.yaml and then
    fail to load its checkpoint (or train on from it as another run)."""
    import yaml

    text = storage.read_text(out.join("config.yaml"), missing_ok=True)
    if text is None:
        return
    run = out.join(TRAIN_RUN_NAME)
    checkpointed = any(is_dir and name.startswith("checkpoint_") for name, is_dir in storage.list_dir(run))
    if not checkpointed and not MetricsFile(out.join("metrics.jsonl"), show=False).rows():
        return  # nothing trained yet (stopped before its first epoch): nothing a new config would harm
    try:
        saved = yaml.safe_load(text)
    except yaml.YAMLError:
        saved = None
    conflicts = resume_conflicts(saved, cfg)
    if not conflicts:
        return

    def shown(value: Any) -> str:
        text = value if isinstance(value, str) else jsonio.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    listed = ", ".join(f"{key}: {shown(a)} -> {shown(b)}" for key, a, b in conflicts[:6])
    if len(conflicts) > 6:
        listed += f" and {len(conflicts) - 6} more"
    raise ConfigError(
        f"--out {out} holds a run trained with other settings ({listed}), and a resume cannot change what a "
        f"run learns (only optim.epochs, scale.*, eval.*, checkpoint.*); train these settings into a new "
        f"--out, or resume that run with its own settings ({out.join('config.yaml')})")


def finished_run(cfg: RunConfig, out: storage.Location) -> dict | None:
    """The summary of the run in ``out`` when it already finished with this very config, else None.

    Finished: its ``config.yaml`` is ``cfg``; Ray Train's newest registered checkpoint is of the last
    epoch (``optim.epochs``) and its state file is there; ``metrics.jsonl``'s last row is that epoch
    with status finished. The summary is what the run's own ``raysl train`` printed: that row, ``out``
    and ``checkpoint``. (Running it again would start Ray, tens of seconds, to restore that checkpoint
    and report it once more.)
    """
    import yaml

    from raysl.config_load import to_yaml

    text = storage.read_text(out.join("config.yaml"), missing_ok=True)
    snapshot = storage.read_text(out.join(TRAIN_RUN_NAME, SNAPSHOT_FILE), missing_ok=True)
    if text is None or snapshot is None:
        return None
    try:
        if yaml.safe_load(text) != yaml.safe_load(to_yaml(cfg)):
            return None  # another config (more epochs, another lr): Ray decides what is left to train
        latest = json.loads(snapshot)["latest_checkpoint_result"]
        name, epoch = str(latest["checkpoint_dir_name"]), int(latest["metrics"]["epoch"])
    except (yaml.YAMLError, ValueError, TypeError, KeyError):
        return None
    if epoch != cfg.optim.epochs or not storage.is_file(out.join(TRAIN_RUN_NAME, name, "state.pt")):
        return None  # state.pt: raysl.train.CHECKPOINT_FILE (importing raysl.train imports torch)
    rows = [r for r in MetricsFile(out.join("metrics.jsonl"), show=False).rows() if isinstance(r.get("epoch"), int)]
    last = max(rows, key=lambda r: r["epoch"], default={})
    if last.get("epoch") != cfg.optim.epochs or last.get("status") != "finished":
        return None
    summary = {k: v for k, v in last.items() if k != "checkpoint"}
    summary["out"] = str(out)
    summary["checkpoint"] = last.get("checkpoint") or out.join(TRAIN_RUN_NAME, name).path
    return summary


def _stop_run(controllers: list, out: storage.Location) -> None:
    """Abort the Train run (its workers stop writing), leave Ray quietly, tidy the run folder."""
    import ray

    with quiet_stderr():
        for controller in controllers:
            try:
                ray.get(controller.abort.remote(), timeout=120)
            except Exception:  # noqa: BLE001 - abort ends the controller actor: RayActorError is the normal answer
                pass
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - the run is over either way
            pass
    discard_unregistered_checkpoints(out)


def worker_death_from(exc: BaseException) -> BaseException | None:
    """The Ray error saying a Train worker process died (a signal, the OOM killer, a lost node)."""
    from ray import exceptions as rex

    died = tuple(getattr(rex, name) for name in ("ActorDiedError", "RayActorError", "WorkerCrashedError",
                                                 "OutOfMemoryError", "NodeDiedError") if hasattr(rex, name))
    health = ray_compat.worker_health_check_error()  # Train V2's dead worker (its cause: the actor died)
    if health is not None:
        died = (*died, health)
    return _find_cause(exc, lambda e: isinstance(e, died))


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
    from ray.train.torch import TorchTrainer

    from raysl import progress
    from raysl.config_load import to_yaml
    from raysl.data.pipeline import reads_in_worker, train_dataset
    from raysl.train import train_worker

    data_dir = resolve_data_dir(cfg)
    manifest = check_against_data(cfg, data_dir, source)
    from raysl.data import shards

    # a shard deleted or changed since prepare fails here, in one line, not inside a Ray Data task
    shards.verify_shards(data_dir, manifest, checksums=storage.resolve(data_dir).is_local)
    out_dir = storage.make_dirs(out)  # a local folder or a URI; read-only or full: one line, before Ray
    resuming = storage.exists(out_dir.join("config.yaml")) and storage.exists(out_dir.join(TRAIN_RUN_NAME))
    if resuming:
        print(f"[raysl] resuming the run in {out_dir} from its last checkpoint", file=sys.stderr)
        restore_metrics_rows(out_dir)
    storage.write_atomic(out_dir.join("config.yaml"), to_yaml(cfg))

    init_ray(verbose=verbose)
    # before the trainer asks for its workers: on a cluster that cannot hold them it would wait forever
    check_placement([run_needs(cfg, not reads_in_worker(cfg, manifest))], cfg.scale.placement_timeout_s)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    in_worker = reads_in_worker(cfg, manifest)
    # pixel rows, or JPEG crops cut by Ray Data tasks; none where the one worker reads the shards itself
    datasets = {} if in_worker else {"train": train_dataset(cfg, data_dir, manifest)}
    relay = progress.start_relay()
    failure_config = ray.train.FailureConfig(max_failures=cfg.scale.max_failures)
    say = functools.partial(relay_line, relay)  # restarts and resizes, told from the TrainController
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "data_dir": data_dir, "read_in_worker": in_worker,
                           "progress": progress.relay_config(relay, stream_isatty(sys.stderr))},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scale.num_workers,  # (min, max): elastic
            use_gpu=cfg.scale.use_gpu,
            resources_per_worker={"CPU": cfg.scale.cpus_per_worker, **({"GPU": cfg.scale.gpus_per_worker} if cfg.scale.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=TRAIN_RUN_NAME,
            storage_path=out_dir.uri,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=failure_config,
            callbacks=[_make_callback(out_dir.join("metrics.jsonl"), show=False),
                       make_resize_callback(say, cfg.optim.batch_size)],
        ),
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
                _stop_run(controllers, out_dir)
                registered = registered_checkpoints(out_dir)
                reported = max((int(r.get("epoch") or 0) for r in MetricsFile(out_dir.join("metrics.jsonl"),
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
            _stop_run(controllers, out_dir)
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
