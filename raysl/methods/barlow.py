"""Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction").

The cross-correlation of the two views' standardised projections is pulled
towards the identity: diagonal to 1 (invariance), off-diagonal to 0 weighted
by ``lambd`` (redundancy reduction). The correlation is over the *global*
batch: projections are gathered with gradients first (an all_reduce of a
partial correlation would scale the gradient by 1/world_size, lightly #1977).
The loss is multiplied by ``scale_loss`` (BarlowConfig below explains its default).
"""

from typing import Annotated, Literal

from pydantic import Field

from raysl import losses
from raysl.config import MethodSection, Weight
from raysl.methods.base import PairLossMethod


class BarlowConfig(MethodSection):
    name: Literal["barlow"] = "barlow"
    lambd: Weight = 0.0051
    # Multiplies the loss; solo-learn disagrees with itself on this (0.1 / 0.024 / 0.025),
    # here it is 0.1, as its CIFAR recipe runs.
    scale_loss: Annotated[float, Field(gt=0.0)] = 0.1


class BarlowTwins(PairLossMethod):
    config_class = BarlowConfig

    def barlow_loss(self, z1, z2):
        return losses.barlow_twins(z1, z2, lambd=self.cfg.lambd)

    def pair_loss(self, z1, z2):
        return self.cfg.scale_loss * self.barlow_loss(z1, z2)
