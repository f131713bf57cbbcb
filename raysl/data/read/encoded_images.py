"""Real-size images stored as their own JPEG/PNG bytes (``encoded`` shards, any size): how a run reads them.

- ``data.decode: cpu`` (``auto`` on a CPU worker): ``read_parquet`` -> ``map_batches(DecodeCrops)`` as Ray
  tasks of one CPU each, anywhere in the cluster; the worker receives ``view0``, ``view1``, ... uint8 crops,
  one column per view at that view's own side, plus ``index`` and ``label``.
- ``data.decode: gpu`` (``auto`` on a CUDA worker): the Dataset is the encoded rows; the worker decodes them
  with nvJPEG and cuts the crops on its device (:mod:`raysl.data.read.gpu_decode`).

Either way the worker then applies flips, colour, blur and solarize in batches on its device
(:func:`raysl.data.augment.augment_precropped`). :class:`CropInput` is the worker's end; it also decodes
in-process when it is handed encoded rows without Ray Data (one-worker Tune trials and
:class:`raysl.loop_io.LocalIO` read their shards with pyarrow). Evaluation streams the first rows of a
split, resized and centre-cropped (:func:`eval_images`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from raysl.data.read.decode import ENCODED_COLUMNS, CropSpec, DecodeCrops, crop_specs, view_column

if TYPE_CHECKING:
    import ray.data
    import torch

    from raysl.config import RunConfig, ViewAugment
    from raysl.data.manifest import Manifest

__all__ = ["CropInput", "DECODE_BATCH_ROWS", "ENCODED_DEFAULT_CROP", "EncodedImages", "decode_on_device",
           "eval_images"]

# global views' side for encoded shards when data.crop_size is unset (ImageNet's 224)
ENCODED_DEFAULT_CROP = 224
# rows per DecodeCrops call: output blocks of 64 rows x 2 views x 224^2 x 3 B ~ 19 MB, well under
# Ray Data's target block size, and enough rows per call to amortise the task's overhead
DECODE_BATCH_ROWS = 64


def decode_on_device(cfg: "RunConfig", device_type: str) -> bool:
    """Whether encoded rows are decoded on the worker's device (``gpu``; ``auto`` on CUDA)."""
    return cfg.data.decode == "gpu" or (cfg.data.decode == "auto" and device_type == "cuda")


class EncodedImages:
    """The strategy of encoded-image shards (see the module docstring)."""

    name = "encoded images"
    columns = ENCODED_COLUMNS
    decode_tasks = True  # Ray Data's decode tasks take a CPU each (a trial's placement leaves one for them)
    reads_in_worker = False  # decoded by Ray Data tasks on any node's CPUs

    def default_size(self, manifest: "Manifest") -> int:
        """Images of many sizes: the global views' side when ``data.crop_size`` is unset is ImageNet's 224."""
        return ENCODED_DEFAULT_CROP

    def ray_rows(self, rows: "ray.data.Dataset", cfg: "RunConfig", manifest: "Manifest",
                 views: "Sequence[ViewAugment]", size: int) -> "ray.data.Dataset":
        if decode_on_device(cfg, "cuda" if cfg.scale.use_gpu else "cpu"):
            return rows
        # an instance, not the class: Ray Data runs it as stateless tasks (no actor pool to size or hold)
        return rows.map_batches(
            DecodeCrops(crop_specs(views, size), manifest.channels),
            batch_size=DECODE_BATCH_ROWS,
            batch_format="pyarrow",
            num_cpus=1,
            num_gpus=0,
        )

    def crop_input(self, cfg: "RunConfig", manifest: "Manifest", views: "Sequence[ViewAugment]", size: int,
                   device: "torch.device", rank: int) -> "CropInput":
        return CropInput(crop_specs(views, size), manifest.channels, device,
                         on_device=decode_on_device(cfg, device.type), seed=[cfg.seed, rank])

    def eval_images(self, data_dir: str, manifest: "Manifest", split: str, size: int,
                    limit: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The first ``limit`` rows of the split, resized and centre-cropped to ``size`` (:func:`eval_images`)."""
        return eval_images(data_dir, split, size, limit, manifest)


class CropInput:
    """The worker's end of the real-size path: a batch -> one uint8 [B, C, S_v, S_v] tensor per view.

    Accepts what the Dataset (or an in-process reader) hands over: crop
    columns cut by Ray Data, or encoded rows, which it decodes on ``device``
    (``decode_on_device``) or in this process on the CPU. ``source`` says which
    happened for the last batch (the run's banner shows it).
    """

    SOURCES = {
        "ray_data": "crops cut by Ray Data tasks (MapBatches(DecodeCrops))",
        "device": "JPEG decoded and cropped on the worker's device",
        "in_process": "JPEG decoded and cropped in the worker process (no Ray Data)",
    }

    def __init__(self, specs: Sequence[CropSpec], channels: int, device: "torch.device", *,
                 on_device: bool, seed: Any = None):
        self.specs = list(specs)
        self.channels = int(channels)
        self.device = device
        self.on_device = on_device
        self.rng = np.random.default_rng(seed)
        self.source: str | None = None

    def __call__(self, batch: dict[str, Any]) -> "list[torch.Tensor]":
        import torch

        if view_column(0) not in batch:
            if self.on_device:
                from raysl.data.read.gpu_decode import decode_crops

                self.source = "device"
                return decode_crops(list(batch["image"]), batch["height"], batch["width"], batch["orientation"],
                                    self.specs, self.channels, self.device, rng=self.rng)
            self.source = "in_process"
            batch = DecodeCrops(self.specs, self.channels, seed=int(self.rng.integers(1 << 62)))(batch)
        else:
            self.source = "ray_data"
        if view_column(len(self.specs)) in batch or view_column(len(self.specs) - 1) not in batch:
            raise ValueError(f"the Dataset's crop columns do not match the run's {len(self.specs)} views")
        out = []
        for v in range(len(self.specs)):
            crops = torch.from_numpy(np.ascontiguousarray(batch[view_column(v)]))  # [B, S, S, C]
            out.append(crops.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous())
        return out


def eval_images(
    data_dir: str, split: str, size: int, limit: int, manifest: "Manifest | None" = None, batch_rows: int = 256
) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``limit`` rows of an encoded split for evaluation: uint8 (N, size, size, C) and labels (or None).

    Each image is decoded, its shorter side resized to ``size`` and its centre
    ``size`` x ``size`` kept (``shards.iter_split``); batches stream in shard
    order and reading stops after ``limit`` rows, so neither the split at full
    resolution nor its unused rows are ever decoded into memory. The subset is
    the first ``limit`` rows in shard order: ``raysl data prepare`` shuffled the
    rows (with its seed) before splitting, so that is a uniform random sample,
    the same for every run on these shards.
    """
    from raysl.data.read import shards

    manifest = manifest or shards.load_manifest(data_dir)
    images: list[np.ndarray] = [np.zeros((0, size, size, manifest.channels), np.uint8)]
    labels: list[np.ndarray] = [np.zeros(0, np.int64)]
    kept = 0
    for x, y in shards.iter_split(data_dir, split, size, batch_rows, manifest=manifest):
        take = min(len(x), limit - kept)
        images.append(np.ascontiguousarray(x[:take]))
        labels.append(np.full(take, -1, np.int64) if y is None else np.asarray(y[:take], dtype=np.int64))
        kept += take
        if kept >= limit:
            break
    return np.concatenate(images), (np.concatenate(labels) if manifest.labeled else None)
