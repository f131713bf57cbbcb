"""VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance
Regularization for Self-Supervised Learning").

Invariance (MSE between the views' projections), a variance hinge that keeps
every dimension's std near 1, and a covariance penalty that decorrelates the
dimensions, weighted ``sim_weight``, ``var_weight``, ``cov_weight``. Variance
and covariance are statistics of the global batch, so the projections are
gathered (with gradients) first.
"""

from typing import Literal

from raysl import losses
from raysl.config import MethodSection, Weight
from raysl.methods.base import PairLossMethod


class VICRegConfig(MethodSection):
    name: Literal["vicreg"] = "vicreg"
    sim_weight: Weight = 25.0
    var_weight: Weight = 25.0
    cov_weight: Weight = 1.0


class VICReg(PairLossMethod):
    config_class = VICRegConfig

    def pair_loss(self, z1, z2):
        c = self.cfg
        return losses.vicreg(z1, z2, sim_weight=c.sim_weight, var_weight=c.var_weight, cov_weight=c.cov_weight)
