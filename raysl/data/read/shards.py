"""Reading prepared Parquet shards: the manifest, the shards checked against it, whole splits, streamed batches.

Why shards: Ray Data streams Parquet files to every worker without a shared
filesystem, and a checksum per file lets a run refuse data that changed under
it. Each shard has three columns:

- ``image``: binary. Raw uint8 HWC bytes when ``max(H, W) <= 64`` (decoding is
  one ``np.frombuffer`` per batch), otherwise PNG bytes (big images would make
  raw shards huge; PNG is lossless, so pixels round-trip exactly).
- ``label``: int64, null where the source has no label.
- ``index``: int64, the row's position in the source's canonical order (for
  sources with their own split: the train files first, then the test files).

``raysl data prepare`` writes them (:mod:`raysl.data.prepare`); ``encoded``
shards of an image folder hold each image's own JPEG or PNG bytes, any size
(:mod:`raysl.data.prepare.imagefolder_shard` for their columns, :mod:`raysl.data.codec` for
decoding them). ``read_split``/``iter_split`` with ``size=N`` give the
evaluation view of such data (shorter side to N, centre crop N x N).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysl import storage
from raysl.data.manifest import MANIFEST_FILE, Manifest, ShardInfo, SplitInfo
from raysl.errors import ConfigError, DataError, ShardError

__all__ = [
    "Manifest",
    "decode_images",
    "iter_split",
    "load_manifest",
    "read_split",
    "shard_uris",
    "verify_shards",
]

_RERUN = "re-run raysl data prepare into a new --out (or delete the old folder first)"


def load_manifest(out: str) -> Manifest:
    """Read ``OUT/manifest.json``; raise DataError if it is missing, invalid, or (local shards) its row
    counts disagree with the shards'."""
    text = storage.read_bytes(storage.join(out, MANIFEST_FILE), missing_ok=True)
    if text is None:
        raise DataError(f"no {MANIFEST_FILE} in {out}; run raysl data prepare first")
    try:
        manifest = Manifest.from_json(text)
    except DataError as exc:  # which data set: a run may name several
        raise DataError(f"{out}: {exc}") from None
    _check_shard_rows(out, manifest, hashlib.sha256(text).hexdigest())
    return manifest


# (folder, sha256 of its manifest) whose shard row counts were read once in this process
_ROWS_CHECKED: set[tuple[str, str]] = set()


def _check_shard_rows(out: str, manifest: Manifest, digest: str) -> None:
    """Each local shard holds the rows its manifest lists. Row counts decide the steps per epoch and the
    batch-size checks, and an edited count with unchanged shards passes every size and sha256 check: the
    manifest's count is compared with the row count in each Parquet footer (a few KB read per shard, once
    per process). Shards behind a URI are not read here (a request per shard at every load); missing or
    unreadable shards are left to verify_shards, which names them."""
    loc = storage.resolve(out)
    if not loc.is_local or (loc.path, digest) in _ROWS_CHECKED:
        return
    for name, split in manifest.splits.items():
        for shard in split.shards:
            try:
                found = pq.read_metadata(loc.join(shard.file).path).num_rows
            except (OSError, pa.ArrowException):
                continue
            if found != shard.rows:
                raise DataError(
                    f"{out}: manifest.json disagrees with its shards: it lists {shard.rows} rows for {name} shard "
                    f"{shard.file}, which holds {found}; the manifest was edited or damaged: re-run raysl data "
                    "prepare into a new --out"
                )
    _ROWS_CHECKED.add((loc.path, digest))


def verify_shards(out: str, manifest: Manifest | None = None, *, checksums: bool = True) -> None:
    """Check the data can be trained and evaluated on: every shard exists with the recorded size (and
    sha256 unless ``checksums=False``, which reads nothing), and the val split holds the images an
    evaluation needs; raise ShardError naming the file, or DataError."""
    manifest = manifest or load_manifest(out)
    loc = storage.resolve(out)
    for split in manifest.splits.values():
        for shard in split.shards:
            _read_verified(loc, out, shard, checksum=checksums)
    # after the shards: a shard gone from the val split is named as such, not as a short val split
    manifest.require_val_images(out)


