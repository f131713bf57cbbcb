"""``raysl data prepare``: turn an image source into Parquet shards + manifest.json.

The shards' columns, and reading them: :mod:`raysl.data.read.shards`. Rows are
shuffled with ``seed`` before splitting and sharding, so the same
source, seed and options give byte-identical shards. Shards are written first
and ``manifest.json`` last (via a temporary name), so an interrupted prepare
never leaves a manifest that points at missing shards. OUT may be a local path
or any URI ``pyarrow.fs.FileSystem.from_uri`` accepts (``s3://...``).

Sources (``SOURCES``):

- ``digits``, ``idx PATH``, ``cifar10 PATH``: read into memory by
  :mod:`raysl.data.prepare.arrays` (each described there), stored as ``raw``
  or ``png`` shards by :func:`prepare` here.
- ``imagefolder PATH``: one sub-folder per class of images, or a flat folder
  of images (unlabeled), stored as ``encoded`` shards: each image's own JPEG
  bytes (PNG for other formats), any size, in parallel and resumable; see
  ``raysl.data.prepare.imagefolder`` for its options and ``raysl.data.prepare.imagefolder_shard`` for its columns.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysl import storage
from raysl.data.prepare.arrays import SourceData, load_source
from raysl.data.manifest import Manifest, ShardInfo, SplitInfo
from raysl.data.prepare.layout import refuse_existing, remove_stale_shards, write_manifest
from raysl.errors import ConfigError

__all__ = ["SOURCES", "prepare"]

SOURCES = ("digits", "idx", "cifar10", "imagefolder")
RAW_MAX_SIDE = 64


def prepare(
    source: str,
    path: str | None,
    out: str,
    *,
    shard_rows: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_side: int | None = None,
    quality: int | None = None,
    strict: bool = False,
    workers: int | None = None,
    progress: Any = None,
) -> Manifest:
    """Read ``source`` (at ``path``), shuffle, split, write shards to ``out``; return the manifest.

    ``shard_rows`` defaults to 10,000 (1,000 for ``imagefolder``). ``max_side``,
    ``quality``, ``strict``, ``workers`` and ``progress`` (a stream for the
    progress line, e.g. ``sys.stderr``) apply to ``imagefolder`` only.
    """
    _check_arguments(source, path, 1 if shard_rows is None else shard_rows, val_fraction)
    if source == "imagefolder":
        from raysl.data.prepare.imagefolder import DEFAULT_QUALITY, prepare_imagefolder

        return prepare_imagefolder(
            str(path), out, shard_rows=shard_rows, val_fraction=val_fraction, seed=seed, max_side=max_side,
            quality=DEFAULT_QUALITY if quality is None else quality, strict=strict, workers=workers,
            progress=progress,
        )  # fmt: skip
    if max_side is not None or quality is not None or strict or workers is not None:
        raise ConfigError("--max-side, --quality, --strict and --workers apply to imagefolder only; drop them")
    shard_rows = 10_000 if shard_rows is None else shard_rows
    loc = storage.resolve(out)
    refuse_existing(loc, out)
    data = load_source(source, path)
    splits, split_from = _split_rows(data, val_fraction, seed)
    encoding = "raw" if max(data.height, data.width) <= RAW_MAX_SIDE else "png"

    storage.make_dirs(loc)
    remove_stale_shards(loc)
    stats = _ChannelStats(data.channels)
    split_infos = {}
    for name, rows in splits.items():
        shards = []
        for number, start in enumerate(range(0, len(rows), shard_rows)):
            indices = rows[start : start + shard_rows]
            images = data.load(indices)
            if name == "train":
                stats.add(images)
            labels = None if data.labels is None else data.labels[indices]
            table = _shard_table(images, labels, indices, encoding)
            shards.append(_write_shard(loc, f"{name}-{number:05d}.parquet", table))
        split_infos[name] = SplitInfo(rows=len(rows), shards=tuple(shards))

    mean, std = stats.result()
    manifest = Manifest(
        source=source,
        source_path=None if path is None else os.path.abspath(path),
        height=data.height,
        width=data.width,
        channels=data.channels,
        encoding=encoding,
        class_names=data.class_names,
        num_classes=0 if data.class_names is None else len(data.class_names),
        labeled=data.labels is not None,
        mean=mean,
        std=std,
        seed=seed,
        val_fraction=val_fraction,
        split_from=split_from,
        splits=split_infos,
    )
    write_manifest(loc, manifest)
    return manifest


def _check_arguments(source: str, path: str | None, shard_rows: int, val_fraction: float) -> None:
    if source not in SOURCES:
        raise ConfigError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")
    if source == "digits" and path is not None:
        raise ConfigError("the digits source is bundled and takes no PATH; drop the PATH argument")
    if source != "digits" and not path:
        raise ConfigError(f"the {source} source needs a PATH: raysl data prepare {source} PATH --out DIR")
    if shard_rows < 1:
        raise ConfigError(f"--shard-rows must be at least 1, got {shard_rows}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def _split_rows(data: SourceData, val_fraction: float, seed: int) -> tuple[dict[str, np.ndarray], str]:
    """Shuffle once with ``seed``, then split: by the source's own split if it has one, else by fraction."""
    order = np.random.default_rng(seed).permutation(data.num_rows).astype(np.int64)
    if data.is_val is not None:
        in_val = data.is_val[order]
        return {"train": order[~in_val], "val": order[in_val]}, "source"
    val_rows = int(round(data.num_rows * val_fraction))
    if val_rows >= data.num_rows:
        raise ConfigError(f"--val-fraction {val_fraction} leaves no training rows out of {data.num_rows}")
    return {"train": order[val_rows:], "val": order[:val_rows]}, "shuffle"


