"""Per-sample randomness for the batch augmentation ops, and running an op on the rows that drew it.

Every random parameter is drawn on the generator's device (the CPU when no generator is given), so choosing
rows never forces a device sync. An op's Bernoulli(p) mask (:func:`draw_mask`) picks its rows, and
:func:`apply_rows` runs it on just those (``index_select`` / ``index_copy_``; no copy when every row drew it).
Used by :mod:`raysl.data.augment_crop`, :mod:`raysl.data.augment_photometric` and :mod:`raysl.data.augment`.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["param_device", "uniform", "draw_mask", "apply_rows", "pick", "float01"]


def param_device(generator: torch.Generator | None) -> torch.device:
    """Where random parameters are drawn: the generator's device, the CPU when there is none."""
    return generator.device if generator is not None else torch.device("cpu")


def uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    """U(lo, hi) per sample, [n] on the generator's device."""
    u = torch.rand(n, generator=generator, device=param_device(generator))
    return u.mul_(hi - lo).add_(lo)


def draw_mask(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Bernoulli(p) per sample, bool [n] on the generator's device; ``None`` when p <= 0 (no draw)."""
    if p <= 0.0 or n == 0:
        return None
    if p >= 1.0:
        return torch.ones(n, dtype=torch.bool, device=param_device(generator))
    return torch.rand(n, generator=generator, device=param_device(generator)) < p


def _rows(mask: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
    """(indices of the drawn rows or ``None`` for all of them, how many)."""
    if mask is None:
        return None, 0
    idx = mask.nonzero().squeeze(1)
    count = idx.numel()
    return (None if count == mask.numel() else idx), count


def apply_rows(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    inplace: bool,
) -> torch.Tensor:
    """``fn(rows, idx)`` on the rows of ``x`` that drew ``mask``; ``fn`` may work in place on ``rows``.

    ``idx`` (on the mask's device, ``None`` for all rows) lets ``fn`` pick its per-row parameters.
    """
    idx, count = _rows(mask)
    if count == 0:
        return x
    if idx is None:
        return fn(x if inplace else x.clone(), None)
    on_x = idx.to(x.device, non_blocking=True)
    sub = fn(x.index_select(0, on_x), idx)
    out = x if inplace else x.clone()
    return out.index_copy_(0, on_x, sub.to(out.dtype))


def pick(values: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """The per-row parameters of the rows ``idx`` (``None``: every row)."""
    return values if idx is None else values[idx]


def float01(images: torch.Tensor) -> torch.Tensor:
    """A float32 copy in [0, 1] of uint8 (divided by 255) or [0, 1] float images."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32, copy=True)  # the ops below may work in place
