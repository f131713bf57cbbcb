"""What a ``raysl train`` run's ``--out`` folder holds and what a re-run on it may do.

- ``metrics.jsonl``: one row per epoch (:class:`MetricsFile`, written by the Train callback
  :func:`metrics_callback`), and the row a resume restores from its checkpoint (:func:`restore_metrics_rows`);
- Ray Train's record of the checkpoints it registered (:data:`SNAPSHOT_FILE`): which ones a resume can start
  from, and what a stopped upload left behind; raysl's copy of its last good state (:data:`SNAPSHOT_COPY`),
  which a resume puts back when Ray's own was cut short (:func:`repair_checkpoint_record`);
- whether a config may resume the run there (:func:`refuse_unresumable`, :data:`RESUME_MAY_CHANGE`) or
  finds it already finished (:func:`finished_run`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from raysl import jsonio, storage
from raysl.config import RunConfig
from raysl.errors import ConfigError
from raysl.outcome import METRICS_FILE, TRAIN_RUN_NAME
from raysl.progress import EPOCH_FIELDS, epoch_line

STATUS_FIELDS = EPOCH_FIELDS  # shown in each epoch line


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
    from raysl.checkpoint import CHECKPOINT_FILE, load_state

    run = out.join(TRAIN_RUN_NAME)
    storage.remove_temporaries(run)  # a checkpoint upload killed mid-way
    metrics = MetricsFile(out.join(METRICS_FILE), show=False)
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


def metrics_callback(out: storage.Location, show: bool = True):
    """The Ray Train callback (it runs in the TrainController) that writes each report to the run's
    ``metrics.jsonl`` (a :class:`MetricsFile`), with the report's checkpoint folder, after keeping a copy of
    the checkpoint record Ray has just written (:func:`keep_checkpoint_record`)."""
    from ray.train.v2.api.callback import UserCallback

    class _Callback(UserCallback):
        def __init__(self):
            self.file = MetricsFile(out.join(METRICS_FILE), show)

        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None:  # Ray registered it (and rewrote its record) before its callbacks run
                keep_checkpoint_record(out)
            row = dict(metrics[0])
            if checkpoint is not None:
                row["checkpoint"] = checkpoint.path
            self.file.write(row)

    return _Callback()


# Ray Train's record of the checkpoints it registered (what a resume starts from)
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


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


# raysl's copy of Ray Train's record as it was after the last checkpoint Ray registered. Ray rewrites its record
# in place (not under a temporary name), so a full disk can cut it short, and Ray then refuses to resume
# the run at all; the copy is written atomically, so it is the previous good record or the new one.
SNAPSHOT_COPY = "raysl_checkpoint_record.json"


def _record_of(text: str | None) -> str | None:
    """``text`` when it is a whole checkpoint record (JSON with its list of checkpoints), else None."""
    try:
        return text if text is not None and isinstance(json.loads(text).get("checkpoint_results"), list) else None
    except (ValueError, AttributeError):
        return None


def keep_checkpoint_record(out: storage.Location) -> None:
    """Copy Ray Train's record of the run's checkpoints, when it is whole, to :data:`SNAPSHOT_COPY`. A failed
    copy (the disk is full) keeps the previous one and is not an error here: what failed to be written is
    reported by the write that needed the space (the checkpoint or metrics.jsonl)."""
    run = out.join(TRAIN_RUN_NAME)
    text = _record_of(storage.read_text(run.join(SNAPSHOT_FILE), missing_ok=True))
    if text is None:
        return
    try:
        storage.write_atomic(run.join(SNAPSHOT_COPY), text)
    except storage.StorageError:
        pass


def repair_checkpoint_record(out: storage.Location) -> str | None:
    """Before a resume: Ray Train's record of the run's checkpoints cut short (a full disk while Ray rewrote
    it) is replaced by raysl's copy of the last whole one, and the checkpoints written after that are
    dropped (they were never registered). Returns the line that says so, or None when nothing was wrong."""
    run = out.join(TRAIN_RUN_NAME)
    text = storage.read_text(run.join(SNAPSHOT_FILE), missing_ok=True)
    if text is None or _record_of(text) is not None:
        return None
    copy = _record_of(storage.read_text(run.join(SNAPSHOT_COPY), missing_ok=True))
    if copy is None:
        from raysl.errors import CheckpointError

        raise CheckpointError(f"Ray Train's record of the checkpoints in {run} ({SNAPSHOT_FILE}) is cut short "
                              "and raysl has no copy of it; move the run folder away to train from scratch")
    storage.write_atomic(run.join(SNAPSHOT_FILE), copy)
    discard_unregistered_checkpoints(out)
    _, epoch = registered_checkpoints(out) or ([], 0)
    return (f"[raysl] Ray Train's record of the checkpoints in {run} was cut short (a full disk?); put back "
            f"its last whole copy, which ends at epoch {epoch}")


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
    if not checkpointed and not MetricsFile(out.join(METRICS_FILE), show=False).rows():
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
        return None  # state.pt: raysl.checkpoint.CHECKPOINT_FILE (importing raysl.checkpoint imports torch)
    rows = [r for r in MetricsFile(out.join(METRICS_FILE), show=False).rows() if isinstance(r.get("epoch"), int)]
    last = max(rows, key=lambda r: r["epoch"], default={})
    if last.get("epoch") != cfg.optim.epochs or last.get("status") != "finished":
        return None
    summary = {k: v for k, v in last.items() if k != "checkpoint"}
    summary["out"] = str(out)
    summary["checkpoint"] = last.get("checkpoint") or out.join(TRAIN_RUN_NAME, name).path
    return summary