class _ChannelStats:
    """Running per-channel sum and sum of squares (float64) for mean/std on the [0, 1] scale."""

    def __init__(self, channels: int) -> None:
        self.total = np.zeros(channels)
        self.squares = np.zeros(channels)
        self.count = 0

    def add(self, images: np.ndarray) -> None:
        pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        self.total += pixels.sum(axis=0)
        self.squares += np.square(pixels).sum(axis=0)
        self.count += len(pixels)

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean**2, 0.0))
        return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def _shard_table(
    images: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, encoding: str
) -> pa.Table:
    if encoding == "raw":
        image_column = _raw_column(images)
    else:
        image_column = pa.array([_encode_png(image) for image in images], type=pa.binary())
    if labels is None:
        label_column = pa.nulls(len(images), type=pa.int64())
    else:
        label_column = pa.array(labels, type=pa.int64(), mask=labels < 0)
    index_column = pa.array(indices, type=pa.int64())
    return pa.table({"image": image_column, "label": label_column, "index": index_column})


def _raw_column(images: np.ndarray) -> pa.Array:
    """Zero-copy-ish binary column: one contiguous buffer plus fixed-stride offsets."""
    rows, row_bytes = len(images), int(np.prod(images.shape[1:]))
    if rows * row_bytes >= 2**31:
        raise ConfigError(f"a shard of {rows} rows exceeds 2 GiB of pixels; lower --shard-rows")
    offsets = np.arange(rows + 1, dtype=np.int32) * row_bytes
    values = np.ascontiguousarray(images).reshape(-1)
    return pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(values)])


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shard(loc: storage.Location, name: str, table: pa.Table) -> ShardInfo:
    """Serialise in memory first so the checksum is of exactly the bytes written; written atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    payload = sink.getvalue()
    storage.write_atomic(loc.join(name), payload.to_pybytes())
    digest = hashlib.sha256(memoryview(payload)).hexdigest()
    return ShardInfo(file=name, rows=table.num_rows, bytes=payload.size, sha256=digest)
