"""When a ``raysl train`` run fails, shrinks, grows or is stopped: what raysl does and the one line it says.

- the cause a user can act on, found through Ray's wrappers (:func:`user_error_from`,
  :func:`worker_death_from`);
- Ray Train's failure policy with raysl's changes (:func:`make_failure_policy`), and the line each restart
  of the worker group gets (:func:`restart_line`), or each resize of an elastic one (:func:`resize_line`);
- stopping a run quietly and keeping every checkpoint Ray registered (:func:`stop_run`), and what an
  interrupted run kept (:func:`interrupted_detail`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from raysl import ray_compat, storage
from raysl.errors import RayslError
from raysl.run_folder import discard_unregistered_checkpoints, registered_checkpoints


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


def stop_run(controllers: list, out: storage.Location) -> None:
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


