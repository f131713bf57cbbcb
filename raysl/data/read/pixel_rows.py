"""Small images stored as pixel rows (``raw`` / ``png`` shards, one size): how a run reads them.

Each worker reads its share of the shards itself (:class:`raysl.data.read.stream.ParquetBatches`, no Ray
Dataset unless ``data.reader: ray_data``), decodes the rows once and keeps them on its device
(:class:`raysl.data.read.stream.TrainBatches`); the views are cut there each step
(:func:`raysl.data.augment.make_views`). Evaluation reads the whole split as stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import ray.data

    from raysl.config import RunConfig, ViewAugment
    from raysl.data.manifest import Manifest

__all__ = ["PixelRows"]


class PixelRows:
    """The strategy of pixel-row shards (see the module docstring)."""

    name = "pixel rows"
    columns = ("image", "label", "index")
    decode_tasks = False  # Ray Data only carries the rows: no decode task needs a CPU beside the trial
    reads_in_worker = True  # each worker reads its own share unless data.reader: ray_data

    def default_size(self, manifest: "Manifest") -> int:
        """The views' side when ``data.crop_size`` is unset: the stored images' height."""
        return int(manifest.height)

    def ray_rows(self, rows: "ray.data.Dataset", cfg: "RunConfig", manifest: "Manifest",
                 views: "Sequence[ViewAugment]", size: int) -> "ray.data.Dataset":
        return rows  # decoded by the worker, once (TrainBatches)

    def crop_input(self, cfg: "RunConfig", manifest: "Manifest", views: "Sequence[ViewAugment]", size: int,
                   device: Any, rank: int) -> None:
        return None  # the loop cuts the views from the resident images

    def eval_images(self, data_dir: str, manifest: "Manifest", split: str, size: int,
                    limit: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole split as stored (checked against the manifest); the caller subsamples it to ``limit``."""
        from raysl.data.read.shards import read_split

        return read_split(data_dir, split, manifest)
