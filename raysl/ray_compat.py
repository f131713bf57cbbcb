"""Every private Ray API raysl uses, in one place (Ray 2.60; the pin in pyproject.toml), and the private
attributes of Ray Tune's OptunaSearch that raysl's study searcher reads.

Each is here because no public API does the job (the reason is with each function); everything else
in raysl uses Ray's public API only. :data:`PRIVATE` lists each private name with what breaks without
it, and :func:`missing` checks them all against the installed Ray: ``tests/test_ray_compat.py`` fails
on a Ray that renamed or dropped one, naming it, before any user meets the change as a silent
misbehaviour. Where a hook is absent at run time raysl degrades as each function says (never a crash).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from typing import Any, Callable, Iterator

__all__ = [
    "PRIVATE",
    "RAY_WRITE_LOGGERS",
    "controller_callback_base",
    "data_parallel_trainer",
    "experiment_trials",
    "failure_counts",
    "failure_policy_base",
    "filter_cluster_errors",
    "is_node_startup_timeout",
    "is_tune_stop_handler",
    "missing",
    "node_type_mapping",
    "processes_in_own_session",
    "run_controller_with",
    "storage_check",
    "trial_storage_filesystem",
    "tune_resume_wrapped",
    "worker_health_check_error",
]

# (what "module:attribute.path" names, what raysl loses without it)
PRIVATE: dict[str, str] = {
    "ray._private.services:ConsolePopen":
        "a local cluster's processes in their own session: a SIGTERM to the driver's process group "
        "(timeout, Slurm) killed the cluster under the run and it ended with exit 1, no line",
    "ray._private.utils:detect_fate_sharing_support":
        "knowing that the kernel ends the cluster with its driver (the own-session start needs it)",
    "ray._private.worker:print_to_stdstream":
        "cluster error messages on stderr, not in the stdout that holds raysl's JSON summary",
    "ray._private.worker:print_worker_logs": "the same (the printer raysl's filter calls)",
    "ray.train.v2._internal.execution.failure_handling:DefaultFailurePolicy":
        "a worker's RayslError (diverged, full disk) ends the run at once; each restart told in one line",
    "ray.train.v2._internal.execution.failure_handling:FailureDecision": "the same",
    "ray.train.v2._internal.execution.callback:ControllerCallback":
        "the line telling each resize of an elastic run",
    "ray.train.v2._internal.exceptions:WorkerHealthCheckFailedError":
        "recognising a dead Train worker (OOM killer, signal) to say so in one line with the resume",
    "ray.train.v2.api.data_parallel_trainer:DataParallelTrainer._register_sigint_handler":
        "raysl's SIGINT/SIGTERM handling of a run (stop, say what was kept) instead of Ray's",
    "ray.train.v2.api.data_parallel_trainer:DataParallelTrainer._initialize_and_run_controller":
        "raysl's failure policy in the run's controller",
    "ray.train.v2.api.data_parallel_trainer:DataParallelTrainer":
        "a one-worker run without TorchTrainer's torch backend (a DeveloperAPI, TorchTrainer's base class): its "
        "Train controller then does not import torch (make_trainer falls back to TorchTrainer without it)",
    "ray.train.v2._internal.execution.storage:StorageContext._check_validation_file":
        "the multi-node check that a node reaches the run's storage, kept in raysl's checkpoint upload",
    "ray.tune.execution.tune_controller:TuneController.resume":
        "a failed resume of a search leaves its folder as it was (Tune's fallback overwrote the state)",
    "ray.tune.tune:_setup_signal_catching":
        "recognising Tune's stop handler (signal_interrupt_tune_run, defined inside it)",
    "ray.tune.result_grid:ResultGrid.__init__":
        "each trial's final Tune status (ResultGrid keeps it in _experiment_analysis)",
    "ray.tune.execution.experiment_state": "hiding Ray's log of a state save that failed on full storage",
    "ray.train._internal.syncer": "the same, for a trial's uploads",
    "ray._private.node:Node.__init__":
        "telling a local cluster that did not start in Ray's 30 s (a bare Exception) from other failures: "
        "one line instead of a traceback",
    "ray.tune.experiment.trial:Trial.__init__":
        "a restarted trial's result.json keeps the rows logged since Tune's last sync (raysl.trial_log stores "
        "the driver's copy where Tune restores it from)",
    "ray.train._internal.storage:StorageContext.__init__": "the same (the stored folder's filesystem)",
    "ray._private.ray_constants:DEBUG_AUTOSCALING_STATUS":
        "telling a fixed cluster from one that can grow (placement refused at once vs waited for)",
    "ray.experimental.internal_kv:_internal_kv_get": "the same",
    "ray.tune.search.optuna.optuna_search:OptunaSearch.__init__":
        "the search's Optuna study in a database (raysl.study.StudySearch, a subclass): reopened after Tune "
        "unpickles the searcher, no connection or password pickled into the experiment's state, trials' "
        "statuses told to the study; StudySearch reads and sets these attributes of OptunaSearch's",
}

# the loggers that report Ray's writes to an experiment failing (its state saves, a trial's task)
RAY_WRITE_LOGGERS = ("ray.tune.execution.experiment_state", "ray.tune.execution.tune_controller",
                     "ray.train._internal.syncer")

# what Tune names its SIGINT/SIGUSR1 stop handler (a closure made by ray.tune.tune._setup_signal_catching)
_TUNE_STOP_HANDLER = "signal_interrupt_tune_run"
# the attributes the checks below read inside classes (not importable names)
_ATTRIBUTES = {
    "ray.tune.result_grid:ResultGrid.__init__": "self._experiment_analysis",
    "ray.tune.tune:_setup_signal_catching": _TUNE_STOP_HANDLER,
}
_POLICY_COUNTS = ("_worker_group_failures", "_preemption_failures")
# the words of the bare Exception Ray raises when a local node's raylet does not register in time
_NODE_STARTUP_TIMEOUT = "timed out during startup"
_ATTRIBUTES["ray._private.node:Node.__init__"] = _NODE_STARTUP_TIMEOUT
_ATTRIBUTES["ray.tune.experiment.trial:Trial.__init__"] = "self.storage"
_ATTRIBUTES["ray.train._internal.storage:StorageContext.__init__"] = "self.storage_filesystem"
_ATTRIBUTES["ray.tune.search.optuna.optuna_search:OptunaSearch.__init__"] = (
    "self._study_name =", "self._sampler =", "self._storage =", "self._completed_trials =", "self._ot_trials =",
    "self._ot_study =")


def _resolve(name: str) -> Any:
    module, _, path = name.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def missing() -> list[str]:
    """The private names of :data:`PRIVATE` (and the attributes raysl reads inside them) that the
    installed Ray lacks, each with what raysl loses; empty when all hold."""
    gone = []
    for name, loses in PRIVATE.items():
        try:
            obj = _resolve(name)
        except (ImportError, AttributeError):
            gone.append(f"{name}: {loses}")
            continue
        attributes = _ATTRIBUTES.get(name)
        for attribute in (attributes,) if isinstance(attributes, str) else attributes or ():
            if attribute not in inspect.getsource(obj):
                gone.append(f"{name} no longer sets {attribute}: {loses}")
    try:
        import ray.train

        policy_class, _ = failure_policy_base()
        counts = failure_counts(policy_class(ray.train.FailureConfig()))
        if counts is None:
            gone.append(f"DefaultFailurePolicy no longer counts {', '.join(_POLICY_COUNTS)}: the restart line's "
                        "'failure N of M' and its preemption wording")
    except (ImportError, AttributeError):
        pass  # named above
    return gone


# --------------------------------------------------------------------------
# a local cluster's processes


@contextlib.contextmanager
def processes_in_own_session() -> Iterator[None]:
    """While open, the Ray processes that ``ray.init()`` starts (GCS, raylet, dashboard, ...; the raylet's
    workers inherit it) start in a session of their own. Ray has no option for it. Only where Ray ties
    its processes to the driver by the kernel (Linux: they get SIGKILL when the driver dies): without it
    Ray's reaper ends them through the driver's process group, which they must then stay in."""
    try:
        from ray._private import services
        from ray._private.utils import detect_fate_sharing_support
    except ImportError:  # another Ray layout: leave it as it is
        yield
        return
    original = getattr(services, "ConsolePopen", None)
    if original is None or not sys.platform.startswith("linux") or not detect_fate_sharing_support():
        yield
        return

    class _OwnSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["start_new_session"] = True
            super().__init__(*args, **kwargs)

    services.ConsolePopen = _OwnSession
    try:
        yield
    finally:
        services.ConsolePopen = original


def filter_cluster_errors(drop: tuple[str, ...], stream: Callable[[], Any]) -> None:
    """Ray's driver prints every cluster error message (a worker killed, out of memory, ...) to stdout;
    from now on they go to ``stream()`` (looked up at each message), without lines containing any of
    ``drop`` and without Ray's de-duplication (it adds colour codes). Ray has no option for where they
    go. A Ray without this hook is left as it is."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    print_lines = getattr(ray_worker, "print_worker_logs", None)
    if original is None or print_lines is None or getattr(original, "raysl_filtered", False):
        return

    def print_cluster_error(data, ignore_prefix):
        lines = [line for line in data.get("lines", []) if not any(s in line for s in drop)]
        if lines:
            print_lines({**data, "lines": lines}, stream(), ignore_prefix)

    print_cluster_error.raysl_filtered = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_cluster_error


