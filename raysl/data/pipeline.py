"""The training input of a run: one place that decides what the train worker receives.

Two data paths, chosen by the shards (``manifest.encoding``), not by the user:

- **Small images** (``raw`` / ``png`` rows): no Ray Dataset; each worker reads
  its share of the shards' rows (:func:`reads_in_worker`), decodes them once,
  keeps them on its device and augments there
  (:class:`raysl.data.stream.TrainBatches`).
- **Real-size images** (``encoded``: original JPEG/PNG bytes, any size):

  * ``data.decode: cpu`` (``auto`` on a CPU worker): ``read_parquet`` ->
    ``map_batches(DecodeCrops)`` as Ray tasks of one CPU each, anywhere in the
    cluster; the worker receives ``view0``, ``view1``, ... uint8 crops, one
    column per view at that view's own side, plus ``index`` and ``label``.
  * ``data.decode: gpu`` (``auto`` on a CUDA worker): the Dataset is the
    encoded rows; the worker decodes them with nvJPEG and cuts the crops on
    its device (:mod:`raysl.data.gpu_decode`).

  Either way the worker then applies flips, colour, blur and solarize in
  batches on its device (:func:`raysl.data.augment.augment_precropped`).

:func:`train_dataset` builds the Ray Dataset (``raysl train`` and multi-worker
``raysl tune`` trials); :class:`CropInput` is the worker's end, which also
decodes in-process when it is handed encoded rows without Ray Data (one-worker
Tune trials and :class:`raysl.loop_io.LocalIO` read their shards with pyarrow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from raysl.data.decode import ENCODED_COLUMNS, CropSpec, DecodeCrops, crop_specs, view_column

if TYPE_CHECKING:
    import ray.data
    import torch

    from raysl.config import RunConfig, ViewAugment
    from raysl.data.manifest import Manifest

__all__ = [
    "CropInput",
    "DECODE_BATCH_ROWS",
    "ENCODED_DEFAULT_CROP",
    "decode_on_device",
    "global_crop_size",
    "is_encoded",
    "reads_in_worker",
    "run_views",
    "train_dataset",
]

# global views' side for encoded shards when data.crop_size is unset (ImageNet's 224)
ENCODED_DEFAULT_CROP = 224
# rows per DecodeCrops call: output blocks of 64 rows x 2 views x 224^2 x 3 B ~ 19 MB, well under
# Ray Data's target block size, and enough rows per call to amortise the task's overhead
DECODE_BATCH_ROWS = 64
PIXEL_COLUMNS = ["image", "label", "index"]


def is_encoded(manifest: "Manifest") -> bool:
    """Real-size images (original JPEG/PNG bytes, any size) rather than one-size pixel rows."""
    return manifest.encoding == "encoded"


def global_crop_size(cfg: "RunConfig", manifest: "Manifest") -> int:
    """The global views' side: ``data.crop_size``, else 224 for encoded shards, else the image height."""
    if cfg.data.crop_size:
        return int(cfg.data.crop_size)
    return ENCODED_DEFAULT_CROP if is_encoded(manifest) else int(manifest.height)


def run_views(cfg: "RunConfig") -> "list[ViewAugment]":
    """One recipe per view a training step makes (the method's global views, then any local crops).

    The same list the worker builds from its method (``Method.num_views`` is
    ``method.num_views`` or 2), computed here without building the model so the
    driver can plan the crops.
    """
    return cfg.data.views(int(getattr(cfg.method, "num_views", 2)))


def decode_on_device(cfg: "RunConfig", device_type: str) -> bool:
    """Whether encoded rows are decoded on the worker's device (``gpu``; ``auto`` on CUDA)."""
    return cfg.data.decode == "gpu" or (cfg.data.decode == "auto" and device_type == "cuda")


def reads_in_worker(cfg: "RunConfig", manifest: "Manifest") -> bool:
    """Whether each Train worker reads the shards itself (pyarrow, in shard order, every
    world-th row from its rank on: :class:`raysl.data.stream.ParquetBatches`), with no Ray Dataset:
    small-image rows. The worker decodes such rows once and keeps them
    (:class:`raysl.data.stream.TrainBatches`), so Ray Data would only carry the shards' bytes once, at
    the price of its own actors (split coordinator, stats) and read tasks: several process start-ups,
    most of a short run's start-up on a small machine. An elastic run's workers read their parts again
    at each start, at the size they start at. Encoded shards (decoded by Ray Data tasks on any node's
    CPUs) keep the Ray Dataset, and so does ``data.reader: ray_data``. One-worker ``raysl tune`` trials
    read their shards in their own process (no Train worker group) in every case."""
    return cfg.data.reader == "auto" and not is_encoded(manifest)


