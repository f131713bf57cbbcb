"""Checkpoint files: plain tensors and numbers, loaded with ``torch.load(weights_only=True)``.

A checkpoint that holds any other pickled object (which could run code when
unpickled) is refused with a ``CheckpointError``, never executed.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import torch

from raysl import storage
from raysl.errors import CheckpointError

# the file a run's checkpoint folder holds (raysl.train writes it, raysl.loop_io resumes from it)
CHECKPOINT_FILE = "state.pt"


def checkpoint_dirs(train_dir: str) -> list[str]:
    """The ``checkpoint_*`` folders of a local Ray Train run folder, oldest first (Ray names them by
    time). Temporaries of an upload in progress (``.checkpoint_*.tmp``) are not among them."""
    if not os.path.isdir(train_dir):
        return []
    return [os.path.join(train_dir, name) for name in sorted(os.listdir(train_dir))
            if name.startswith("checkpoint_") and os.path.isdir(os.path.join(train_dir, name))]


def save_state(path: str, state: dict[str, Any], option: str = "--out") -> None:
    """Write atomically (a local path or URI): a crash or a full disk mid-write never replaces a good
    file with a torn one, nor leaves a temporary; OS errors become a one-line StorageError."""
    buffer = io.BytesIO()  # serialised first: torch's zip writer masks a write error with its own
    torch.save(state, buffer)
    storage.write_atomic(path, buffer.getbuffer(), option)


def load_state(path: str, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """``mmap=True`` maps the tensors from the file instead of reading them: cheap when only the numbers are needed."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; start without --resume or point at a run folder")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} holds pickled objects that are not plain tensors and was refused "
            f"(weights_only load: {first[:160]}); only load checkpoints written by raysl"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torn or foreign bytes fail in many ways (RuntimeError, EOFError, KeyError)
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable ({detail}); it may be truncated") from None
