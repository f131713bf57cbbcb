"""The photometric ops of a view, on the batch's device: colour jitter, grayscale, gaussian blur, solarize.

Each takes float32 [N, C, H, W] in [0, 1] and clamps after itself; the random ones draw a Bernoulli(p)
mask and run only on the rows that drew it (:mod:`raysl.data.augment_rows`).

Differences from torchvision, on purpose:

- Colour jitter applies brightness, contrast, saturation and hue in one random
  order per batch (torchvision draws an order per image).
- Grayscale uses the ITU-R 601 weights 0.299/0.587/0.114 (torchvision: 0.2989).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raysl.data.augment_rows import apply_rows, draw_mask, param_device, pick, uniform

__all__ = [
    "draw_jitter",
    "apply_jitter",
    "random_color_jitter",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "random_grayscale",
    "rgb_to_grayscale",
    "grayscale_rows",
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


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[k] parameters -> [k, 1, 1, 1] float32 on ``like``'s device."""
    return values.to(device=like.device, dtype=torch.float32, non_blocking=True).view(-1, 1, 1, 1)


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
    perm = torch.randperm(len(JITTER_OPS), generator=generator, device=param_device(generator)).tolist()
    order = tuple(JITTER_OPS[i] for i in perm if JITTER_OPS[i] in active)
    factors = {}
    for name in active:  # a fixed draw order: the stream does not depend on the permutation
        s = strengths[name]
        lo, hi = (-s, s) if name == "hue" else (max(0.0, 1.0 - s), 1.0 + s)
        factors[name] = uniform(n, lo, hi, generator)
    return mask, order, factors


def apply_jitter(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    order: tuple[str, ...],
    factors: dict[str, torch.Tensor],
    inplace: bool,
) -> torch.Tensor:
    """The adjustments ``order`` names, with their per-sample ``factors``, on the rows that drew ``mask``."""
    if not order:
        return x

    def jitter(rows: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        for name in order:
            rows = _ADJUST[name](rows, pick(factors[name], idx), inplace=True)
        return rows

    return apply_rows(x, mask, jitter, inplace)


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
    return apply_jitter(x, mask, order, factors, inplace)


# --------------------------------------------------------------------------
# grayscale, blur, solarize


def grayscale_rows(rows: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """The luma of ``rows`` repeated over their C channels (an op for :func:`apply_rows`)."""
    return rgb_to_grayscale(rows).expand_as(rows).contiguous()


def random_grayscale(
    x: torch.Tensor, p: float, *, generator: torch.Generator | None = None, inplace: bool = False
) -> torch.Tensor:
    """Replace the selected samples by their luma, repeated over the C channels."""
    if x.shape[1] == 1:
        return x
    return apply_rows(x, draw_mask(x.shape[0], p, generator), grayscale_rows, inplace)


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
    sigmas = uniform(x.shape[0], sigma[0], sigma[1], generator)
    taps = kernel_size or blur_taps(max(x.shape[-2:]), sigma[1])
    return apply_rows(x, mask, lambda t, idx: gaussian_blur(t, pick(sigmas, idx), taps), inplace)


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
    return apply_rows(x, draw_mask(x.shape[0], p, generator), lambda t, idx: solarize(t, threshold), inplace)
