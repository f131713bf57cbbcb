"""One image, one shard of an image-folder prepare: the bytes each row stores, and what the workers run.

Each image keeps its original encoded bytes: a JPEG is stored byte for byte
(no generation loss, no resize, and the training side can decode it at a
reduced DCT scale or with nvJPEG); any other format PIL opens (PNG, WebP,
BMP, GIF, TIFF) is stored as PNG (a PNG source as it is, when it is 8-bit).
``max_side`` downsizes, once and antialiased (Lanczos), only the images whose
longer side exceeds it, re-encoding them as JPEG at ``quality`` if they were
JPEGs and as PNG otherwise (FFCV's ``max_resolution``).

Shard columns (the contract the training reader is written against):

- ``image`` binary: the stored bytes (JPEG or PNG).
- ``label`` int64: the class (sub-folder) index, null for a flat folder.
- ``index`` int64: the row's position in the canonical sorted file order.
- ``height``, ``width`` int32: the image as displayed, i.e. after its EXIF
  orientation is applied.
- ``orientation`` int8: the EXIF orientation (1..8) of the stored bytes, 1
  when there is none; readers apply it after decoding
  (``raysl.data.codec.decode_image`` does). Re-encoded images have it applied
  already and store 1.

Workers of the local process pool and Ray tasks run :func:`build_shard` here.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysl import storage
from raysl.data.codec import GRAYSCALE_MODES, EXIF_ORIENTATION_TAG, to_pixels, transposes_axes
from raysl.data.prepare.imagefolder_files import Job

STATS_SIDE = 64
_PNG_KEPT_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})
_SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("label", pa.int64()),
        ("index", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("orientation", pa.int8()),
    ]
)


@dataclass
class _Stored:
    data: bytes
    height: int
    width: int
    orientation: int
    gray: bool
    sums: np.ndarray | None  # [sum R, G, B, sum R^2, G^2, B^2, pixels] of the <= 64 px thumbnail


def _one_line(err: BaseException) -> str:
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", " ".join(str(err).split()))  # reasons must not vary run to run
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_file(path: str) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as err:
        return f"cannot read the file ({_one_line(err)})"


def store_image(data: bytes, max_side: int | None, quality: int, with_stats: bool) -> _Stored | str:
    """Check that ``data`` decodes completely and choose the bytes to store; a str says why not."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG must fail here, not decode grey
    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as image:
            source_format = image.format
            orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
            if orientation not in range(1, 9):
                orientation = 1
            image.load()  # decode every pixel: truncated or corrupt data raises here
            gray = image.mode in GRAYSCALE_MODES
            raw_w, raw_h = image.size
            height, width = (raw_w, raw_h) if transposes_axes(orientation) else (raw_h, raw_w)
            sums = _thumbnail_sums(image) if with_stats else None
            resize = max_side is not None and max(height, width) > max_side
            if source_format == "JPEG" and not resize:
                return _Stored(data, height, width, orientation, gray, sums)
            if source_format == "PNG" and not resize and image.mode in _PNG_KEPT_MODES:
                return _Stored(data, height, width, orientation, gray, sums)
            upright = ImageOps.exif_transpose(image) if orientation != 1 else image
            pixels = to_pixels(upright, 1 if gray else 3)
            flat = Image.fromarray(pixels[..., 0] if gray else pixels)
            if resize:
                assert max_side is not None
                if width >= height:
                    size = (max_side, max(1, round(height * max_side / width)))
                else:
                    size = (max(1, round(width * max_side / height)), max_side)
                flat = flat.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            buffer = io.BytesIO()
            if source_format == "JPEG":
                flat.save(buffer, format="JPEG", quality=quality)
            else:
                flat.save(buffer, format="PNG")
            return _Stored(buffer.getvalue(), flat.height, flat.width, 1, gray, sums)
    except UnidentifiedImageError:
        return "not an image PIL can read (unknown format)"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        return _one_line(err)


def _thumbnail_sums(image: Any) -> np.ndarray:
    from PIL import Image

    small = Image.fromarray(to_pixels(image, 3))
    scale = STATS_SIDE / max(small.size)
    if scale < 1:
        size = (max(1, round(small.width * scale)), max(1, round(small.height * scale)))
        small = small.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    pixels = np.asarray(small, np.float64).reshape(-1, 3) / 255.0
    return np.concatenate([pixels.sum(0), np.square(pixels).sum(0), [len(pixels)]])


def build_shard(
    job: Job,
    blobs: Callable[[str], bytes | str],
    max_side: int | None,
    quality: int,
    tick: Callable[[], None] = lambda: None,
) -> tuple[bytes, dict[str, Any]]:
    """The shard's Parquet bytes and its journal entry (rows, skipped files, greyscale, stats sums)."""
    columns: dict[str, list[Any]] = {name: [] for name in _SCHEMA.names}
    skipped: list[list[str]] = []
    gray = True
    sums = np.zeros(7)
    for row, relative in enumerate(job.files):
        blob = blobs(relative)
        stored = blob if isinstance(blob, str) else store_image(blob, max_side, quality, row < job.stats_rows)
        tick()
        if isinstance(stored, str):
            skipped.append([relative, stored])
            continue
        gray = gray and stored.gray
        if stored.sums is not None:
            sums += stored.sums
        columns["image"].append(stored.data)
        columns["label"].append(None if job.labels is None else job.labels[row])
        columns["index"].append(job.indices[row])
        columns["height"].append(stored.height)
        columns["width"].append(stored.width)
        columns["orientation"].append(stored.orientation)
    table = pa.Table.from_pydict(columns, schema=_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression={"image": "none", "label": "zstd", "index": "zstd", "height": "zstd", "width": "zstd",
                     "orientation": "zstd"},
        use_dictionary=["label", "orientation"],
        write_statistics=["label", "index", "height", "width", "orientation"],
    )
    payload = sink.getvalue().to_pybytes()
    entry = {
        "file": job.name,
        "rows": table.num_rows,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "skipped": skipped,
        "gray": gray,
        "sums": [float(v) for v in sums],
    }
    return payload, entry


# local process pool: each worker reads its files, builds and writes its shard

_COUNTER: Any = None


def init_worker(counter: Any) -> None:
    """A pool worker's initializer: the shared count of files done, for the progress line."""
    global _COUNTER
    _COUNTER = counter


def _tick() -> None:
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += 1


def local_shard(job: Job, source: str, out: str, max_side: int | None, quality: int) -> dict[str, Any]:
    """A pool worker's task: read the job's files, build its shard, write it to ``out``; its journal entry."""
    payload, entry = build_shard(job, lambda rel: read_file(os.path.join(source, rel)), max_side, quality, _tick)
    storage.write_atomic(storage.join(out, job.name), payload)
    return entry


def ray_shard(job: Job, blobs: list[bytes | str], max_side: int | None, quality: int) -> tuple[bytes, dict]:
    """A Ray task: the shard's bytes and journal entry from the files the driver read (``blobs``)."""
    by_name = dict(zip(job.files, blobs))
    return build_shard(job, by_name.__getitem__, max_side, quality)

