"""Population-based training: what a trial's Tune checkpoint says, clones, and their lineage.

Every Tune checkpoint a ``raysl tune`` trial reports holds ``raysl_trial.json``
(:data:`POINTER_FILE`): the trial that wrote it (id and folder), the epoch and the
trial's sampled config. A one-worker trial's checkpoint holds the weights beside
it (``state.pt``). A multi-worker trial's holds nothing else: the file points at
the Ray Train checkpoint of the same epoch (``checkpoint``, a path or URI, and the
Train run it belongs to), so PBT clones trials without copying weights.

A trial that starts from a Tune checkpoint another trial wrote was cloned by PBT
(exploit). A multi-worker clone fits a new Train run,
``train_from_<donor id>_e<epoch>`` in its own folder, whose workers load the
donor's Train checkpoint (``loop_config["resume_from"]``) with the clone's own,
mutated config: weights, buffers and optimizer moments from the donor; lr,
weight decay, momentum and every other hyperparameter from the new config. A
trial restarting from its own checkpoint (a pause, a crash, ``--resume``) goes
on with the Train run the checkpoint names, which restores its own latest
checkpoint. Either kind of clone appends a record to ``raysl_lineage.json`` in
its trial folder (which trial it cloned, at which epoch, the mutation), and its
first report after the clone carries ``resumed_epoch`` and ``resumed_weights``
(a fingerprint of the weights its model holds after loading them; a multi-worker
clone also writes them to ``raysl_resumed.json`` in its Train run).

Retention: Tune deletes no checkpoint of a PBT search. Its per-trial retention
(``num_to_keep``) is not safe under PBT: a trial PBT restarts from another trial's
checkpoint can number its new checkpoints from where the restored one's name left
off, reusing folder names its retention list still holds from before, and then
deletes a new checkpoint under an old entry, one that PBT may just have handed
to a clone (seen in a CI run: two clones failed to restore). A multi-worker
trial's Tune checkpoints are pointer files, so keeping all of them costs nothing,
and its Train runs keep :data:`PBT_EXTRA_KEEP` more checkpoints than
``checkpoint.keep`` (Train names them by time, never twice), so a Tune checkpoint
PBT can still hand out points at a Train checkpoint that exists. If the donor ran
that far ahead while the clone was starting (its pointed-to checkpoint deleted),
the clone continues from the donor's newest Train checkpoint instead, and its
lineage record says so (``fallback``). A one-worker trial's Tune checkpoints hold
its weights, so a one-worker PBT search keeps one state per trial per perturbation
interval on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from raysl import jsonio, storage
from raysl.errors import CheckpointError
from raysl.outcome import TRAIN_RUN_NAME

POINTER_FILE = "raysl_trial.json"
LINEAGE_FILE = "raysl_lineage.json"
RESUMED_FILE = "raysl_resumed.json"  # in a multi-worker clone's Train run: what its workers loaded
PBT_EXTRA_KEEP = 2  # checkpoints a PBT search keeps beyond checkpoint.keep (Tune's and Train's)
STATE_FILE = "state.pt"  # raysl.checkpoint.CHECKPOINT_FILE (not imported: a layer above, and it pulls in torch)


@dataclass
class Pointer:
    """What a Tune checkpoint says about the trial that reported it."""

    trial_id: str
    trial_dir: str  # the trial's folder name in the experiment
    epoch: int
    config: dict = field(default_factory=dict)  # the trial's sampled config when it reported
    run: str | None = None  # multi-worker trials: the Train run (folder under the trial folder)
    checkpoint: str | None = None  # multi-worker trials: the Train checkpoint (path or URI)


@dataclass
class TrialRef:
    """The trial a trainable runs as."""

    trial_id: str
    trial_dir: str
    config: dict

    def pointer(self, epoch: int, run: str | None = None, checkpoint: str | None = None) -> Pointer:
        return Pointer(self.trial_id, self.trial_dir, int(epoch), dict(self.config), run, checkpoint)


@dataclass
class Start:
    """How a trial starts: the Train run it fits, the checkpoint its workers load when that run has none
    yet, and whether it is a PBT clone (its first report then carries ``resumed_*``)."""

    run: str = TRAIN_RUN_NAME  # a trial's first Train run (its folder under the trial folder)
    resume_from: str | None = None
    cloned: bool = False


def write_pointer(directory: str, pointer: Pointer) -> None:
    with open(os.path.join(directory, POINTER_FILE), "w") as fh:
        fh.write(jsonio.dumps(asdict(pointer), default=str))


def read_pointer(checkpoint: Any) -> Pointer | None:
    """The pointer in a Tune checkpoint (a ``ray.tune.Checkpoint``); None without one (no checkpoint,
    or one from before raysl wrote pointers)."""
    if checkpoint is None:
        return None
    path = f"{str(checkpoint.path).rstrip('/')}/{POINTER_FILE}"
    try:
        with checkpoint.filesystem.open_input_stream(path) as stream:
            data = json.loads(stream.read().decode("utf-8"))
        return Pointer(**{k: data.get(k) for k in Pointer.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError):
        return None


def clone_run(pointer: Pointer) -> str:
    return f"train_from_{pointer.trial_id}_e{int(pointer.epoch)}"


def donor_checkpoint(pointer: Pointer) -> tuple[str, bool]:
    """The donor's Train checkpoint to load: the pointed-to one, or (deleted since) the donor run's
    newest; ``(path or URI, fell back)``."""
    if not pointer.checkpoint:
        raise CheckpointError(f"the checkpoint of trial {pointer.trial_id} at epoch {pointer.epoch} holds no Ray "
                              "Train checkpoint; a multi-worker trial cannot continue from it")
    if storage.is_file(storage.join_uri(pointer.checkpoint, STATE_FILE)):
        return pointer.checkpoint, False
    run = pointer.checkpoint.rstrip("/").rsplit("/", 1)[0]
    names = [name for name, is_dir in storage.list_dir(run) if is_dir and name.startswith("checkpoint_")]
    for name in reversed(names):  # Ray names them by time: newest last
        candidate = storage.join_uri(run, name)
        if storage.is_file(storage.join_uri(candidate, STATE_FILE)):
            return candidate, True
    raise CheckpointError(f"trial {pointer.trial_id}'s Train checkpoint {pointer.checkpoint} (epoch "
                          f"{pointer.epoch}) is gone and its run {run} has no other; raise checkpoint.keep")


def mutation(before: dict, after: dict) -> dict[str, list]:
    """``{key: [donor's value, clone's value]}`` for every sampled key whose value changed."""
    return {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)}


def start_of(pointer: Pointer | None, trial: TrialRef, experiment: str, multi_worker: bool,
             tune_checkpoint: str | None = None) -> Start:
    """How ``trial`` starts from the Tune checkpoint it was handed (``pointer``; None: from scratch).

    A clone gets its lineage recorded here, before it trains. ``tune_checkpoint``: where the Tune
    checkpoint is, for a one-worker clone's record."""
    if pointer is None:
        return Start()
    if pointer.trial_dir == trial.trial_dir:  # its own checkpoint: the run it names goes on
        return Start(run=pointer.run or TRAIN_RUN_NAME, resume_from=pointer.checkpoint)
    fallback = False
    if multi_worker:
        checkpoint, fallback = donor_checkpoint(pointer)
        start = Start(run=clone_run(pointer), resume_from=checkpoint, cloned=True)
    else:
        checkpoint, start = tune_checkpoint, Start(cloned=True)
    record_clone(storage.join_uri(experiment, trial.trial_dir), {
        "trial_id": trial.trial_id, "donor": pointer.trial_id, "donor_dir": pointer.trial_dir,
        "epoch": int(pointer.epoch), "mutation": mutation(pointer.config or {}, trial.config),
        "config": trial.config, "donor_config": pointer.config or {}, "checkpoint": checkpoint,
        "fallback": fallback, "time": time.time(),
    })
    return start


