"""A run's data: one object (:class:`RunData`) that says what the train worker receives.

``RunData`` is the run's config, its prepared folder and that folder's manifest, plus the strategy of how
the manifest's rows are stored (:data:`ENCODINGS`): small-image pixel rows
(:mod:`raysl.data.read.pixel_rows`) or real-size encoded images (:mod:`raysl.data.read.encoded_images`).
The strategy is chosen by the shards, not by the user. The driver builds it (the Ray Dataset it hands
Train, the CPUs a trial needs for decode tasks) and each worker builds the same object from its loop
config (its train stream, its crop input, its evaluation images). Code above this module asks the
object, never the manifest's encoding.

A new stored format is a strategy file (the four methods of :class:`RowsStrategy`), its prepare source
under :mod:`raysl.data.prepare`, and one line in :data:`ENCODINGS`; when its rows are neither pixel bytes
nor JPEG/PNG files, also how one row's bytes decode (:mod:`raysl.data.read.shards`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from raysl.data.read.encoded_images import EncodedImages
from raysl.data.read.pixel_rows import PixelRows

if TYPE_CHECKING:
    import ray.data
    import torch

    from raysl.config import RunConfig, ViewAugment
    from raysl.data.manifest import Manifest
    from raysl.data.read.stream import ParquetBatches

__all__ = ["ENCODINGS", "RowsStrategy", "RunData", "global_crop_size", "run_views"]


class RowsStrategy(Protocol):
    """How a run reads one kind of stored rows."""

    name: str
    columns: Sequence[str]  # what a run reads of each shard
    decode_tasks: bool  # Ray Data runs a decode task per block (a CPU each, beside the trial's workers)
    reads_in_worker: bool  # with data.reader: auto, each worker reads its own share (no Ray Dataset)

    # the global views' side when data.crop_size is unset
    def default_size(self, manifest: "Manifest") -> int: ...
    # the train split's rows (already in the run's subset) -> what Ray Data hands the workers
    def ray_rows(self, rows: "ray.data.Dataset", cfg: "RunConfig", manifest: "Manifest",
                 views: "Sequence[ViewAugment]", size: int) -> "ray.data.Dataset": ...
    # the worker's end: a streamed batch -> one uint8 tensor per view, or None (the loop cuts the views)
    def crop_input(self, cfg: "RunConfig", manifest: "Manifest", views: "Sequence[ViewAugment]", size: int,
                   device: Any, rank: int) -> Any: ...
    # a split's evaluation images (uint8 NHWC at the model's size) and labels, at least ``limit`` rows
    def eval_images(self, data_dir: str, manifest: "Manifest", split: str, size: int,
                    limit: int) -> tuple[np.ndarray, np.ndarray | None]: ...


# manifest.encoding -> how a run reads those rows (raysl.data.manifest.ENCODINGS lists what prepare writes)
ENCODINGS: dict[str, RowsStrategy] = {"raw": PixelRows(), "png": PixelRows(), "encoded": EncodedImages()}


def rows_strategy(manifest: "Manifest") -> RowsStrategy:
    return ENCODINGS[manifest.encoding]


def global_crop_size(cfg: "RunConfig", manifest: "Manifest") -> int:
    """The global views' side: ``data.crop_size``, else the strategy's default (224 for encoded images, the
    stored height for pixel rows)."""
    if cfg.data.crop_size:
        return int(cfg.data.crop_size)
    return rows_strategy(manifest).default_size(manifest)


def run_views(cfg: "RunConfig") -> "list[ViewAugment]":
    """One recipe per view a training step makes (the method's global views, then any local crops).

    The same list the worker builds from its method (``Method.num_views`` is
    ``method.num_views`` or 2), computed here without building the model so the
    driver can plan the crops.
    """
    return cfg.data.views(int(getattr(cfg.method, "num_views", 2)))


@dataclass(frozen=True, eq=False)
class RunData:
    """A run's data (see the module docstring)."""

    cfg: "RunConfig"
    data_dir: str
    manifest: "Manifest"

    @classmethod
    def load(cls, cfg: "RunConfig", data_dir: str, manifest: "Manifest | None" = None) -> "RunData":
        if manifest is None:
            from raysl.data.read.shards import load_manifest

            manifest = load_manifest(data_dir)
        return cls(cfg, data_dir, manifest)

    @property
    def rows(self) -> RowsStrategy:
        return rows_strategy(self.manifest)

    @property
    def image_size(self) -> int:
        """The global views' side, which is what the model sees (:func:`global_crop_size`)."""
        return global_crop_size(self.cfg, self.manifest)

    @property
    def reads_in_worker(self) -> bool:
        """Whether each Train worker reads its share of the shards itself (pyarrow, in shard order, every
        world-th row from its rank on: :class:`raysl.data.read.stream.ParquetBatches`), with no Ray Dataset.
        Small-image rows do so with ``data.reader: auto``: the worker decodes them once and keeps them, so Ray
        Data would only carry the shards' bytes once, at the price of its own actors (split coordinator,
        stats) and read tasks: several process start-ups, most of a short run's start-up on a small
        machine. An elastic run's workers read their parts again at each start, at the size they start at.
        Encoded images (decoded by Ray Data tasks on any node's CPUs) keep the Ray Dataset, and so does
        ``data.reader: ray_data``. One-worker ``raysl tune`` trials read their shards in their own process
        (no Train worker group) in every case."""
        return self.cfg.data.reader == "auto" and self.rows.reads_in_worker

    @property
    def subset(self) -> tuple[float, int]:
        """``(data.fraction, seed)``: which rows of the train split the run trains on (:mod:`.subset`)."""
        return float(self.cfg.data.fraction), int(self.cfg.seed)

    def train_rows(self) -> int:
        """Rows of the train split the run trains on (all of them at ``data.fraction`` 1)."""
        from raysl.data.read.subset import train_rows

        return train_rows(self.data_dir, self.manifest, *self.subset)

    def ray_dataset(self, views: "Sequence[ViewAugment] | None" = None, *,
                    read_remote_args: dict | None = None) -> "ray.data.Dataset":
        """The run's training Dataset: the train split's rows in the run's subset, then whatever the strategy
        does in Ray Data (encoded images: crops cut by decode tasks).

        ``views`` defaults to :func:`run_views`; ``read_remote_args`` go to the read tasks only (Tune trials
        read with no CPU slot). Decode tasks ask for one CPU and no GPU each, so Ray places them on any node
        with a free CPU.
        """
        import ray.data

        from raysl.data.read.shards import shard_uris

        uris = shard_uris(self.data_dir, "train", self.manifest)
        read_args = {"ray_remote_args": read_remote_args} if read_remote_args else {}
        # Parquet's V1 datasource: raysl hands it the exact shard list from the manifest, so there is
        # nothing to discover; V2 starts several footer-reader actors per read (a process start-up each,
        # seconds on a small machine) before the first row arrives. DataContext.use_datasource_v2 is public.
        ray.data.DataContext.get_current().use_datasource_v2 = False
        rows = ray.data.read_parquet(uris, **read_args).select_columns(list(self.rows.columns))
        fraction, seed = self.subset
        if fraction < 1.0:  # the seeded subset's rows, before any decoding
            from raysl.data.read.subset import KeepFraction

            rows = rows.map_batches(KeepFraction(fraction, seed), batch_format="pyarrow", num_cpus=0)
        views = views if views is not None else run_views(self.cfg)
        return self.rows.ray_rows(rows, self.cfg, self.manifest, views, self.image_size)

    def worker_reader(self, rank: int = 0, world: int = 1) -> "ParquetBatches":
        """The train split's rows in the run's subset, read in this process: the ``rank``-th of ``world``
        disjoint, even parts (a worker that reads its own share; one-worker trials; runs without Ray)."""
        from raysl.data.read.shards import shard_uris
        from raysl.data.read.stream import ParquetBatches

        return ParquetBatches(shard_uris(self.data_dir, "train", self.manifest), rank, world, *self.subset)

    def crop_input(self, views: "Sequence[ViewAugment]", device: "torch.device", rank: int = 0) -> Any:
        """What turns a streamed batch into one uint8 tensor per view on ``device`` (encoded images), or None
        (pixel rows: the loop cuts the views from the resident images)."""
        return self.rows.crop_input(self.cfg, self.manifest, views, self.image_size, device, rank)

    def eval_images(self, split: str, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Images of ``split`` as the model sees them at evaluation (uint8 NHWC) and their labels (or None):
        at least ``limit`` rows where the split has them (the caller subsamples to ``limit``)."""
        return self.rows.eval_images(self.data_dir, self.manifest, split, self.image_size, limit)
