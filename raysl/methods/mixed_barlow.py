"""Mixed Barlow Twins (Bandara et al. 2023, "Guarding Barlow Twins Against
Overfitting with Mixed Samples", arXiv 2312.02151).

Barlow Twins plus a MixUp regulariser: a third batch mixes the two augmented
views, ``x_M = l x_1 + (1 - l) x_2[perm]`` with ``l ~ Beta(1, 1)`` and a random
permutation of the batch, and the cross-correlations of its projections with
each view's are pulled towards the linear interpolation of the views' own
cross-correlations (``losses.mixed_barlow_regularizer``)::

    L = scale_loss * (L_BT + mixup_weight * L_reg)

Distributed: every worker mixes its own rows with the same ``l`` (rank 0's)
and a local permutation; the permutation of the gathered batch is the ranks'
local ones offset to their rows, so the regulariser sees exactly the global
batch a single worker would.
"""

from typing import Annotated, Literal

import torch
from pydantic import Field

from raysl import distributed, losses
from raysl.config import MethodSection, Weight
from raysl.methods.barlow import BarlowTwins


class MixedBarlowConfig(MethodSection):
    name: Literal["mixed_barlow"] = "mixed_barlow"
    lambd: Weight = 1.0 / 128
    scale_loss: Annotated[float, Field(gt=0.0)] = 0.1
    mixup_weight: Weight = 4.0


class MixedBarlowTwins(BarlowTwins):
    config_class = MixedBarlowConfig

    def mixup(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
        """The mixed batch, its coefficient l (the same on every worker) and the global permutation."""
        n = x1.shape[0]
        # Beta(1, 1) is the uniform distribution on [0, 1].
        lam = distributed.gather_no_grad(torch.rand(1, device=x1.device))[0]
        perm = torch.randperm(n, device=x1.device)
        global_perm = distributed.gather_no_grad(perm + distributed.rank() * n)
        mixed = lam * x1 + (1.0 - lam) * x2[perm]
        return mixed, float(lam), global_perm

    def training_loss(self, views, indices):
        mixed, lam, perm = self.mixup(views[0], views[1])
        z1, z2, zm = self.gathered_projections([views[0], views[1], mixed])
        regularizer = losses.mixed_barlow_regularizer(z1, z2, zm, mix_lambda=lam, lambd=self.cfg.lambd, perm=perm)
        loss = self.cfg.scale_loss * (self.barlow_loss(z1, z2) + self.cfg.mixup_weight * regularizer)
        return loss, {"mixup_regularizer": regularizer.detach()}  # on the device: no sync each step
