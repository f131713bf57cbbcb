"""``raysl data prepare``: turn an image source into Parquet shards + manifest.json.

Why shards: Ray Data streams Parquet files to every worker without a shared
filesystem, and a checksum per file lets a run refuse data that changed under
it. Each shard has three columns:

- ``image``: binary. Raw uint8 HWC bytes when ``max(H, W) <= 64`` (decoding is
  one ``np.frombuffer`` per batch), otherwise PNG bytes (big images would make
  raw shards huge; PNG is lossless, so pixels round-trip exactly).
- ``label``: int64, null where the source has no label.
- ``index``: int64, the row's position in the source's canonical order (for
  sources with their own split: the train files first, then the test files).

Rows are shuffled with ``seed`` before splitting and sharding, so the same
source, seed and options give byte-identical shards. Shards are written first
and ``manifest.json`` last (via a temporary name), so an interrupted prepare
never leaves a manifest that points at missing shards. OUT may be a local path
or any URI ``pyarrow.fs.FileSystem.from_uri`` accepts (``s3://...``).

Sources (``SOURCES``):

- ``digits``: scikit-learn's bundled 8x8 digits, 0..16 scaled to 0..255.
- ``idx PATH``: MNIST-format IDX files (optionally .gz). ``train*`` and
  ``t10k*``/``test*`` files become the train and val splits (``val_fraction``
  is ignored, ``split_from="source"``).
- ``cifar10 PATH``: the CIFAR-10 or CIFAR-100 "python version" folder, read with
  an unpickler that only admits numpy arrays (the files are pickles).
- ``imagefolder PATH``: one sub-folder per class of images, or a flat folder
  of images (unlabeled), stored as ``encoded`` shards: each image's own JPEG
  bytes (PNG for other formats), any size, in parallel and resumable; see
  ``raysl.data.imagefolder`` for its columns and options, and
  ``raysl.data.codec`` for decoding them. ``read_split``/``iter_split`` with
  ``size=N`` give the evaluation view of such data (shorter side to N, centre
  crop N x N).
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import os
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysl import storage
from raysl.data.manifest import MANIFEST_FILE, Manifest, ShardInfo, SplitInfo
from raysl.data.prepared import existing_dir, refuse_existing, remove_stale_shards, write_manifest
from raysl.errors import ConfigError, DataError, ShardError

__all__ = [
    "SOURCES",
    "Manifest",
    "decode_images",
    "iter_split",
    "load_manifest",
    "prepare",
    "read_split",
    "shard_uris",
    "verify_shards",
]

SOURCES = ("digits", "idx", "cifar10", "imagefolder")
RAW_MAX_SIDE = 64
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_RERUN = "re-run raysl data prepare into a new --out (or delete the old folder first)"


# --------------------------------------------------------------------------- public API


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
        from raysl.data.imagefolder import DEFAULT_QUALITY, prepare_imagefolder

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
    data = _load_source(source, path)
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


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _SourceData:
    """What every source loader returns. Pixels come through ``load`` (row
    indices -> uint8 NHWC) so an image folder need not fit in memory at once."""

    height: int
    width: int
    channels: int
    labels: np.ndarray | None  # int64 per row, -1 where missing; None: unlabeled
    class_names: tuple[str, ...] | None
    load: Callable[[np.ndarray], np.ndarray]
    num_rows: int
    is_val: np.ndarray | None = None  # bool per row when the source has its own split


def _in_memory(
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: tuple[str, ...] | None,
    is_val: np.ndarray | None = None,
) -> _SourceData:
    """Wrap already-decoded NHWC images (the small sources)."""
    _, height, width, channels = images.shape
    return _SourceData(
        height, width, channels, labels, class_names, lambda rows: images[rows], len(images), is_val
    )


def _load_source(source: str, path: str | None) -> _SourceData:
    loaders: dict[str, Callable[[str | None], _SourceData]] = {
        "digits": _load_digits,
        "idx": _load_idx,
        "cifar10": _load_cifar,
    }
    data = loaders[source](path)
    if data.num_rows == 0:
        raise DataError(f"{source} source at {path} holds no images")
    return data


def _load_digits(_: str | None) -> _SourceData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return _in_memory(images, digits.target.astype(np.int64), tuple(str(d) for d in range(10)))


# IDX (MNIST format)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILE = re.compile(r"^(?P<prefix>.+?)[-.](?P<kind>images|labels)[-.]idx(?P<ndim>[13])[-.]ubyte(?:\.gz)?$")
_TRAIN_PREFIX = re.compile(r"(^|[-_.])train$")
_VAL_PREFIX = re.compile(r"(^|[-_.])(t10k|test)$")


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file: magic 0x00 0x00 <dtype> <ndim>, big-endian uint32 dims, data."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file {path} ({err}); re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); point PATH at MNIST-format files")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated; re-download it")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) - header != int(np.prod(dims)) * dtype.itemsize:
        raise DataError(
            f"IDX file {path} has {len(raw) - header} data bytes, header says {dims}; re-download it"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _idx_role(prefix: str) -> str | None:
    """"train" for train*, "val" for t10k*/test*, None when the name says neither."""
    if _TRAIN_PREFIX.search(prefix):
        return "train"
    return "val" if _VAL_PREFIX.search(prefix) else None


def _find_idx_pairs(folder: Path) -> dict[str, dict[str, Path]]:
    """prefix -> {"images": path, "labels": path}, train files first (they define the
    canonical row order); uncompressed files win over .gz twins."""
    pairs: dict[str, dict[str, Path]] = collections.defaultdict(dict)
    for file in sorted(folder.iterdir(), key=lambda f: (f.suffix == ".gz", f.name)):
        match = _IDX_FILE.match(file.name)
        if match and file.is_file():
            pairs[match["prefix"]].setdefault(match["kind"], file)
    rank = {"train": 0, "val": 1, None: 2}
    ordered = sorted(pairs.items(), key=lambda item: (rank[_idx_role(item[0])], item[0]))
    return {prefix: kinds for prefix, kinds in ordered if "images" in kinds}


def _load_idx(path: str | None) -> _SourceData:
    folder = existing_dir(path, "idx")
    pairs = _find_idx_pairs(folder)
    if not pairs:
        raise DataError(
            f"no IDX image files (*-images-idx3-ubyte[.gz]) in {folder}; point PATH at an MNIST-format folder"
        )
    images, labels, roles = [], [], []
    for prefix, files in pairs.items():
        pixels = read_idx(files["images"])
        if pixels.ndim != 3 or pixels.dtype != np.uint8:
            raise DataError(
                f"{files['images']} holds {pixels.dtype} {pixels.shape}, expected uint8 N x H x W images"
            )
        images.append(pixels[..., None])
        labels.append(_idx_labels(files.get("labels"), len(pixels)))
        roles.append(np.full(len(pixels), _idx_role(prefix), dtype=object))
    if len({img.shape[1:] for img in images}) > 1:
        raise DataError(f"IDX files in {folder} have different image sizes; keep one dataset per folder")
    all_labels = np.concatenate(labels)
    role_per_row = np.concatenate(roles)
    has_own_split = set(role_per_row) == {"train", "val"}
    labeled = bool((all_labels >= 0).any())
    class_names = _idx_class_names(folder, all_labels) if labeled else None
    return _in_memory(np.concatenate(images), all_labels if labeled else None, class_names,
                      (role_per_row == "val") if has_own_split else None)


def _idx_labels(path: Path | None, rows: int) -> np.ndarray:
    if path is None:
        return np.full(rows, -1, np.int64)
    labels = read_idx(path)
    if labels.ndim != 1 or len(labels) != rows:
        raise DataError(f"{path} holds {labels.shape} labels for {rows} images; use the matching labels file")
    return labels.astype(np.int64)


def _idx_class_names(folder: Path, labels: np.ndarray) -> tuple[str, ...]:
    count = int(labels.max()) + 1
    if "fashion" in str(folder.resolve()).lower() and count <= len(FASHION_MNIST_CLASSES):
        return FASHION_MNIST_CLASSES
    return tuple(str(label) for label in range(count))


# CIFAR python-version pickles


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes,
    limited to latin-1 so a pickle cannot reach any other codec."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _array_reconstructors() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle needs: numpy's array rebuilding functions
    (plus latin-1 bytes for protocol-2 pickles written by Python 3).

    Old pickles name ``numpy.core``, new ones ``numpy._core``; both map to
    whatever this numpy has, without importing the deprecated module path.
    """
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction, so a
    tampered batch file cannot run code (pickle's ``find_class`` is the only door)."""

    _allowed = _array_reconstructors()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None


def _safe_unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as file:
            return _ArrayOnlyUnpickler(file, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(
            f"{path} is not a plain CIFAR batch ({err}); it may be tampered with, re-download CIFAR"
        ) from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"cannot read CIFAR batch {path} ({err}); re-download CIFAR") from None


def _cifar_root(folder: Path) -> Path:
    """Accept the batches folder itself or its parent (where the tarball was extracted)."""
    for candidate in (folder, folder / "cifar-10-batches-py", folder / "cifar-100-python"):
        if (candidate / "data_batch_1").exists() or (candidate / "train").is_file():
            return candidate
    raise DataError(
        f"{folder} holds no CIFAR python batches (data_batch_1 or train); "
        "extract cifar-10-python.tar.gz and point PATH at the folder"
    )


def _load_cifar(path: str | None) -> _SourceData:
    root = _cifar_root(existing_dir(path, "cifar10"))
    if (root / "data_batch_1").exists():
        train, val = sorted(root.glob("data_batch_*")), root / "test_batch"
        meta, names_key, labels_key = root / "batches.meta", b"label_names", b"labels"
    else:
        train, val = [root / "train"], root / "test"
        meta, names_key, labels_key = root / "meta", b"fine_label_names", b"fine_labels"
    batches = [_cifar_batch(file, labels_key) for file in train]
    val_batches = [_cifar_batch(val, labels_key)] if val.exists() else []
    images = np.concatenate([b[0] for b in batches + val_batches])
    labels = np.concatenate([b[1] for b in batches + val_batches])
    train_rows = sum(len(b[0]) for b in batches)
    is_val = (np.arange(len(images)) >= train_rows) if val_batches else None
    return _in_memory(images, labels, _cifar_class_names(meta, names_key, labels), is_val)


def _cifar_batch(path: Path, labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One batch dict -> (N, 32, 32, 3) uint8 HWC images, int64 labels. Files store CHW rows."""
    batch = _safe_unpickle(path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[labels_key], dtype=np.int64)
    except (KeyError, TypeError) as err:
        raise DataError(f"CIFAR batch {path} lacks {err}; re-download CIFAR") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"CIFAR batch {path} has data {data.shape} and {len(labels)} labels; re-download CIFAR"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _cifar_class_names(meta: Path, key: bytes, labels: np.ndarray) -> tuple[str, ...]:
    if not meta.exists():
        return tuple(str(label) for label in range(int(labels.max()) + 1))
    try:
        names = _safe_unpickle(meta)[key]
        return tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names)
    except (KeyError, TypeError) as err:
        raise DataError(f"CIFAR metadata {meta} lacks {err}; re-download CIFAR") from None


# --------------------------------------------------------------------------- splitting and writing


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


def _split_rows(data: _SourceData, val_fraction: float, seed: int) -> tuple[dict[str, np.ndarray], str]:
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


def _write_shard(loc: storage.Location, name: str, table: pa.Table) -> ShardInfo:
    """Serialise in memory first so the checksum is of exactly the bytes written; written atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    payload = sink.getvalue()
    storage.write_atomic(loc.join(name), payload.to_pybytes())
    digest = hashlib.sha256(memoryview(payload)).hexdigest()
    return ShardInfo(file=name, rows=table.num_rows, bytes=payload.size, sha256=digest)


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