def record_clone(trial_uri: str, entry: dict) -> None:
    """Append ``entry`` to the trial's lineage file (once: a clone restarted before it reported again
    starts from the same donor checkpoint)."""
    where = storage.join_uri(trial_uri, LINEAGE_FILE)
    entries = parse_lineage(storage.read_text(where, missing_ok=True) or "")
    if any(e.get("donor") == entry["donor"] and e.get("epoch") == entry["epoch"] for e in entries):
        return
    storage.write_atomic(where, jsonio.dumps([*entries, entry], indent=1, default=str), option="--storage")


def parse_lineage(text: str) -> list[dict]:
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError:
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def describe_mutation(change: dict) -> str:
    """``optim.lr 0.002 -> 0.0024, ...`` (``no change`` when PBT kept the donor's values)."""
    def fmt(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    parts = [f"{key} {fmt(pair[0])} -> {fmt(pair[1])}" for key, pair in change.items()
             if isinstance(pair, (list, tuple)) and len(pair) == 2]
    return ", ".join(parts) or "no change"


def weights_fingerprint(state_dict: dict) -> str:
    """A SHA-256 of every tensor's bytes (in key order) of a model's ``state_dict``: equal for equal weights,
    whatever the device or memory layout."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(str(flat.dtype).encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def resume_report(epoch: int, state_dict: dict, record: str | None = None) -> dict:
    """What a PBT clone's first report carries (the loop's ``io.on_resume``): the epoch and the fingerprint of
    the weights it continued from (checked by the tests), also written to ``record`` when given."""
    resumed = {"resumed_epoch": epoch, "resumed_weights": weights_fingerprint(state_dict)}
    if record:
        record_resume(record, resumed)
    return resumed


def record_resume(where: str, resumed: dict) -> None:
    """Rank 0 of a clone's Train run, once its weights are loaded: ``resumed_epoch`` and ``resumed_weights``
    also in a file (``where``), kept even when Ray's result log of the trial drops the report that carried
    them (a trial PBT pauses again right away can lose its newest rows of result.json). The first resume of
    the run is kept."""
    if not storage.exists(where):
        storage.write_atomic(where, jsonio.dumps(resumed), option="--storage")


def local_checkpoint_dir(path_or_uri: str) -> str:
    """A local folder holding the checkpoint: the folder itself, or a download of a URI's."""
    if not storage.is_uri(path_or_uri):
        return path_or_uri
    import ray.train

    return checkpoint_folder(ray.train.Checkpoint(path_or_uri))


# checkpoints downloaded from remote storage for a resume, removed once it has loaded (release_downloads)
_DOWNLOADS: list[str] = []


def checkpoint_folder(ckpt) -> str:
    """A local folder holding a Ray checkpoint's files: its own folder when it lies on this machine's
    disk, else a download into a temporary folder that :func:`release_downloads` removes.
    (``Checkpoint.to_directory()`` alone copies even a local checkpoint to ``/tmp/checkpoint_tmp_*`` and
    never removes the copy: one model state left in /tmp per resume and per PBT clone.)"""
    import pyarrow.fs as pafs

    if isinstance(ckpt.filesystem, pafs.LocalFileSystem):
        return ckpt.path
    folder = tempfile.mkdtemp(prefix="raysl-checkpoint-")
    _DOWNLOADS.append(folder)
    return ckpt.to_directory(folder)


def release_downloads() -> None:
    """Remove the checkpoints :func:`checkpoint_folder` downloaded (their states are loaded by now)."""
    while _DOWNLOADS:
        shutil.rmtree(_DOWNLOADS.pop(), ignore_errors=True)
