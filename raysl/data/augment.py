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

The ops, by concept: crop and flip in :mod:`raysl.data.augment_crop`; colour jitter, grayscale, blur and
solarize in :mod:`raysl.data.augment_photometric` (each lists its differences from torchvision); the
per-sample draws and row selection in :mod:`raysl.data.augment_rows`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from raysl.data.augment_crop import crop_affine, resample, whole_image
from raysl.data.augment_photometric import (
    JITTER_OPS,
    apply_jitter,
    blur_taps,
    draw_jitter,
    gaussian_blur,
    grayscale_rows,
    solarize,
)
from raysl.data.augment_rows import apply_rows, draw_mask, float01, pick, uniform

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
]

# Rows per CPU chunk: about this many bytes of float32 output (85 RGB 32x32 images).
CPU_CHUNK_BYTES = 1 << 20


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
    if whole_image(view.crop_scale, view.crop_ratio, height, width) and out == height:
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
        plan.blur_sigma = uniform(n, view.blur_sigma[0], view.blur_sigma[1], generator)
        plan.blur_kernel = blur_taps(out, view.blur_sigma[1])
    plan.solarize = draw_mask(n, view.solarize_p, generator)
    return plan


def apply_plan(images: torch.Tensor, plan: ViewPlan) -> torch.Tensor:
    """uint8 (or [0, 1] float) [N, C, H, W] -> float32 [N, C, out, out] in [0, 1], in one go."""
    if plan.affine is not None:
        x = resample(images, plan.affine, plan.out_size)
    else:
        x = apply_rows(float01(images), plan.flip, lambda t, idx: t.flip(-1), True)
    x = apply_jitter(x, plan.jitter, plan.jitter_order, plan.jitter_factors, True)
    x = apply_rows(x, plan.grayscale, grayscale_rows, True)
    sigma, kernel = plan.blur_sigma, plan.blur_kernel
    x = apply_rows(x, plan.blur, lambda t, idx: gaussian_blur(t, pick(sigma, idx), kernel), True)
    threshold = plan.solarize_threshold
    return apply_rows(x, plan.solarize, lambda t, idx: solarize(t, threshold), True)


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
    :mod:`raysl.data.read.decode` or :mod:`raysl.data.read.gpu_decode` cut it with
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
        x = float01(images)
        height, width = x.shape[-2:]
        if out_size is not None and (height, width) != (out_size, out_size):
            x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        return normalize(x, mean, std, channels_last=channels_last)
