"""Real-size images decoded on the training device (``data.decode: gpu``; ``auto`` on CUDA).

The Dataset hands the worker the encoded rows untouched (bytes, displayed
height/width, EXIF orientation); :func:`decode_crops` turns a batch of them
into one uint8 [N, C, S_v, S_v] tensor per view on the device:

1. Crop boxes come from the same sampler as the CPU path
   (:func:`raysl.data.read.decode.sample_crop_boxes`, torchvision's
   RandomResizedCrop, displayed coordinates), so both paths train on the same
   crop distribution.
2. JPEG rows are decoded in batches with ``torchvision.io.decode_jpeg(list,
   device=...)``: nvJPEG on a CUDA device (one batched call per chunk of rows,
   chunked so the full-size decoded images of a chunk stay under
   ``max_decoded_bytes``), libjpeg on the CPU. PNG rows, JPEGs with four
   components (CMYK/YCCK, which nvJPEG does not convert) and any JPEG the
   batched call rejects (retried alone first) are decoded on the CPU by
   :func:`raysl.data.codec.decode_image` and uploaded.
3. EXIF orientation is applied on the device (:func:`orient`: flips and
   transposes of the [C, H, W] tensor, the eight cases of
   ``PIL.ImageOps.exif_transpose``).
4. Each box is cut by slicing and resized with ``F.interpolate(mode="bilinear",
   antialias=True)``, one call per (image, view). Why not ``roi_align``: its
   bins average a grid of bilinear samples, a different filter from the CPU
   path's antialiased bilinear (PIL); ``interpolate(antialias=True)`` is
   PyTorch's port of PIL's filter, so a GPU run and a CPU run see the same
   pixels up to rounding. The images of a batch differ in size, so
   ``roi_align`` would need one call per image (or a padded batch of
   full-size images) anyway; per-(image, view) launches cost tens of
   microseconds each, small beside a training step on the same batch.

``torchvision.io.decode_jpeg`` is deprecated since torchvision 0.29 in favour
of TorchCodec, which is not a dependency (and not installed) here; the
torchvision decoder still ships with the pinned torchvision and is the only
batched nvJPEG entry point we have, so it is used knowingly and its
DeprecationWarning is silenced around the call only (:func:`_decode_jpegs`).
When TorchCodec becomes a dependency, ``_decode_jpegs`` is the one function
to port.

The function runs unchanged with ``device="cpu"`` (libjpeg decode, CPU
interpolate): that is how it is tested on machines without a GPU.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from raysl.data.codec import decode_image, image_format
from raysl.data.read.decode import CropSpec, crop_resize, rescale_box, sample_crop_boxes

__all__ = ["decode_crops", "decode_rows", "crop_resize", "jpeg_components", "orient"]

# full-size decoded pixels one batched decode_jpeg call may hold at once (bytes, uint8)
MAX_DECODED_BYTES = 1 << 30
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_components(data: bytes) -> int | None:
    """The number of colour components in a JPEG's frame header (1 gray, 3 YCbCr, 4 CMYK); None if unreadable."""
    view = memoryview(data)
    pos = 2
    end = len(view)
    while pos + 4 <= end:
        if view[pos] != 0xFF:
            return None
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        if marker in _SOF_MARKERS:
            return int(view[pos + 9]) if pos + 9 < end else None
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF orientation 1..8 to a [C, H, W] tensor (as ``PIL.ImageOps.exif_transpose``)."""
    if orientation in (0, 1):
        return image
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:  # 90 degrees clockwise
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # 90 degrees counter-clockwise
        return torch.rot90(image, 1, dims=(-2, -1))
    raise ValueError(f"EXIF orientation {orientation} is not 1..8")


def _decode_jpegs(tensors: list[torch.Tensor], channels: int, device: torch.device) -> list[torch.Tensor]:
    """One batched torchvision decode (nvJPEG on CUDA); its 0.29 deprecation warning is silenced here only."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        warnings.filterwarnings("ignore", message=".*TorchCodec.*", category=DeprecationWarning)
        return list(decode_jpeg(tensors, mode=mode, device=device))


