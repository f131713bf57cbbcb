"""Per-worker batches of uint8 images on the training device.

The first pass streams the worker's share of the Parquet shards through Ray
Data. When the split fits in ``data.max_cached_bytes`` it stays resident on the
device as one uint8 tensor and later epochs shuffle it there (airbench's
approach): small-image SSL is then bound by the model, not by the loader.
Larger splits stream every epoch.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from raysl.data.shards import decode_images


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
    ):
        self.data_iterator = data_iterator
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

    def _stream(self, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        keep = self.cache_enabled
        images: list[torch.Tensor] = []
        indices: list[torch.Tensor] = []
        cached_bytes = 0
        done = 0
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        pending_rows = 0
        for batch in self.data_iterator.iter_batches(batch_size=self.batch_size, batch_format="numpy", prefetch_batches=2):
            x, idx = to_device_batch(batch, self.manifest, self.device)
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
            pending_rows += x.shape[0]
            while pending_rows >= self.batch_size and done < steps:
                xs = torch.cat([p[0] for p in pending])
                ids = torch.cat([p[1] for p in pending])
                yield xs[: self.batch_size], ids[: self.batch_size]
                done += 1
                rest_x, rest_i = xs[self.batch_size :], ids[self.batch_size :]
                pending = [(rest_x, rest_i)] if rest_x.shape[0] else []
                pending_rows = rest_x.shape[0]
            if done >= steps and not keep:
                break
        if keep and images:
            self._images = torch.cat(images)
            self._indices = torch.cat(indices)


class ParquetBatches:
    """A stand-in for Ray Data's per-worker iterator when a run trains in-process without Ray Train.

    Reads the split's shards with pyarrow in shard order; exposes the one method the loop uses.
    """

    def __init__(self, uris: list[str]):
        self.uris = list(uris)

    def iter_batches(self, *, batch_size: int, batch_format: str = "numpy", prefetch_batches: int = 0):
        import pyarrow.parquet as pq

        for uri in self.uris:
            table = pq.read_table(uri, columns=["image", "label", "index"])
            for start in range(0, table.num_rows, batch_size):
                part = table.slice(start, batch_size)
                yield {
                    "image": part.column("image").to_numpy(zero_copy_only=False),
                    "label": part.column("label").to_numpy(zero_copy_only=False),
                    "index": part.column("index").to_numpy(),
                }
