"""Which image files an image-folder prepare stores, and in which shard: all fixed before any file is read.

The listing: class sub-folders (sorted by name) of images, or a flat folder of
images (unlabeled), in canonical sorted order. The plan: the file list shuffled
with ``seed``, split, and cut into shards, each a :class:`Job` for a worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysl.errors import ConfigError, DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
STATS_SAMPLE = 2_000


@dataclass(frozen=True)
class Listing:
    """The image files of a folder in canonical order, with their class labels (None for a flat folder)."""

    files: list[str]  # relative POSIX paths, canonical order
    labels: np.ndarray | None  # int64 per file; None for a flat folder
    class_names: tuple[str, ...] | None


def _walk_images(folder: str, prefix: str) -> list[str]:
    """Relative paths of image files under ``folder`` (recursively), hidden entries skipped."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                found.extend(_walk_images(entry.path, f"{prefix}{entry.name}/"))
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                found.append(prefix + entry.name)
    return found


def path_key(relative: str) -> tuple[str, ...]:
    """The canonical sort key of a relative POSIX path: its components."""
    return tuple(relative.split("/"))


def list_images(folder: Path) -> Listing:
    """Class sub-folders (sorted by name) of images, or a flat folder of images (unlabeled)."""
    classes: dict[str, list[str]] = {}
    loose: list[str] = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                files = _walk_images(entry.path, f"{entry.name}/")
                if files:
                    classes[entry.name] = sorted(files, key=path_key)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                loose.append(entry.name)
    if classes and loose:
        raise DataError(
            f"{folder} has both images and class sub-folders; move the loose images into a class folder"
        )
    suffixes = " ".join(sorted(IMAGE_SUFFIXES))
    if not classes and not loose:
        raise DataError(f"no images ({suffixes}) in {folder}; point PATH at a folder of images")
    if not classes:
        return Listing(sorted(loose, key=path_key), None, None)
    files = [f for group in classes.values() for f in group]
    labels = np.concatenate([np.full(len(g), c, np.int64) for c, g in enumerate(classes.values())])
    return Listing(files, labels, tuple(classes))


@dataclass(frozen=True)
class Job:
    """One shard to build: which files, in which order, and how many of its first rows feed the stats."""

    name: str
    split: str
    files: tuple[str, ...]
    labels: tuple[int, ...] | None
    indices: tuple[int, ...]
    stats_rows: int


def plan_shards(listing: Listing, val_fraction: float, seed: int, shard_rows: int) -> list[tuple[str, int, np.ndarray]]:
    """(split, shard number, canonical file positions) for every shard, fixed before any file is read."""
    count = len(listing.files)
    order = np.random.default_rng(seed).permutation(count).astype(np.int64)
    val_rows = int(round(count * val_fraction))
    if val_rows >= count:
        raise ConfigError(f"--val-fraction {val_fraction} leaves no training rows out of {count}")
    plan = []
    for split, rows in (("train", order[val_rows:]), ("val", order[:val_rows])):
        for number, start in enumerate(range(0, len(rows), shard_rows)):
            plan.append((split, number, rows[start : start + shard_rows]))
    return plan


def make_job(listing: Listing, split: str, number: int, positions: np.ndarray, shard_rows: int) -> Job:
    """Shard ``number`` of ``split`` (its files at ``positions``); the first train rows feed the statistics."""
    stats_rows = 0
    if split == "train":
        stats_rows = int(np.clip(STATS_SAMPLE - number * shard_rows, 0, len(positions)))
    return Job(
        name=f"{split}-{number:05d}.parquet",
        split=split,
        files=tuple(listing.files[p] for p in positions),
        labels=None if listing.labels is None else tuple(int(listing.labels[p]) for p in positions),
        indices=tuple(int(p) for p in positions),
        stats_rows=stats_rows,
    )

