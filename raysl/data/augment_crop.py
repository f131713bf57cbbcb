"""Random resized crop + horizontal flip of a batch on its device: one affine resample.

Differences from torchvision, on purpose:

- The crop's sampling grid is written directly as an outer sum (the affine
  is axis-aligned); ``F.affine_grid`` builds the same grid with a batched
  matmul that costs more than the resample itself on CPU.
- Crops are continuous (sub-pixel boxes, bilinear ``grid_sample``), not
  integer boxes; the box distribution is torchvision's RandomResizedCrop
  (10 vectorised attempts, then the centre-crop fallback), defined once in
  :mod:`raysl.data.crop_box` for this and the JPEG decode tasks. There is no
  antialiasing when a large crop is shrunk; small-image recipes upsample.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from raysl.data.augment_rows import apply_rows, draw_mask, float01, param_device
from raysl.data.crop_box import ATTEMPTS, boxes_from_draws

__all__ = [
    "crop_boxes",
    "crop_affine",
    "resample",
    "random_resized_crop",
    "axis_aligned_grid",
    "random_hflip",
    "whole_image",
]


def crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = ATTEMPTS,
) -> torch.Tensor:
    """Per-sample crop boxes [n, 4] = (top, left, h, w) in pixels, as torchvision's RandomResizedCrop.

    The draws come from ``generator`` on its device; the box is :func:`raysl.data.crop_box.boxes_from_draws`
    (the one definition, shared with the JPEG decode tasks), continuous here: sub-pixel boxes for the
    resample.
    """
    dev = param_device(generator)
    area = torch.rand(n, attempts, generator=generator, device=dev)
    aspect = torch.rand(n, attempts, generator=generator, device=dev)
    offsets = torch.rand(n, 2, generator=generator, device=dev)
    size = torch.tensor([height, width], device=dev).expand(n, 2)
    return boxes_from_draws(size[:, 0], size[:, 1], area, aspect, offsets, scale, ratio, integer=False)


def axis_aligned_grid(affine: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid`` (align_corners=False) for theta = [[sx, 0, tx], [0, sy, ty]], rows (sx, tx, sy, ty)."""
    n = affine.shape[0]
    base = torch.arange(size, device=affine.device, dtype=torch.float32).mul_(2.0 / size).add_(1.0 / size - 1.0)
    grid = torch.empty(n, size, size, 2, device=affine.device, dtype=torch.float32)
    sx, tx, sy, ty = (a.view(n, 1, 1) for a in affine.unbind(1))
    grid[..., 0] = torch.addcmul(tx, sx, base.view(1, 1, size))
    grid[..., 1] = torch.addcmul(ty, sy, base.view(1, size, 1))
    return grid


def crop_affine(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample crop + flip as affine rows [n, 4] = (sx, tx, sy, ty) for :func:`axis_aligned_grid`.

    A flip negates sx: crop and flip are one resample.
    """
    top, left, h, w = crop_boxes(n, height, width, scale, ratio, generator=generator).unbind(1)
    sx = w / width
    flip = draw_mask(n, hflip_p, generator)
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    tx = (left + w / 2) * (2.0 / width) - 1.0
    ty = (top + h / 2) * (2.0 / height) - 1.0
    return torch.stack([sx, tx, h / height, ty], dim=1)


def resample(images: torch.Tensor, affine: torch.Tensor, out_size: int) -> torch.Tensor:
    """One bilinear ``grid_sample`` of the whole batch -> float32 [N, C, out, out] in [0, 1]."""
    grid = axis_aligned_grid(affine.to(images.device, non_blocking=True), out_size)
    # uint8 is resampled on its 0..255 scale; the (smaller) output is scaled after
    x = F.grid_sample(images.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if images.dtype == torch.uint8:
        x.div_(255.0)
    return x.clamp_(0.0, 1.0)


def whole_image(scale: Sequence[float], ratio: Sequence[float], height: int, width: int) -> bool:
    """Every box this recipe can draw is the whole image."""
    return tuple(scale) == (1.0, 1.0) and height == width and ratio[0] <= 1.0 <= ratio[1]


def random_resized_crop(
    images: torch.Tensor,
    out_size: int | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_p: float = 0.0,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop a random box per sample, flip it with probability ``hflip_p``, resize to ``out_size``.

    One affine resample for the whole batch: the grid ``F.affine_grid`` would
    build (see :func:`axis_aligned_grid`) + one ``F.grid_sample`` (bilinear,
    align_corners=False); the flip is a negated x scale in the same affine.
    Takes uint8 or float in [0, 1]; returns float32 [N, C, out, out] in [0, 1]
    (``out`` defaults to the input height). When every box is the whole image
    and the size is kept, there is no resample: the images are converted and
    flipped exactly.
    """
    n, _, height, width = images.shape
    out = out_size or height
    if whole_image(scale, ratio, height, width) and out == height:
        return random_hflip(float01(images), hflip_p, generator=generator, inplace=True)
    return resample(images, crop_affine(n, height, width, scale, ratio, hflip_p, generator), out)


def random_hflip(
    x: torch.Tensor, p: float, *, generator: torch.Generator | None = None, inplace: bool = False
) -> torch.Tensor:
    """Flip the selected samples left-right (exactly ``torch.flip(x, [-1])``)."""
    return apply_rows(x, draw_mask(x.shape[0], p, generator), lambda t, idx: t.flip(-1), inplace)
