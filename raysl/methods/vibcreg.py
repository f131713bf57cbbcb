"""VIbCReg (Lee & Aune 2021, "VIbCReg: Variance-Invariance-better-Covariance Regularization
for Self-Supervised Learning on Time Series").

VICReg with two changes: the projector output is whitened by IterNorm
(Huang et al. 2019: Newton's iteration for the inverse square root of the
covariance, ``iternorm_iterations`` steps, over ``num_groups`` groups of
features; :func:`raysl.losses.iternorm`), and the covariance penalty is on the
normalised covariance (the correlation) of the embeddings, weighted
``cov_weight`` (200) (:func:`raysl.losses.vibcreg`).

Distributed: IterNorm, like the projector's BatchNorm, normalises each
worker's own batch (running estimates for evaluation); the variance and
correlation terms are statistics of the global batch, so the whitened
projections are gathered (with gradients) before the loss.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from raysl import losses
from raysl.config import MethodSection, Weight
from raysl.errors import ConfigError
from raysl.methods.base import PairLossMethod


class IterNorm(nn.Module):
    """IterNorm without affine parameters; running mean and whitening matrices for evaluation."""

    def __init__(self, dim: int, num_groups: int, iterations: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if dim % num_groups:
            raise ConfigError(
                f"method.num_groups ({num_groups}) must divide model.projector_dim ({dim}): IterNorm whitens "
                "equal groups of the projector's output"
            )
        self.num_groups, self.iterations, self.eps, self.momentum = num_groups, iterations, eps, momentum
        group = dim // num_groups
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_wm", torch.eye(group).repeat(num_groups, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            out, mean, w = losses.iternorm(x, self.num_groups, self.iterations, self.eps)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_wm.lerp_(w.detach().to(self.running_wm.dtype), self.momentum)
            return out
        n, d = x.shape
        xc = (x - self.running_mean).reshape(n, self.num_groups, d // self.num_groups).transpose(0, 1)
        return (xc @ self.running_wm.transpose(1, 2)).transpose(0, 1).reshape(n, d)


class VIbCRegConfig(MethodSection):
    name: Literal["vibcreg"] = "vibcreg"
    sim_weight: Weight = 25.0
    var_weight: Weight = 25.0
    cov_weight: Weight = 200.0
    iternorm_iterations: Annotated[int, Field(ge=1, le=20)] = 5
    num_groups: Annotated[int, Field(ge=1)] = 64  # IterNorm groups; must divide model.projector_dim


class VIbCReg(PairLossMethod):
    config_class = VIbCRegConfig

    def build_projector(self) -> nn.Module:
        c = self.cfg
        return nn.Sequential(super().build_projector(),
                             IterNorm(self.model_cfg.projector_dim, c.num_groups, c.iternorm_iterations))

    def pair_loss(self, z1, z2):
        c = self.cfg
        return losses.vibcreg(z1, z2, sim_weight=c.sim_weight, var_weight=c.var_weight, cov_weight=c.cov_weight)
