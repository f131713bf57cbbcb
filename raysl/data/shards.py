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
- ``imagefolder PATH``: one sub-folder per class of PNG/JPEG files, or a flat
  folder of images (unlabeled). Images whose size differs from the most common
  size are resized (bicubic) to it, so every row decodes to one array shape.
  Grayscale stays one channel only if every image is grayscale.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import os
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysl.data.manifest import Manifest, ShardInfo, SplitInfo
from raysl.errors import ConfigError, DataError, ShardError

__all__ = [
    "SOURCES",
    "Manifest",
    "decode_images",
    "load_manifest",
    "prepare",
    "read_split",
    "shard_uris",
    "verify_shards",
]

SOURCES = ("digits", "idx", "cifar10", "imagefolder")
MANIFEST_FILE = "manifest.json"
RAW_MAX_SIDE = 64
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_RERUN = "re-run raysl data prepare"
_SHARD_NAME = re.compile(r"^(train|val)-\d{5}\.parquet$")


# --------------------------------------------------------------------------- public API


def prepare(
    source: str,
    path: str | None,
    out: str,
    *,
    shard_rows: int = 10_000,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Manifest:
    """Read ``source`` (at ``path``), shuffle, split, write shards to ``out``; return the manifest."""
    _check_arguments(source, path, shard_rows, val_fraction)
    fs, root, _ = _resolve(out)
    _refuse_existing(fs, root, out)
    data = _load_source(source, path)
    splits, split_from = _split_rows(data, val_fraction, seed)
    encoding = "raw" if max(data.height, data.width) <= RAW_MAX_SIDE else "png"

    fs.create_dir(root, recursive=True)
    _remove_stale_shards(fs, root)
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
            shards.append(_write_shard(fs, root, f"{name}-{number:05d}.parquet", table))
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
    _write_manifest(fs, root, manifest)
    return manifest


def load_manifest(out: str) -> Manifest:
    """Read ``OUT/manifest.json``; raise DataError if it is missing or invalid."""
    fs, root, _ = _resolve(out)
    location = f"{root}/{MANIFEST_FILE}"
    if fs.get_file_info(location).type != pafs.FileType.File:
        raise DataError(f"no {MANIFEST_FILE} in {out}; run raysl data prepare first")
    with fs.open_input_stream(location) as stream:
        return Manifest.from_json(stream.read())


def verify_shards(out: str, manifest: Manifest | None = None) -> None:
    """Check every shard exists with the recorded size and sha256; raise ShardError naming the file."""
    manifest = manifest or load_manifest(out)
    fs, root, _ = _resolve(out)
    for split in manifest.splits.values():
        for shard in split.shards:
            _read_verified(fs, root, out, shard)


def read_split(
    out: str, split: str, manifest: Manifest | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a whole split into memory; every shard's size and sha256 are checked before decoding.

    Returns uint8 images (N, H, W, C) in shard order and int64 labels with -1
    where a label is missing, or None when the dataset is unlabeled.
    """
    manifest = manifest or load_manifest(out)
    info = _split_info(manifest, split)
    fs, root, _ = _resolve(out)
    payloads = [_read_verified(fs, root, out, shard) for shard in info.shards]
    images = [np.zeros((0, *manifest.image_shape), np.uint8)]
    labels = [np.zeros(0, np.int64)]
    for shard, payload in zip(info.shards, payloads):
        table = _parse_shard(payload, shard)
        images.append(decode_images(table.column("image"), manifest))
        labels.append(table.column("label").fill_null(-1).to_numpy().astype(np.int64))
    return np.concatenate(images), (np.concatenate(labels) if manifest.labeled else None)


def shard_uris(out: str, split: str, manifest: Manifest | None = None) -> list[str]:
    """Full paths (local) or URIs (remote) of a split's shards, for ``ray.data.read_parquet``."""
    manifest = manifest or load_manifest(out)
    _, _, prefix = _resolve(out)
    return [f"{prefix}/{shard.file}" for shard in _split_info(manifest, split).shards]


def decode_images(
    column_values: Sequence[bytes] | np.ndarray | pa.Array | pa.ChunkedArray, manifest: Manifest
) -> np.ndarray:
    """Turn an ``image`` column (bytes per row) into a writable uint8 (N, H, W, C) array.

    Raw encoding is decoded in one vectorised step; PNG rows go through PIL.
    """
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
        "imagefolder": _load_imagefolder,
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
    folder = _existing_dir(path, "idx")
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
    root = _cifar_root(_existing_dir(path, "cifar10"))
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


# Image folders

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_GRAYSCALE_MODES = {"1", "L", "LA"}


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        f for f in found if f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
    )


def _load_imagefolder(path: str | None) -> _SourceData:
    from PIL import Image, UnidentifiedImageError

    folder = _existing_dir(path, "imagefolder")
    classes = {
        d.name: files
        for d in sorted(folder.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (files := _image_files(d, recursive=True))
    }
    loose = _image_files(folder, recursive=False)
    if classes and loose:
        raise DataError(
            f"{folder} has both images and class sub-folders; move the loose images into a class folder"
        )
    if not classes and not loose:
        raise DataError(f"no PNG/JPEG images in {folder}; point PATH at a folder of images")
    files = [f for group in classes.values() for f in group] or loose
    labels = None
    if classes:
        labels = np.concatenate([np.full(len(g), c, np.int64) for c, g in enumerate(classes.values())])

    sizes, modes = [], set()
    for file in files:
        try:
            with Image.open(file) as image:
                sizes.append(image.size)
                modes.add(image.mode)
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"cannot open image {file} ({err}); remove or fix it") from None
    width, height = collections.Counter(sizes).most_common(1)[0][0]
    channels = 1 if modes <= _GRAYSCALE_MODES else 3

    def load(rows: np.ndarray) -> np.ndarray:
        return np.stack([_read_image(files[row], (width, height), channels) for row in rows])

    return _SourceData(height, width, channels, labels, tuple(classes) or None, load, len(files))


def _read_image(file: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(file) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


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


def _existing_dir(path: str | None, source: str) -> Path:
    folder = Path(path or "")
    if not folder.is_dir():
        raise DataError(f"{source} PATH {path} is not a folder; point it at the extracted dataset")
    return folder


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


def _write_shard(fs: pafs.FileSystem, root: str, name: str, table: pa.Table) -> ShardInfo:
    """Serialise in memory first so the checksum is of exactly the bytes written."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    payload = sink.getvalue()
    with fs.open_output_stream(f"{root}/{name}") as stream:
        stream.write(payload)
    digest = hashlib.sha256(memoryview(payload)).hexdigest()
    return ShardInfo(file=name, rows=table.num_rows, bytes=payload.size, sha256=digest)


def _write_manifest(fs: pafs.FileSystem, root: str, manifest: Manifest) -> None:
    """Write under a temporary name, then move: readers see no manifest or a complete one."""
    temporary = f"{root}/{MANIFEST_FILE}.tmp"
    with fs.open_output_stream(temporary) as stream:
        stream.write(manifest.to_json().encode())
    fs.move(temporary, f"{root}/{MANIFEST_FILE}")


# --------------------------------------------------------------------------- locations and reading


def _resolve(out: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, root path inside it, prefix for URIs handed to Ray) for a local path or URI."""
    if "://" not in out:
        root = os.path.abspath(out)
        return pafs.LocalFileSystem(), root, root
    try:
        fs, root = pafs.FileSystem.from_uri(out)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise ConfigError(f"cannot open {out} ({err}); use a local path or an s3:// / gs:// URI") from None
    return fs, root.rstrip("/"), out.rstrip("/")


def _refuse_existing(fs: pafs.FileSystem, root: str, out: str) -> None:
    if fs.get_file_info(f"{root}/{MANIFEST_FILE}").type != pafs.FileType.NotFound:
        raise DataError(
            f"{out} already holds a prepared dataset ({MANIFEST_FILE}); pick another --out or delete it"
        )
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise ConfigError(f"--out {out} is a file; point it at a folder")


def _remove_stale_shards(fs: pafs.FileSystem, root: str) -> None:
    """Drop shards an interrupted earlier prepare left behind, so OUT holds exactly one dataset."""
    for entry in fs.get_file_info(pafs.FileSelector(root)):
        leftover = _SHARD_NAME.match(entry.base_name) or entry.base_name == f"{MANIFEST_FILE}.tmp"
        if entry.type == pafs.FileType.File and leftover:
            fs.delete_file(entry.path)


def _split_info(manifest: Manifest, split: str) -> SplitInfo:
    if split not in manifest.splits:
        raise ConfigError(f"no split {split!r} in this dataset; choose one of: {', '.join(manifest.splits)}")
    return manifest.splits[split]


def _read_verified(fs: pafs.FileSystem, root: str, out: str, shard: ShardInfo) -> bytes:
    location = f"{root}/{shard.file}"
    info = fs.get_file_info(location)
    if info.type != pafs.FileType.File:
        raise ShardError(f"shard {shard.file} is missing from {out}; {_RERUN}")
    if info.size != shard.bytes:
        raise ShardError(
            f"shard {shard.file}: {info.size} bytes, expected {shard.bytes} "
            f"(file changed or truncated); {_RERUN}"
        )
    with fs.open_input_stream(location) as stream:
        payload = stream.read()
    if hashlib.sha256(payload).hexdigest() != shard.sha256:
        raise ShardError(f"shard {shard.file}: sha256 mismatch (file changed or truncated); {_RERUN}")
    return payload


def _parse_shard(payload: bytes, shard: ShardInfo) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(payload))
    except (pa.ArrowException, OSError) as err:
        raise ShardError(f"shard {shard.file} is not readable Parquet ({err}); {_RERUN}") from None
