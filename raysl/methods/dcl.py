"""DCL (Yeh et al. 2022, ECCV, "Decoupled Contrastive Learning").

NT-Xent with the positive pair removed from the denominator (Eq. 6): the
negative-positive coupling that makes SimCLR need large batches goes away.
"""

from typing import Literal

from raysl import losses
from raysl.config import MethodSection, Temperature
from raysl.methods.base import PairLossMethod


class DCLConfig(MethodSection):
    name: Literal["dcl"] = "dcl"
    temperature: Temperature = 0.1


class DCL(PairLossMethod):
    config_class = DCLConfig

    def pair_loss(self, z1, z2):
        return losses.dcl(z1, z2, temperature=self.cfg.temperature)