def read_split(
    out: str, split: str, manifest: Manifest | None = None, size: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a whole split into memory; every shard's size and sha256 are checked before decoding.

    Returns uint8 images (N, H, W, C) in shard order and int64 labels with -1
    where a label is missing, or None when the dataset is unlabeled. With
    ``size`` (required for ``encoded`` data, whose images differ in size)
    every image is resized, shorter side to ``size``, and centre-cropped to
    (size, size): the evaluation transform. For a big split prefer
    ``iter_split``, which streams.
    """
    manifest = manifest or load_manifest(out)
    info = _split_info(manifest, split)
    if size is not None or manifest.encoding == "encoded":
        size = _eval_size(manifest, size)
        batches = list(iter_split(out, split, size, batch_rows=1024, manifest=manifest))
        images = [np.zeros((0, size, size, manifest.channels), np.uint8)] + [b[0] for b in batches]
        labels = [np.zeros(0, np.int64)] + [b[1] for b in batches if b[1] is not None]
        return np.concatenate(images), (np.concatenate(labels) if manifest.labeled else None)
    loc = storage.resolve(out)
    payloads = [_read_verified(loc, out, shard) for shard in info.shards]
    images = [np.zeros((0, *manifest.image_shape), np.uint8)]
    labels = [np.zeros(0, np.int64)]
    for shard, payload in zip(info.shards, payloads):
        table = _parse_shard(payload, shard)
        images.append(decode_images(table.column("image"), manifest))
        labels.append(table.column("label").fill_null(-1).to_numpy().astype(np.int64))
    return np.concatenate(images), (np.concatenate(labels) if manifest.labeled else None)


def iter_split(
    out: str, split: str, size: int | None, batch_rows: int = 256, manifest: Manifest | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Stream a split as (uint8 (B, size, size, C) images, int64 labels or None) batches, in shard order.

    Each shard is checked (size, sha256) when it is reached and decoded batch
    by batch, so memory holds one shard's bytes and one batch of pixels, never
    the split at full resolution. Images get the evaluation transform (shorter
    side to ``size``, antialiased, centre crop; JPEGs decode at a reduced DCT
    scale when that still covers ``size``). Every batch has ``batch_rows``
    rows except the last. ``size=None`` keeps raw/png images as stored.
    """
    from raysl.data.codec import decode_image, resize_center_crop

    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be at least 1, got {batch_rows}")
    manifest = manifest or load_manifest(out)
    info = _split_info(manifest, split)
    if size is not None or manifest.encoding == "encoded":
        size = _eval_size(manifest, size)
    loc = storage.resolve(out)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    buffered = 0
    for shard in info.shards:
        table = _parse_shard(_read_verified(loc, out, shard), shard)
        shard_labels = table.column("label").fill_null(-1).to_numpy().astype(np.int64)
        for start in range(0, table.num_rows, batch_rows):
            rows = table.slice(start, batch_rows)
            if manifest.encoding == "encoded":
                data = rows.column("image").to_pylist()
                orientations = rows.column("orientation").to_pylist()
                pixels = np.stack([
                    resize_center_crop(decode_image(d, o, manifest.channels, min_size=(size, size)), size)
                    for d, o in zip(data, orientations)
                ]) if data else np.zeros((0, size, size, manifest.channels), np.uint8)  # fmt: skip
            else:
                pixels = decode_images(rows.column("image"), manifest)
                if size is not None:
                    pixels = np.stack([resize_center_crop(p, size) for p in pixels]) if len(pixels) else (
                        np.zeros((0, size, size, manifest.channels), np.uint8))  # fmt: skip
            images.append(pixels)
            labels.append(shard_labels[start : start + batch_rows])
            buffered += len(pixels)
            while buffered >= batch_rows:
                batch, images, labels, buffered = _take(images, labels, batch_rows)
                yield batch[0], (batch[1] if manifest.labeled else None)
    if buffered:
        batch, images, labels, buffered = _take(images, labels, buffered)
        yield batch[0], (batch[1] if manifest.labeled else None)


def _take(
    images: list[np.ndarray], labels: list[np.ndarray], rows: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[np.ndarray], list[np.ndarray], int]:
    """The first ``rows`` buffered rows as one batch, and the rest still buffered."""
    all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    rest = len(all_images) - rows
    remainder = ([all_images[rows:]], [all_labels[rows:]]) if rest else ([], [])
    return (all_images[:rows], all_labels[:rows]), remainder[0], remainder[1], rest


def _eval_size(manifest: Manifest, size: int | None) -> int:
    if size is None:
        raise DataError(
            "this dataset stores encoded images of different sizes; pass size=N to read_split/iter_split "
            "(shorter side resized to N, centre crop N x N)"
        )
    if size < 1:
        raise ConfigError(f"size must be at least 1, got {size}")
    return int(size)


def shard_uris(out: str, split: str, manifest: Manifest | None = None) -> list[str]:
    """Full paths (local) or URIs (remote) of a split's shards, for ``ray.data.read_parquet``."""
    manifest = manifest or load_manifest(out)
    prefix = storage.resolve(out).uri
    return [f"{prefix}/{shard.file}" for shard in _split_info(manifest, split).shards]


def decode_images(
    column_values: Sequence[bytes] | np.ndarray | pa.Array | pa.ChunkedArray, manifest: Manifest
) -> np.ndarray:
    """Turn an ``image`` column (bytes per row) into a writable uint8 (N, H, W, C) array.

    Raw encoding is decoded in one vectorised step; PNG rows go through PIL.
    ``encoded`` datasets have no single image shape: decode their rows one by
    one with ``raysl.data.codec.decode_image`` (or use ``read_split``/``iter_split``
    with ``size``); this raises DataError for them.
    """
    if manifest.encoding == "encoded":
        raise DataError(
            "decode_images needs one image size, but this dataset stores encoded images of different sizes; "
            "decode rows with raysl.data.codec.decode_image, or read_split/iter_split with size=N"
        )
    shape = manifest.image_shape
    if manifest.encoding == "raw":
        if isinstance(column_values, (pa.Array, pa.ChunkedArray)):
            flat = _arrow_binary_bytes(column_values)
        else:
            flat = np.frombuffer(bytearray().join(column_values), np.uint8)
        row_bytes = int(np.prod(shape))
        if flat.size % row_bytes:
            raise ShardError(f"image bytes do not match {shape} per row (corrupt shard?); {_RERUN}")
        return flat.reshape(-1, *shape)
    values = column_values
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_pylist()
    images = np.empty((len(values), *shape), np.uint8)
    for row, value in enumerate(values):
        images[row] = _decode_png(value, shape)
    return images


def _decode_png(value: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(value)) as image:
            pixels = np.asarray(image.convert("L" if shape[2] == 1 else "RGB"), dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise ShardError(f"a stored PNG image cannot be decoded ({err}); {_RERUN}") from None
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], shape[2])
    if pixels.shape != shape:
        raise ShardError(f"a stored image is {pixels.shape}, manifest says {shape}; {_RERUN}")
    return pixels


