"""Errors a user can cause. Each message says what is wrong and what to do.

The CLI prints ``str(error)`` on one line and exits with code 2; anything that
is not a ``RayslError`` is an internal failure (exit code 1).
"""


class RayslError(Exception):
    """Base of every error whose cause is the user's input, not a raysl bug."""


class ConfigError(RayslError):
    """A config or search-space file (or a --set override) is invalid."""


class DataError(RayslError):
    """A data source or prepared dataset cannot be used."""


class ShardError(DataError):
    """A Parquet shard is missing, truncated or does not match its checksum."""


class TrainingError(RayslError):
    """A run could not continue for a reason the user can act on."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""


class CollapsedError(TrainingError):
    """The embeddings collapsed to (nearly) a constant."""


class LossInputError(RayslError, ValueError):
    """A loss function got inputs it cannot work with."""


class CheckpointError(RayslError):
    """A checkpoint cannot be loaded safely."""


class StorageError(RayslError):
    """A path cannot be read or written: permission denied, read-only, no space left, missing."""


class UntrustedStateError(RayslError):
    """A pickled state file of an experiment is unsigned, changed, or signed with another secret (raysl.signing)."""


class PlacementError(RayslError):
    """The cluster cannot give a run (or a trial) the CPUs/GPUs it asks for."""


class WorkerDiedError(TrainingError):
    """A training worker process died (killed by a signal: the OOM killer, a preempted node)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM stopped a command; ``detail`` says what was kept.

    A ``KeyboardInterrupt``: code that does not know it lets it through as it would Ctrl-C.
    The CLI prints ``raysl: interrupted (SIGNAL) <detail>; resume with: <command>`` and exits 130.
    """

    def __init__(self, signal_name: str = "SIGINT", detail: str = ""):
        super().__init__(signal_name, detail)
        self.signal_name = signal_name
        self.detail = detail
