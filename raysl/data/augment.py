"""Batch augmentation on the training device (the airbench way).

The uint8 batch already sits on the device; every op here works on the whole
batch at once with per-sample random parameters, so there is no per-sample
Python loop and no CPU data-loader worker in the hot path. One view's recipe is
a :class:`raysl.config.ViewAugment` (SimCLR's defaults, Chen et al. 2020,
appendix A); the ops run in SimCLR/BYOL order:

    random resized crop + horizontal flip (one affine resample)
    -> colour jitter (p) -> grayscale (p) -> gaussian blur (p) -> solarize (p)

Each random op draws a Bernoulli(p) mask from ``generator``, is skipped when
p is 0 or no sample drew it, and otherwise runs only on the selected rows
(``index_select`` / ``index_copy_``; no copy when every row drew it). Values
are float32 in [0, 1], clamped after every op; the arithmetic stays float32
even inside the caller's bf16 autocast.

``augment_batch`` first draws every random parameter of the batch (a
:class:`ViewPlan`, on the generator's device, the CPU when no generator is
given: choosing rows never forces a device sync), then applies it. On the CPU
it applies the plan in cache-sized chunks of rows: the same numbers, but each
op's temporaries stay in cache and small enough that glibc keeps reusing them
instead of returning them to the kernel and faulting them back in on every
batch. On an accelerator the whole batch is one chunk.

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
- Grayscale uses the ITU-R 601 weights 0.299/0.587/0.114 (torchvision: 0.2989).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # only for annotations: the ops take plain numbers
    from raysl.config import ViewAugment

__all__ = [
    "augment_batch",
    "make_views",
    "augment_precropped",
    "to_float",
    "normalize",
    "ViewPlan",
    "plan_view",
    "apply_plan",
    "draw_mask",
    "crop_boxes",
    "crop_affine",
    "resample",
    "random_resized_crop",
    "axis_aligned_grid",
    "random_hflip",
    "draw_jitter",
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
    "blur_support",
    "blur_taps",
    "random_solarize",
    "solarize",
]

# ITU-R 601-2 luma weights.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
# Rows per CPU chunk: about this many bytes of float32 output (85 RGB 32x32 images).
CPU_CHUNK_BYTES = 1 << 20


# --------------------------------------------------------------------------
# randomness helpers


def _param_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=_param_device(generator))
    return u.mul_(hi - lo).add_(lo)


def draw_mask(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Bernoulli(p) per sample, bool [n] on the generator's device; ``None`` when p <= 0 (no draw)."""
    if p <= 0.0 or n == 0:
        return None
    if p >= 1.0:
        return torch.ones(n, dtype=torch.bool, device=_param_device(generator))
    return torch.rand(n, generator=generator, device=_param_device(generator)) < p


