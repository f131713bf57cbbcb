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

import torch

from raysl import distributed, losses
from raysl.methods.base import Method


class WMSE(Method):
    def training_loss(self, views, indices):
        c = self.cfg
        zs = self.gathered_projections(views)
        n = zs[0].shape[0]
        total = 0.0
        for _ in range(c.w_iter):
            perm = distributed.gather_no_grad(torch.randperm(n, device=zs[0].device))[:n]  # rank 0's
            total = total + losses.w_mse(zs, w_size=c.w_size, eps=c.w_eps, perm=perm)
        return total / c.w_iter, {}
