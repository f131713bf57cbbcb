"""SupCon (Khosla et al. 2020, "Supervised Contrastive Learning").

SimCLR's two views with the labels: every embedding of the same class is a
positive of an anchor, the rest of the global batch its negatives
(:func:`raysl.losses.supcon`, Eq. 2, temperature ``temperature``). The loop
hands a method row indices, not labels: ``load_labels`` reads the train
split's label column once (``needs_labels``), and each step looks its rows'
labels up by index. A row without a label is a class of its own (its positive
is its other view, as in SimCLR); data without labels at all is a config error
before Ray starts (``raysl.launch.check_against_data``).

Distributed: projections gathered with gradients and labels without, so every
worker computes the loss of the global batch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from raysl import distributed, losses
from raysl.config import MethodSection, Temperature
from raysl.methods.base import Method


def train_labels(data_dir: str, manifest) -> torch.Tensor:
    """int64 [rows of every split]: the train split's label of each row index, -1 elsewhere or where missing."""
    import pyarrow.parquet as pq

    from raysl.data.read.shards import shard_uris

    table = np.full(manifest.total_rows, -1, dtype=np.int64)
    for uri in shard_uris(data_dir, "train", manifest):
        part = pq.read_table(uri, columns=["index", "label"])
        index = part.column("index").to_numpy().astype(np.int64)
        table[index] = part.column("label").fill_null(-1).to_numpy().astype(np.int64)
    return torch.from_numpy(table)


class SupConConfig(MethodSection):
    # Khosla et al. 2020: needs labelled data (raysl.launch.check_against_data); unlabelled rows are their own class
    name: Literal["supcon"] = "supcon"
    temperature: Temperature = 0.1


class SupCon(Method):
    config_class = SupConConfig
    needs_labels = True

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        # not a buffer: DDP would broadcast it every step, and it is the data's, not the model's
        self.labels: torch.Tensor | None = None

    def load_labels(self, data_dir: str, manifest) -> None:
        self.labels = train_labels(data_dir, manifest).to(next(self.parameters()).device)

    def training_loss(self, views, indices):
        if self.labels is None or indices is None:
            raise RuntimeError("SupCon needs the train labels (load_labels) and the rows' indices")
        z = self.gathered_projections(views)
        y = self.labels[indices.to(self.labels.device)].to(indices.device)
        y = torch.where(y < 0, -1 - indices, y)  # an unlabelled row is its own class (row indices are unique)
        y = distributed.gather_no_grad(y)
        return losses.supcon(z, y, temperature=self.cfg.temperature), {}
