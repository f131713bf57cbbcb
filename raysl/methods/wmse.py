"""W-MSE (Ermolov, Siarohin, Sangineto & Sebe 2021, ICML, "Whitening for Self-Supervised
Representation Learning").

Each view's projections are whitened (Cholesky, over sub-batches of
``w_size`` rows, optionally shrunk by ``w_eps``) and the views of an image are
pulled together by the MSE of the normalised whitened vectors
(:func:`raysl.losses.w_mse`). Whitening gives every sub-batch an identity
covariance, which scatters the embeddings without negatives. ``num_views``
positives per image (W-MSE 2, W-MSE 4) contribute every pair; ``w_iter``
repeats the sub-batch split with fresh permutations and averages.

Distributed: whitening is a statistic of the global batch, so the projections
are gathered (with gradients) and every worker whitens the same global
sub-batches: the split is rank 0's permutation of the global rows.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from raysl import distributed, losses
from raysl.config import MethodSection, Probability
from raysl.methods.base import Method


class WMSEConfig(MethodSection):
    name: Literal["wmse"] = "wmse"
    w_size: Annotated[int, Field(ge=2)] = 128  # whitening sub-batch (W-MSE's CIFAR setting); > projector_dim
    w_eps: Probability = 0.0  # shrinkage of the covariance towards I (authors' code: 0)
    w_iter: Annotated[int, Field(ge=1, le=16)] = 1  # sub-batch partitions per step, averaged
    num_views: Annotated[int, Field(ge=2, le=16)] = 2  # W-MSE 2; the paper's best is W-MSE 4


class WMSE(Method):
    config_class = WMSEConfig

    def training_loss(self, views, indices):
        c = self.cfg
        zs = self.gathered_projections(views)
        n = zs[0].shape[0]
        total = 0.0
        for _ in range(c.w_iter):
            perm = distributed.gather_no_grad(torch.randperm(n, device=zs[0].device))[:n]  # rank 0's
            total = total + losses.w_mse(zs, w_size=c.w_size, eps=c.w_eps, perm=perm)
        return total / c.w_iter, {}
