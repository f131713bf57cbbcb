"""The support set of the nearest-neighbour methods (NNCLR, NNBYOL, NNSiam).

A FIFO queue of ``size`` unit projections from earlier steps (Dwibedi et al.
2021, Sec. 3.2). A method looks each sample's projection up in it
(:func:`raysl.losses.nearest_neighbour`) for its positive or target, stages
this step's projections in ``training_loss`` and pushes them in ``after_step``,
as MoCo does with its keys.

Distributed: the staged projections are the global batch (gathered across
workers, in rank order) and every worker starts from the same empty queue, so
every worker holds the same support set and a sample's neighbour is the same
at any world size. Until the first push the queue is empty and a sample is its
own neighbour (the first step is then plain SimCLR / BYOL / SimSiam); slots not
yet written are never looked up (solo-learn fills them with random vectors).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from raysl import distributed, losses

# queue_size of the nearest-neighbour methods' configs (NNCLR, NNBYOL, NNSiam): the support queue of earlier
# projections. The paper's 98,304 is for ImageNet; a queue longer than the data set holds stale copies of the
# same images, so their default is small.
SupportQueueSize = Annotated[int, Field(ge=1)]


class SupportQueue(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # rows written so far (<= size)
        self._pending: torch.Tensor | None = None
        # once full, always full: no host read of ``filled`` per lookup (a GPU sync) from then on
        self._full = False

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._full = False  # a restored queue may be partly filled

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Each row's nearest neighbour in the support set (unit norm, detached); itself while it is empty."""
        support = self.queue
        if not self._full:
            filled = int(self.filled)
            if filled == 0:
                return F.normalize(z.detach().float(), dim=1).to(z.dtype)
            self._full = filled == self.queue.shape[0]
            support = self.queue[:filled]
        return losses.nearest_neighbour(z, support)[0].to(z.dtype)

    def stage(self, z: torch.Tensor) -> None:
        """Keep this step's projections (gathered over workers) for :meth:`flush`; a no-op without gradients."""
        if torch.is_grad_enabled():
            self._pending = distributed.gather_no_grad(z.detach())

    def flush(self) -> None:
        """Push what :meth:`stage` kept (call it in ``after_step``)."""
        if self._pending is not None:
            self.push(self._pending)
            self._pending = None

    @torch.no_grad()
    def push(self, z: torch.Tensor) -> None:
        """Write the unit rows of ``z`` at the pointer, wrapping around the end; keeps the newest if more than fit."""
        written = write_ring(self.queue, self.ptr, z)
        self.filled.copy_(torch.clamp(self.filled + written, max=self.queue.shape[0]))


@torch.no_grad()
def write_ring(queue: torch.Tensor, ptr: torch.Tensor, rows: torch.Tensor) -> int:
    """Write the L2-normalised ``rows`` into the ring buffer ``queue`` at ``ptr`` (advanced in place), wrapping
    around the end; only the newest ``len(queue)`` rows when more are given. Returns the rows written.
    Shared by the support queue and MoCo's key queue."""
    size = queue.shape[0]
    rows = F.normalize(rows.detach().float(), dim=1)[-size:]
    slots = (ptr + torch.arange(rows.shape[0], device=queue.device)) % size
    queue[slots] = rows.to(queue.dtype)
    ptr.copy_((ptr + rows.shape[0]) % size)
    return rows.shape[0]