def _decode_on_cpu(data: bytes, orientation: int, channels: int, device: torch.device) -> torch.Tensor:
    """codec's decode (orientation applied) uploaded as [C, H, W]."""
    pixels = decode_image(data, orientation, channels)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous().to(device, non_blocking=True)


def _device_decodable(data: bytes) -> bool:
    return image_format(data) == "jpeg" and jpeg_components(data) in (1, 3)


def decode_rows(
    images: Sequence[bytes],
    orientations: Sequence[int],
    channels: int,
    device: torch.device,
    *,
    heights: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
):
    """Yield (row, uint8 [C, H, W] as displayed) for every row, JPEGs decoded in batches on ``device``.

    Rows come out in chunk order (JPEG chunks first as they finish, the CPU
    fallbacks with them); every row exactly once.
    """
    device = torch.device(device)
    jpeg_rows = [r for r, data in enumerate(images) if _device_decodable(data)]
    jpeg_set = set(jpeg_rows)
    for row in range(len(images)):
        if row not in jpeg_set:
            yield row, _decode_on_cpu(images[row], int(orientations[row] or 1), channels, device)
    chunk: list[int] = []
    budget = 0
    for position, row in enumerate(jpeg_rows):
        size = channels * int(heights[row]) * int(widths[row]) if heights is not None and widths is not None else 0
        chunk.append(row)
        budget += size
        if budget >= max_decoded_bytes or position == len(jpeg_rows) - 1:
            yield from _decode_chunk(images, orientations, chunk, channels, device)
            chunk, budget = [], 0


def _decode_chunk(images, orientations, rows: list[int], channels: int, device: torch.device):
    tensors = [torch.frombuffer(bytearray(images[r]), dtype=torch.uint8) for r in rows]
    try:
        decoded = _decode_jpegs(tensors, channels, device)
    except (RuntimeError, ValueError):
        decoded = None  # one bad row fails the whole batched call: retry row by row below
    for i, row in enumerate(rows):
        orientation = int(orientations[row] or 1)
        if decoded is not None:
            image = decoded[i]
        else:
            try:
                image = _decode_jpegs([tensors[i]], channels, device)[0]
            except (RuntimeError, ValueError):
                yield row, _decode_on_cpu(images[row], orientation, channels, device)
                continue
        yield row, orient(image, orientation)


def decode_crops(
    images: Sequence[bytes],
    heights: Sequence[int],
    widths: Sequence[int],
    orientations: Sequence[int],
    specs: Sequence[CropSpec],
    channels: int,
    device: torch.device,
    *,
    rng: np.random.Generator | None = None,
    boxes: Sequence[np.ndarray] | None = None,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
) -> list[torch.Tensor]:
    """Encoded rows -> one uint8 [N, C, S_v, S_v] tensor per view spec, on ``device``.

    ``boxes`` (per view, int [N, 4] (top, left, h, w) in displayed coordinates)
    default to fresh draws from ``rng`` with torchvision's RandomResizedCrop.
    """
    device = torch.device(device)
    n = len(images)
    heights_np = np.asarray(heights, dtype=np.int64)
    widths_np = np.asarray(widths, dtype=np.int64)
    if boxes is None:
        rng = rng if rng is not None else np.random.default_rng()
        boxes = [sample_crop_boxes(heights_np, widths_np, s.scale, s.ratio, rng) for s in specs]
    out = [torch.empty((n, channels, s.size, s.size), dtype=torch.uint8, device=device) for s in specs]
    for row, image in decode_rows(images, orientations, channels, device, heights=heights_np, widths=widths_np,
                                    max_decoded_bytes=max_decoded_bytes):
        _, h, w = image.shape
        for v, spec in enumerate(specs):
            box = boxes[v][row]
            if (h, w) != (int(heights_np[row]), int(widths_np[row])):
                box = rescale_box(box, h / heights_np[row], w / widths_np[row])
            out[v][row] = crop_resize(image, box, spec.size)
    return out
