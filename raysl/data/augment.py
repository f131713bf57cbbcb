"""Batch augmentation on the training device (the airbench way).

The uint8 batch already sits on the device; every op here works on the whole
batch at once with per-sample random parameters, so there is no per-sample
Python loop and no CPU data-loader worker in the hot path. One view's recipe is
a :class:`raysl.config.ViewAugment` (SimCLR's defaults, Chen et al. 2020,
appendix A); the ops run in SimCLR/BYOL order:

    random resized crop + horizontal flip (one affine resample)
    -> colour jitter (p) -> grayscale (p) -> gaussian blur (p) -> solarize (p)

Each random op draws a Bernoulli(p) mask from ``generator``, skips itself when
p is 0 or no sample drew it, and otherwise runs only on the selected rows
(``index_select`` / ``index_copy_``). Values are float32 in [0, 1], clamped
after every op; all arithmetic is float32 even under an enclosing autocast.

Random parameters are drawn on the generator's device (the CPU when no
generator is given) and copied to the images' device, so choosing which rows
an op touches never forces a device sync.

Differences from torchvision, on purpose:

- The crop's sampling grid is written directly as an outer sum (the affine
  is axis-aligned); ``F.affine_grid`` builds the same grid with a batched
  matmul that costs more than the resample itself on CPU.
- Crops are continuous (sub-pixel boxes, bilinear ``grid_sample``), not
  integer boxes; the box distribution is torchvision's RandomResizedCrop
  (10 vectorised attempts, then the centre-crop fallback). There is no
  antialiasing when a large crop is shrunk; small-image recipes upsample.
- Colour jitter applies brightness, contrast, saturation and hue in one random
  order per batch (torchvision draws an order per image).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # only for annotations: the ops take plain numbers
    from raysl.config import ViewAugment

__all__ = [
    "augment_batch",
    "make_views",
    "to_float",
    "normalize",
    "random_resized_crop",
    "random_hflip",
    "random_color_jitter",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "random_grayscale",
    "rgb_to_grayscale",
    "random_gaussian_blur",
    "gaussian_blur",
    "blur_kernel_size",
    "random_solarize",
    "solarize",
]

# ITU-R 601-2 luma, as torchvision and PIL use for "L" conversion.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------
# randomness helpers


def _param_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=_param_device(generator))
    return u.mul_(hi - lo).add_(lo)


def _select(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor | None:
    """Row indices that drew Bernoulli(p); ``None`` means every row (no indexing needed)."""
    if p <= 0.0 or n == 0:
        return torch.empty(0, dtype=torch.long)
    if p >= 1.0:
        return None
    mask = torch.rand(n, generator=generator, device=_param_device(generator)) < p
    idx = mask.nonzero().squeeze(1)
    return None if idx.numel() == n else idx


def _count(idx: torch.Tensor | None, n: int) -> int:
    return n if idx is None else idx.numel()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[k] parameters -> [k, 1, 1, 1] float32 on ``like``'s device."""
    return values.to(device=like.device, dtype=torch.float32, non_blocking=True).view(-1, 1, 1, 1)


def _apply_rows(x: torch.Tensor, idx: torch.Tensor | None, fn, inplace: bool) -> torch.Tensor:
    """Run ``fn`` (which may work in place on its argument) on the rows ``idx`` of ``x``."""
    if idx is None:
        return fn(x if inplace else x.clone())
    if idx.numel() == 0:
        return x
    idx = idx.to(x.device, non_blocking=True)
    sub = fn(x.index_select(0, idx))
    out = x if inplace else x.clone()
    return out.index_copy_(0, idx, sub.to(out.dtype))


def _float01(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32, copy=True)  # the ops below may work in place


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}")


@contextlib.contextmanager
def _fp32(device: torch.device):
    """Keep augmentation in float32 even inside the caller's bf16 autocast region."""
    if device.type in ("cuda", "cpu"):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


