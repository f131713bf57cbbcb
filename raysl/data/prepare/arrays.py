"""The sources ``raysl data prepare`` reads into memory: bundled digits, IDX (MNIST format), CIFAR batches.

- ``digits``: scikit-learn's bundled 8x8 digits, 0..16 scaled to 0..255.
- ``idx PATH``: MNIST-format IDX files (optionally .gz). ``train*`` and
  ``t10k*``/``test*`` files become the train and val splits (``val_fraction``
  is ignored, ``split_from="source"``).
- ``cifar10 PATH``: the CIFAR-10 or CIFAR-100 "python version" folder, read with
  an unpickler that only admits numpy arrays (the files are pickles).

Each loader returns a :class:`SourceData`; :mod:`raysl.data.prepare` shuffles,
splits and writes it.
"""

from __future__ import annotations

import collections
import gzip
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raysl.data.prepare.layout import existing_dir
from raysl.errors import DataError

__all__ = ["FASHION_MNIST_CLASSES", "SourceData", "load_source", "read_idx"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@dataclass(frozen=True)
class SourceData:
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
) -> SourceData:
    """Wrap already-decoded NHWC images (the small sources)."""
    _, height, width, channels = images.shape
    return SourceData(
        height, width, channels, labels, class_names, lambda rows: images[rows], len(images), is_val
    )


def load_source(source: str, path: str | None) -> SourceData:
    """The rows of ``source`` (digits, idx or cifar10) at ``path``; DataError when it holds none."""
    loaders: dict[str, Callable[[str | None], SourceData]] = {
        "digits": _load_digits,
        "idx": _load_idx,
        "cifar10": _load_cifar,
    }
    data = loaders[source](path)
    if data.num_rows == 0:
        raise DataError(f"{source} source at {path} holds no images")
    return data


def _load_digits(_: str | None) -> SourceData:
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


def _load_idx(path: str | None) -> SourceData:
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


def _load_cifar(path: str | None) -> SourceData:
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

