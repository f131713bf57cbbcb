"""``data.fraction``: train on a seeded fraction of the train split.

A row is kept when a hash of its ``index`` (its row number in the source data
set) and the run's seed falls below the fraction. The choice depends on the
row alone, so every reader (Ray Data tasks, a worker's stream, an in-process
reader) keeps the same rows without coordination, filtering twice changes
nothing, and smaller fractions are subsets of larger ones (nested data
scaling). The kNN memory bank and the val split are not subsampled: every run
of a scaling grid is evaluated the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def keep_mask(indices: Any, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of the rows (by source row index) a run with ``data.fraction`` trains on."""
    idx = np.asarray(indices).astype(np.uint64)
    if fraction >= 1.0:
        return np.ones(idx.shape, dtype=bool)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(idx ^ _splitmix64(np.full(idx.shape, seed, dtype=np.uint64)))
    uniform = (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return uniform < fraction


def filter_batch(batch: dict, fraction: float, seed: int) -> dict:
    """A numpy batch (column -> array) with only the kept rows."""
    if fraction >= 1.0:
        return batch
    mask = keep_mask(batch["index"], fraction, seed)
    return {name: np.asarray(values)[mask] for name, values in batch.items()}


class KeepFraction:
    """Ray Data ``map_batches`` callable (pyarrow batches): drops the rows outside the fraction."""

    def __init__(self, fraction: float, seed: int):
        self.fraction, self.seed = fraction, seed

    def __call__(self, table):
        import pyarrow as pa

        mask = keep_mask(table.column("index").to_numpy(), self.fraction, self.seed)
        return table.filter(pa.array(mask))


def train_rows(data_dir: str, manifest: Any, fraction: float, seed: int) -> int:
    """Rows of the train split a run with ``data.fraction`` trains on (reads only the index column)."""
    total = int(manifest.splits["train"]["rows"])
    if fraction >= 1.0:
        return total
    import pyarrow.parquet as pq

    from raysl import storage
    from raysl.data.read.shards import shard_uris

    kept = 0
    for uri in shard_uris(data_dir, "train", manifest):
        location = storage.resolve(uri)
        with location.fs.open_input_file(location.path) as handle:
            column = pq.read_table(handle, columns=["index"]).column("index").to_numpy()
        kept += int(keep_mask(column, fraction, seed).sum())
    return kept
