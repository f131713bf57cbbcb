"""MoCo v2 (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation
Learning"; Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning"),
optionally with MoCHi (Kalantidis et al. 2020, NeurIPS, "Hard Negative Mixing for
Contrastive Learning").

A query from the online network is contrasted with the momentum teacher's key
of the other view and with a queue of ``queue_size`` keys from earlier
batches. The loss is symmetrised over the two views (each view is once query,
once key), as MoCo v3 and solo-learn's MoCo v2+ do, and both views' keys are
enqueued, so a step pushes 2 x global batch keys. The teacher follows the
online network with a per-step cosine momentum (``ema_base`` -> ``ema_final``).

With ``mochi``, each query also gets ``mochi_s`` mixes of two of its
``mochi_n_hard`` hardest queue negatives and ``mochi_s_prime`` mixes of
itself with one of them, as extra negatives of that query only.

Distributed: the loss of a query needs only its own key and the queue, so it
is computed per worker on the local batch (DDP averages the gradients); the
keys are gathered for the queue, so every worker keeps the same queue.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from raysl import distributed, losses
from raysl.config import Temperature
from raysl.methods.base import EMASchedule, EMATeacherMethod
from raysl.methods.support import write_ring


class MoCoConfig(EMASchedule):
    name: Literal["moco"] = "moco"
    temperature: Temperature = 0.2
    queue_size: Annotated[int, Field(ge=1)] = 4096
    mochi: bool = False
    mochi_n_hard: Annotated[int, Field(ge=1)] = 256
    mochi_s: Annotated[int, Field(ge=0)] = 256
    mochi_s_prime: Annotated[int, Field(ge=0)] = 64

    @model_validator(mode="after")
    def _hard_within_queue(self) -> "MoCoConfig":
        if self.mochi and self.mochi_n_hard > self.queue_size:
            raise ValueError(
                f"mochi_n_hard ({self.mochi_n_hard}) must be <= queue_size ({self.queue_size})"
            )
        return self


class MoCo(EMATeacherMethod):
    config_class = MoCoConfig
    loss_is_sample_mean = True  # per-sample terms given the step's teacher, queue or centre
    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        # Random unit keys until real ones arrive, as in MoCo.
        self.register_buffer("queue", F.normalize(torch.randn(method_cfg.queue_size, self.projection_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: torch.Tensor | None = None

    def contrast(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        extra = None
        if self.cfg.mochi:
            extra = losses.mochi_negatives(
                q, self.queue, n_hard=self.cfg.mochi_n_hard, s=self.cfg.mochi_s, s_prime=self.cfg.mochi_s_prime
            )
        return losses.moco(q, k, self.queue, temperature=self.cfg.temperature, extra_negatives=extra)

    def training_loss(self, views, indices):
        _, q1 = self.encode(views[0])
        _, q2 = self.encode(views[1])
        k1, k2 = self.teacher_encode(views[0]), self.teacher_encode(views[1])
        loss = 0.5 * (self.contrast(q1, k2) + self.contrast(q2, k1))
        if torch.is_grad_enabled():
            self._pending_keys = distributed.gather_no_grad(torch.cat([k1, k2]))
        return loss, {"ema_momentum": self.ema_momentum()}

    def after_step(self) -> None:
        super().after_step()
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` at the pointer, wrapping around the end; keeps the newest if more than fit."""
        write_ring(self.queue, self.queue_ptr, keys)
