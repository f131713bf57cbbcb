"""SwAV (Caron et al. 2020, NeurIPS, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments").

Online clustering: the projections z (L2-normalised) are scored against
``num_prototypes`` learnable prototypes C (unit rows, renormalised after every
optimizer step as in the paper's code), and each global view's scores are
turned into soft codes q by Sinkhorn-Knopp (``sinkhorn_iterations`` iterations,
entropy weight ``epsilon``), which spreads the batch evenly over the
prototypes. Swapped prediction: every crop predicts, through a softmax of its
scores at ``temperature``, the codes of the *other* global views
(``losses.swav``).

- Sinkhorn runs over the GLOBAL batch, as the paper's ``distributed_sinkhorn``:
  each worker keeps its own rows and the sums inside the iterations are summed
  over workers, so the codes equal those of one worker with the whole batch.
- Multi-crop (``data.local_crops``, Sec. 3.2): codes are computed on the global
  views only; every other crop (the other global views and all local crops)
  predicts them.
- ``queue_size`` > 0 keeps that many earlier global-view embeddings per global
  view (identical on every worker: they are gathered); once the queue is full
  they join the batch in Sinkhorn (scored against the current prototypes), each
  queued row on one worker only, which makes equipartition meaningful for
  small batches (paper Sec. 4, "for small batches").
- The prototypes are frozen for the first ``freeze_prototypes`` of training
  (the paper freezes them for the first epoch). They get a zero gradient rather
  than none, so DDP sees every parameter used.

The loss is computed per worker on its own rows given the codes (DDP averages
the workers' equal-sized means); the codes themselves are batch statistics.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from raysl import distributed, losses
from raysl.config import MethodSection, Probability, Temperature
from raysl.methods.base import Method


def sum_over_workers(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over workers, no gradient (identity on one worker)."""
    return distributed.all_reduce_mean(x) * distributed.world_size()


class SwAVConfig(MethodSection):
    # Caron et al. 2020 (SwAV), Sec. 4 / appendix A: tau 0.1, epsilon 0.05, 3 Sinkhorn iterations, 3000 prototypes
    name: Literal["swav"] = "swav"
    temperature: Temperature = 0.1
    num_prototypes: Annotated[int, Field(ge=2)] = 3000
    sinkhorn_iterations: Annotated[int, Field(ge=1, le=100)] = 3
    epsilon: Annotated[float, Field(ge=0.01, le=10.0)] = 0.05  # the codes are computed in float64
    # earlier global-view embeddings beside the batch in Sinkhorn, used once full (paper: 3840 for small
    # batches); 0 = none, the right choice when the data set is small
    queue_size: Annotated[int, Field(ge=0)] = 0
    # fraction of training with the prototypes frozen (paper: the first epoch, 313 of ~100k+ steps)
    freeze_prototypes: Probability = 0.01


class SwAV(Method):
    config_class = SwAVConfig
    supports_local_crops = True

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.prototypes = nn.Linear(self.projection_dim, method_cfg.num_prototypes, bias=False)
        self.normalize_prototypes()
        self.register_buffer("queue", torch.zeros(self.num_views, method_cfg.queue_size, self.projection_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # rows written, capped at the size
        self._pending: torch.Tensor | None = None

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def prototypes_frozen(self) -> bool:
        return self.progress < self.cfg.freeze_prototypes

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Cosines of the projections to the (unit) prototypes, [N, K]."""
        w = self.prototypes.weight
        if self.prototypes_frozen():
            w = w.detach() + 0.0 * w  # the same value, a zero gradient
        return F.linear(F.normalize(z, dim=1), w)

    def queue_full(self) -> bool:
        return self.cfg.queue_size > 0 and int(self.queue_filled) >= self.cfg.queue_size

    @torch.no_grad()
    def codes(self, scores: torch.Tensor, view: int) -> torch.Tensor:
        """Sinkhorn codes of this worker's rows of global view ``view`` (over the global batch and the queue)."""
        rows = scores.detach()
        n = rows.shape[0]
        if self.queue_full():
            # every worker holds the whole queue; each queued row enters Sinkhorn on one worker
            queued = self.queue[view][distributed.rank() :: distributed.world_size()]
            rows = torch.cat([(queued @ self.prototypes.weight.detach().float().T).to(rows.dtype), rows])
        q = losses.sinkhorn_knopp(rows, self.cfg.sinkhorn_iterations, self.cfg.epsilon, sum_over_workers)
        return q[-n:]

    def training_loss(self, views, indices):
        z = self.encode_crops(views)  # global views first, then the local crops
        scores = [self.scores(x) for x in z]
        codes = [self.codes(s, i) for i, s in enumerate(scores[: self.num_views])]
        loss = losses.swav(scores, codes, temperature=self.cfg.temperature)
        if torch.is_grad_enabled() and self.cfg.queue_size:
            self._pending = torch.stack(
                [distributed.gather_no_grad(F.normalize(x.detach().float(), dim=1)) for x in z[: self.num_views]]
            )
        return loss, {"prototypes_frozen": float(self.prototypes_frozen())}

    def after_step(self) -> None:
        self.normalize_prototypes()
        if self._pending is not None:
            self.enqueue(self._pending)
            self._pending = None

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor) -> None:
        """Write [views, rows, D] embeddings at the pointer, wrapping around; keeps the newest if more than fit."""
        size = self.cfg.queue_size
        embeddings = embeddings[:, -size:]
        slots = (self.queue_ptr + torch.arange(embeddings.shape[1], device=self.queue.device)) % size
        self.queue[:, slots] = embeddings.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + embeddings.shape[1]) % size)
        self.queue_filled.copy_(torch.clamp(self.queue_filled + embeddings.shape[1], max=size))