def is_node_startup_timeout(exc: BaseException) -> bool:
    """Whether ``ray.init()`` failed because its local node did not register within Ray's fixed 30 s
    (an overloaded machine): Ray raises a bare Exception, known only by its words."""
    return type(exc) is Exception and _NODE_STARTUP_TIMEOUT in str(exc)


# --------------------------------------------------------------------------
# Ray Train


def failure_policy_base() -> tuple[type, Any]:
    """(DefaultFailurePolicy, FailureDecision): Ray Train takes a failure policy only through its private
    controller arguments (:func:`run_controller_with`)."""
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

    return DefaultFailurePolicy, FailureDecision


def failure_counts(policy: Any) -> tuple[int, int] | None:
    """(worker-group failures, preemptions) that Ray's default policy has counted; None if it no longer
    keeps them."""
    try:
        return tuple(int(getattr(policy, name)) for name in _POLICY_COUNTS)  # type: ignore[return-value]
    except AttributeError:
        return None


def controller_callback_base() -> type:
    """Ray Train's ControllerCallback: the only way to hear that the worker group started at a size."""
    from ray.train.v2._internal.execution.callback import ControllerCallback

    return ControllerCallback


def worker_health_check_error() -> type | None:
    """The error Ray Train V2 raises for a dead worker (its cause: the actor died); None if gone."""
    try:
        from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    except ImportError:
        return None
    return WorkerHealthCheckFailedError


