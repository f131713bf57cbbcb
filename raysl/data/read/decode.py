"""Real-size images on the CPU: decode once, cut every view's random-resized crop.

This is the map step of the training Dataset for ``encoded`` shards (original
JPEG/PNG bytes, any size; see :mod:`raysl.data.read.dataset`). Ray Data runs
:class:`DecodeCrops` as stateless tasks (``num_cpus=1``, no GPU) on whatever
CPUs the cluster has, CPU-only nodes included; the train worker receives only
fixed-size uint8 crops, one column per view (``view0``, ``view1``, ...: each
[N, S_v, S_v, C] for that view's own side S_v), plus ``index`` and ``label``.

Per row:

1. Draw each view's crop box with torchvision's RandomResizedCrop algorithm
   (:func:`sample_crop_boxes`: area fraction ~ U(scale), aspect ~ logU(ratio),
   10 attempts, then the centre-crop fallback; integer boxes; the box itself is
   :mod:`raysl.data.crop_box`'s, shared with the batch augmentation) in the image's
   *displayed* coordinates (the manifest's height/width, EXIF orientation
   applied).
2. Decode the bytes once (:func:`raysl.data.codec.decode_image`) with a
   ``min_size`` that keeps every box at least as many decoded pixels as its
   output side: a 4000 x 3000 photo whose crops all shrink by 4x or more
   decodes at a quarter scale in the DCT, several times faster.
3. Cut each box and resize it to its side with antialiased bilinear
   (torch's uint8 ``interpolate(antialias=True)``, the filter of PIL and of
   torchvision's RandomResizedCrop); the box is mapped into the decoded
   image's (possibly reduced) coordinates and rounded to whole pixels there.

Randomness: every call draws from a fresh OS-entropy generator
(``np.random.default_rng()``), not from (seed, epoch, block). Ray Data
re-executes the map each epoch and gives the function neither the epoch nor a
stable block id, so a seeded stream would repeat crops across epochs or
across tasks; fresh entropy makes every epoch's and every task's crops
independent, at the price of crops that are not reproducible run to run (the
rest of the run, weights and the device-side colour ops, stays seeded).
Flips, colour jitter, grayscale, blur and solarize are not done here: the
worker applies them in batches on its device
(:func:`raysl.data.augment.augment_precropped`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from raysl.data.codec import decode_image

if TYPE_CHECKING:
    import torch

    from raysl.config import ViewAugment

__all__ = [
    "CropSpec",
    "DecodeCrops",
    "ENCODED_COLUMNS",
    "crop_specs",
    "crop_resize",
    "cut_crops",
    "draft_size",
    "rescale_box",
    "sample_crop_boxes",
    "view_column",
]

# the columns an ``encoded`` shard holds (raysl data prepare imagefolder)
ENCODED_COLUMNS = ("image", "label", "index", "height", "width", "orientation")
RANDOM_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop (raysl.data.crop_box.ATTEMPTS)


def view_column(view: int) -> str:
    """The Dataset column holding view ``view``'s crops."""
    return f"view{view}"


