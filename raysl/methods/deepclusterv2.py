"""DeepCluster v2 (Caron et al. 2020, NeurIPS, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", appendix; solo-learn's ``deepclusterv2``).

DeepCluster with SwAV's improvements: a memory bank holds the latest
L2-normalised projection of every training image (one bank per global view);
at the start of each epoch a spherical k-means (``kmeans_iterations``
iterations) clusters the bank, the prototypes are set to the centroids (not
learned), and during the epoch each view's scores against the prototypes are
trained, by a cross-entropy at ``temperature``, to predict its image's cluster.
``num_prototypes`` lists the clusterings (paper: 3 x 3000); clustering h
clusters the bank of global view h mod 2, as the reference code alternates.

The training loop has no epoch hook: an epoch starts when a row of the data
comes back (each epoch visits every row once and leaves out less than one
batch, so the first batch of the next epoch holds a row of this one) after
all but less than a batch of the bank's rows were written since the last
k-means; the first training step that sees that clusters the bank first.
The first epoch only fills the bank (the reference code's ``init_memory``
pass before training): nothing has an assignment yet, so its loss is 0.
Rows that no epoch has embedded yet have no cluster (-1) and are left out of
the loss.

Distributed: the batch's row indices and projections are gathered (no
gradient), so every worker writes the same bank, runs the same k-means (the
initial centroids are drawn from a generator seeded by the clustering's
number) and gets the same centroids and assignments without further
communication; DDP is told not to broadcast these tables every step. The loss
is each worker's mean over its own rows (DDP averages).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from raysl import distributed, losses
from raysl.config import MethodSection, Temperature
from raysl.errors import TrainingError
from raysl.methods.base import Method

# state every worker computes identically: DDP need not broadcast it at each step
_SHARED_TABLES = ("bank", "filled", "seen", "assignments", "clusterings")


class DeepClusterV2Config(MethodSection):
    # Caron et al. 2020 (the SwAV paper's DeepCluster-v2); solo-learn: 3 clusterings of 3000, tau 0.1, 10 iterations
    name: Literal["deepclusterv2"] = "deepclusterv2"
    temperature: Temperature = 0.1
    # one k-means (and its prototypes) per entry; each must be <= the data set's rows
    num_prototypes: Annotated[list[Annotated[int, Field(ge=2)]], Field(min_length=1, max_length=8)] = [3000, 3000, 3000]
    kmeans_iterations: Annotated[int, Field(ge=1, le=100)] = 10


class DeepClusterV2(Method):
    config_class = DeepClusterV2Config
    uses_num_samples = True  # one table row per image

    def __init__(self, method_cfg, model_cfg, in_channels, num_samples: int | None = None):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.num_samples = int(num_samples or 100_000)
        too_many = [k for k in method_cfg.num_prototypes if k > self.num_samples]
        if too_many:
            raise ValueError(
                f"deepclusterv2: num_prototypes {too_many} exceed the data set's {self.num_samples} rows; "
                "k-means needs at least as many images as clusters"
            )
        d, heads = self.projection_dim, len(method_cfg.num_prototypes)
        for h, k in enumerate(method_cfg.num_prototypes):
            # replaced by the first k-means; drawn from a fixed seed so that every worker starts alike
            start = torch.randn(k, d, generator=torch.Generator().manual_seed(h))
            self.register_buffer(f"prototypes{h}", F.normalize(start, dim=1))
        self.register_buffer("bank", torch.zeros(self.num_views, self.num_samples, d))
        self.register_buffer("filled", torch.zeros(self.num_samples, dtype=torch.bool))  # rows with an embedding
        self.register_buffer("seen", torch.zeros(self.num_samples, dtype=torch.bool))  # written since the last k-means
        self.register_buffer("assignments", torch.full((heads, self.num_samples), -1, dtype=torch.long))
        self.register_buffer("clusterings", torch.zeros((), dtype=torch.long))
        self._ddp_params_and_buffers_to_ignore = [*_SHARED_TABLES, *(f"prototypes{h}" for h in range(heads))]
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def prototypes(self) -> list[torch.Tensor]:
        return [getattr(self, f"prototypes{h}") for h in range(len(self.cfg.num_prototypes))]

    def _rows(self, indices: torch.Tensor) -> torch.Tensor:
        rows = indices.to(self.bank.device, torch.long)
        if bool(((rows < 0) | (rows >= self.num_samples)).any()):
            raise TrainingError(
                f"deepclusterv2: dataset row index {int(rows.max())} is outside its {self.num_samples}-row "
                "memory bank; build the method with num_samples >= the data set's row count"
            )
        return rows

    def training_loss(self, views, indices):
        if indices is None:
            raise ValueError("deepclusterv2 needs the batch's dataset row indices")
        global_views, _ = self.split_views(views)
        z = [F.normalize(self.encode(v)[1], dim=1) for v in global_views]
        own = self._rows(indices)
        if torch.is_grad_enabled():  # a training step
            rows = distributed.gather_no_grad(own)
            if self.epoch_starts(rows):
                self.cluster()
            self._pending = (rows, torch.stack([distributed.gather_no_grad(x.detach().float()) for x in z]))
        scores = [[F.linear(x, c.to(x.dtype)) for x in z] for c in self.prototypes()]
        loss = losses.deepclusterv2(scores, self.assignments[:, own], temperature=self.cfg.temperature)
        return loss, {}  # its clusterings counter is the epoch count; float() of it would sync each step

    @torch.no_grad()
    def epoch_starts(self, rows: torch.Tensor) -> bool:
        """Whether the global batch ``rows`` opens a new epoch: a row written since the last k-means is back,
        and the bank has been refreshed since (fewer than a batch of its rows were not: an epoch leaves
        out less than one batch), so a row that comes back early (data not split between workers)
        does not start one."""
        if not bool(self.seen[rows].any()):
            return False
        return int(self.filled.sum()) - int(self.seen.sum()) < rows.numel()

    @torch.no_grad()
    def cluster(self) -> None:
        """k-means of the bank's embedded rows: prototypes <- centroids, assignments of those rows."""
        rows = self.filled.nonzero().squeeze(1)
        self.assignments.fill_(-1)
        for h, (k, prototypes) in enumerate(zip(self.cfg.num_prototypes, self.prototypes())):
            if rows.numel() < k:
                raise TrainingError(
                    f"deepclusterv2: {rows.numel()} embedded images cannot form {k} clusters; "
                    "lower method.num_prototypes"
                )
            generator = torch.Generator().manual_seed(int(self.clusterings) * 1009 + h)  # the same on every worker
            bank = self.bank[h % self.num_views, rows]
            centroids, assignment = losses.spherical_kmeans(bank, k, self.cfg.kmeans_iterations, generator)
            prototypes.copy_(centroids)
            self.assignments[h, rows] = assignment
        self.clusterings += 1
        self.seen.zero_()

    @torch.no_grad()
    def after_step(self) -> None:
        if self._pending is None:
            return
        rows, z = self._pending
        self._pending = None
        self.bank[:, rows] = z.to(self.bank.dtype)
        self.filled[rows] = True
        self.seen[rows] = True
