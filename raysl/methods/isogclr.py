"""iSogCLR (Qiu et al. 2023, ICML, "Not All Semantics are Created Equal: Contrastive
Self-supervised Learning with Automatic Temperature Individualization").

Every training image i has its own temperature tau_i, learned by a
distributionally robust objective (radius ``rho``), and a moving-average
estimate u_i (rate ``gamma``) of its negatives' partition term g_i, so the
loss does not need large batches (Algorithm 1). Both live in tables with one
entry per dataset row, addressed by the batch's row indices:

- u is written during the forward pass (the estimate of this step is part of
  this step's gradient); one entry per image, the mean of its two views'
  estimates, as in the authors' code;
- tau is not an optimizer parameter: after each optimizer step it takes a
  projected gradient step of its own, ``tau_i <- clamp(tau_i - tau_lr * dF_i/dtau_i,
  tau_min, tau_max)``, with the per-sample gradient of ``losses.isogclr_loss``
  averaged over the image's two views (one temperature per image).

Distributed: projections and row indices are gathered, every worker computes
the same global loss and therefore the same table updates, so the tables stay
identical without extra communication.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from raysl import distributed, losses
from raysl.config import MethodSection, Probability, Temperature
from raysl.errors import TrainingError
from raysl.methods.base import Method

# The authors' code clips the per-sample temperature gradient to +-3: early on
# log u_i can be large, and one unclipped step would pin tau_i at a bound.
TAU_GRAD_CLIP = 3.0


class ISogCLRConfig(MethodSection):
    name: Literal["isogclr"] = "isogclr"
    tau_init: Temperature = 0.1
    rho: Annotated[float, Field(gt=0.0)] = 0.4
    gamma: Probability = 0.8
    # Authors' CIFAR recipe (zhqiu/contrastive-learning-iSogCLR): tau lr 0.03, tau in [0.05, 1];
    # below ~0.025 exp(h / tau) overflows float32.
    tau_lr: Annotated[float, Field(gt=0.0)] = 0.03
    tau_min: Temperature = 0.05
    tau_max: Temperature = 1.0

    @model_validator(mode="after")
    def _tau_in_range(self) -> "ISogCLRConfig":
        if not self.tau_min <= self.tau_init <= self.tau_max:
            raise ValueError(
                f"need tau_min <= tau_init <= tau_max, got {self.tau_min} <= {self.tau_init} <= {self.tau_max}"
            )
        return self


class ISogCLR(Method):
    config_class = ISogCLRConfig
    uses_num_samples = True  # one table row per image

    def __init__(self, method_cfg, model_cfg, in_channels, num_samples: int | None = None):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.num_samples = int(num_samples or 100_000)
        self.register_buffer("tau", torch.full((self.num_samples,), float(method_cfg.tau_init)))
        self.register_buffer("u", torch.zeros(self.num_samples))  # 0 = not yet estimated
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, batch taus with grad)

    def training_loss(self, views, indices):
        if indices is None:
            raise ValueError("isogclr needs the batch's dataset row indices")
        z1, z2 = self.gathered_projections(views[:2])
        rows = distributed.gather_no_grad(indices.to(self.tau.device, torch.long))
        if bool(((rows < 0) | (rows >= self.num_samples)).any()):
            raise TrainingError(
                f"isogclr: dataset row index {int(rows.max())} is outside its {self.num_samples}-row "
                "temperature table; build the method with num_samples >= the data set's row count"
            )
        tau = self.tau[rows].clone().requires_grad_(True)
        u = self.u[rows]
        loss, u1, u2 = losses.isogclr_loss(
            z1, z2, tau, tau, u, u, gamma=self.cfg.gamma, rho=self.cfg.rho
        )
        if torch.is_grad_enabled():  # a training step: write u now, step tau in after_step
            with torch.no_grad():
                self.u[rows] = ((u1 + u2) / 2).to(self.u.dtype)
            self._pending = (rows, tau)
        return loss, {}

    @torch.no_grad()
    def after_step(self) -> None:
        if self._pending is None:
            return
        rows, tau = self._pending
        self._pending = None
        if tau.grad is None:
            return
        # The loss averages 2N anchors that share one tau per image, so d loss / d tau_i
        # is (g_i^(1) + g_i^(2)) / 2N: times N gives the per-image mean of the two views.
        grad = (tau.grad * rows.shape[0]).clamp(-TAU_GRAD_CLIP, TAU_GRAD_CLIP)
        new = (tau.detach() - self.cfg.tau_lr * grad).clamp(self.cfg.tau_min, self.cfg.tau_max)
        self.tau[rows] = new.to(self.tau.dtype)