def train_dataset(
    cfg: "RunConfig",
    data_dir: str,
    manifest: "Manifest | None" = None,
    views: "Sequence[ViewAugment] | None" = None,
    *,
    read_remote_args: dict | None = None,
) -> "ray.data.Dataset":
    """The run's training Dataset (see the module docstring for what its rows hold).

    ``views`` defaults to :func:`run_views`; ``read_remote_args`` go to the
    read tasks only (Tune trials read with no CPU slot). Decode tasks ask for
    one CPU and no GPU each, so Ray places them on any node with a free CPU.
    """
    import ray.data

    from raysl.data.shards import load_manifest, shard_uris

    manifest = manifest or load_manifest(data_dir)
    uris = shard_uris(data_dir, "train", manifest)
    read_args = {"ray_remote_args": read_remote_args} if read_remote_args else {}
    # Parquet's V1 datasource: raysl hands it the exact shard list from the manifest, so there is
    # nothing to discover; V2 starts several footer-reader actors per read (a process start-up each,
    # seconds on a small machine) before the first row arrives. DataContext.use_datasource_v2 is public.
    ray.data.DataContext.get_current().use_datasource_v2 = False
    if not is_encoded(manifest):
        return _keep_fraction(cfg, ray.data.read_parquet(uris, **read_args).select_columns(PIXEL_COLUMNS))
    rows = _keep_fraction(cfg, ray.data.read_parquet(uris, **read_args).select_columns(list(ENCODED_COLUMNS)))
    if decode_on_device(cfg, "cuda" if cfg.scale.use_gpu else "cpu"):
        return rows
    specs = crop_specs(views if views is not None else run_views(cfg), global_crop_size(cfg, manifest))
    # an instance, not the class: Ray Data runs it as stateless tasks (no actor pool to size or hold)
    return rows.map_batches(
        DecodeCrops(specs, manifest.channels),
        batch_size=DECODE_BATCH_ROWS,
        batch_format="pyarrow",
        num_cpus=1,
        num_gpus=0,
    )


def _keep_fraction(cfg: "RunConfig", dataset: "ray.data.Dataset") -> "ray.data.Dataset":
    """``data.fraction`` < 1: only the seeded subset's rows (before any decoding)."""
    if cfg.data.fraction >= 1.0:
        return dataset
    from raysl.data.subset import KeepFraction

    return dataset.map_batches(KeepFraction(cfg.data.fraction, cfg.seed), batch_format="pyarrow", num_cpus=0)


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
                 on_device: bool, seed: int | None = None):
        self.specs = list(specs)
        self.channels = int(channels)
        self.device = device
        self.on_device = on_device
        self.rng = np.random.default_rng(seed)
        self.source: str | None = None

    @classmethod
    def for_run(cls, cfg: "RunConfig", manifest: "Manifest", views: "Sequence[ViewAugment]",
                device: "torch.device", rank: int = 0) -> "CropInput | None":
        """The run's crop input, or None for small-image shards (pixel rows)."""
        if not is_encoded(manifest):
            return None
        return cls(crop_specs(views, global_crop_size(cfg, manifest)), manifest.channels, device,
                   on_device=decode_on_device(cfg, device.type), seed=[cfg.seed, rank])

    def __call__(self, batch: dict[str, Any]) -> "list[torch.Tensor]":
        import torch

        if view_column(0) not in batch:
            if self.on_device:
                from raysl.data.gpu_decode import decode_crops

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
    from raysl.data import shards

    manifest = manifest or shards.load_manifest(data_dir)
    images: list[np.ndarray] = [np.zeros((0, size, size, manifest.channels), np.uint8)]
    labels: list[np.ndarray] = [np.zeros(0, np.int64)]
    kept = 0
    for x, y in shards.iter_split(data_dir, split, size, batch_rows):
        take = min(len(x), limit - kept)
        images.append(np.ascontiguousarray(x[:take]))
        labels.append(np.full(take, -1, np.int64) if y is None else np.asarray(y[:take], dtype=np.int64))
        kept += take
        if kept >= limit:
            break
    return np.concatenate(images), (np.concatenate(labels) if manifest.labeled else None)
