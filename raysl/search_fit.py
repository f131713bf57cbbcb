"""Running the Tune fit of a ``raysl tune`` search: how it stops, a resume that fails, full storage.

- SIGTERM (``ray job stop``, a scheduler's kill) stops the fit as Ctrl-C does, through Tune's own stop
  handler (SIGUSR1), so Tune saves its state first; the closing line names the signal that came.
- A ``--resume`` whose saved state Ray Tune cannot restore ends in one line and leaves the experiment
  folder as it was (:class:`_FolderSnapshot`), instead of Tune starting the experiment over on it.
- Storage that cannot take a write (full, read-only, denied) stops the search as an interruption does,
  Tune's last state saved in room set aside for it (``raysl.storage.Reserve``), with one error line and
  the command that resumes it; Ray's own log records of the failed write are not shown.

:mod:`raysl.search` (the driver) runs its fit through :func:`_fit`; this module imports nothing of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from raysl import ray_compat, signing, storage
from raysl.errors import Interrupted, RayslError, StorageError
from raysl.study import STUDY_FILES

# --------------------------------------------------------------------------
# signals: what stops the fit


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


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


_TUNE_STOPS_ON_SIGUSR1 = {"yes": False}


def _stop_search() -> None:
    """Stop the running fit as Ctrl-C does, through Tune's own stop handler (it takes SIGUSR1): the loop
    ends, Tune saves its state with the trials as they are (running ones unfinished) and stops them."""
    handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if ray_compat.is_tune_stop_handler(handler):
        _TUNE_STOPS_ON_SIGUSR1["yes"] = True
        os.kill(os.getpid(), signal.SIGUSR1)


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
    so in one line (raysl.search.SearchStop), and not shown."""

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
    leaves the folder as it was and is one line; full storage ends the search (raysl.search.SearchStop) with
    Tune's state saved in the room ``reserve`` kept; the state is signed for the next --resume however the fit
    ended."""
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
        reserve.release()  # first: the last writes below and in raysl.search._finish get its room
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