def _rows(mask: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
    """(indices of the drawn rows or ``None`` for all of them, how many)."""
    if mask is None:
        return None, 0
    idx = mask.nonzero().squeeze(1)
    count = idx.numel()
    return (None if count == mask.numel() else idx), count


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[k] parameters -> [k, 1, 1, 1] float32 on ``like``'s device."""
    return values.to(device=like.device, dtype=torch.float32, non_blocking=True).view(-1, 1, 1, 1)


def _apply_rows(
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


def _pick(values: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return values if idx is None else values[idx]


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


def _whole_image(scale: Sequence[float], ratio: Sequence[float], height: int, width: int) -> bool:
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
    if _whole_image(scale, ratio, height, width) and out == height:
        return random_hflip(_float01(images), hflip_p, generator=generator, inplace=True)
    return resample(images, crop_affine(n, height, width, scale, ratio, hflip_p, generator), out)


def random_hflip(
    x: torch.Tensor, p: float, *, generator: torch.Generator | None = None, inplace: bool = False
) -> torch.Tensor:
    """Flip the selected samples left-right (exactly ``torch.flip(x, [-1])``)."""
    return _apply_rows(x, draw_mask(x.shape[0], p, generator), lambda t, idx: t.flip(-1), inplace)


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


_ADJUST = {
    "brightness": adjust_brightness,
    "contrast": adjust_contrast,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
}


def draw_jitter(
    n: int,
    channels: int,
    p: float,
    strengths: dict[str, float],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor | None, tuple[str, ...], dict[str, torch.Tensor]]:
    """(row mask, order of the adjustments that do something, their per-sample factors [n])."""
    active = [
        name
        for name in JITTER_OPS
        if strengths.get(name, 0.0) > 0 and not (channels == 1 and name in ("saturation", "hue"))
    ]
    if not active or p <= 0:
        return None, (), {}
    mask = draw_mask(n, p, generator)
    perm = torch.randperm(len(JITTER_OPS), generator=generator, device=_param_device(generator)).tolist()
    order = tuple(JITTER_OPS[i] for i in perm if JITTER_OPS[i] in active)
    factors = {}
    for name in active:  # a fixed draw order: the stream does not depend on the permutation
        s = strengths[name]
        lo, hi = (-s, s) if name == "hue" else (max(0.0, 1.0 - s), 1.0 + s)
        factors[name] = _uniform(n, lo, hi, generator)
    return mask, order, factors


def _apply_jitter(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    order: tuple[str, ...],
    factors: dict[str, torch.Tensor],
    inplace: bool,
) -> torch.Tensor:
    if not order:
        return x

    def jitter(rows: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        for name in order:
            rows = _ADJUST[name](rows, _pick(factors[name], idx), inplace=True)
        return rows

    return _apply_rows(x, mask, jitter, inplace)


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
    ~ U[-h, h]. The adjustments run in one random order per batch. Saturation
    and hue are no-ops on 1-channel images.
    """
    strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
    mask, order, factors = draw_jitter(x.shape[0], x.shape[1], p, strengths, generator)
    return _apply_jitter(x, mask, order, factors, inplace)


# --------------------------------------------------------------------------
# grayscale, blur, solarize


def _to_grayscale(rows: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    return rgb_to_grayscale(rows).expand_as(rows).contiguous()


def random_grayscale(
    x: torch.Tensor, p: float, *, generator: torch.Generator | None = None, inplace: bool = False
) -> torch.Tensor:
    """Replace the selected samples by their luma, repeated over the C channels."""
    if x.shape[1] == 1:
        return x
    return _apply_rows(x, draw_mask(x.shape[0], p, generator), _to_grayscale, inplace)


def blur_kernel_size(side: int) -> int:
    """SimCLR: about 10% of the image side, odd, at least 3."""
    size = int(0.1 * side)
    size += 1 - size % 2
    return max(size, 3)


# Kernel taps whose total weight is below half a uint8 level are dropped (see blur_support).
BLUR_TAIL = 0.5 / 255.0


def blur_support(sigma: float, tail: float = BLUR_TAIL) -> int:
    """The smallest half-width r whose gaussian weight outside [-r, r] is at most ``tail``.

    The dropped taps of a unit-mass kernel weigh at most
    ``erfc((r + 1/2) / (sigma * sqrt(2)))`` (the continuous tail beyond r + 1/2,
    which bounds the sampled one), so after renormalising, the blurred value of
    an image in [0, 1] moves by at most ``tail``: with the default, less than
    half a grey level of the uint8 input. sigma 2 (SimCLR's largest) needs
    r = 6, 13 taps instead of the 23 of a 224 px view's kernel: same picture,
    about half the work.
    """
    r = 0
    while math.erfc((r + 0.5) / (max(sigma, 1e-6) * math.sqrt(2.0))) > tail:
        r += 1
    return r


def blur_taps(side: int, max_sigma: float) -> int:
    """SimCLR's kernel for a ``side`` px view, less the taps no sigma up to ``max_sigma`` gives weight to."""
    return min(blur_kernel_size(side), 2 * blur_support(max_sigma) + 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int | None = None) -> torch.Tensor:
    """Separable gaussian blur with one sigma per sample, reflect padding.

    The batch is folded into the channel dim so one depthwise conv (groups=N*C)
    applies every sample's own kernel. ``kernel_size`` defaults to about 10% of
    the side (SimCLR's); callers that know the largest sigma pass
    :func:`blur_taps` instead.
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
    """Blur the selected samples, each with its own sigma ~ U(sigma)."""
    mask = draw_mask(x.shape[0], p, generator)
    if mask is None:
        return x
    sigmas = _uniform(x.shape[0], sigma[0], sigma[1], generator)
    taps = kernel_size or blur_taps(max(x.shape[-2:]), sigma[1])
    return _apply_rows(x, mask, lambda t, idx: gaussian_blur(t, _pick(sigmas, idx), taps), inplace)


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
    """Solarize the selected samples."""
    return _apply_rows(x, draw_mask(x.shape[0], p, generator), lambda t, idx: solarize(t, threshold), inplace)


# --------------------------------------------------------------------------
# one view: draw every parameter, then apply


@dataclass
class ViewPlan:
    """Every random draw for one view of one batch, per sample, on the generator's device."""

    out_size: int
    affine: torch.Tensor | None = None  # [N, 4] crop + flip for axis_aligned_grid; None: no resample
    flip: torch.Tensor | None = None  # [N] bool flips when there is no resample
    jitter: torch.Tensor | None = None  # [N] bool
    jitter_order: tuple[str, ...] = ()
    jitter_factors: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N]
    grayscale: torch.Tensor | None = None  # [N] bool
    blur: torch.Tensor | None = None  # [N] bool
    blur_sigma: torch.Tensor | None = None  # [N]
    blur_kernel: int = 3
    solarize: torch.Tensor | None = None  # [N] bool
    solarize_threshold: float = 0.5

    def rows(self, start: int, stop: int) -> "ViewPlan":
        """The plan of rows ``start:stop`` of the batch."""

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop]

        return replace(
            self,
            affine=cut(self.affine),
            flip=cut(self.flip),
            jitter=cut(self.jitter),
            jitter_factors={k: v[start:stop] for k, v in self.jitter_factors.items()},
            grayscale=cut(self.grayscale),
            blur=cut(self.blur),
            blur_sigma=cut(self.blur_sigma),
            solarize=cut(self.solarize),
        )


def plan_view(
    view: "ViewAugment",
    n: int,
    channels: int,
    height: int,
    width: int,
    out_size: int | None = None,
    generator: torch.Generator | None = None,
) -> ViewPlan:
    """Draw one view's parameters for a batch of ``n`` images of ``channels`` x ``height`` x ``width``."""
    out = out_size or height
    plan = ViewPlan(out_size=out, solarize_threshold=view.solarize_threshold)
    if _whole_image(view.crop_scale, view.crop_ratio, height, width) and out == height:
        plan.flip = draw_mask(n, view.hflip_p, generator)
    else:
        plan.affine = crop_affine(n, height, width, view.crop_scale, view.crop_ratio, view.hflip_p, generator)
    strengths = {name: getattr(view, name) for name in JITTER_OPS}
    plan.jitter, plan.jitter_order, plan.jitter_factors = draw_jitter(
        n, channels, view.jitter_p, strengths, generator
    )
    if channels == 3:
        plan.grayscale = draw_mask(n, view.grayscale_p, generator)
    plan.blur = draw_mask(n, view.blur_p, generator)
    if plan.blur is not None:
        plan.blur_sigma = _uniform(n, view.blur_sigma[0], view.blur_sigma[1], generator)
        plan.blur_kernel = blur_taps(out, view.blur_sigma[1])
    plan.solarize = draw_mask(n, view.solarize_p, generator)
    return plan


def apply_plan(images: torch.Tensor, plan: ViewPlan) -> torch.Tensor:
    """uint8 (or [0, 1] float) [N, C, H, W] -> float32 [N, C, out, out] in [0, 1], in one go."""
    if plan.affine is not None:
        x = resample(images, plan.affine, plan.out_size)
    else:
        x = _apply_rows(_float01(images), plan.flip, lambda t, idx: t.flip(-1), True)
    x = _apply_jitter(x, plan.jitter, plan.jitter_order, plan.jitter_factors, True)
    x = _apply_rows(x, plan.grayscale, _to_grayscale, True)
    sigma, kernel = plan.blur_sigma, plan.blur_kernel
    x = _apply_rows(x, plan.blur, lambda t, idx: gaussian_blur(t, _pick(sigma, idx), kernel), True)
    threshold = plan.solarize_threshold
    return _apply_rows(x, plan.solarize, lambda t, idx: solarize(t, threshold), True)


def _chunk_rows(images: torch.Tensor, out_size: int) -> int:
    if images.device.type != "cpu":
        return images.shape[0]
    return max(1, CPU_CHUNK_BYTES // (images.shape[1] * out_size * out_size * 4))


def _augment_into(
    images: torch.Tensor,
    view: "ViewAugment",
    out_size: int | None,
    generator: torch.Generator | None,
    scale_bias: tuple[torch.Tensor, torch.Tensor] | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Plan, then apply chunk by chunk (CPU), normalising each chunk while it is in cache."""
    _check_images(images)
    n, c, height, width = images.shape
    plan = plan_view(view, n, c, height, width, out_size, generator)
    chunk = _chunk_rows(images, plan.out_size)
    with _fp32(images.device):
        if chunk >= n and scale_bias is None:
            return apply_plan(images, plan)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(
            (n, c, plan.out_size, plan.out_size), dtype=torch.float32, device=images.device, memory_format=fmt
        )
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            part = apply_plan(images[start:stop], plan if chunk >= n else plan.rows(start, stop))
            if scale_bias is None:
                out[start:stop] = part
            else:
                torch.addcmul(scale_bias[1], part, scale_bias[0], out=out[start:stop])
        return out


def augment_batch(
    images: torch.Tensor,
    view: "ViewAugment",
    *,
    out_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One augmented view of a uint8 batch [N, C, H, W] -> float32 [N, C, out, out] in [0, 1].

    Same device as ``images``; not normalised (see :func:`normalize`). ``out``
    defaults to the input height.
    """
    return _augment_into(images, view, out_size, generator)


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
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
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

    View i is ``view.size`` px square, or ``out_size`` (the global views'
    side; default: the input height) when its recipe has no size: multi-crop
    mixes 2 global views with smaller local crops, so the views may differ in
    shape. Views that share a recipe (size included) are augmented together in
    one call over the repeated batch (fewer, larger ops: what CPU threads and
    GPU kernels like), and come back as row slices of one tensor.
    """
    _check_images(images)
    if not views:
        raise ValueError("make_views needs at least one ViewAugment")
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    groups: list[tuple["ViewAugment", list[int]]] = []
    for i in range(num_views):
        recipe = views[i % len(views)]
        for seen, members in groups:
            if seen == recipe:
                members.append(i)
                break
        else:
            groups.append((recipe, [i]))

    n = images.shape[0]
    scale_bias = _affine_params(images.shape[1], mean, std, images.device)
    out: list[torch.Tensor] = [images] * num_views  # placeholders
    for recipe, members in groups:
        batch = images if len(members) == 1 else images.repeat(len(members), 1, 1, 1)
        size = recipe.size or out_size
        x = _augment_into(batch, recipe, size, generator, scale_bias, channels_last)
        for j, i in enumerate(members):
            out[i] = x[j * n : (j + 1) * n]
    return out


def augment_precropped(
    crops: "Sequence[torch.Tensor]",
    views: "Sequence[ViewAugment]",
    *,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> list[torch.Tensor]:
    """:func:`make_views` for views whose random-resized crop the data path already cut.

    ``crops[i]`` is view i's uint8 [N, C, S_i, S_i] batch (real-size images:
    :mod:`raysl.data.decode` or :mod:`raysl.data.gpu_decode` cut it with
    ``views[i]``'s scale and ratio); this applies the rest of ``views[i]``
    (flip, colour jitter, grayscale, blur, solarize: :func:`plan_view` /
    :func:`apply_plan` with a whole-image crop, so there is no resample) and
    normalises. Same output as :func:`make_views`: float32 [N, C, S_i, S_i]
    per view, row slices of one tensor for views that share a recipe and size.
    """
    if len(crops) != len(views):
        raise ValueError(f"augment_precropped got {len(crops)} crop batches for {len(views)} view recipes")
    for crop in crops:
        _check_images(crop)
        if crop.shape[-1] != crop.shape[-2]:
            raise ValueError(f"expected square crops, got shape {tuple(crop.shape)}")
    groups: list[tuple[object, list[int]]] = []
    for i, recipe in enumerate(views):
        # crop already done: a whole-image box draws no resample, only the flip
        key = (recipe.model_copy(update={"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}), tuple(crops[i].shape))
        for seen, members in groups:
            if seen == key:
                members.append(i)
                break
        else:
            groups.append((key, [i]))
    out: list[torch.Tensor] = list(crops)  # placeholders
    for (recipe, shape), members in groups:
        n, c, side = shape[0], shape[1], shape[-1]
        batch = crops[members[0]] if len(members) == 1 else torch.cat([crops[i] for i in members])
        scale_bias = _affine_params(c, mean, std, batch.device)
        x = _augment_into(batch, recipe, side, generator, scale_bias, channels_last)
        for j, i in enumerate(members):
            out[i] = x[j * n : (j + 1) * n]
    return out


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
