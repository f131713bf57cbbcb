"""Stored image bytes -> pixels: the one place that decodes an ``encoded`` shard row.

An ``encoded`` dataset (``raysl data prepare imagefolder``) keeps each image's
original JPEG bytes (or PNG for other formats), any size, with the EXIF
orientation tag in its own column instead of applied to the pixels (applying
it would mean re-encoding the JPEG). Readers therefore decode, convert to the
dataset's channel count and then apply the orientation; every function here
is pure (bytes or arrays in, arrays out) so the training side, the kNN bank
and the tests all agree on what a row's pixels are.

- ``decode_image(data, orientation, channels, min_size=None)``: uint8 HWC.
  With ``min_size`` a JPEG is decoded at a reduced DCT scale (1/2, 1/4, 1/8:
  libjpeg does the shrinking almost for free) when the result still covers
  ``min_size``; this is what makes random-resized crops of big photographs
  cheap.
- ``apply_orientation(array, orientation)``: the eight EXIF cases as numpy
  flips/transposes (identical to ``PIL.ImageOps.exif_transpose``).
- ``image_format(data)``: "jpeg", "png", ... from the magic bytes.
- ``resize_center_crop(array, size)``: the evaluation transform (shorter side
  to ``size``, antialiased bilinear, then the centre ``size`` x ``size``).
"""

from __future__ import annotations

import io

import numpy as np

from raysl.errors import ShardError

__all__ = [
    "GRAYSCALE_MODES",
    "apply_orientation",
    "decode_image",
    "image_format",
    "resize_center_crop",
    "to_pixels",
    "transposes_axes",
]

EXIF_ORIENTATION_TAG = 0x0112
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, EOFError)

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def image_format(data: bytes) -> str:
    """"jpeg", "png", "gif", "webp", "bmp" or "tiff" from the leading bytes; "unknown" otherwise."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return "unknown"


def transposes_axes(orientation: int) -> bool:
    """True for the EXIF orientations (5..8) that swap height and width."""
    return orientation in (5, 6, 7, 8)


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation ``orientation`` (1..8) to an HWC (or HW) array.

    The cases match ``PIL.ImageOps.exif_transpose``: 2 mirror, 3 rotate 180,
    4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
    counter-clockwise. Returns a contiguous array (a view for 1 is copied only
    if it was not contiguous).
    """
    if orientation == 1:
        out = array
    elif orientation == 2:
        out = array[:, ::-1]
    elif orientation == 3:
        out = array[::-1, ::-1]
    elif orientation == 4:
        out = array[::-1]
    elif orientation == 5:
        out = np.swapaxes(array, 0, 1)
    elif orientation == 6:
        out = np.rot90(array, -1)
    elif orientation == 7:
        out = np.swapaxes(array, 0, 1)[::-1, ::-1]
    elif orientation == 8:
        out = np.rot90(array, 1)
    else:
        raise ShardError(f"EXIF orientation {orientation} is not 1..8 (corrupt shard?); re-run raysl data prepare")
    return np.ascontiguousarray(out)


def to_pixels(image, channels: int) -> np.ndarray:  # noqa: ANN001 (a PIL image; PIL is imported lazily)
    """A loaded PIL image in any mode -> uint8 HWC with ``channels`` (1 or 3) channels.

    16-bit and float greyscale (``I;16``, ``I``, ``F``) are scaled to 8 bits
    (PIL's own ``convert("L")`` would clip them); CMYK, palette, alpha and the
    rest go through PIL's conversion to "RGB" or "L" (alpha is dropped, as
    torchvision's image-folder loader does).
    """
    from PIL import Image

    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image)
        if image.mode == "F":
            values = np.clip(np.rint(values), 0, 255)
        else:
            values = np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255)
        image = Image.fromarray(values.astype(np.uint8), mode="L")
    target = "L" if channels == 1 else "RGB"
    if image.mode != target:
        image = image.convert(target)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def decode_image(
    data: bytes, orientation: int, channels: int, min_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode stored bytes to a writable uint8 (H, W, channels) array, orientation applied.

    The result is the image as displayed: ``height`` x ``width`` of its shard
    row, or smaller when ``min_size=(h, w)`` is given and the data is a JPEG:
    then it is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) whose
    result is still at least ``h`` x ``w`` (as displayed), otherwise at full
    size. Raises ShardError on bytes that do not decode.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if min_size is not None and image.format == "JPEG":
                height, width = min_size
                if transposes_axes(orientation):
                    height, width = width, height
                image.draft(image.mode, (max(1, int(width)), max(1, int(height))))
            image.load()
            pixels = to_pixels(image, channels)
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise ShardError(
            f"a stored {image_format(data)} image cannot be decoded ({message}); re-run raysl data prepare"
        ) from None
    pixels = apply_orientation(pixels, orientation)
    return pixels if pixels.flags.writeable else pixels.copy()


def resize_center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The evaluation transform: shorter side to ``size`` (antialiased bilinear), then the centre crop.

    Same arithmetic as torchvision's ``Resize(size)`` + ``CenterCrop(size)``
    (longer side ``int(size * long / short)``, crop offsets rounded), on an
    HWC uint8 array; returns (size, size, C).
    """
    from PIL import Image

    height, width, channels = pixels.shape
    if (height, width) != (size, size):
        if height <= width:
            new_h, new_w = size, max(size, int(size * width / height))
        else:
            new_h, new_w = max(size, int(size * height / width)), size
        if (new_h, new_w) != (height, width):
            image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
            resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)
            pixels = resized.reshape(new_h, new_w, channels)
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        pixels = pixels[top : top + size, left : left + size]
    return np.ascontiguousarray(pixels)
