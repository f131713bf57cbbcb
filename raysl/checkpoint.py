"""Checkpoint files: plain tensors and numbers, loaded with ``torch.load(weights_only=True)``.

A checkpoint that holds any other pickled object (which could run code when
unpickled) is refused with a ``CheckpointError``, never executed.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from raysl.errors import CheckpointError


def save_state(path: str, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write never replaces a good file with a torn one, nor leaves a temporary."""
    tmp = f"{path}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
