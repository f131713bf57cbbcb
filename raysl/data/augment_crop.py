"""Random resized crop + horizontal flip of a batch on its device: one affine resample.

Differences from torchvision, on purpose:

- The crop's sampling grid is written directly as an outer sum (the affine
  is axis-aligned); ``F.affine_grid`` builds the same grid with a batched
  matmul that costs more than the resample itself on CPU.
- Crops are continuous (sub-pixel boxes, bilinear ``grid_sample``), not
  integer boxes; the box distribution is torchvision's RandomResizedCrop
  (10 vectorised attempts, then the centre-crop fallback). There is no
  antialiasing when a large crop is shrunk; small-image recipes upsample.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from raysl.data.augment_rows import apply_rows, draw_mask, float01, param_device

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
    attempts: int = 10,
) -> torch.Tensor:
    """Per-sample crop boxes [n, 4] = (top, left, h, w) in pixels, as torchvision's RandomResizedCrop.

    Each sample tries ``attempts`` (area fraction ~ U(scale), aspect ~ logU(ratio))
    boxes and keeps the first that fits; samples with none fall back to the
    largest centred box with the aspect clamped to ``ratio``. Boxes are continuous.
    """
    dev = param_device(generator)
    area = float(height * width)
    target = torch.rand(n, attempts, generator=generator, device=dev).mul_(scale[1] - scale[0]).add_(scale[0]) * area
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.rand(n, attempts, generator=generator, device=dev).mul_(log_hi - log_lo).add_(log_lo).exp_()
    w = (target * aspect).sqrt_()
    h = (target / aspect).sqrt_()
    fits = (w <= width + 1e-4) & (h <= height + 1e-4)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    ok = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1).clamp_(max=width)
    h = h.gather(1, first).squeeze(1).clamp_(max=height)

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))

    offsets = torch.rand(n, 2, generator=generator, device=dev)
    top = offsets[:, 0] * (height - h)
    left = offsets[:, 1] * (width - w)
    return torch.stack([top, left, h, w], dim=1)


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