# --------------------------------------------------------------------------
# random resized crop + horizontal flip: one affine resample


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
    dev = _param_device(generator)
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
    align_corners=False); the flip is a negated x scale in the same affine. Takes uint8 or
    float in [0, 1]; returns float32 [N, C, out, out] in [0, 1]. Without a crop,
    a flip or a resize, the images are only converted (exact identity).
    """
    n, c, height, width = images.shape
    out = out_size or height
    trivial_crop = (
        tuple(scale) == (1.0, 1.0) and height == width and ratio[0] <= 1.0 <= ratio[1]
    )  # every box is the whole image
    if trivial_crop and out == height == width:
        return random_hflip(_float01(images), hflip_p, generator=generator, inplace=True)

    boxes = crop_boxes(n, height, width, scale, ratio, generator=generator)
    top, left, h, w = boxes.unbind(1)
    sign = torch.ones(n, device=boxes.device)
    flip = _select(n, hflip_p, generator)
    if flip is None:
        sign.fill_(-1.0)
    elif flip.numel():
        sign[flip.to(boxes.device)] = -1.0
    # The affine is axis-aligned (scale + translation), so the grid affine_grid would build
    # is an outer sum; writing it directly skips affine_grid's batched matmul.
    affine = torch.stack(
        [w / width * sign, (left + w / 2) * (2.0 / width) - 1.0, h / height, (top + h / 2) * (2.0 / height) - 1.0],
        dim=1,
    ).to(images.device, non_blocking=True)
    grid = axis_aligned_grid(affine, out)
    src = images.to(torch.float32)  # resample in 0..255 (uint8) and scale the smaller output
    x = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if images.dtype == torch.uint8:
        x.div_(255.0)
    return x.clamp_(0.0, 1.0)


def axis_aligned_grid(affine: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid`` (align_corners=False) for theta = [[sx, 0, tx], [0, sy, ty]], rows (sx, tx, sy, ty)."""
    n = affine.shape[0]
    base = torch.arange(size, device=affine.device, dtype=torch.float32).mul_(2.0 / size).add_(1.0 / size - 1.0)
    grid = torch.empty(n, size, size, 2, device=affine.device, dtype=torch.float32)
    sx, tx, sy, ty = (a.view(n, 1, 1) for a in affine.unbind(1))
    grid[..., 0] = torch.addcmul(tx, sx, base.view(1, 1, size))
    grid[..., 1] = torch.addcmul(ty, sy, base.view(1, size, 1))
    return grid


def random_hflip(
    x: torch.Tensor, p: float, *, generator: torch.Generator | None = None, inplace: bool = False
) -> torch.Tensor:
    """Flip the selected samples left-right (exactly ``torch.flip(x, [-1])``)."""
    idx = _select(x.shape[0], p, generator)
    return _apply_rows(x, idx, lambda t: t.flip(-1), inplace)