@dataclass(frozen=True)
class CropSpec:
    """What the data path needs of one view: its output side and its crop distribution."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]


def crop_specs(recipes: "Sequence[ViewAugment]", default_size: int) -> list[CropSpec]:
    """One :class:`CropSpec` per view recipe; a recipe without its own ``size`` gets ``default_size``."""
    return [
        CropSpec(int(getattr(r, "size", None) or default_size), tuple(map(float, r.crop_scale)),
                 tuple(map(float, r.crop_ratio)))
        for r in recipes
    ]


def sample_crop_boxes(
    heights: np.ndarray,
    widths: np.ndarray,
    scale: Sequence[float],
    ratio: Sequence[float],
    rng: np.random.Generator,
    attempts: int = RANDOM_CROP_ATTEMPTS,
) -> np.ndarray:
    """torchvision's ``RandomResizedCrop.get_params`` for rows of different sizes: int64 [N, 4] (top, left,
    h, w) in whole pixels, drawn from ``rng`` (:func:`raysl.data.crop_box.boxes_from_draws`, the one
    definition of the box)."""
    import torch

    from raysl.data.crop_box import boxes_from_draws

    n = len(heights)
    draws = [rng.random((n, attempts)), rng.random((n, attempts)), np.stack([rng.random(n), rng.random(n)], 1)]
    boxes = boxes_from_draws(torch.from_numpy(np.asarray(heights, dtype=np.int64)),
                             torch.from_numpy(np.asarray(widths, dtype=np.int64)),
                             *(torch.from_numpy(d) for d in draws), scale, ratio, integer=True)
    return boxes.numpy().astype(np.int64)


def draft_size(height: int, width: int, boxes: Sequence[Sequence[int]], sizes: Sequence[int]) -> tuple[int, int]:
    """The smallest decoded (h, w) that keeps every box at least its output side in decoded pixels.

    A box of ``bh`` x ``bw`` displayed pixels resized to ``S`` survives a
    decode reduced by ``r`` as long as ``min(bh, bw) / r >= S``; the image may
    shrink by the smallest such ``r`` over the views (never grow).
    """
    shrink = min(min(int(b[2]), int(b[3])) / s for b, s in zip(boxes, sizes))
    if shrink <= 1.0:
        return height, width
    return max(1, math.ceil(height / shrink)), max(1, math.ceil(width / shrink))


def crop_resize(image: "torch.Tensor", box: Sequence[int], size: int) -> "torch.Tensor":
    """uint8 [C, H, W] -> the box (top, left, h, w) resized to uint8 [C, size, size], antialiased bilinear.

    torchvision's RandomResizedCrop filter (``interpolate(antialias=True)``
    ports PIL's bilinear). On the CPU the uint8 kernel runs directly (its
    vectorised path wants channels-last memory, which an HWC array viewed as
    CHW already is: about 3x PIL's ``resize`` on 224 px crops); elsewhere the
    crop goes through float32 and is rounded back.
    """
    import torch
    import torch.nn.functional as F

    top, left, h, w = (int(v) for v in box)
    crop = image[:, top : top + h, left : left + w].unsqueeze(0)
    if (h, w) == (size, size):
        return crop.squeeze(0)
    if crop.device.type == "cpu":
        return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True).squeeze(0)
    crop = F.interpolate(crop.to(torch.float32), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)
    return crop.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def rescale_box(box: Sequence[float], sy: float, sx: float) -> tuple[int, int, int, int]:
    """A box in displayed coordinates mapped onto a decoded image ``sy`` x ``sx`` times that size, in whole pixels.

    Rounding moves each edge by at most half a decoded pixel: with a reduced
    DCT decode (1/2..1/8) that is 1-4 displayed pixels on a box that keeps at
    least its output side in decoded pixels, a sub-pixel shift of the crop at
    its output resolution (the random crop distribution is unchanged).
    """
    top, left, h, w = (float(v) for v in box)
    return (int(round(top * sy)), int(round(left * sx)), max(1, int(round(h * sy))), max(1, int(round(w * sx))))


def cut_crops(
    pixels: np.ndarray,
    height: int,
    width: int,
    boxes: Sequence[Sequence[int]],
    sizes: Sequence[int],
) -> list[np.ndarray]:
    """Crop + resize each box (displayed coordinates of a ``height`` x ``width`` image) out of ``pixels``.

    ``pixels`` is the decoded image, HWC uint8, possibly smaller than
    ``height`` x ``width`` (a reduced DCT decode): boxes are scaled into it
    (:func:`rescale_box`). Returns one (S, S, C) uint8 array per box
    (:func:`crop_resize`).
    """
    import torch

    dh, dw, channels = pixels.shape
    image = torch.from_numpy(pixels).permute(2, 0, 1)  # CHW view of the HWC array: no copy
    sy, sx = dh / height, dw / width
    out = []
    for box, size in zip(boxes, sizes):
        if (dh, dw) != (height, width):
            box = rescale_box(box, sy, sx)
        out.append(crop_resize(image, box, size).permute(1, 2, 0).numpy())
    return out


def _column(batch: Any, name: str) -> Any:
    """A column of a pyarrow Table or of a dict of numpy arrays."""
    if isinstance(batch, Mapping):
        return batch[name]
    return batch.column(name)


def _as_list(values: Any) -> list:
    if hasattr(values, "to_pylist"):
        return values.to_pylist()
    return list(values)


def _labels(values: Any) -> np.ndarray:
    """int64 labels, -1 where missing (Arrow nulls, or NaN from a numpy conversion)."""
    if hasattr(values, "fill_null"):
        return np.asarray(values.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    arr = np.asarray(values)
    if arr.dtype == object:
        return np.array([-1 if v is None else int(v) for v in arr], dtype=np.int64)
    if arr.dtype.kind == "f":
        return np.where(np.isnan(arr), -1, arr).astype(np.int64)
    return arr.astype(np.int64)


class DecodeCrops:
    """The ``map_batches`` step of the JPEG training Dataset: encoded rows -> one uint8 crop column per view.

    Input: a batch (pyarrow Table, or dict of numpy arrays) with the
    :data:`ENCODED_COLUMNS`. Output: ``view{v}`` uint8 [N, S_v, S_v, C] for
    each :class:`CropSpec`, ``index`` int64 and ``label`` int64 (-1: none).
    Passed to Ray Data as an instance, so it runs as stateless tasks; also
    called in-process where a run reads its shards without Ray Data.
    """

    def __init__(self, specs: Sequence[CropSpec], channels: int, *, seed: int | None = None):
        if not specs:
            raise ValueError("DecodeCrops needs at least one view")
        self.specs = list(specs)
        self.channels = int(channels)
        self.seed = seed  # None: fresh OS entropy every call (see the module docstring)

    def boxes(self, heights: np.ndarray, widths: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Each view's crop boxes [N, 4] for rows of the given displayed sizes."""
        return [sample_crop_boxes(heights, widths, s.scale, s.ratio, rng) for s in self.specs]

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        images = _as_list(_column(batch, "image"))
        heights = np.asarray(_as_list(_column(batch, "height")), dtype=np.int64)
        widths = np.asarray(_as_list(_column(batch, "width")), dtype=np.int64)
        orientations = _as_list(_column(batch, "orientation"))
        n = len(images)
        sizes = [s.size for s in self.specs]
        boxes = self.boxes(heights, widths, rng)
        out = {view_column(v): np.empty((n, s, s, self.channels), np.uint8) for v, s in enumerate(sizes)}
        for row in range(n):
            height, width = int(heights[row]), int(widths[row])
            row_boxes = [b[row] for b in boxes]
            pixels = decode_image(
                images[row], int(orientations[row] or 1), self.channels,
                min_size=draft_size(height, width, row_boxes, sizes),
            )
            for v, crop in enumerate(cut_crops(pixels, height, width, row_boxes, sizes)):
                out[view_column(v)][row] = crop
        out["index"] = np.asarray(_as_list(_column(batch, "index")), dtype=np.int64)
        out["label"] = _labels(_column(batch, "label"))
        return out
