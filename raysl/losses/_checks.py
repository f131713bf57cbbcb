"""Input checks and small helpers shared by every loss module (private).

Each check raises :class:`raysl.errors.LossInputError` naming the loss
function, the argument and what it got.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_tensor(fn: str, name: str, x: object, ndim: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise LossInputError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise LossInputError(
            f"{fn}: {name} must have {ndim} dimensions, got shape {_shape(x)} ({x.ndim} dimensions)"
        )
    return x


def _check_pair(fn: str, z1: object, z2: object, min_batch: int = 2, names=("z1", "z2")) -> None:
    """Two [N, D] tensors of the same shape with N >= min_batch."""
    a = _check_tensor(fn, names[0], z1, 2)
    b = _check_tensor(fn, names[1], z2, 2)
    if a.shape != b.shape:
        raise LossInputError(
            f"{fn}: {names[0]} and {names[1]} must have the same shape, got {_shape(a)} and {_shape(b)}"
        )
    _check_batch(fn, a.shape[0], min_batch)


def _check_batch(fn: str, n: int, min_batch: int) -> None:
    if n < min_batch:
        raise LossInputError(
            f"{fn}: needs a batch of at least {min_batch} samples, got {n}; "
            "use a larger batch (per worker batches are gathered before the loss)"
        )


def _check_positive(fn: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise LossInputError(f"{fn}: {name} must be a positive finite number, got {value!r}")


def _check_non_negative(fn: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise LossInputError(f"{fn}: {name} must be a non-negative number, got {value!r}")


def _check_fraction(fn: str, name: str, value: float, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and (0 < value <= 1 if low_open else 0 <= value <= 1)
    if not ok:
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise LossInputError(f"{fn}: {name} must be in {bounds}, got {value!r}")


def _float(x: Tensor) -> Tensor:
    """Half precision is too narrow for exp/log of logits; float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _unit(x: Tensor) -> Tensor:
    return F.normalize(_float(x), dim=-1)


def _stack_views(fn: str, name: str, views: object, min_views: int, min_batch: int) -> Tensor:
    """A list of V tensors [N, D] or a tensor [V, N, D] -> tensor [V, N, D]."""
    if isinstance(views, Tensor):
        if views.ndim != 3:
            raise LossInputError(
                f"{fn}: {name} as a tensor must have shape [V, N, D] (3 dimensions), "
                f"got shape {_shape(views)}"
            )
        stacked = views
    elif isinstance(views, (list, tuple)):
        if not views:
            raise LossInputError(f"{fn}: {name} is an empty list; pass {min_views} or more views")
        for i, v in enumerate(views):
            _check_tensor(fn, f"{name}[{i}]", v, 2)
            if v.shape != views[0].shape:
                raise LossInputError(
                    f"{fn}: every view in {name} must have the same shape, "
                    f"got {_shape(views[0])} for view 0 and {_shape(v)} for view {i}"
                )
        stacked = torch.stack(list(views))
    else:
        raise LossInputError(
            f"{fn}: {name} must be a list of [N, D] tensors or a [V, N, D] tensor, "
            f"got {type(views).__name__}"
        )
    if stacked.shape[0] < min_views:
        raise LossInputError(f"{fn}: needs at least {min_views} views in {name}, got {stacked.shape[0]}")
    _check_batch(fn, stacked.shape[1], min_batch)
    return stacked


def _crops(fn: str, name: str, crops: object) -> list[Tensor]:
    if isinstance(crops, Tensor):
        if crops.ndim == 2:
            return [crops]
        if crops.ndim == 3:
            return list(crops.unbind(0))
        raise LossInputError(
            f"{fn}: {name} must be a list of [N, K] tensors or a [V, N, K] tensor, got shape {_shape(crops)}"
        )
    if not isinstance(crops, (list, tuple)) or not crops:
        raise LossInputError(f"{fn}: {name} must be a non-empty list of [N, K] tensors, got {crops!r:.80}")
    for i, c in enumerate(crops):
        _check_tensor(fn, f"{name}[{i}]", c, 2)
    return list(crops)