def _arrow_binary_bytes(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The concatenated value bytes of a binary column, read straight from Arrow's buffers."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ShardError(f"image column has {array.null_count} null rows; {_RERUN}")
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], offset_type)[array.offset : array.offset + len(array) + 1]
    if len(array) == 0:
        return np.zeros(0, np.uint8)
    return np.frombuffer(array.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].copy()


# --------------------------------------------------------------------------- locations and reading


def _split_info(manifest: Manifest, split: str) -> SplitInfo:
    if split not in manifest.splits:
        raise ConfigError(f"no split {split!r} in this dataset; choose one of: {', '.join(manifest.splits)}")
    return manifest.splits[split]


def _read_verified(loc: storage.Location, out: str, shard: ShardInfo, checksum: bool = True) -> bytes:
    location = loc.join(shard.file)
    found = storage.size(location)
    if found is None:
        raise ShardError(f"shard {shard.file} is missing from {out}; {_RERUN}")
    if found != shard.bytes:
        raise ShardError(
            f"shard {shard.file}: {found} bytes, expected {shard.bytes} "
            f"(file changed or truncated); {_RERUN}"
        )
    if not checksum:
        return b""
    payload = storage.read_bytes(location)
    if hashlib.sha256(payload).hexdigest() != shard.sha256:
        raise ShardError(f"shard {shard.file}: sha256 mismatch (file changed or truncated); {_RERUN}")
    return payload


def _parse_shard(payload: bytes, shard: ShardInfo) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(payload))
    except (pa.ArrowException, OSError) as err:
        raise ShardError(f"shard {shard.file} is not readable Parquet ({err}); {_RERUN}") from None
