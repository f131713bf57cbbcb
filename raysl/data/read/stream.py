"""Per-worker batches of uint8 images on the training device.

The first pass streams the worker's share of the Parquet shards: small-image
rows read by the worker itself (:class:`ParquetBatches`), JPEG crops from Ray
Data's decode tasks. When the split fits in ``data.max_cached_bytes`` it stays resident on the
device as one uint8 tensor and later epochs shuffle it there (airbench's
approach): small-image SSL is then bound by the model, not by the loader.
Larger splits stream every epoch.

Real-size images (``encoded`` shards) never cache: every epoch needs fresh
random crops. Their batches arrive as one crop column per view (or as encoded
rows to decode on the device) and a :class:`raysl.data.read.encoded_images.CropInput`
turns them into one uint8 tensor per view; ``TrainBatches`` then yields a list
of views instead of one image tensor.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from raysl.data.read.shards import decode_images
from raysl.data.read.subset import keep_mask


def to_device_batch(batch: dict[str, np.ndarray], manifest: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrow/numpy rows -> (uint8 [B, C, H, W], int64 row indices) on ``device``."""
    images = decode_images(batch["image"], manifest)  # NHWC uint8
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True).permute(0, 3, 1, 2)
    idx = torch.from_numpy(np.array(batch["index"], dtype=np.int64)).to(device)
    return x.contiguous(), idx


class TrainBatches:
    """Iterates fixed-size uint8 batches for one epoch at a time."""

    def __init__(
        self,
        data_iterator: Any,
        manifest: Any,
        batch_size: int,
        device: torch.device,
        *,
        cache: bool,
        max_cached_bytes: int,
        seed: int,
        rank: int,
        crop_input: Any = None,
    ):
        # the run's train rows, already in its data.fraction subset (raysl.data.read.dataset.RunData)
        self.data_iterator = data_iterator
        self.crop_input = crop_input  # real-size images: batch -> one uint8 tensor per view
        self.manifest = manifest
        self.batch_size = batch_size
        self.device = device
        self.cache_enabled = cache
        self.max_cached_bytes = max_cached_bytes
        self.seed = seed
        self.rank = rank
        self._images: torch.Tensor | None = None
        self._indices: torch.Tensor | None = None

    @property
    def resident(self) -> bool:
        return self._images is not None

    def epoch(self, epoch: int, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._images is not None:
            yield from self._from_cache(epoch, steps)
        else:
            yield from self._stream(steps)

    def _from_cache(self, epoch: int, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        assert self._images is not None and self._indices is not None
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + self.rank)
        order = torch.randperm(self._images.shape[0], generator=gen).to(self.device)
        for s in range(steps):
            take = order[s * self.batch_size : (s + 1) * self.batch_size]
            yield self._images.index_select(0, take), self._indices.index_select(0, take)

    def _convert(self, batch: dict[str, np.ndarray]) -> tuple[Any, torch.Tensor]:
        if self.crop_input is None:
            return to_device_batch(batch, self.manifest, self.device)
        views = self.crop_input(batch)
        idx = torch.from_numpy(np.array(batch["index"], dtype=np.int64)).to(self.device)
        return views, idx

    def _stream(self, steps: int) -> Iterator[tuple[Any, torch.Tensor]]:
        keep = self.cache_enabled and self.crop_input is None
        images: list[torch.Tensor] = []
        indices: list[torch.Tensor] = []
        cached_bytes = 0
        done = 0
        pending: list[tuple[Any, torch.Tensor]] = []
        pending_rows = 0
        for batch in self.data_iterator.iter_batches(batch_size=self.batch_size, batch_format="numpy", prefetch_batches=2):
            x, idx = self._convert(batch)
            if keep:
                cached_bytes += x.numel()
                if cached_bytes > self.max_cached_bytes:
                    keep = False
                    images, indices = [], []
                else:
                    images.append(x)
                    indices.append(idx)
            # Ray Data may hand back short blocks; regroup into exact batch_size batches.
            pending.append((x, idx))
            pending_rows += idx.shape[0]
            while pending_rows >= self.batch_size and done < steps:
                xs = _cat([p[0] for p in pending])
                ids = torch.cat([p[1] for p in pending])
                yield _rows(xs, 0, self.batch_size), ids[: self.batch_size]
                done += 1
                rest_x, rest_i = _rows(xs, self.batch_size, None), ids[self.batch_size :]
                pending = [(rest_x, rest_i)] if rest_i.shape[0] else []
                pending_rows = rest_i.shape[0]
            if done >= steps and not keep:
                break
        if keep and images:
            self._images = torch.cat(images)
            self._indices = torch.cat(indices)


def _cat(parts: list[Any]) -> Any:
    """Concatenate batches along rows: image tensors, or lists of per-view tensors."""
    if isinstance(parts[0], list):
        return [torch.cat([p[v] for p in parts]) if len(parts) > 1 else parts[0][v] for v in range(len(parts[0]))]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _rows(x: Any, start: int, stop: int | None) -> Any:
    if isinstance(x, list):
        return [t[start:stop] for t in x]
    return x[start:stop]


class ParquetBatches:
    """A stand-in for Ray Data's per-worker iterator where a worker reads its shards itself.

    Reads the split's shards with pyarrow in shard order (every column: encoded
    shards carry height, width and orientation too); exposes the one method the loop uses.
    With ``world`` > 1 the worker keeps every ``world``-th row from ``rank`` on (counted across
    the shards in order): the workers' parts are disjoint, cover the split and differ by at most
    one row, as Ray Data's equal split would give them. A ``data.fraction`` subset (``fraction`` < 1,
    the run's ``seed``) is taken before that split, as on Ray Data's path, so every part holds the
    run's steps: split first, a part could be a batch short of them, its worker ended its epoch a step
    early and the others waited in DDP's all-reduce for ever.
    """

    def __init__(self, uris: list[str], rank: int = 0, world: int = 1, fraction: float = 1.0, seed: int = 0):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of {world} workers")
        self.uris = list(uris)
        self.rank, self.world = rank, world
        self.fraction, self.seed = fraction, seed

    def iter_batches(self, *, batch_size: int, batch_format: str = "numpy", prefetch_batches: int = 0):
        import pyarrow.parquet as pq

        seen = 0  # rows before this shard, across the split
        for uri in self.uris:
            table = pq.read_table(uri)
            if self.fraction < 1.0:
                table = table.filter(keep_mask(table.column("index").to_numpy(), self.fraction, self.seed))
            if self.world > 1:
                first = (self.rank - seen) % self.world
                seen += table.num_rows
                table = table.take(np.arange(first, table.num_rows, self.world))
            for start in range(0, table.num_rows, batch_size):
                part = table.slice(start, batch_size)
                yield {name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names}