def run_controller_with(trainer: Any, controllers: list, failure_policy: Any) -> None:
    """Make ``trainer.fit()`` hand its controller to ``controllers`` (not to Ray's own SIGINT handler:
    raysl's handlers stop the run and say what was kept) and run it with ``failure_policy``."""
    trainer._register_sigint_handler = controllers.append
    run = trainer._initialize_and_run_controller
    trainer._initialize_and_run_controller = lambda **kwargs: run(**{**kwargs, "failure_policy": failure_policy})


def data_parallel_trainer() -> Any:
    """Ray Train's ``DataParallelTrainer`` (TorchTrainer's base; a DeveloperAPI, not exported by
    ``ray.train``), for a run that needs no torch process group; TorchTrainer where it is gone (the run
    then only starts slower)."""
    try:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    except ImportError:
        from ray.train.torch import TorchTrainer as DataParallelTrainer
    return DataParallelTrainer


def storage_check(context: Any) -> Callable[[], None] | None:
    """Ray's check that this node reaches the run's storage (multi-node), which a custom checkpoint
    upload must run itself; None where the StorageContext has none."""
    return getattr(context, "_check_validation_file", None)


# --------------------------------------------------------------------------
# Ray Tune


def trial_storage_filesystem(trial: Any) -> Any:
    """The pyarrow filesystem a Tune trial's stored folder (``trial.path``) is on, from the trial's
    StorageContext (Tune exposes the path, not the filesystem); None where Ray no longer keeps it there."""
    return getattr(getattr(trial, "storage", None), "storage_filesystem", None)


def is_tune_stop_handler(handler: Any) -> bool:
    """Whether a signal handler is Tune's stop handler (installed during ``Tuner.fit`` for SIGINT and
    SIGUSR1; Tune puts the previous one back when it runs). Tune does not expose it."""
    return getattr(handler, "__name__", "") == _TUNE_STOP_HANDLER


def experiment_trials(results: Any) -> list:
    """The Trial objects behind a ResultGrid (their final Tune status); empty if it no longer has them."""
    analysis = getattr(results, "_experiment_analysis", None)
    return list(getattr(analysis, "trials", None) or [])


@contextlib.contextmanager
def tune_resume_wrapped(wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """While open, Tune's controller resumes a saved experiment through ``wrap(original_resume)``. Tune
    catches every Exception of its resume and starts over; this is the only place to stop that."""
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController.resume
    TuneController.resume = wrap(original)
    try:
        yield
    finally:
        TuneController.resume = original


# --------------------------------------------------------------------------
# the cluster's autoscaler


def node_type_mapping() -> dict:
    """The v1 autoscaler's node-type mapping from its debug status (empty when none is published)."""
    import json

    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    return (json.loads(raw) if raw else {}).get("autoscaler_report", {}).get("node_type_mapping") or {}
