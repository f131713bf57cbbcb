"""Where the training loop reads, resumes and reports: the ``LoopIO`` it runs against, Ray Train's
(``RayTrainIO``, with its checkpoint upload) and an in-process one without Ray (``LocalIO``), and the
resume from the newest checkpoint of a run that loads (``restore_state``).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch

from raysl import distributed, ray_compat
from raysl.checkpoint import CHECKPOINT_FILE, checkpoint_dirs, load_state
from raysl.data.read.dataset import RunData
from raysl.errors import CheckpointError
from raysl.progress import StepTicker


class LoopIO(Protocol):
    """What the loop needs from its runner (Ray Train, or a Tune trial in-process)."""

    # the run's train rows (in its data.fraction subset), as an iterable of batches (iter_batches)
    def train_shard(self, data: RunData) -> Any: ...
    def checkpoint_dir(self) -> str | None: ...
    def report(self, metrics: dict, checkpoint_dir: str | None) -> None: ...
    def device(self) -> torch.device: ...
    # rank 0, once a resumed run's weights are loaded: what its next report carries besides its metrics (a PBT
    # clone's resumed epoch and weights, raysl.pbt.resume_report); {} for a plain resume
    def on_resume(self, epoch: int, state_dict: dict) -> dict: ...


class RayTrainIO:
    def __init__(self, resume_from: str | None = None, read_in_worker: bool = False,
                 report_resume: bool = False, resume_record: str | None = None):
        # a checkpoint of another run (path or URI) to start from while this run has none of its own:
        # a PBT clone starts from the donor trial's (raysl.pbt)
        self.resume_from = resume_from
        # a PBT clone's: its first report says which weights it continued from, also kept in resume_record
        self.report_resume, self.resume_record = report_resume, resume_record
        # each worker reads its share of the shards itself: the driver handed Train no Ray Dataset
        # (raysl.data.read.dataset.RunData.reads_in_worker)
        self.read_in_worker = read_in_worker

    @classmethod
    def for_loop(cls, loop_config: dict) -> "RayTrainIO":
        """The IO of a Train worker started with ``loop_config`` (raysl train's, or a multi-worker trial's)."""
        return cls(resume_from=loop_config.get("resume_from"),
                   read_in_worker=bool(loop_config.get("read_in_worker")),
                   report_resume=bool(loop_config.get("report_resume")), resume_record=loop_config.get("resume_record"))

    def on_resume(self, epoch: int, state_dict: dict) -> dict:
        from raysl.pbt import resume_report

        return resume_report(epoch, state_dict, self.resume_record) if self.report_resume else {}

    def train_shard(self, data: RunData):
        if self.read_in_worker:
            return data.worker_reader(distributed.rank(), distributed.world_size())
        import ray.train

        return ray.train.get_dataset_shard("train")  # already the run's subset (RunData.ray_dataset)

    def checkpoint_dir(self):
        import ray.train

        from raysl.pbt import checkpoint_folder

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return self._resume_dir()
        return checkpoint_folder(ckpt)

    def _resume_dir(self) -> str | None:
        from raysl.pbt import local_checkpoint_dir

        return local_checkpoint_dir(self.resume_from) if self.resume_from else None

    def checkpoint_candidates(self) -> list[str]:
        """Checkpoints to resume from, newest first: the one Ray registered last, then the older ones
        of the run (a damaged newest one falls back to them), at their real paths. On remote storage
        only the latest, downloaded."""
        import pyarrow.fs as pafs
        import ray.train

        from raysl.pbt import checkpoint_folder

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:  # exactly the given one: every rank must load the same weights
            return [d for d in [self._resume_dir()] if d]
        if not isinstance(ckpt.filesystem, pafs.LocalFileSystem):
            return [checkpoint_folder(ckpt)]
        return resume_candidates(ckpt.path)

    def report(self, metrics, checkpoint_dir):
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_fn=upload_checkpoint)

    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()


def upload_checkpoint(checkpoint, checkpoint_dir_name: str):
    """Ray Train's checkpoint upload through raysl.storage: copied under a temporary name and renamed,
    so a full disk or a read-only storage leaves no torn ``checkpoint_*`` folder, and fails with a
    one-line StorageError (the worker raises it; ``raysl train`` reports it and how to resume)."""
    import ray.train

    from raysl import storage

    context = ray.train.get_context().get_storage()
    check = ray_compat.storage_check(context)
    if check is not None:  # Ray's check that this node reaches the run's storage (multi-node)
        check()
    path = context.build_checkpoint_path_from_name(checkpoint_dir_name)
    destination = storage.Location(context.storage_filesystem, path, path)
    storage.copy_dir_atomic(checkpoint.path, destination, action="writing the checkpoint")
    return ray.train.Checkpoint(filesystem=context.storage_filesystem, path=path)


class LocalIO:
    """Runs the loop in this process with no Ray at all: tests, debugging, one-worker trials.

    Checkpoints go to ``out_dir/checkpoints/epoch_N``; ``reports`` collects every metrics dict.
    """

    def __init__(self, out_dir: str | None = None):
        self.out_dir = out_dir
        self.reports: list[dict] = []

    def on_resume(self, epoch: int, state_dict: dict) -> dict:
        return {}

    def train_shard(self, data: RunData):
        return data.worker_reader()

    def checkpoint_dir(self):
        if self.out_dir is None:
            return None
        root = os.path.join(self.out_dir, "checkpoints")
        done = sorted(
            (d for d in os.listdir(root) if d.startswith("epoch_")), key=lambda d: int(d.split("_")[1])
        ) if os.path.isdir(root) else []
        return os.path.join(root, done[-1]) if done else None

    def report(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        if checkpoint_dir and self.out_dir is not None:
            import shutil

            target = os.path.join(self.out_dir, "checkpoints", f"epoch_{metrics['epoch']}")
            shutil.copytree(checkpoint_dir, target, dirs_exist_ok=True)

    def device(self):
        return torch.device("cpu")


def resume_candidates(latest: str) -> list[str]:
    """``latest`` (the checkpoint Ray resumes from), then the older checkpoints beside it, newest first.
    Folders newer than ``latest`` were never registered by Ray (a stopped run's last upload) and are
    not resumed from: their epochs are not in metrics.jsonl."""
    latest = latest.rstrip("/")
    name = os.path.basename(latest)
    older = [d for d in checkpoint_dirs(os.path.dirname(latest)) if os.path.basename(d) < name]
    return [latest, *reversed(older)]


def restore_state(io: LoopIO, ticker: StepTicker | None = None) -> dict[str, Any] | None:
    """The newest checkpoint of the run that loads, or None for a fresh run.

    A damaged one (truncated, its file missing) is skipped with one line on ``ticker`` naming its
    real path and why; when none loads the run stops with a CheckpointError instead of silently
    starting over.
    """
    from raysl.pbt import release_downloads

    try:
        return _restore_state(io, ticker)
    finally:  # the state is in memory: a checkpoint downloaded for it is not needed on disk
        release_downloads()


def _restore_state(io: LoopIO, ticker: StepTicker | None) -> dict[str, Any] | None:
    candidates = getattr(io, "checkpoint_candidates", None)
    dirs = candidates() if candidates is not None else [d for d in [io.checkpoint_dir()] if d]
    skipped: list[str] = []
    for ckpt_dir in dirs:
        path = os.path.join(ckpt_dir, CHECKPOINT_FILE)
        if not os.path.isfile(path):
            skipped.append(f"{ckpt_dir}: {CHECKPOINT_FILE} is missing")
            continue
        try:
            state = load_state(path)
            int(state["epoch"]), int(state["global_step"]), state["model"]  # noqa: B018 - what a resume needs
        except CheckpointError as exc:
            skipped.append(f"{ckpt_dir}: {CHECKPOINT_FILE} " + str(exc).removeprefix(f"checkpoint {path} "))
            continue
        except (KeyError, TypeError, ValueError):
            skipped.append(f"{ckpt_dir}: {CHECKPOINT_FILE} was not written by raysl train")
            continue
        if ticker is not None:
            for reason in skipped:
                ticker.say(f"[raysl] skipped checkpoint {reason}; resuming from epoch {int(state['epoch'])}")
        return state
    if skipped:
        raise CheckpointError("no checkpoint of this run loads (" + "; ".join(skipped) + "); move the run "
                              "folder away to train from scratch")
    return None