# --------------------------------------------------------------------------
# colour jitter (torchvision semantics, per-sample factors)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma [N, 1, H, W] of float [N, 3, H, W] (a 1-channel image is its own luma)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * LUMA_WEIGHTS[0]).add_(g, alpha=LUMA_WEIGHTS[1]).add_(b, alpha=LUMA_WEIGHTS[2]).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``clamp(x * f)`` per sample; ``factor`` is [N]."""
    out = x if inplace else x.clone()
    return out.mul_(_per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Blend each image with the mean of its luma: ``clamp(f * x + (1 - f) * mean)``."""
    f = _per_sample(factor, x)
    if x.shape[1] == 3:
        weights = torch.tensor(LUMA_WEIGHTS, device=x.device, dtype=x.dtype)
        mean = (x.mean(dim=(2, 3)) @ weights).view(-1, 1, 1, 1)
    else:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
    out = x if inplace else x.clone()
    return out.mul_(f).add_((1.0 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Blend each image with its grayscale: ``clamp(f * x + (1 - f) * luma)``; no-op for 1 channel."""
    if x.shape[1] == 1:
        return x if inplace else x.clone()
    f = _per_sample(factor, x)
    gray = rgb_to_grayscale(x).mul_(1.0 - f)
    out = x if inplace else x.clone()
    return out.mul_(f).add_(gray).clamp_(0.0, 1.0)


_HUE_CENTRES = (0.0, 2.0, 4.0)  # red, green, blue on the hue circle measured in sextants [0, 6)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Rotate the HSV hue of each image by ``shift`` (in turns, [-0.5, 0.5]); no-op for 1 channel.

    Same result as torchvision's RGB -> HSV -> shift -> RGB, written without
    building HSV: a hue rotation keeps each pixel's max and min, and channel c
    becomes ``max - (max - min) * clamp(d_c - 1, 0, 1)`` with d_c the circular
    distance (in sextants) from the new hue to c's own hue.
    """
    if x.shape[1] == 1:
        return x if inplace else x.clone()
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)
    delta = maxc - x.amin(dim=1)
    # Hue in sextants with torchvision's case split (ties go to red, then green). Float
    # 0/1 masks and lerp (exact at 0 and 1) instead of torch.where: much faster on CPU.
    is_red = torch.sign(maxc - r).neg_().add_(1.0)
    is_green = torch.sign(maxc - g).neg_().add_(1.0)
    hue = torch.lerp((r - g).add_(delta, alpha=4.0), (b - r).add_(delta, alpha=2.0), is_green)
    hue = torch.lerp(hue, g - b, is_red)
    hue.div_(delta.clamp(min=1e-12))  # delta == 0 means r == g == b: numerator 0, hue 0
    hue.add_(_per_sample(shift, x).view(-1, 1, 1), alpha=6.0)
    hue.sub_(torch.floor(hue * (1.0 / 6.0)), alpha=6.0)  # wrap into [0, 6)
    centres = torch.tensor(_HUE_CENTRES, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    weight = hue.unsqueeze(1) - centres  # in (-4, 6)
    weight.abs_().sub_(3.0).abs_()  # 3 - circular distance
    weight.neg_().add_(2.0).clamp_(0.0, 1.0).mul_(delta.unsqueeze(1))
    out = x if inplace else torch.empty_like(x)
    torch.sub(maxc.unsqueeze(1), weight, out=out)
    return out.clamp_(0.0, 1.0)


def random_color_jitter(
    x: torch.Tensor,
    p: float,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    *,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """With probability ``p`` per sample, torchvision's ColorJitter with per-sample factors.

    Factors: brightness/contrast/saturation ~ U[max(0, 1 - s), 1 + s], hue shift
    ~ U[-h, h]. The four adjustments run in one random order per batch.
    Saturation and hue are no-ops on 1-channel images.
    """
    n, channels = x.shape[0], x.shape[1]
    strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
    if channels == 1:
        strengths["saturation"] = strengths["hue"] = 0.0
    if all(s == 0 for s in strengths.values()):
        return x
    idx = _select(n, p, generator)
    k = _count(idx, n)
    if k == 0:
        return x
    order = torch.randperm(4, generator=generator, device=_param_device(generator)).tolist()
    names = list(strengths)
    factors = {}
    for name in names:  # drawn in a fixed order so the stream does not depend on the permutation
        s = strengths[name]
        if s == 0:
            continue
        factors[name] = _uniform(k, -s, s, generator) if name == "hue" else _uniform(k, max(0.0, 1.0 - s), 1.0 + s, generator)
    ops = {
        "brightness": adjust_brightness,
        "contrast": adjust_contrast,
        "saturation": adjust_saturation,
        "hue": adjust_hue,
    }

    def jitter(t: torch.Tensor) -> torch.Tensor:
        for i in order:
            name = names[i]
            if name in factors:
                t = ops[name](t, factors[name], inplace=True)
        return t

    return _apply_rows(x, idx, jitter, inplace)


# --------------------------------------------------------------------------
# grayscale, blur, solarize


def random_grayscale(
    x: torch.Tensor, p: float, *, generator: torch.Generator | None = None, inplace: bool = False
) -> torch.Tensor:
    """Replace the selected samples by their luma, repeated over the C channels."""
    if x.shape[1] == 1:
        return x
    idx = _select(x.shape[0], p, generator)
    return _apply_rows(x, idx, lambda t: rgb_to_grayscale(t).expand_as(t).contiguous(), inplace)


def blur_kernel_size(side: int) -> int:
    """SimCLR: about 10% of the image side, odd, at least 3."""
    size = int(0.1 * side)
    size += 1 - size % 2
    return max(size, 3)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int | None = None) -> torch.Tensor:
    """Separable gaussian blur with one sigma per sample, reflect padding.

    The batch is folded into the channel dim so one depthwise conv (groups=N*C)
    applies every sample's own kernel.
    """
    n, c, height, width = x.shape
    size = kernel_size or blur_kernel_size(max(height, width))
    if size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {size}")
    half = size // 2
    taps = torch.arange(size, device=x.device, dtype=torch.float32) - half
    sig = sigma.to(device=x.device, dtype=torch.float32, non_blocking=True).view(-1, 1)
    kernel = torch.exp(-(taps**2) / (2.0 * sig**2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, size]
    mode = "reflect" if half < min(height, width) else "replicate"
    folded = F.pad(x.reshape(1, n * c, height, width), (half, half, half, half), mode=mode)
    folded = F.conv2d(folded, kernel.view(n * c, 1, 1, size), groups=n * c)
    folded = F.conv2d(folded, kernel.view(n * c, 1, size, 1), groups=n * c)
    return folded.view(n, c, height, width).clamp_(0.0, 1.0)


def random_gaussian_blur(
    x: torch.Tensor,
    p: float,
    sigma: tuple[float, float] = (0.1, 2.0),
    *,
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Blur the selected samples with sigma ~ U(sigma) each."""
    idx = _select(x.shape[0], p, generator)
    k = _count(idx, x.shape[0])
    if k == 0:
        return x
    sigmas = _uniform(k, sigma[0], sigma[1], generator)
    return _apply_rows(x, idx, lambda t: gaussian_blur(t, sigmas, kernel_size), inplace)


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``1 - x`` where ``x >= threshold`` (threshold on the [0, 1] scale)."""
    return torch.where(x >= threshold, 1.0 - x, x)


def random_solarize(
    x: torch.Tensor,
    p: float,
    threshold: float = 0.5,
    *,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    idx = _select(x.shape[0], p, generator)
    return _apply_rows(x, idx, lambda t: solarize(t, threshold), inplace)


# --------------------------------------------------------------------------
# the recipe, views and the eval transform


def augment_batch(
    images: torch.Tensor,
    view: "ViewAugment",
    *,
    out_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One augmented view of a uint8 batch [N, C, H, W] -> float32 [N, C, out, out] in [0, 1].

    Same device as ``images``; not normalised (see :func:`normalize`).
    """
    _check_images(images)
    with _fp32(images.device):
        x = random_resized_crop(
            images, out_size, view.crop_scale, view.crop_ratio, view.hflip_p, generator=generator
        )
        x = random_color_jitter(
            x,
            view.jitter_p,
            view.brightness,
            view.contrast,
            view.saturation,
            view.hue,
            generator=generator,
            inplace=True,
        )
        x = random_grayscale(x, view.grayscale_p, generator=generator, inplace=True)
        x = random_gaussian_blur(x, view.blur_p, view.blur_sigma, generator=generator, inplace=True)
        x = random_solarize(x, view.solarize_p, view.solarize_threshold, generator=generator, inplace=True)
    return x


def _affine_params(
    channels: int, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
    for name, t in (("mean", mean_t), ("std", std_t)):
        if t.numel() not in (1, channels):
            raise ValueError(f"{name} has {t.numel()} values for {channels}-channel images")
    if (std_t <= 0).any():
        raise ValueError(f"std must be positive, got {std_t.tolist()}")
    scale = (1.0 / std_t).expand(channels).reshape(1, channels, 1, 1).to(device)
    bias = (-mean_t / std_t).expand(channels).reshape(1, channels, 1, 1).to(device)
    return scale, bias


def normalize(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, channels_last: bool = False
) -> torch.Tensor:
    """``(x - mean) / std`` per channel, in float32, as a new tensor (one pass)."""
    scale, bias = _affine_params(x.shape[1], mean, std, x.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device).contiguous(memory_format=fmt)
    return torch.addcmul(bias, x.to(torch.float32), scale, out=out)


def make_views(
    images: torch.Tensor,
    views: "list[ViewAugment]",
    num_views: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    out_size: int | None = None,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> list[torch.Tensor]:
    """``num_views`` normalised views; view i follows ``views[i % len(views)]``.

    Views that share a recipe are augmented together in one call over the
    repeated batch (fewer, larger ops: what both CPU threads and GPU kernels like).
    """
    _check_images(images)
    if not views:
        raise ValueError("make_views needs at least one ViewAugment")
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    recipes = [views[i % len(views)] for i in range(num_views)]
    groups: list[tuple["ViewAugment", list[int]]] = []
    for i, recipe in enumerate(recipes):
        for seen, members in groups:
            if seen == recipe:
                members.append(i)
                break
        else:
            groups.append((recipe, [i]))

    n = images.shape[0]
    out: list[torch.Tensor | None] = [None] * num_views
    for recipe, members in groups:
        batch = images if len(members) == 1 else images.repeat(len(members), 1, 1, 1)
        x = augment_batch(batch, recipe, out_size=out_size, generator=generator)
        if channels_last:
            x = normalize(x, mean, std, channels_last=True)
        else:  # x is ours: normalise in place, hand out row slices (each contiguous)
            scale, bias = _affine_params(x.shape[1], mean, std, x.device)
            x.mul_(scale).add_(bias)
        for j, i in enumerate(members):
            out[i] = x[j * n : (j + 1) * n]
    return out  # type: ignore[return-value]


def to_float(
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    out_size: int | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """The eval transform: uint8 -> float, resize (bilinear, antialiased) if ``out_size`` differs, normalise."""
    _check_images(images)
    with _fp32(images.device):
        x = _float01(images)
        height, width = x.shape[-2:]
        if out_size is not None and (height, width) != (out_size, out_size):
            x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        return normalize(x, mean, std, channels_last=channels_last)
