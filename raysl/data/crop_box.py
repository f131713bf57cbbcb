"""RandomResizedCrop's box, defined once: torchvision's ``RandomResizedCrop.get_params`` from given draws.

raysl cuts random-resized crops in two places, and both draw their boxes here:

- the JPEG decode tasks (:func:`raysl.data.read.decode.sample_crop_boxes`): a numpy generator, rows of
  different sizes, integer pixel boxes cut from the decoded image;
- the batch augmentation on the device (:func:`raysl.data.augment_crop.crop_boxes`): a torch generator on
  the batch's device, one image size, continuous (sub-pixel) boxes resampled by ``grid_sample``.

Each sampler draws uniforms in [0, 1) with its own generator and hands them to :func:`boxes_from_draws`,
so the box distribution (area fraction ~ U(scale), aspect ~ logU(ratio), the first of the attempts that
fits, else the whole image with its aspect clamped into ratio, centred) is written once. Pure: no state,
no generator.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["ATTEMPTS", "boxes_from_draws"]

ATTEMPTS = 10  # torchvision's RandomResizedCrop


def boxes_from_draws(
    heights: torch.Tensor,
    widths: torch.Tensor,
    area_draws: torch.Tensor,
    aspect_draws: torch.Tensor,
    offset_draws: torch.Tensor,
    scale: Sequence[float],
    ratio: Sequence[float],
    *,
    integer: bool,
) -> torch.Tensor:
    """Boxes [n, 4] = (top, left, h, w) in the draws' dtype, one per row of images ``heights`` x ``widths``.

    ``area_draws`` and ``aspect_draws`` [n, attempts] and ``offset_draws`` [n, 2] are uniform in [0, 1).
    Attempt ``a`` of row ``i`` has target area ``U(scale) * H * W`` and aspect ``exp(U(log ratio))``, so
    ``w = sqrt(area * aspect)``, ``h = sqrt(area / aspect)`` (rounded to whole pixels with ``integer``,
    as torchvision does); the first that fits wins and its offset is uniform over the positions that
    keep it inside (integer positions with ``integer``). A row with none falls back to the whole image
    with its aspect clamped into ``ratio``, centred (torchvision's fallback).
    """
    dtype = area_draws.dtype
    height = heights.to(dtype).reshape(-1, 1)
    width = widths.to(dtype).reshape(-1, 1)
    lo, hi = min(ratio), max(ratio)
    target = height * width * (area_draws * (scale[1] - scale[0]) + scale[0])
    aspect = (aspect_draws * (math.log(hi) - math.log(lo)) + math.log(lo)).exp()
    w, h = (target * aspect).sqrt(), (target / aspect).sqrt()
    if integer:
        w, h = w.round(), h.round()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    else:  # continuous boxes: a hair of float slack, then clamped inside
        fits = (w <= width + 1e-4) & (h <= height + 1e-4)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    ok = fits.any(dim=1)
    height, width = height.squeeze(1), width.squeeze(1)
    w = torch.minimum(w.gather(1, first).squeeze(1), width)
    h = torch.minimum(h.gather(1, first).squeeze(1), height)

    # the fallback: the whole image, its aspect clamped into ratio
    in_ratio = width / height
    fall_w = torch.where(in_ratio > hi, height * hi, width)
    fall_h = torch.where(in_ratio < lo, width / lo, height)
    if integer:
        fall_w, fall_h = fall_w.round(), fall_h.round()
    w, h = torch.where(ok, w, fall_w), torch.where(ok, h, fall_h)

    slack_h, slack_w = height - h, width - w
    if integer:  # uniform over the integer positions 0 .. H - h; the fallback centred on whole pixels
        top = torch.where(ok, (offset_draws[:, 0] * (slack_h + 1)).floor(), (slack_h / 2).floor())
        left = torch.where(ok, (offset_draws[:, 1] * (slack_w + 1)).floor(), (slack_w / 2).floor())
    else:
        top = torch.where(ok, offset_draws[:, 0] * slack_h, slack_h / 2)
        left = torch.where(ok, offset_draws[:, 1] * slack_w, slack_w / 2)
    return torch.stack([top, left, h, w], dim=1)
